"""How a COS request travels: the event loop, http.client in a worker thread, or the SDK.

One attempt of an ``Operation`` (``cosencfs.store.cosops``), on one of three
paths:

- small requests (``Operation.small``) on a plain ``http://`` endpoint run in
  the event loop (``asynchttp``): no thread hand-off;
- other requests described as HTTP go over ``http.client`` in a worker
  thread (``fasthttp``), signed by the SDK's code;
- the rest, and everything when ``fast_path`` is off, go through the SDK's
  ``CosS3Client`` in a worker thread.

Every worker thread runs under one ``CapacityLimiter``, and the requests
connection pool is sized to it, so no thread waits for a socket.  The SDK's
own retry loop is off (``retry=0``): retries are ``cosencfs.store.calls``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar

import requests
import trio
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_comm import maplist

from cosencfs.store.asynchttp import AsyncTransport
from cosencfs.store.bodies import open_body, read_small_body
from cosencfs.store.cosops import HttpExchange, Operation
from cosencfs.store.cosproto import BadAnswer, CosSettings
from cosencfs.store.counters import RequestCounters
from cosencfs.store.fasthttp import Answer, FastTransport

T = TypeVar("T")

#: The CosS3Client keyword argument for each request header the operations send.
_SDK_ARGUMENT: dict[str, str] = {
    header.lower(): arg for arg, header in maplist.items() if arg != "Metadata"
}
_META_PREFIX = "x-cos-meta-"


class _RequestArgs(TypedDict):
    headers: Mapping[str, str]
    params: Mapping[str, str | int]
    on_resend: Callable[[], None]


class CosPaths:
    """The three ways to one bucket, and the choice among them per attempt."""

    def __init__(self, settings: CosSettings, conf: CosConfig, counters: RequestCounters) -> None:
        self._bucket = settings.bucket
        self._counters = counters
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=settings.concurrency,
            pool_maxsize=settings.concurrency,
            max_retries=0,
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self.client = CosS3Client(conf, retry=0, session=self._session)
        self.fast = (
            FastTransport(conf, settings.bucket, settings.timeout) if settings.fast_path else None
        )
        self.aio = (
            AsyncTransport(self.fast, settings.concurrency, settings.timeout)
            if self.fast is not None and self.fast.scheme == "http"
            else None
        )
        #: The limiter every worker-thread request goes through.
        self.limiter = trio.CapacityLimiter(settings.concurrency)

    def close(self) -> None:
        self._session.close()
        if self.fast is not None:
            self.fast.close()
        if self.aio is not None:
            self.aio.close()

    async def attempt(self, op: Operation[T]) -> T:
        """Send ``op`` once; failures are raised as the path reports them."""
        if self.aio is not None and op.small and op.http is not None:
            return await self._in_loop(op, op.http, self.aio)
        # A worker thread stuck in a socket read is abandoned (it ends at its
        # socket timeout); the caller goes on.
        return await trio.to_thread.run_sync(
            self._in_thread, op, limiter=self.limiter, abandon_on_cancel=True
        )

    async def _in_loop(self, op: Operation[T], http: HttpExchange[T], aio: AsyncTransport) -> T:
        # A small cache-file range is read in the event loop: page-cache
        # reads of this size take microseconds, less than a thread hop.
        data = read_small_body(http.body) if http.body is not None else None
        answer = await aio.request(http.method, http.key, body=data, **self._args(op, http))
        return self._received(op, http, answer)

    def _in_thread(self, op: Operation[T]) -> T:
        http = op.http
        if op.sdk is not None and (http is None or self.fast is None):
            return op.sdk(self.client, self._bucket)
        if http is None:
            raise ValueError(f"{op.name}: no request to send")
        with open_body(http.body) as data:
            if self.fast is not None:
                answer = self.fast.request(http.method, http.key, body=data, **self._args(op, http))
                return self._received(op, http, answer)
            answer = sdk_exchange(self.client, self._bucket, http, data)
        return self._received(op, http, answer, via_sdk=True)

    def _received(
        self, op: Operation[T], http: HttpExchange[T], answer: Answer, *, via_sdk: bool = False
    ) -> T:
        if op.counts_down:
            self._counters.add_down(len(answer.body))
        if via_sdk and http.method == "GET":
            # requests hands over a short body without complaint (http.client
            # raises IncompleteRead instead).
            expected = int(answer.headers.get("content-length", len(answer.body)))
            if len(answer.body) != expected:
                raise BadAnswer(f"short body: {len(answer.body)} of {expected} bytes")
        return http.parse(answer)

    def _args(self, op: Operation[T], http: HttpExchange[T]) -> _RequestArgs:
        """What both HTTP transports are given besides method, key and body."""
        return {
            "headers": http.headers,
            "params": http.params,
            "on_resend": self._resent(op.name),
        }

    def _resent(self, name: str) -> Callable[[], None]:
        """Count the failed first attempt of a request resent on a fresh connection."""

        def count() -> None:
            self._counters.failure(name)
            self._counters.request(name)

        return count


def sdk_arguments(headers: Mapping[str, str]) -> dict[str, Any]:
    """``CosS3Client`` keyword arguments that make it send ``headers``."""
    kwargs: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(_META_PREFIX):
            kwargs.setdefault("Metadata", {})[name] = value
            continue
        arg = _SDK_ARGUMENT.get(lower)
        if arg is None:
            raise ValueError(f"CosS3Client cannot send the header {name!r}")
        kwargs[arg] = value
    return kwargs


def sdk_exchange(client: CosS3Client, bucket: str, http: HttpExchange[Any], data: Any) -> Answer:
    """Send ``http`` through the ``CosS3Client`` method that makes the same request.

    ``data`` is the opened body.  The answer's header names are lowercased,
    as the other paths give them.
    """
    kwargs = sdk_arguments(http.headers)
    key, method = http.key, http.method
    if not key:
        raise ValueError(f"no CosS3Client method for {method} on the bucket")
    if method == "HEAD":
        return _answer(client.head_object(Bucket=bucket, Key=key, **kwargs))
    if method == "GET":
        resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
        raw = resp.pop("Body").get_raw_stream()
        try:
            body: bytes = raw.read()
        finally:
            raw.release_conn()
        return _answer(resp, body)
    if method == "PUT" and "partNumber" in http.params:
        resp = client.upload_part(
            Bucket=bucket,
            Key=key,
            Body=data,
            PartNumber=int(http.params["partNumber"]),
            UploadId=str(http.params["uploadId"]),
            **kwargs,
        )
        return _answer(resp)
    if method == "PUT":
        return _answer(client.put_object(Bucket=bucket, Key=key, Body=data, **kwargs))
    if method == "DELETE":
        client.delete_object(Bucket=bucket, Key=key, **kwargs)
        return Answer(204, {}, b"")
    raise ValueError(f"no CosS3Client method for {method} on an object")


def _answer(headers: Mapping[str, Any], body: bytes = b"") -> Answer:
    return Answer(200, {k.lower(): str(v) for k, v in headers.items()}, body)
