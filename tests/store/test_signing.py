"""The store's request signature is the SDK's, byte for byte (``wire.SdkSignature``).

cosencfs computes ``CosS3Auth``'s Authorization itself so the signing key
(an HMAC of the key time) is derived once per ``KEY_TIME_STEP`` instead of
once per request. Given the same key time, the SDK's own code must produce
the very same header for every kind of request the store sends.
"""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from qcloud_cos import CosConfig, cos_auth

from cosencfs.store import wire
from cosencfs.store.wire import KEY_TIME_STEP, SIGN_EXPIRE, SdkSignature, key_time

HOST = "bkt-1250000000.cos.ap-test.myqcloud.com"

REQUESTS: list[tuple[str, str | None, dict[str, str], dict[str, str]]] = [
    ("GET", "dir/file.txt", {}, {"Host": HOST, "Range": "bytes=0-4095", "If-Match": '"e"'}),
    ("HEAD", "a b/ü €+&=?#%.bin", {}, {"Host": HOST, "User-Agent": "cosencfs/x"}),
    (
        "PUT",
        "dir/new",
        {},
        {
            "Host": HOST,
            "Content-Length": "2048",
            "Content-Type": "application/octet-stream",
            "x-cos-meta-client-side-encryption-key": "q/8+AB==",
            "x-cos-meta-mode": "33188",
            "X-Cos-Meta-Mixed-Case": "v a/l",
            "User-Agent": "not signed",
        },
    ),
    ("PUT", "big", {"partNumber": "3", "uploadId": "id+/="}, {"Host": HOST}),
    (
        "GET",
        None,
        {"prefix": "dir/ sub&", "delimiter": "/", "marker": "m~ü", "encoding-type": "url"},
        {"Host": HOST},
    ),
    ("POST", None, {"delete": ""}, {"Host": HOST, "Content-MD5": "abc==", "x-ci-thing": "1"}),
    ("DELETE", "/leading", {"uploadId": "u"}, {"Host": HOST}),
    (
        "PUT",
        "copy",
        {},
        {"Host": HOST, "x-cos-copy-source": f"{HOST}/src%20k", "x-cos-metadata-directive": "Copy"},
    ),
]


def _conf(**kw: object) -> CosConfig:
    base: dict[str, object] = {
        "Region": "ap-test",
        "SecretId": "AKIDtest",
        "SecretKey": "s3cr3t/key+",
        "Scheme": "http",
    }
    return CosConfig(**{**base, **kw})


def _sdk(
    conf: CosConfig,
    monkeypatch: pytest.MonkeyPatch,
    start: int,
    req: tuple[str, str | None, dict[str, str], dict[str, str]],
) -> str:
    # The SDK signs [int(time.time()) - 60, ... + 10000]: give it our step start.
    monkeypatch.setattr(cos_auth.time, "time", lambda: float(start))
    method, key, params, headers = req
    return wire.sdk_authorization(conf, method, key, params, headers)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("extra", [{}, {"Token": "tok"}], ids=["plain", "token"])
def test_same_authorization_as_the_sdk(
    req: tuple[str, str | None, dict[str, str], dict[str, str]],
    extra: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = _conf(**extra)
    now = 1_765_000_123.7
    start = int(now) // KEY_TIME_STEP * KEY_TIME_STEP
    method, key, params, headers = req
    mine = SdkSignature(conf).authorization(method, key, params, headers, now=now)
    assert mine == _sdk(conf, monkeypatch, start, req)


def test_the_signing_key_is_derived_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _conf()
    sig = SdkSignature(conf)
    calls = []
    real = hmac.new

    def counting(key: bytes, msg: bytes, digestmod: Any) -> hmac.HMAC:
        calls.append(msg)
        return real(key, msg, digestmod)

    monkeypatch.setattr(hmac, "new", counting)
    t0 = 1_765_000_020.0
    for i in range(5):
        sig.authorization("GET", f"k{i}", {}, {"Host": HOST}, now=t0 + i)
    # One signing key (its message is the key time), then one signature per request.
    assert calls.count(key_time(t0).encode()) == 1
    assert len(calls) == 1 + 5
    sig.authorization("GET", "k", {}, {"Host": HOST}, now=t0 + KEY_TIME_STEP)
    assert calls.count(key_time(t0 + KEY_TIME_STEP).encode()) == 1
    monkeypatch.setattr(hmac, "new", real)
    # Still the SDK's value after the step changed.
    start = int(t0 + KEY_TIME_STEP) // KEY_TIME_STEP * KEY_TIME_STEP
    req: tuple[str, str | None, dict[str, str], dict[str, str]] = ("GET", "k", {}, {"Host": HOST})
    got = sig.authorization(*req, now=t0 + KEY_TIME_STEP)
    assert got == _sdk(conf, monkeypatch, start, req)


def test_a_changed_secret_gets_a_new_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _conf()
    sig = SdkSignature(conf)
    now = 1_765_000_000.0
    req: tuple[str, str | None, dict[str, str], dict[str, str]] = ("GET", "k", {}, {"Host": HOST})
    sig.authorization(*req, now=now)
    conf._secret_key = "rotated"
    start = int(now) // KEY_TIME_STEP * KEY_TIME_STEP
    assert sig.authorization(*req, now=now) == _sdk(conf, monkeypatch, start, req)


def test_key_time_always_covers_the_sdks_window() -> None:
    for now in (1_765_000_000.0, 1_765_000_059.99, 1_765_000_060.0, 1_765_000_119.5):
        begin, end = (int(x) for x in key_time(now).split(";"))
        assert begin <= int(now) - 60  # at least the SDK's allowance for clock skew
        assert end >= now + SIGN_EXPIRE - KEY_TIME_STEP
        assert begin % KEY_TIME_STEP == 0


def test_anonymous_requests_are_not_signed() -> None:
    conf = CosConfig(Region="ap-test", Anonymous=True, Scheme="http")
    assert SdkSignature(conf).authorization("GET", "k", {}, {"Host": HOST}) == ""
