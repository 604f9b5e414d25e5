"""Object and bucket operations (everything except multipart uploads)."""

from __future__ import annotations

import base64
import binascii
import os

from cosencfs.server import xmlio
from cosencfs.server.bodies import BodyReader
from cosencfs.server.context import (
    MAX_OBJECT_SIZE,
    ServerContext,
    check_content_md5,
    check_key,
    check_read_conditions,
    collect_headers,
    collect_meta,
    content_type,
    declared_length,
    int_param,
    object_headers,
    parse_copy_source,
    read_small_body,
    receive,
    require_bucket,
    require_key,
    url_encoding,
    valid_bucket_name,
)
from cosencfs.server.datafiles import NewData
from cosencfs.server.errors import CosError
from cosencfs.server.routing import Request, Response
from cosencfs.server.storage import INLINE_MAX, Body, ObjectInfo, WriteCondition

XML = ("Content-Type", "application/xml")


def write_condition(req: Request) -> WriteCondition | None:
    """``If-None-Match: *`` (create only) and ``If-Match`` on writes."""
    none_match = req.header("If-None-Match").strip() == "*"
    if_match = req.header("If-Match").strip()
    if not none_match and not if_match:
        return None
    return WriteCondition(
        if_none_match_star=none_match, if_match=if_match.strip('"').lower() if if_match else None
    )


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``Range`` header; None = whole object (absent or ignorable)."""
    value = value.strip()
    if not value.startswith("bytes="):
        return None
    spec = value[6:].strip()
    if "," in spec:
        return None  # multiple ranges: answered with the whole object, like COS
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    unsatisfiable = CosError("InvalidRange", headers=[("Content-Range", f"bytes */{size}")])
    try:
        if first.strip() == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise unsatisfiable
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last.strip() else size - 1
    except ValueError:
        return None
    if start < 0 or (last.strip() and end < start):
        return None
    if start >= size:
        raise unsatisfiable
    return start, min(end, size - 1)


def get_object(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    content: Body | None = None
    if req.method == "HEAD":
        found = ctx.storage.head(bucket, key)
        if found is None:
            raise CosError("NoSuchKey")
        info = found
    else:
        info, content = ctx.storage.open_object(bucket, key)
    try:
        headers = object_headers(req, info)
        if check_read_conditions(req, info) == 304:
            keep = ("ETag", "Last-Modified")
            return Response(304, [(k, v) for k, v in headers if k in keep])
        rng = parse_range(req.header("Range"), info.size)
        status, start, count = 200, 0, info.size
        if rng is not None:
            status, start, count = 206, rng[0], rng[1] - rng[0] + 1
            headers.append(("Content-Range", f"bytes {rng[0]}-{rng[1]}/{info.size}"))
        if isinstance(content, bytes):
            return Response(status, headers, content[start : start + count])
        if content is None or count == 0:
            return Response(status, headers, content_length=count)
        response = Response(
            status, headers, file_fd=content, file_offset=start, content_length=count
        )
        content = None  # the handler owns the fd now
        return response
    finally:
        if isinstance(content, int):
            os.close(content)


def put_object(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    ctx.storage.require_bucket(bucket)
    meta, stored, ctype = collect_meta(req), collect_headers(req), content_type(req)
    condition = write_condition(req)
    if condition is not None:
        # Fail before receiving the body; the commit checks again atomically.
        condition.check(ctx.storage.head(bucket, key))
    length = declared_length(req)
    if length is not None and length > MAX_OBJECT_SIZE:
        raise CosError("EntityTooLarge")
    size, digest, data = receive(body, ctx.storage.files, buf, MAX_OBJECT_SIZE, INLINE_MAX)
    try:
        check_content_md5(req, digest)
        info = ctx.storage.commit_object(
            bucket,
            key,
            data,
            size=size,
            etag=digest.hex(),
            content_type=ctype,
            meta=meta,
            headers=stored,
            condition=condition,
        )
    except BaseException:
        if isinstance(data, NewData):
            data.discard()
        raise
    return Response(200, [("ETag", f'"{info.etag}"')])


def copy_object(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    src_bucket, src_key = parse_copy_source(req)
    check_key(src_key)
    directive = (
        req.header("x-cos-metadata-directive") or req.header("x-amz-metadata-directive") or "Copy"
    ).lower()
    if directive not in ("copy", "replaced", "replace"):
        raise CosError("InvalidArgument", "x-cos-metadata-directive must be Copy or Replaced.")
    replace = None
    if directive != "copy":
        replace = (content_type(req), collect_meta(req), collect_headers(req))

    def check_source(src: ObjectInfo) -> None:
        if src.size > MAX_OBJECT_SIZE:
            raise CosError("InvalidRequest", "Sources over 5 GB need UploadPartCopy.")
        check_read_conditions(req, src, "x-cos-copy-source-")
        check_read_conditions(req, src, "x-amz-copy-source-")

    info = ctx.storage.copy_object(
        src_bucket,
        src_key,
        bucket,
        key,
        check_source=check_source,
        replace=replace,
        condition=write_condition(req),
    )
    return Response(200, [XML], xmlio.copy_result("CopyObjectResult", info.etag, info.mtime_ms))


def delete_object(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    ctx.storage.delete_objects(bucket, [key])
    return Response(204)


def delete_multiple(
    ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview
) -> Response:
    bucket = require_bucket(req)
    ctx.storage.require_bucket(bucket)
    quiet, keys = xmlio.parse_delete(read_small_body(body, buf, xmlio.MAX_XML_BODY))
    deleted: list[str] = []
    errors: list[tuple[str, str, str]] = []
    for key in keys:
        try:
            check_key(key)
        except CosError as exc:
            errors.append((key, exc.code, exc.message))
        else:
            deleted.append(key)
    ctx.storage.delete_objects(bucket, deleted)
    return Response(200, [XML], xmlio.delete_result([] if quiet else deleted, errors))


# ------------------------------------------------------------------ buckets


def put_bucket(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket = require_bucket(req)
    if not valid_bucket_name(bucket):
        raise CosError("InvalidBucketName")
    ctx.storage.create_bucket(bucket)
    return Response(200, [("Location", f"/{bucket}")])


def head_bucket(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    ctx.storage.require_bucket(require_bucket(req))
    return Response(200, [("x-cos-bucket-region", ctx.region)])


def delete_bucket(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    ctx.storage.delete_bucket(require_bucket(req))
    return Response(204)


def get_bucket_location(
    ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview
) -> Response:
    ctx.storage.require_bucket(require_bucket(req))
    return Response(200, [XML], xmlio.location(ctx.region))


def get_bucket_versioning(
    ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview
) -> Response:
    ctx.storage.require_bucket(require_bucket(req))
    return Response(200, [XML], xmlio.versioning())


def list_buckets(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    return Response(200, [XML], xmlio.list_buckets(ctx.storage.list_buckets(), ctx.region))


def list_objects(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket = require_bucket(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    marker = req.query.get("marker", "")
    max_keys = int_param(req, "max-keys", 1000, 0, 1000)
    encode = url_encoding(req)
    page = ctx.storage.list_objects(
        bucket, prefix=prefix, delimiter=delimiter, after=marker or None, max_keys=max_keys
    )
    xml = xmlio.list_objects_v1(
        bucket=bucket,
        prefix=prefix,
        marker=marker,
        max_keys=max_keys,
        delimiter=delimiter,
        url_encode=encode,
        entries=page.entries,
        prefixes=page.prefixes,
        truncated=page.truncated,
        next_marker=page.next_marker,
    )
    return Response(200, [XML], xml)


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, ValueError):
        raise CosError("InvalidArgument", "The continuation token is not valid.") from None


def list_objects_v2(
    ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview
) -> Response:
    bucket = require_bucket(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    token = req.query.get("continuation-token", "")
    start_after = req.query.get("start-after", "")
    max_keys = int_param(req, "max-keys", 1000, 0, 1000)
    encode = url_encoding(req)
    after = _decode_token(token) if token else start_after
    page = ctx.storage.list_objects(
        bucket, prefix=prefix, delimiter=delimiter, after=after or None, max_keys=max_keys
    )
    xml = xmlio.list_objects_v2(
        bucket=bucket,
        prefix=prefix,
        start_after=start_after,
        continuation_token=token,
        max_keys=max_keys,
        delimiter=delimiter,
        url_encode=encode,
        fetch_owner=req.query.get("fetch-owner", "").lower() == "true",
        entries=page.entries,
        prefixes=page.prefixes,
        truncated=page.truncated,
        next_token=_encode_token(page.next_marker) if page.next_marker is not None else None,
    )
    return Response(200, [XML], xml)
