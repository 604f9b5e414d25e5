"""Master-key rotation: re-wrap every object's data key, rewrite only metadata.

Each object keeps its body, its data key and its IV; only the envelope
(the wrapped data key and IV in ``x-cos-meta-client-side-encryption-*``)
changes.  The new metadata is written with a server-side copy of the object
onto itself (``x-cos-metadata-directive: Replaced``, ``If-Match`` the ETag
seen by HEAD), so no body byte is downloaded or uploaded.  Per object that is
one HEAD (listings carry no metadata) and one COPY; plus one LIST per 1000
keys.  Objects over 5 GB are copied by ``store.copy`` with part copies,
which carry the new metadata in their InitiateMultipartUpload.

Which objects are touched:

- directory markers (``.../`` with 0 bytes): skipped without a HEAD;
- plain objects (no envelope) and foreign (Java/Go SDK) envelopes: skipped;
- objects whose ``cosencfs-kid`` names the new key (and whose wrap is the
  one asked for): already done; this is what makes a second run, or a run
  after an interruption, cheap and safe;
- SDK envelopes (no key id) that the old key does not open but the new one
  does: already done;
- everything the old key opens: re-wrapped;
- the rest (damaged envelope, a third master key, metadata that would
  exceed COS's 2 KB, an object that keeps changing): failed, named in the
  log and the summary.

SDK envelopes with the ``aes-ctr`` wrap carry no key check: any AES key
"opens" them.  They are assumed to be under the old key and re-wrapped;
``unverified`` counts them (docs/keys-and-fsck.md explains the risk).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from cosencfs.crypto.envelope import (
    EnvelopeCodec,
    ObjectFormat,
    inspect_envelope,
    strip_envelope,
)
from cosencfs.errors import (
    ConfigError,
    CryptoError,
    DamagedEnvelopeError,
    IntegrityError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    WrongKeyError,
)
from cosencfs.store.base import MAX_USER_META_BYTES, META_PREFIX, ObjectInfo, ObjectStore
from cosencfs.tools.fsck import crypto_message, unverifiable_sdk_envelope
from cosencfs.tools.progress import Progress, display_key
from cosencfs.tools.retag import retagged, retagged_marker
from cosencfs.tools.walk import walk_bucket

log = logging.getLogger(__name__)

__all__ = ["RekeyStats", "Rekeyer", "metadata_bytes"]

#: How many failed keys the summary names (all of them are logged).
MAX_REPORTED_FAILURES = 50
#: HEAD + COPY attempts for an object that changes between the two.
_CHANGED_ATTEMPTS = 3


def metadata_bytes(metadata: Mapping[str, str]) -> int:
    """Size of user metadata as COS counts it (names with prefix + values)."""
    return sum(
        len(META_PREFIX) + len(k.encode("utf-8")) + len(v.encode("utf-8"))
        for k, v in metadata.items()
    )


@dataclass(slots=True)
class RekeyStats:
    dry_run: bool = False
    listed: int = 0
    rewrapped: int = 0
    already: int = 0
    markers: int = 0
    plain: int = 0
    foreign: int = 0
    #: Deleted between the listing and the HEAD/COPY (nothing to do).
    vanished: int = 0
    #: SDK ``aes-ctr`` envelopes re-wrapped without a key check (subset of rewrapped).
    unverified: int = 0
    #: Objects that changed between HEAD and COPY and were looked at again.
    retried: int = 0
    failed: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)
    #: The first MAX_REPORTED_FAILURES failures: (key, reason).
    failures: list[tuple[str, str]] = field(default_factory=list)

    def status(self) -> dict[str, int]:
        return {
            "rewrapped": self.rewrapped,
            "already": self.already,
            "skipped": self.markers + self.plain + self.foreign,
            "failed": self.failed,
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "listed": self.listed,
            "rewrapped": self.rewrapped,
            "already_done": self.already,
            "skipped_markers": self.markers,
            "skipped_plain": self.plain,
            "skipped_foreign": self.foreign,
            "vanished": self.vanished,
            "unverified": self.unverified,
            "retried": self.retried,
            "failed": self.failed,
            "failure_kinds": dict(sorted(self.failure_kinds.items())),
            "failures": [{"key": k, "reason": r} for k, r in self.failures],
        }


class _Changed(Exception):
    """The object changed between HEAD and COPY."""


class Rekeyer:
    """Moves every envelope under ``prefix`` from ``old``'s master key to ``new``'s.

    ``old`` must be able to unwrap (an RSA key needs its private half);
    ``new`` needs only to wrap (an RSA public key is enough).  Give ``new``
    the private half too and SDK envelopes already under the new key are
    recognised by opening them.
    """

    def __init__(
        self,
        store: ObjectStore,
        old: EnvelopeCodec,
        new: EnvelopeCodec,
        *,
        prefix: str = "",
        concurrency: int = 16,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> None:
        if not old.master.can_unwrap:
            raise ConfigError(
                "the old RSA master key has no private key: rotation must unwrap every data "
                "key, give --rsa-private-key"
            )
        if old.key_id == new.key_id and old.master.wrap_alg == new.master.wrap_alg:
            raise ConfigError(
                f"the new master key is the old one (key id {new.key_id}, wrap "
                f"{new.master.wrap_alg.value}): nothing to rotate"
            )
        self.store = store
        self.old = EnvelopeCodec(old.master)
        self.new = EnvelopeCodec(new.master)
        self.prefix = prefix
        self.concurrency = concurrency
        self.stats = RekeyStats(dry_run=dry_run)
        self.progress = progress or Progress("rekey", enabled=False)

    async def run(self) -> RekeyStats:
        try:
            await walk_bucket(
                self.store,
                self.prefix,
                self._one,
                concurrency=self.concurrency,
                progress=self.progress,
                triage=self._triage,
            )
        finally:
            self.stats.listed = self.progress.total  # also when interrupted
        return self.stats

    # ------------------------------------------------------------------ per object

    def _triage(self, info: ObjectInfo) -> bool:
        if info.key.endswith("/") and info.size == 0:
            self.stats.markers += 1
            # HEADed all the same: its attribute tag is under the old key.
        return True

    async def _one(self, listed: ObjectInfo) -> None:
        key = listed.key
        for attempt in range(1, _CHANGED_ATTEMPTS + 1):
            try:
                await self._attempt(key)
            except _Changed:
                if attempt == _CHANGED_ATTEMPTS:
                    self._fail(
                        key,
                        "changed",
                        f"changed during the rotation {attempt} times in a row; run again",
                    )
                else:
                    self.stats.retried += 1
                    log.info("%s changed between HEAD and COPY; looking again", display_key(key))
                    continue
            except NotFoundError:
                self.stats.vanished += 1
            except StoreError as exc:
                self._fail(key, "store-error", str(exc))
            break
        self.progress.set_status(self.stats.status())

    async def _attempt(self, key: str) -> None:
        info = await self.store.head(key)
        meta = dict(info.metadata)
        if key.endswith("/") and info.size == 0:
            await self._retag_marker(key, info, meta)
            return
        env = inspect_envelope(meta)
        if env.format is ObjectFormat.PLAIN:
            self.stats.plain += 1
            return
        if env.format is ObjectFormat.FOREIGN:
            self.stats.foreign += 1
            log.debug("skipping %s: %s", display_key(key), env.reason)
            return
        if env.format is ObjectFormat.DAMAGED:
            self._fail(key, "damaged", f"damaged envelope: {env.reason}")
            return
        source = self.old
        if env.format is ObjectFormat.COSENCFS:
            if env.key_id == self.new.key_id:
                if env.wrap == self.new.master.wrap_alg or not self.new.master.can_unwrap:
                    self.stats.already += 1
                    return
                source = self.new  # same key, another wrap: re-wrap it too
            elif env.key_id != self.old.key_id:
                self._fail(
                    key,
                    "wrong-key",
                    f"written with master key id {env.key_id}, neither the old key "
                    f"({self.old.key_id}) nor the new one ({self.new.key_id})",
                )
                return
        try:
            dk = source.open(meta, key=key)
        except WrongKeyError as exc:
            if env.format is ObjectFormat.SDK and self._opens_with_new(meta, key):
                self.stats.already += 1
                return
            self._fail(key, "wrong-key", crypto_message(exc))
            return
        except DamagedEnvelopeError as exc:
            self._fail(key, "damaged", crypto_message(exc))
            return
        except CryptoError as exc:
            self._fail(key, "unreadable", crypto_message(exc))
            return
        new_meta = {**strip_envelope(meta), **self.new.seal(dk)}
        try:
            new_meta = retagged(source, self.new, key, info.size, meta, new_meta)
        except IntegrityError as exc:
            self._fail(key, "integrity", f"not re-tagged: {exc}")
            return
        size = metadata_bytes(new_meta)
        if size > MAX_USER_META_BYTES:
            self._fail(
                key,
                "metadata-too-large",
                f"the new envelope makes the metadata {size} bytes; COS allows "
                f"{MAX_USER_META_BYTES} (use a smaller RSA key or drop other metadata)",
            )
            return
        await self._rewrite(info, new_meta)
        if env.format is ObjectFormat.SDK and unverifiable_sdk_envelope(meta, source):
            self.stats.unverified += 1
        log.debug("re-wrapped %s (%d bytes)", display_key(key), info.size)

    async def _retag_marker(self, key: str, info: ObjectInfo, meta: dict[str, str]) -> None:
        new_meta = retagged_marker(self.old, self.new, key, meta)
        if new_meta is not None:
            await self._rewrite(info, new_meta)

    async def _rewrite(self, info: ObjectInfo, new_meta: dict[str, str]) -> None:
        """The object's metadata replaced by a copy onto itself, if it is still ``info``."""
        if not self.stats.dry_run:
            try:
                await self.store.copy(
                    info.key,
                    info.key,
                    metadata=new_meta,
                    content_type=info.content_type,
                    headers=info.headers,
                    if_match=info.etag,
                    size=info.size,
                )
            except PreconditionFailedError:
                raise _Changed() from None
        self.stats.rewrapped += 1

    def _opens_with_new(self, meta: Mapping[str, str], key: str) -> bool:
        if not self.new.master.can_unwrap:
            return False
        try:
            self.new.open(meta, key=key)
        except CryptoError:
            return False
        return True

    def _fail(self, key: str, kind: str, reason: str) -> None:
        self.stats.failed += 1
        self.stats.failure_kinds[kind] += 1
        if len(self.stats.failures) < MAX_REPORTED_FAILURES:
            self.stats.failures.append((key, reason))
        log.warning("not rotated: %s: %s", display_key(key), reason)
