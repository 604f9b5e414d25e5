"""State shared by all handler threads, and helpers shared by the COS operations."""

from __future__ import annotations

import base64
import binascii
import hashlib
import queue
import re
import threading
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote

from cosencfs.faults import FaultInjector
from cosencfs.server.auth import Credentials
from cosencfs.server.bodies import BodyReader
from cosencfs.server.datafiles import DataFiles, NewData
from cosencfs.server.errors import CosError
from cosencfs.server.latency import RttModel
from cosencfs.server.routing import Request
from cosencfs.server.stats import Stats
from cosencfs.server.storage import ObjectInfo, Storage
from cosencfs.server.uploads import Uploads

MAX_KEY_BYTES = 850
MAX_META_BYTES = 2048
MAX_OBJECT_SIZE = 5 * 1024**3  # simple PUT and each part
MAX_PART_NUMBER = 10000
META_PREFIXES = ("x-cos-meta-", "x-amz-meta-")
_META_PREFIX_LEN = 11
#: Standard headers stored with an object and returned on GET/HEAD.
STORED_HEADERS = (
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
)
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Characters no header value may carry: CR and LF would end the header (and
#: start another one of the client's choosing), the other controls confuse
#: parsers. Horizontal tab is allowed, as in HTTP.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(slots=True)
class ServerContext:
    storage: Storage
    uploads: Uploads
    credentials: Credentials | None
    allow_unsigned_s3: bool
    region: str
    faults: FaultInjector
    stats: Stats
    #: The round-trip latency model (``--rtt-ms``); shares ``stopping``.
    rtt: RttModel
    stopping: threading.Event = field(default_factory=threading.Event)


def valid_bucket_name(name: str) -> bool:
    return bool(_BUCKET_NAME.match(name))


def safe_header_value(value: str) -> bool:
    """Whether ``value`` can be sent as a header value as it is."""
    return _CONTROL.search(value) is None


def check_header_value(name: str, value: str) -> str:
    """``value``, unless it would inject into the response headers (CR/LF, controls)."""
    if not safe_header_value(value):
        raise CosError("InvalidArgument", f"The value of {name} contains control characters.")
    return value


def header_bytes(value: str) -> bytes:
    # Header values arrive latin-1 decoded; their byte length is what COS counts.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def require_key(req: Request) -> str:
    key = req.key
    if key is None:
        raise CosError("InvalidArgument", "An object key is required.")
    check_key(key)
    return key


def check_key(key: str) -> None:
    if len(key.encode()) > MAX_KEY_BYTES:
        raise CosError("KeyTooLong", f"Keys are at most {MAX_KEY_BYTES} bytes of UTF-8.")


def require_bucket(req: Request) -> str:
    if req.bucket is None:
        raise CosError("InvalidBucketName")
    return req.bucket


def collect_meta(req: Request) -> dict[str, str]:
    """User metadata of a write, lowercase names without prefix, size-checked like COS."""
    meta: dict[str, str] = {}
    for name, value in req.headers.items():
        lname = name.lower()
        if lname.startswith(META_PREFIXES) and len(lname) > _META_PREFIX_LEN:
            meta[lname[_META_PREFIX_LEN:]] = check_header_value(lname, str(value))
    size = sum(_META_PREFIX_LEN + len(k) + len(header_bytes(v)) for k, v in meta.items())
    if size > MAX_META_BYTES:
        raise CosError(
            "MetadataTooLarge",
            f"User metadata is {size} bytes; at most {MAX_META_BYTES} are allowed.",
        )
    return meta


def collect_headers(req: Request) -> dict[str, str]:
    stored: dict[str, str] = {}
    for name in STORED_HEADERS:
        value = req.headers.get(name)
        if value is None:
            continue
        if name == "Content-Encoding":
            # aws-chunked describes the upload, not the object.
            value = ",".join(
                v.strip() for v in str(value).split(",") if v.strip() and v.strip() != "aws-chunked"
            )
            if not value:
                continue
        stored[name] = check_header_value(name, str(value))
    return stored


def content_type(req: Request) -> str:
    return check_header_value("Content-Type", req.header("Content-Type") or DEFAULT_CONTENT_TYPE)


def object_headers(req: Request, info: ObjectInfo) -> list[tuple[str, str]]:
    """The headers GET and HEAD answer for an object."""
    headers = [
        ("Content-Type", info.content_type),
        ("ETag", f'"{info.etag}"'),
        ("Last-Modified", formatdate(info.mtime_ms / 1000, usegmt=True)),
        ("Accept-Ranges", "bytes"),
    ]
    headers += info.headers.items()
    prefix = req.meta_prefix
    headers += [(prefix + k, v) for k, v in info.meta.items()]
    # The response-* parameters are not signed (COS does not require it):
    # anyone who can send a GET chooses them.
    overrides = {
        target: check_header_value(param, req.query[param])
        for param, target in _RESPONSE_OVERRIDES.items()
        if param in req.query
    }
    if overrides:
        headers = [(k, v) for k, v in headers if k not in overrides]
        headers += overrides.items()
    return headers


def int_param(req: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = req.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CosError("InvalidArgument", f"{name} must be an integer.") from None
    if value < low:
        raise CosError("InvalidArgument", f"{name} must be at least {low}.")
    return value if high is None else min(value, high)


def url_encoding(req: Request) -> bool:
    value = req.query.get("encoding-type", "")
    if value not in ("", "url"):
        raise CosError("InvalidArgument", "encoding-type must be url.")
    return value == "url"


def _etags(value: str) -> list[str]:
    return [v.strip().removeprefix("W/").strip('"').lower() for v in value.split(",") if v.strip()]


def _http_date_ms(value: str) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp()) * 1000
    except (TypeError, ValueError, IndexError):
        return None


def check_read_conditions(req: Request, info: ObjectInfo, prefix: str = "") -> int | None:
    """Evaluate If-* headers (RFC 7232 order); returns 304 when the answer is Not Modified.

    ``prefix`` = ``x-cos-copy-source-`` for a copy source, where every
    failure is a 412.
    """
    second_ms = info.mtime_ms // 1000 * 1000
    if_match = req.header(prefix + "If-Match")
    if if_match:
        if "*" not in _etags(if_match) and info.etag not in _etags(if_match):
            raise CosError("PreconditionFailed")
    else:
        since = _http_date_ms(req.header(prefix + "If-Unmodified-Since"))
        if since is not None and second_ms > since:
            raise CosError("PreconditionFailed")
    if_none = req.header(prefix + "If-None-Match")
    if if_none:
        if "*" in _etags(if_none) or info.etag in _etags(if_none):
            if prefix:
                raise CosError("PreconditionFailed")
            return 304
    else:
        since = _http_date_ms(req.header(prefix + "If-Modified-Since"))
        if since is not None and second_ms <= since:
            if prefix:
                raise CosError("PreconditionFailed")
            return 304
    return None


def parse_copy_source(req: Request) -> tuple[str, str]:
    """(bucket, key) of ``x-cos-copy-source`` / ``x-amz-copy-source``.

    Accepts ``<bucket>.cos.<region>.myqcloud.com/<key>`` (what the SDK sends),
    ``/<bucket>/<key>`` and ``<bucket>/<key>``, with the key percent-encoded.
    """
    value = req.header("x-cos-copy-source") or req.header("x-amz-copy-source")
    value = value.strip()
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
    value = value.split("?", 1)[0]  # ?versionId=: no versioning here
    value = value.lstrip("/")
    first, _, rest = value.partition("/")
    bucket = first.split(".", 1)[0] if ".cos." in first else first
    try:
        key = unquote(rest, errors="strict")
    except UnicodeDecodeError:
        raise CosError("InvalidArgument", "The copy source key is not valid UTF-8.") from None
    if not bucket or not key:
        raise CosError("InvalidArgument", "x-cos-copy-source must name a bucket and a key.")
    return bucket, key


def check_content_md5(req: Request, digest: bytes) -> None:
    value = req.header("Content-MD5")
    if not value:
        return
    try:
        expected = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CosError("InvalidDigest") from None
    if len(expected) != 16:
        raise CosError("InvalidDigest")
    if expected != digest:
        raise CosError("BadDigest")


def declared_length(req: Request) -> int | None:
    """The body size the client announced (the decoded size for aws-chunked)."""
    value = req.header("x-amz-decoded-content-length")
    if not value and "chunked" not in req.header("Transfer-Encoding").lower():
        value = req.header("Content-Length")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise CosError("InvalidArgument", "The body length is not a number.") from None


def receive(
    body: BodyReader,
    files: DataFiles,
    buf: memoryview,
    limit: int,
    inline_max: int = 0,
    into: NewData | None = None,
) -> tuple[int, bytes, NewData | bytes]:
    """Receive a request body; returns (size, binary MD5, body).

    A body that ends within ``inline_max`` bytes comes back as bytes and
    never touches the disk; a longer one streams through ``buf`` into a new
    data file, or into ``into`` when given (a part's slot,
    cosencfs/server/assembly.py), discarded here if receiving fails.
    """
    filled = 0
    while filled < len(buf):
        n = body.readinto(buf[filled:])
        if not n:
            break
        filled += n
    else:
        # The body fills the buffer: stream the rest through the writer thread.
        new = into or files.new()
        try:
            size, digest = _receive_pipelined(body, new, buf, limit)
        except BaseException:
            new.discard()
            raise
        return size, digest, new
    digest = hashlib.md5(buf[:filled]).digest()
    if filled <= inline_max:
        if into is not None:
            into.discard()
        return filled, digest, bytes(buf[:filled])
    new = into or files.new()
    try:
        new.write(buf[:filled])
    except BaseException:
        new.discard()
        raise
    return filled, digest, new


_spare = threading.local()


def _receive_pipelined(
    body: BodyReader, new: NewData, first: memoryview, limit: int
) -> tuple[int, bytes]:
    """Hash one buffer while a helper thread writes the previous one.

    Page-cache writes and MD5 each take about as long per byte and both
    release the GIL, so overlapping them nearly doubles big-PUT throughput.
    ``first`` is full of the body's first bytes.
    """
    spare: memoryview | None = getattr(_spare, "buf", None)
    if spare is None or len(spare) != len(first):
        # Kept per handler thread, i.e. per connection, like ``first``.
        spare = _spare.buf = memoryview(bytearray(len(first)))
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    todo: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
    failure: list[BaseException] = []

    def write_all() -> None:
        while (item := todo.get()) is not None:
            chunk, size = item
            if not failure:
                try:
                    new.write(chunk[:size])
                except BaseException as exc:
                    failure.append(exc)
            free.put(chunk)

    writer = threading.Thread(target=write_all, name="cos-body-writer", daemon=True)
    writer.start()
    md5 = hashlib.md5(first)
    todo.put((first, len(first)))
    free.put(spare)
    total = len(first)
    try:
        while True:
            buf = free.get()
            n = 0
            while n < len(buf):
                got = body.readinto(buf[n:])
                if not got:
                    break
                n += got
            if failure:
                raise failure[0]
            if not n:
                break
            total += n
            if total > limit:
                raise CosError("EntityTooLarge", f"At most {limit} bytes may be sent at once.")
            md5.update(buf[:n])
            todo.put((buf, n))
    finally:
        todo.put(None)
        writer.join()
    if failure:
        raise failure[0]
    return total, md5.digest()


def read_small_body(body: BodyReader, buf: memoryview, limit: int) -> bytes:
    out = bytearray()
    while True:
        n = body.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]
        if len(out) > limit:
            raise CosError("MalformedXML", "The request body is too large.")
