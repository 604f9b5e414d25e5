"""Multipart upload operations."""

from __future__ import annotations

import hashlib
import os

from cosencfs.server import xmlio
from cosencfs.server.bodies import BodyReader
from cosencfs.server.context import (
    MAX_OBJECT_SIZE,
    MAX_PART_NUMBER,
    ServerContext,
    check_content_md5,
    check_key,
    check_read_conditions,
    collect_headers,
    collect_meta,
    content_type,
    declared_length,
    int_param,
    parse_copy_source,
    read_small_body,
    receive,
    require_bucket,
    require_key,
    url_encoding,
)
from cosencfs.server.datafiles import NewData
from cosencfs.server.errors import CosError
from cosencfs.server.objects import XML, write_condition
from cosencfs.server.routing import Request, Response


def _part_number(req: Request) -> int:
    raw = req.query.get("partNumber", "")
    try:
        number = int(raw)
    except ValueError:
        raise CosError("InvalidArgument", "partNumber must be an integer.") from None
    if not 1 <= number <= MAX_PART_NUMBER:
        raise CosError("InvalidArgument", f"partNumber must be within 1..{MAX_PART_NUMBER}.")
    return number


def _upload_id(req: Request) -> str:
    upload_id = req.query.get("uploadId", "")
    if not upload_id:
        raise CosError("NoSuchUpload")
    return upload_id


def initiate(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    # Metadata and Content-Type given here become the completed object's.
    upload_id = ctx.uploads.create(
        bucket, key, content_type(req), collect_meta(req), collect_headers(req)
    )
    return Response(200, [XML], xmlio.initiate_result(bucket, key, upload_id))


def upload_part(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    number, upload_id = _part_number(req), _upload_id(req)
    ctx.uploads.get(bucket, key, upload_id)  # fail before receiving the body
    length = declared_length(req)
    if length is not None and length > MAX_OBJECT_SIZE:
        raise CosError("EntityTooLarge")
    # Into its slot of the upload's assembly where it may (completing then
    # copies nothing: cosencfs/server/assembly.py), else a data file of its own.
    slot = ctx.uploads.assemblies.claim(upload_id, number, length)
    try:
        size, digest, new = receive(body, ctx.storage.files, buf, MAX_OBJECT_SIZE, into=slot)
    except BaseException:
        if slot is not None:
            slot.discard()  # (failed before the body reached it: its descriptor and claim)
        raise
    if not isinstance(new, NewData):  # parts are always received into a data file
        raise CosError("InternalError", "a part was not stored in a data file")
    try:
        check_content_md5(req, digest)
        ctx.uploads.commit_part(bucket, key, upload_id, number, new, size, digest.hex())
    except BaseException:
        new.discard()
        raise
    return Response(200, [("ETag", f'"{digest.hex()}"')])


def _copy_range(value: str, size: int) -> tuple[int, int]:
    """(offset, count) of ``x-cos-copy-source-range: bytes=a-b``."""
    if not value:
        return 0, size
    spec = value.strip().removeprefix("bytes=")
    first, sep, last = spec.partition("-")
    try:
        start, end = int(first), int(last)
    except ValueError:
        raise CosError(
            "InvalidArgument", "The copy source range must be bytes=first-last."
        ) from None
    if not sep or start < 0 or end < start or end >= size:
        raise CosError("InvalidArgument", "The copy source range is outside the source object.")
    return start, end - start + 1


def upload_part_copy(
    ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview
) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    number, upload_id = _part_number(req), _upload_id(req)
    ctx.uploads.get(bucket, key, upload_id)
    src_bucket, src_key = parse_copy_source(req)
    check_key(src_key)
    info, content = ctx.storage.open_object(src_bucket, src_key)
    try:
        check_read_conditions(req, info, "x-cos-copy-source-")
        check_read_conditions(req, info, "x-amz-copy-source-")
        offset, count = _copy_range(
            req.header("x-cos-copy-source-range") or req.header("x-amz-copy-source-range"),
            info.size,
        )
        if count > MAX_OBJECT_SIZE:
            raise CosError("EntityTooLarge")
        new = ctx.storage.files.new()
        try:
            # The part's ETag is the MD5 of its bytes, so they must be read anyway.
            md5 = hashlib.md5()
            if isinstance(content, bytes):
                chunk = content[offset : offset + count]
                md5.update(chunk)
                new.write(chunk)
            else:
                _copy_hashing(content, new, offset, count, buf, md5)
            etag = md5.hexdigest()
            mtime = ctx.uploads.commit_part(bucket, key, upload_id, number, new, count, etag)
        except BaseException:
            new.discard()
            raise
    finally:
        if isinstance(content, int):
            os.close(content)
    return Response(200, [XML], xmlio.copy_result("CopyPartResult", etag, mtime))


def _copy_hashing(
    fd: int, new: NewData, offset: int, count: int, buf: memoryview, md5: hashlib._Hash
) -> None:
    while count:
        n = os.preadv(fd, [buf[: min(count, len(buf))]], offset)
        if n == 0:
            raise CosError("InternalError", "A data file is shorter than the index says.")
        md5.update(buf[:n])
        new.write(buf[:n])
        offset += n
        count -= n


def list_parts(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    upload_id = _upload_id(req)
    marker = int_param(req, "part-number-marker", 0, 0)
    max_parts = int_param(req, "max-parts", 1000, 0, 1000)
    encode = url_encoding(req)
    parts, truncated = ctx.uploads.list_parts(bucket, key, upload_id, marker, max_parts)
    xml = xmlio.list_parts(
        bucket=bucket,
        key=key,
        upload_id=upload_id,
        url_encode=encode,
        part_number_marker=marker,
        max_parts=max_parts,
        parts=parts,
        truncated=truncated,
        next_marker=parts[-1].part_number if parts else marker,
    )
    return Response(200, [XML], xml)


def complete(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    upload_id = _upload_id(req)
    ctx.uploads.get(bucket, key, upload_id)
    wanted = xmlio.parse_complete(read_small_body(body, buf, xmlio.MAX_XML_BODY))
    info = ctx.uploads.complete(bucket, key, upload_id, wanted, write_condition(req))
    xml = xmlio.complete_result(f"{req.host}{req.raw_path}", bucket, key, info.etag)
    return Response(200, [XML], xml)


def abort(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket, key = require_bucket(req), require_key(req)
    ctx.uploads.abort(bucket, key, _upload_id(req))
    return Response(204)


def list_uploads(ctx: ServerContext, req: Request, body: BodyReader, buf: memoryview) -> Response:
    bucket = require_bucket(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    key_marker = req.query.get("key-marker", "")
    upload_id_marker = req.query.get("upload-id-marker", "")
    max_uploads = int_param(req, "max-uploads", 1000, 0, 1000)
    encode = url_encoding(req)
    page = ctx.uploads.list(
        bucket,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker,
        upload_id_marker=upload_id_marker,
        max_uploads=max_uploads,
    )
    xml = xmlio.list_uploads(
        bucket=bucket,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker,
        upload_id_marker=upload_id_marker,
        max_uploads=max_uploads,
        url_encode=encode,
        uploads=page.uploads,
        prefixes=page.prefixes,
        truncated=page.truncated,
        next_key_marker=page.next_key_marker,
        next_upload_id_marker=page.next_upload_id_marker,
    )
    return Response(200, [XML], xml)
