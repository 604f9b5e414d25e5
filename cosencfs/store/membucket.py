"""The bucket behind ``MemoryStore``: objects, multipart uploads and the local server's rules.

Synchronous and free of requests: each method is what the local COS server
does with one request (its checks in its order, its ETags, its listing
order) and raises what CosStore raises for the server's answer, without op
and key (``MemoryStore`` adds them).  Latency, faults, retries and counters
are ``cosencfs.store.memory``'s.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cosencfs.errors import (
    InvalidRequestError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.faults import FaultKind
from cosencfs.store import base
from cosencfs.store.base import ListPage, ObjectInfo, PartInfo, StoreErrorInfo, UploadInfo

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Standard headers kept with an object (lowercase names), as the local server keeps them.
STORED_HEADERS = frozenset(
    {"cache-control", "content-disposition", "content-encoding", "content-language", "expires"}
)
_META_PREFIX_LEN = len(base.META_PREFIX)
#: What no header value may carry (the local server refuses it: header injection).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Error code -> (exception, HTTP status), as CosStore maps the local server's
#: answers; any other code is a 400 InvalidRequestError.
_ERRORS: dict[str, tuple[type[StoreError], int]] = {
    "NoSuchKey": (NotFoundError, 404),
    "NoSuchUpload": (NoSuchUploadError, 404),
    "PreconditionFailed": (PreconditionFailedError, 412),
    "InvalidRange": (InvalidRequestError, 416),
    "InternalError": (TransientError, 500),
    "SlowDown": (TransientError, 503),
}

#: What a copy replaces: (metadata, content type, standard headers); None keeps the source's.
Replacement = tuple[Mapping[str, str], str, Mapping[str, str] | None] | None


def error(code: str, message: str = "", status: int | None = None) -> StoreError:
    """The exception CosStore raises for an answer with ``code``."""
    cls, default_status = _ERRORS.get(code, (InvalidRequestError, 400))
    return cls(message or code, code=code, status=default_status if status is None else status)


def fault_error(fault: FaultKind) -> StoreError:
    """The exception CosStore raises for a fault the local server injects."""
    if fault is FaultKind.RESET:
        return TransientError("connection failed: ConnectionResetError")
    code = "SlowDown" if fault is FaultKind.SLOW_DOWN else "InternalError"
    return error(code, "Injected fault.", 200 if fault is FaultKind.ERROR_200 else None)


def check_key(key: str) -> None:
    if not key:
        raise error("InvalidArgument", "An object key is required.")
    if len(key.encode()) > base.MAX_KEY_BYTES:
        raise error("KeyTooLong", f"Keys are at most {base.MAX_KEY_BYTES} bytes of UTF-8.")


def _metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    meta = {name.lower(): value for name, value in metadata.items()}
    if any(_CONTROL.search(v) for v in meta.values()):
        raise error("InvalidArgument", "A metadata value contains control characters.")
    size = sum(_META_PREFIX_LEN + len(k) + len(v.encode()) for k, v in meta.items())
    if size > base.MAX_USER_META_BYTES:
        raise error("MetadataTooLarge", f"User metadata is {size} bytes.")
    return meta


def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items() if k.lower() in STORED_HEADERS}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Object:
    body: bytes
    etag: str
    mtime_ms: int
    content_type: str
    metadata: dict[str, str]
    headers: dict[str, str]

    @classmethod
    def new(
        cls,
        body: bytes,
        etag: str,
        meta: Mapping[str, str],
        ctype: str,
        headers: Mapping[str, str] | None,
    ) -> _Object:
        """Checked as a write: metadata size and characters, the default type."""
        ctype = ctype or DEFAULT_CONTENT_TYPE
        return cls(body, etag, _now_ms(), ctype, _metadata(meta), _headers(headers))


@dataclass(slots=True)
class _Upload:
    key: str
    #: The object it completes into, without body and ETag; initiated at its mtime.
    template: _Object
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # number: (body, ETag)


class Bucket:
    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted: listings walk it with bisect
        self._uploads: dict[str, _Upload] = {}
        self._upload_seq = itertools.count()

    def _object(self, key: str, if_match: str | None = None) -> _Object:
        check_key(key)
        obj = self._objects.get(key)
        if obj is None:
            raise error("NoSuchKey", "The specified key does not exist.")
        if if_match and if_match.lower() not in ("*", obj.etag):
            raise error("PreconditionFailed")
        return obj

    def _upload(self, key: str, upload_id: str) -> _Upload:
        check_key(key)
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise error("NoSuchUpload", "The specified multipart upload does not exist.")
        return upload

    def _store(self, key: str, obj: _Object) -> str:
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = obj
        return obj.etag

    def _delete(self, key: str) -> None:
        if self._objects.pop(key, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]

    # -- objects -----------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        o = self._object(key)
        # Last-Modified is an HTTP date: whole seconds.
        modified = float(o.mtime_ms // 1000)
        meta, headers = dict(o.metadata), dict(o.headers)
        return ObjectInfo(key, len(o.body), o.etag, modified, meta, o.content_type, True, headers)

    def get(self, key: str, start: int, end: int | None, if_match: str | None) -> bytes:
        """``Range: bytes=start-(end-1)`` unless both are defaults (the whole object)."""
        body = self._object(key, if_match).body
        if not start and end is None:
            return body
        if start >= len(body):
            raise error("InvalidRange", "The requested range is not satisfiable.")
        return body[start:end]

    def put(
        self, key: str, data: bytes, metadata: Mapping[str, str], content_type: str, once: bool
    ) -> str:
        check_key(key)
        obj = _Object.new(data, _md5(data), metadata, content_type, None)
        if once and key in self._objects:
            raise error("PreconditionFailed")
        return self._store(key, obj)

    def listing(self, prefix: str, delimiter: str, marker: str, max_keys: int) -> ListPage:
        """Keys after ``marker`` under ``prefix``, folded at ``delimiter``, in the
        local server's order (code points, which is the order of UTF-8 bytes)."""
        keys = self._keys
        i = bisect.bisect_left(keys, prefix)
        if marker and marker >= prefix:
            i = bisect.bisect_right(keys, marker)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = ""
        while i < len(keys) and keys[i].startswith(prefix):
            key = keys[i]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            entry = key if cut < 0 else key[: cut + len(delimiter)]
            if cut >= 0 and marker and entry <= marker:
                i += 1  # under a common prefix an earlier page gave
                continue
            if len(objects) + len(prefixes) >= max_keys:
                return ListPage(objects, prefixes, last, True)
            if cut < 0:
                o = self._objects[key]
                size, modified = len(o.body), o.mtime_ms / 1000
                objects.append(ObjectInfo(key, size, o.etag, modified, has_metadata=False))
                i += 1
            else:
                prefixes.append(entry)
                while i < len(keys) and keys[i].startswith(entry):
                    i += 1
            last = entry
        return ListPage(objects, prefixes, "", False)

    def delete(self, keys: Sequence[str]) -> dict[str, StoreErrorInfo]:
        """Delete what exists (a missing key is no error); keys COS refuses are failures."""
        failures: dict[str, StoreErrorInfo] = {}
        for key in keys:
            try:
                check_key(key)
            except StoreError as exc:
                failures[key] = StoreErrorInfo(exc.code, str(exc.args[0]))
            else:
                self._delete(key)
        return failures

    def copy(self, src_key: str, dst_key: str, replacing: Replacement, if_match: str | None) -> str:
        check_key(dst_key)
        src = self._object(src_key, if_match)
        if len(src.body) > base.MAX_PART_BYTES:
            raise error("InvalidRequest", "Sources over 5 GB need UploadPartCopy.")
        if replacing is None:
            obj = replace(src, mtime_ms=_now_ms())
        else:
            meta, ctype, headers = replacing
            obj = _Object.new(src.body, src.etag, meta, ctype, headers)
        return self._store(dst_key, obj)  # with the source's ETag, as on COS

    # -- multipart ---------------------------------------------------------------

    def create_upload(
        self, key: str, metadata: Mapping[str, str], ctype: str, headers: Mapping[str, str] | None
    ) -> str:
        check_key(key)
        template = _Object.new(b"", "", metadata, ctype, headers)
        # Ids sort by initiation, which keeps list_uploads in COS's order.
        upload_id = f"{next(self._upload_seq):012d}{os.urandom(8).hex()}"
        self._uploads[upload_id] = _Upload(key, template)
        return upload_id

    def add_part(self, key: str, upload_id: str, number: int, data: Callable[[], bytes]) -> str:
        """Store part ``number``; ``data`` gives its bytes once the upload is checked."""
        check_key(key)
        if not 1 <= number <= base.MAX_PARTS:
            raise error("InvalidArgument", f"partNumber must be within 1..{base.MAX_PARTS}.")
        upload = self._upload(key, upload_id)
        body = data()
        if len(body) > base.MAX_PART_BYTES:
            raise error("EntityTooLarge")
        upload.parts[number] = (body, _md5(body))
        return upload.parts[number][1]

    def source_range(self, src_key: str, start: int, end: int, if_match: str | None) -> bytes:
        """Bytes ``[start, end)`` of an Upload Part-Copy's source."""
        src = self._object(src_key, if_match).body
        if start < 0 or end <= start or end > len(src):
            raise error("InvalidArgument", "The copy range is outside the source object.")
        return src[start:end]

    def parts(self, key: str, upload_id: str, skip: int) -> tuple[list[PartInfo], bool]:
        """A page of the upload's parts after the first ``skip``, and whether more follow."""
        parts = self._upload(key, upload_id).parts
        infos = [PartInfo(n, parts[n][1], len(parts[n][0])) for n in sorted(parts)[skip:]]
        return infos[: base.LIST_PAGE_MAX], len(infos) > base.LIST_PAGE_MAX

    def complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """The local server's checks of a part list, in its order; then the object."""
        upload = self._upload(key, upload_id)
        if not parts:
            raise error("MalformedXML", "A multipart upload needs at least one part.")
        bodies: list[bytes] = []
        previous = 0
        for number, etag in parts:
            if number <= previous:
                raise error("InvalidPartOrder")
            previous = number
            part = upload.parts.get(number)
            if part is None or part[1] != etag:
                raise error("InvalidPart", f"Part {number} was not uploaded or its ETag differs.")
            bodies.append(part[0])
        if any(len(b) < base.MIN_PART_BYTES for b in bodies[:-1]):
            raise error("EntityTooSmall", "All parts but the last need 1 MiB.")
        digests = b"".join(hashlib.md5(b).digest() for b in bodies)
        etag = f"{_md5(digests)}-{len(bodies)}"
        del self._uploads[upload_id]
        return self._store(key, replace(upload.template, body=b"".join(bodies), etag=etag))

    def abort(self, key: str, upload_id: str) -> None:
        self._upload(key, upload_id)
        del self._uploads[upload_id]

    def uploads(self, prefix: str, skip: int) -> tuple[list[UploadInfo], bool]:
        """A page of the uploads under ``prefix`` (by key, then initiation) after the
        first ``skip``, and whether more follow."""
        found = sorted((u.key, i) for i, u in self._uploads.items() if u.key.startswith(prefix))
        infos = [UploadInfo(k, i, self._uploads[i].template.mtime_ms / 1000) for k, i in found]
        return infos[skip : skip + base.LIST_PAGE_MAX], len(infos) > skip + base.LIST_PAGE_MAX
