"""COS signature checking."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from qcloud_cos.cos_exception import CosServiceError

from cosencfs.server import LocalCosServer
from cosencfs.server.auth import cos_authorization
from tests.server._server_helpers import BUCKET, SECRET_ID, SECRET_KEY, VHOST, ClientFactory, Http


def test_wrong_secret_key_is_rejected(make_client: ClientFactory, client: Any) -> None:
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    bad = make_client(SECRET_ID, "not-the-key")
    with pytest.raises(CosServiceError) as exc:
        bad.get_object(Bucket=BUCKET, Key="k")
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (
        403,
        "SignatureDoesNotMatch",
    )
    with pytest.raises(CosServiceError) as exc:
        bad.put_object(Bucket=BUCKET, Key="k", Body=b"x" * 300_000)
    assert exc.value.get_error_code() == "SignatureDoesNotMatch"
    with pytest.raises(CosServiceError) as exc:
        bad.head_object(Bucket=BUCKET, Key="k")
    # HEAD answers carry no body; the code comes in x-cos-error-code.
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (
        403,
        "SignatureDoesNotMatch",
    )
    with pytest.raises(CosServiceError) as exc:
        bad.list_objects(Bucket=BUCKET)
    assert exc.value.get_status_code() == 403
    # Nothing was overwritten and the good client still works on the same server.
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].get_raw_stream().read() == b"v"


def test_wrong_secret_id_is_rejected(make_client: ClientFactory) -> None:
    bad = make_client("AKIDsomeoneelse", SECRET_KEY)
    with pytest.raises(CosServiceError) as exc:
        bad.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    assert exc.value.get_status_code() == 403
    assert exc.value.get_error_code() == "InvalidAccessKeyId"


def test_anonymous_request_is_rejected_when_keys_are_set(make_client: ClientFactory) -> None:
    anonymous = make_client(None, None)
    with pytest.raises(CosServiceError) as exc:
        anonymous.list_objects(Bucket=BUCKET)
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (403, "AccessDenied")


def test_no_keys_configured_accepts_anything(
    tmp_path: Path, make_client: ClientFactory, make_http: Callable[[int], Http]
) -> None:
    with LocalCosServer(tmp_path / "open", buckets=[BUCKET]) as srv:
        anonymous = make_client(None, None, port=srv.port)
        anonymous.put_object(Bucket=BUCKET, Key="a", Body=b"1")
        whoever = make_client("AKIDanyone", "any-key", port=srv.port)
        body = whoever.get_object(Bucket=BUCKET, Key="a")["Body"].get_raw_stream().read()
        assert body == b"1"
        plain = make_http(srv.port)
        assert plain.request("GET", "a", sign=False)[0] == 200


def test_signed_headers_and_params_are_checked(plain: Http) -> None:
    headers = {"Host": VHOST, "Content-Length": "1", "x-cos-meta-a": "signed"}
    auth = cos_authorization(SECRET_ID, SECRET_KEY, method="PUT", path="/k", headers=headers)
    tampered = {**headers, "x-cos-meta-a": "changed", "Authorization": auth}
    status, _, body = plain.request("PUT", "k", body=b"x", headers=tampered, sign=False)
    assert status == 403
    assert b"SignatureDoesNotMatch" in body
    # A different key path with the same signature fails too.
    untouched = {**headers, "Authorization": auth}
    status, _, _ = plain.request("PUT", "other", body=b"x", headers=untouched, sign=False)
    assert status == 403
    status, _, _ = plain.request("PUT", "k", body=b"x", headers=untouched, sign=False)
    assert status == 200
    params = {"prefix": "a b", "max-keys": "5"}
    auth = cos_authorization(
        SECRET_ID, SECRET_KEY, method="GET", path="/", params=params, headers={"Host": VHOST}
    )
    status, _, _ = plain.request("GET", params=params, headers={"Authorization": auth}, sign=False)
    assert status == 200
    status, _, _ = plain.request(
        "GET", params={**params, "max-keys": "6"}, headers={"Authorization": auth}, sign=False
    )
    assert status == 403


def test_expired_signature(plain: Http) -> None:
    old = time.time() - 7200
    auth = cos_authorization(
        SECRET_ID, SECRET_KEY, method="GET", path="/", headers={"Host": VHOST}, expire=60, now=old
    )
    status, _, body = plain.request("GET", headers={"Authorization": auth}, sign=False)
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert b"expired" in body


def test_presigned_url(client: Any, server: LocalCosServer) -> None:
    client.put_object(Bucket=BUCKET, Key="shared file", Body=b"presigned")
    # With IP= configs the SDK would sign host=127.0.0.1; sign no host instead.
    url = client.get_presigned_url(Bucket=BUCKET, Key="shared file", Method="GET", SignHost=False)
    with requests.Session() as session:
        resp = session.get(url, headers={"Host": VHOST})
        assert (resp.status_code, resp.content) == (200, b"presigned")
        resp = session.get(url.replace("q-signature=", "q-signature=0"), headers={"Host": VHOST})
        assert resp.status_code == 403
