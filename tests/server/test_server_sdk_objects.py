"""Object and bucket operations through the real COS SDK (signatures checked)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from qcloud_cos.cos_exception import CosServiceError

from tests.server._server_helpers import BUCKET, REGION, ClientFactory, Http

ODD_KEYS = [
    "dir/plain.txt",
    "dir/with space.txt",
    "dir/ünïcødé-文件.bin",
    "dir/plus+sign",
    "dir/percent%20literal",
    "dir/question?mark",
    "dir/hash#tag",
    "dir/amp&eq=semi;",
    "top level",
]


def read_body(resp: dict[str, Any]) -> bytes:
    data: bytes = resp["Body"].get_raw_stream().read()
    return data


def test_put_get_head_round_trip(client: Any) -> None:
    body = os.urandom(200_000)  # file-backed (above the inline limit)
    put = client.put_object(
        Bucket=BUCKET,
        Key="a/b.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"x-cos-meta-Mode": "33188", "x-cos-meta-MTime": "1700000000.5"},
    )
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    head = client.head_object(Bucket=BUCKET, Key="a/b.bin")
    assert head["Content-Length"] == str(len(body))
    assert head["Content-Type"] == "application/x-test"
    assert head["ETag"] == put["ETag"]
    assert head["x-cos-meta-mode"] == "33188"
    assert head["x-cos-meta-mtime"] == "1700000000.5"
    assert "Last-Modified" in head
    got = client.get_object(Bucket=BUCKET, Key="a/b.bin")
    assert read_body(got) == body
    assert got["ETag"] == put["ETag"]
    assert got["x-cos-meta-mode"] == "33188"


@pytest.mark.parametrize("size", [0, 1, 100, 65_536, 65_537, 1_048_576, 3_000_001])
def test_sizes_across_inline_and_file_storage(client: Any, size: int) -> None:
    body = os.urandom(size)
    client.put_object(Bucket=BUCKET, Key=f"size/{size}", Body=body)
    got = client.get_object(Bucket=BUCKET, Key=f"size/{size}")
    assert read_body(got) == body
    assert got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert got["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("size", [1000, 300_000])
def test_range_reads(client: Any, size: int) -> None:
    body = os.urandom(size)
    client.put_object(Bucket=BUCKET, Key="r", Body=body)
    cases = [
        ("bytes=0-0", body[0:1]),
        ("bytes=1-16", body[1:17]),
        ("bytes=17-", body[17:]),
        ("bytes=-1", body[-1:]),
        ("bytes=-333", body[-333:]),
        (f"bytes=-{size * 2}", body),
        (f"bytes={size - 5}-{size * 3}", body[size - 5 :]),
        (f"bytes={size // 3}-{size // 2}", body[size // 3 : size // 2 + 1]),
    ]
    for spec, expected in cases:
        got = client.get_object(Bucket=BUCKET, Key="r", Range=spec)
        assert read_body(got) == expected, spec
        first = size - len(expected)
        if spec.startswith("bytes=") and not spec.startswith("bytes=-"):
            first = int(spec[6:].split("-")[0])
        assert got["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{size}"
        assert got["Content-Length"] == str(len(expected))


def test_unsatisfiable_range(client: Any) -> None:
    client.put_object(Bucket=BUCKET, Key="r", Body=b"0123456789")
    with pytest.raises(CosServiceError) as exc:
        client.get_object(Bucket=BUCKET, Key="r", Range="bytes=10-20")
    assert exc.value.get_status_code() == 416
    assert exc.value.get_error_code() == "InvalidRange"


def test_missing_object_and_bucket(client: Any) -> None:
    with pytest.raises(CosServiceError) as exc:
        client.get_object(Bucket=BUCKET, Key="nope")
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (404, "NoSuchKey")
    assert exc.value.get_request_id()
    with pytest.raises(CosServiceError) as exc:
        client.head_object(Bucket=BUCKET, Key="nope")
    assert exc.value.get_status_code() == 404
    with pytest.raises(CosServiceError) as exc:
        client.get_object(Bucket="other-1250000000", Key="x")
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (404, "NoSuchBucket")


def test_list_prefix_and_delimiter(client: Any) -> None:
    for key in ["a/1", "a/2", "a/b/3", "b/4", "c", "a-x"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    top = client.list_objects(Bucket=BUCKET, Delimiter="/")
    assert [c["Key"] for c in top["Contents"]] == ["a-x", "c"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    assert top["IsTruncated"] == "false"
    under_a = client.list_objects(Bucket=BUCKET, Prefix="a/", Delimiter="/")
    assert [c["Key"] for c in under_a["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in under_a["CommonPrefixes"]] == ["a/b/"]
    flat = client.list_objects(Bucket=BUCKET, Prefix="a")
    assert [c["Key"] for c in flat["Contents"]] == ["a-x", "a/1", "a/2", "a/b/3"]
    entry = flat["Contents"][1]
    assert entry["Size"] == "3"
    assert entry["ETag"] == f'"{hashlib.md5(b"a/1").hexdigest()}"'
    assert entry["StorageClass"] == "STANDARD"
    assert entry["LastModified"].endswith("Z")
    assert "." in entry["LastModified"]


def test_list_pagination_over_1000_keys(client: Any, plain: Http) -> None:
    keys = [f"many/{i:05d}" for i in range(1105)]
    for key in keys:
        assert plain.request("PUT", key, body=b"x")[0] == 200
    seen: list[str] = []
    marker = ""
    pages = 0
    while True:
        page = client.list_objects(Bucket=BUCKET, Prefix="many/", Marker=marker, MaxKeys=1000)
        pages += 1
        seen += [c["Key"] for c in page["Contents"]]
        if page["IsTruncated"] == "false":
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
        assert marker == seen[-1]
    assert pages == 2
    assert seen == keys


def test_pagination_with_delimiter_marks_common_prefixes(client: Any, plain: Http) -> None:
    for key in ["d/a/1", "d/a/2", "d/b/1", "d/c", "d/d/1", "d/e"]:
        assert plain.request("PUT", key, body=b"x")[0] == 200
    items: list[str] = []
    marker = ""
    while True:
        page = client.list_objects(
            Bucket=BUCKET, Prefix="d/", Delimiter="/", Marker=marker, MaxKeys=2
        )
        items += [c["Key"] for c in page.get("Contents", [])]
        items += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if page["IsTruncated"] == "false":
            break
        marker = page["NextMarker"]
    assert sorted(items) == ["d/a/", "d/b/", "d/c", "d/d/", "d/e"]
    assert len(items) == len(set(items))


def test_list_encoding_type_url_with_odd_keys(client: Any) -> None:
    for key in ODD_KEYS:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    listed = client.list_objects(Bucket=BUCKET, Prefix="dir/")
    assert sorted(c["Key"] for c in listed["Contents"]) == sorted(k for k in ODD_KEYS if "/" in k)
    raw = client.list_objects(Bucket=BUCKET, Prefix="dir/", EncodingType="url")
    assert raw["EncodingType"] == "url"
    encoded = {c["Key"] for c in raw["Contents"]}
    assert "dir/with%20space.txt" in encoded
    assert "dir/plus%2Bsign" in encoded
    assert "dir/percent%2520literal" in encoded
    assert "dir/question%3Fmark" in encoded
    assert "dir/hash%23tag" in encoded
    for key in ODD_KEYS:
        assert read_body(client.get_object(Bucket=BUCKET, Key=key)) == key.encode()
        client.head_object(Bucket=BUCKET, Key=key)


def test_copy_object_copy_and_replaced(client: Any) -> None:
    body = os.urandom(100_000)
    put = client.put_object(
        Bucket=BUCKET,
        Key="src",
        Body=body,
        ContentType="text/x-src",
        Metadata={"x-cos-meta-client-side-encryption-key": "k1", "x-cos-meta-a": "1"},
    )
    source = {"Bucket": BUCKET, "Key": "src", "Region": REGION}
    copied = client.copy_object(Bucket=BUCKET, Key="dst copy", CopySource=source)
    assert copied["ETag"] == put["ETag"]
    head = client.head_object(Bucket=BUCKET, Key="dst copy")
    assert head["Content-Type"] == "text/x-src"
    assert head["x-cos-meta-client-side-encryption-key"] == "k1"
    assert head["x-cos-meta-a"] == "1"
    replaced = client.copy_object(
        Bucket=BUCKET,
        Key="dst replaced",
        CopySource=source,
        CopyStatus="Replaced",
        ContentType="text/x-new",
        Metadata={"x-cos-meta-b": "2"},
    )
    assert replaced["ETag"] == put["ETag"]
    head = client.head_object(Bucket=BUCKET, Key="dst replaced")
    assert head["Content-Type"] == "text/x-new"
    assert head["x-cos-meta-b"] == "2"
    assert "x-cos-meta-a" not in head
    assert read_body(client.get_object(Bucket=BUCKET, Key="dst replaced")) == body
    # The copy is independent of its source.
    client.delete_object(Bucket=BUCKET, Key="src")
    assert read_body(client.get_object(Bucket=BUCKET, Key="dst copy")) == body


def test_copy_onto_itself_replaces_metadata(client: Any) -> None:
    client.put_object(Bucket=BUCKET, Key="self", Body=b"x" * 10, Metadata={"x-cos-meta-m": "1"})
    source = {"Bucket": BUCKET, "Key": "self", "Region": REGION}
    client.copy_object(
        Bucket=BUCKET, Key="self", CopySource=source, CopyStatus="Replaced",
        Metadata={"x-cos-meta-m": "2"},
    )  # fmt: skip
    assert client.head_object(Bucket=BUCKET, Key="self")["x-cos-meta-m"] == "2"
    assert read_body(client.get_object(Bucket=BUCKET, Key="self")) == b"x" * 10


def test_copy_with_odd_source_key(client: Any) -> None:
    key = "src dir/ü+%?#&=.bin"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"odd source")
    source = {"Bucket": BUCKET, "Key": key, "Region": REGION}
    client.copy_object(Bucket=BUCKET, Key="odd copy/ü", CopySource=source)
    assert read_body(client.get_object(Bucket=BUCKET, Key="odd copy/ü")) == b"odd source"


def test_copy_source_if_match(client: Any) -> None:
    put = client.put_object(Bucket=BUCKET, Key="s", Body=b"data")
    source = {"Bucket": BUCKET, "Key": "s", "Region": REGION}
    client.copy_object(Bucket=BUCKET, Key="t", CopySource=source, CopySourceIfMatch=put["ETag"])
    with pytest.raises(CosServiceError) as exc:
        client.copy_object(Bucket=BUCKET, Key="t2", CopySource=source, CopySourceIfMatch='"0"')
    assert exc.value.get_status_code() == 412
    missing = {"Bucket": BUCKET, "Key": "missing", "Region": REGION}
    with pytest.raises(CosServiceError) as exc:
        client.copy_object(Bucket=BUCKET, Key="t3", CopySource=missing)
    assert exc.value.get_error_code() == "NoSuchKey"


def test_delete_object_and_delete_objects(client: Any) -> None:
    for key in ["x1", "x2", "x3"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"1")
    client.delete_object(Bucket=BUCKET, Key="x1")
    client.delete_object(Bucket=BUCKET, Key="never-existed")  # 204 as well
    result = client.delete_objects(
        Bucket=BUCKET,
        Delete={"Object": [{"Key": "x2"}, {"Key": "absent"}, {"Key": "k" * 851}], "Quiet": "false"},
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["absent", "x2"]
    assert [(e["Key"], e["Code"]) for e in result["Error"]] == [("k" * 851, "KeyTooLong")]
    quiet = client.delete_objects(
        Bucket=BUCKET, Delete={"Object": [{"Key": "x3"}], "Quiet": "true"}
    )
    assert quiet.get("Deleted", []) == []
    assert client.list_objects(Bucket=BUCKET).get("Contents", []) == []


def test_buckets(client: Any) -> None:
    client.head_bucket(Bucket=BUCKET)
    client.create_bucket(Bucket="fresh-1250000000")
    client.head_bucket(Bucket="fresh-1250000000")
    with pytest.raises(CosServiceError) as exc:
        client.create_bucket(Bucket="fresh-1250000000")
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (
        409,
        "BucketAlreadyOwnedByYou",
    )
    client.put_object(Bucket="fresh-1250000000", Key="k", Body=b"v")
    with pytest.raises(CosServiceError) as exc:
        client.delete_bucket(Bucket="fresh-1250000000")
    assert exc.value.get_error_code() == "BucketNotEmpty"
    client.delete_object(Bucket="fresh-1250000000", Key="k")
    client.delete_bucket(Bucket="fresh-1250000000")
    with pytest.raises(CosServiceError) as exc:
        client.head_bucket(Bucket="fresh-1250000000")
    assert exc.value.get_status_code() == 404
    assert client.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION


@pytest.mark.parametrize("threads", [1, 4])
def test_upload_file_round_trip(client: Any, tmp_path: Path, threads: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    client.upload_file(
        Bucket=BUCKET, Key=f"up/{threads}", LocalFilePath=str(src), PartSize=1, MAXThread=threads
    )
    got = client.get_object(Bucket=BUCKET, Key=f"up/{threads}")
    assert read_body(got) == data
    assert got["ETag"].strip('"').endswith("-4")  # four 1 MiB-ish parts: multipart


def test_metadata_set_by_either_prefix_is_the_same(client: Any, plain: Http) -> None:
    status, _, _ = plain.request("PUT", "m", body=b"1", headers={"x-amz-meta-Color": "blue"})
    assert status == 200
    assert client.head_object(Bucket=BUCKET, Key="m")["x-cos-meta-color"] == "blue"


def test_sdk_with_retries_survives_no_faults(make_client: ClientFactory) -> None:
    c = make_client(retry=3)
    c.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    assert read_body(c.get_object(Bucket=BUCKET, Key="k")) == b"v"
