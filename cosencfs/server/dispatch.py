"""Serving one COS request: latency, injected faults, authentication, the operation table.

Called by the connection handler once a request's line, headers and body
reader are known; returns the answer with the body read to its end.
Admin requests never come here (not counted, delayed or faulted).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from cosencfs.faults import FaultKind
from cosencfs.server import multipart, objects, xmlio
from cosencfs.server.auth import authenticate
from cosencfs.server.bodies import BodyReader, ClientGone, Counted, finish
from cosencfs.server.context import ServerContext
from cosencfs.server.errors import CosError
from cosencfs.server.responses import error_response
from cosencfs.server.routing import Op, Request, Response

log = logging.getLogger(__name__)

_KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})

Operation = Callable[[ServerContext, Request, BodyReader, memoryview], Response]
OPERATIONS: dict[Op, Operation] = {
    Op.GET_OBJECT: objects.get_object,
    Op.HEAD_OBJECT: objects.get_object,
    Op.PUT_OBJECT: objects.put_object,
    Op.COPY_OBJECT: objects.copy_object,
    Op.DELETE_OBJECT: objects.delete_object,
    Op.DELETE_MULTIPLE_OBJECTS: objects.delete_multiple,
    Op.LIST_OBJECTS: objects.list_objects,
    Op.LIST_OBJECTS_V2: objects.list_objects_v2,
    Op.PUT_BUCKET: objects.put_bucket,
    Op.HEAD_BUCKET: objects.head_bucket,
    Op.DELETE_BUCKET: objects.delete_bucket,
    Op.GET_BUCKET_LOCATION: objects.get_bucket_location,
    Op.LIST_BUCKETS: objects.list_buckets,
    Op.GET_BUCKET_VERSIONING: objects.get_bucket_versioning,
    Op.INITIATE_MULTIPART_UPLOAD: multipart.initiate,
    Op.UPLOAD_PART: multipart.upload_part,
    Op.UPLOAD_PART_COPY: multipart.upload_part_copy,
    Op.LIST_PARTS: multipart.list_parts,
    Op.COMPLETE_MULTIPART_UPLOAD: multipart.complete,
    Op.ABORT_MULTIPART_UPLOAD: multipart.abort,
    Op.LIST_MULTIPART_UPLOADS: multipart.list_uploads,
}


def serve(
    ctx: ServerContext,
    req: Request,
    body: Counted,
    buf: memoryview,
    bad_address: CosError | None = None,
) -> Response:
    """The answer to ``req``; its body is read to the end (or the answer closes)."""
    if bad_address is not None:
        return _closing(error_response(req, bad_address), finish(body, buf))
    ctx.faults.charge_latency(ctx.stopping)
    fault = ctx.faults.pick(req.op is Op.COPY_OBJECT)
    if fault is not None:
        return _inject(ctx, req, body, buf, fault)
    try:
        authenticate(
            ctx.credentials,
            ctx.allow_unsigned_s3,
            authorization=req.header("Authorization"),
            method=req.method,
            raw_path=req.raw_path,
            query=req.query_list,
            headers=req.headers.items(),
        )
        operation = OPERATIONS.get(req.op)
        if operation is None:
            raise CosError("NotImplemented" if req.method in _KNOWN_METHODS else "MethodNotAllowed")
        response = operation(ctx, req, body, buf)
    except CosError as exc:
        log.debug("%s %s -> %s", req.method, req.raw_path, exc.code)
        response = error_response(req, exc)
    except (ClientGone, ConnectionError, TimeoutError):
        raise
    except Exception:
        log.exception("internal error in %s %s", req.op, req.raw_path)
        response = error_response(req, CosError("InternalError"))
    close = finish(body, buf)
    ctx.stats.add_in(body.count)
    return _closing(response, close)


def _inject(
    ctx: ServerContext, req: Request, body: Counted, buf: memoryview, fault: FaultKind
) -> Response:
    # Read the whole request first, so the failure is not mistaken for a
    # half-sent body, then fail without touching any stored data.
    close = finish(body, buf)
    ctx.stats.add_in(body.count)
    log.debug("injecting %s into %s", fault.value, req.op)
    if fault is FaultKind.RESET:
        return Response(close=True, reset=True)
    if fault is FaultKind.ERROR_200:
        xml = xmlio.error_body(
            "InternalError",
            "Injected fault.",
            req.resource,
            req.request_id,
            os.urandom(8).hex(),
        )
        return _closing(Response(200, [objects.XML], xml), close)
    code = "InternalError" if fault is FaultKind.INTERNAL_ERROR else "SlowDown"
    return _closing(error_response(req, CosError(code, "Injected fault.")), close)


def _closing(response: Response, close: bool) -> Response:
    if close:
        response.close = True
    return response
