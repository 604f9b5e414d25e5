"""Multipart uploads and the COS limits, through the real SDK."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from qcloud_cos.cos_exception import CosServiceError

from tests.server._server_helpers import BUCKET, REGION, Http

MIB = 1024 * 1024


def read_body(resp: dict[str, Any]) -> bytes:
    data: bytes = resp["Body"].get_raw_stream().read()
    return data


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def upload_parts(
    client: Any, key: str, parts: list[bytes], **kwargs: Any
) -> tuple[str, list[dict[str, Any]]]:
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key, **kwargs)["UploadId"]
    done = []
    for number, data in enumerate(parts, 1):
        resp = client.upload_part(
            Bucket=BUCKET, Key=key, Body=data, PartNumber=number, UploadId=upload_id
        )
        assert resp["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        done.append({"PartNumber": number, "ETag": resp["ETag"]})
    return upload_id, done


def test_multipart_create_upload_list_complete(client: Any) -> None:
    parts = [os.urandom(MIB), os.urandom(MIB + 7), os.urandom(1000)]
    upload_id, done = upload_parts(
        client, "mp/obj", parts, ContentType="video/x-test", Metadata={"x-cos-meta-k": "v"}
    )
    listed = client.list_parts(Bucket=BUCKET, Key="mp/obj", UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Part"]] == [
        (str(d["PartNumber"]), str(len(parts[i])), d["ETag"]) for i, d in enumerate(done)
    ]
    assert listed["IsTruncated"] == "false"
    # Not visible before completion.
    with pytest.raises(CosServiceError):
        client.head_object(Bucket=BUCKET, Key="mp/obj")
    result = client.complete_multipart_upload(
        Bucket=BUCKET, Key="mp/obj", UploadId=upload_id, MultipartUpload={"Part": done}
    )
    assert result["ETag"] == multipart_etag(parts)
    assert result["Key"] == "mp/obj"
    got = client.get_object(Bucket=BUCKET, Key="mp/obj")
    assert read_body(got) == b"".join(parts)
    assert got["ETag"] == multipart_etag(parts)
    assert got["Content-Type"] == "video/x-test"
    assert got["x-cos-meta-k"] == "v"
    ranged = client.get_object(Bucket=BUCKET, Key="mp/obj", Range=f"bytes={MIB - 3}-{MIB + 3}")
    assert read_body(ranged) == b"".join(parts)[MIB - 3 : MIB + 4]
    # The upload is gone once completed.
    with pytest.raises(CosServiceError) as exc:
        client.list_parts(Bucket=BUCKET, Key="mp/obj", UploadId=upload_id)
    assert exc.value.get_error_code() == "NoSuchUpload"


def test_list_parts_pagination(client: Any) -> None:
    upload_id, _ = upload_parts(client, "pp", [b"a", b"b", b"c", b"d", b"e"])
    page = client.list_parts(Bucket=BUCKET, Key="pp", UploadId=upload_id, MaxParts=2)
    assert [p["PartNumber"] for p in page["Part"]] == ["1", "2"]
    assert page["IsTruncated"] == "true"
    assert page["NextPartNumberMarker"] == "2"
    page = client.list_parts(
        Bucket=BUCKET, Key="pp", UploadId=upload_id, MaxParts=2, PartNumberMarker=4
    )
    assert [p["PartNumber"] for p in page["Part"]] == ["5"]
    assert page["IsTruncated"] == "false"


def test_reuploading_a_part_replaces_it(client: Any) -> None:
    upload_id, _ = upload_parts(client, "re", [os.urandom(MIB), b"old"])
    new = client.upload_part(
        Bucket=BUCKET, Key="re", Body=b"new!", PartNumber=2, UploadId=upload_id
    )
    first = client.list_parts(Bucket=BUCKET, Key="re", UploadId=upload_id)["Part"][0]
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="re",
        UploadId=upload_id,
        MultipartUpload={
            "Part": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": new["ETag"]},
            ]
        },
    )
    assert read_body(client.get_object(Bucket=BUCKET, Key="re"))[-4:] == b"new!"


def test_abort_and_list_multipart_uploads(client: Any) -> None:
    ids: dict[str, list[str]] = {}
    for key in ["u/a", "u/b", "u/b", "v/c"]:
        ids.setdefault(key, []).append(
            client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        )
    listed = client.list_multipart_uploads(Bucket=BUCKET, Prefix="u/")
    assert [(u["Key"], u["UploadId"]) for u in listed["Upload"]] == [
        ("u/a", ids["u/a"][0]),
        ("u/b", ids["u/b"][0]),
        ("u/b", ids["u/b"][1]),
    ]
    page = client.list_multipart_uploads(Bucket=BUCKET, MaxUploads=2)
    assert page["IsTruncated"] == "true"
    rest = client.list_multipart_uploads(
        Bucket=BUCKET, KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"]
    )
    assert [u["UploadId"] for u in page["Upload"] + rest["Upload"]] == [
        ids["u/a"][0],
        ids["u/b"][0],
        ids["u/b"][1],
        ids["v/c"][0],
    ]
    grouped = client.list_multipart_uploads(Bucket=BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["u/", "v/"]
    client.abort_multipart_upload(Bucket=BUCKET, Key="u/a", UploadId=ids["u/a"][0])
    remaining = client.list_multipart_uploads(Bucket=BUCKET)["Upload"]
    assert ids["u/a"][0] not in [u["UploadId"] for u in remaining]
    with pytest.raises(CosServiceError) as exc:
        client.abort_multipart_upload(Bucket=BUCKET, Key="u/a", UploadId=ids["u/a"][0])
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (404, "NoSuchUpload")
    with pytest.raises(CosServiceError) as exc:
        # An upload id only works with its own key.
        client.list_parts(Bucket=BUCKET, Key="u/zzz", UploadId=ids["u/b"][0])
    assert exc.value.get_error_code() == "NoSuchUpload"


def test_upload_part_copy(client: Any) -> None:
    source = os.urandom(3 * MIB)
    client.put_object(Bucket=BUCKET, Key="big-src", Body=source)
    small = b"small source"
    client.put_object(Bucket=BUCKET, Key="small-src", Body=small)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="assembled")["UploadId"]
    src = {"Bucket": BUCKET, "Key": "big-src", "Region": REGION}
    first = client.upload_part_copy(
        Bucket=BUCKET,
        Key="assembled",
        PartNumber=1,
        UploadId=upload_id,
        CopySource=src,
        CopySourceRange=f"bytes={MIB}-{2 * MIB - 1}",
    )
    expected_first = source[MIB : 2 * MIB]
    assert first["ETag"] == f'"{hashlib.md5(expected_first).hexdigest()}"'
    assert "LastModified" in first
    second = client.upload_part_copy(
        Bucket=BUCKET,
        Key="assembled",
        PartNumber=2,
        UploadId=upload_id,
        CopySource={"Bucket": BUCKET, "Key": "small-src", "Region": REGION},
    )
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="assembled",
        UploadId=upload_id,
        MultipartUpload={
            "Part": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": second["ETag"]},
            ]
        },
    )
    assert read_body(client.get_object(Bucket=BUCKET, Key="assembled")) == expected_first + small
    with pytest.raises(CosServiceError) as exc:
        client.upload_part_copy(
            Bucket=BUCKET,
            Key="assembled2",
            PartNumber=1,
            UploadId=client.create_multipart_upload(Bucket=BUCKET, Key="assembled2")["UploadId"],
            CopySource=src,
            CopySourceRange=f"bytes=0-{3 * MIB}",
        )
    assert exc.value.get_error_code() == "InvalidArgument"


def test_complete_validates_parts(client: Any) -> None:
    parts = [os.urandom(MIB), os.urandom(MIB), b"end"]
    upload_id, done = upload_parts(client, "bad", parts)

    def complete(listing: list[dict[str, Any]]) -> CosServiceError:
        with pytest.raises(CosServiceError) as exc:
            client.complete_multipart_upload(
                Bucket=BUCKET, Key="bad", UploadId=upload_id, MultipartUpload={"Part": listing}
            )
        return exc.value

    err = complete([done[1], done[0], done[2]])
    assert (err.get_status_code(), err.get_error_code()) == (400, "InvalidPartOrder")
    err = complete([done[0], {"PartNumber": 2, "ETag": '"00000000000000000000000000000000"'}])
    assert (err.get_status_code(), err.get_error_code()) == (400, "InvalidPart")
    err = complete([done[0], {"PartNumber": 9, "ETag": done[1]["ETag"]}])
    assert err.get_error_code() == "InvalidPart"
    # ETags compare without their quotes.
    unquoted = [{"PartNumber": d["PartNumber"], "ETag": d["ETag"].strip('"')} for d in done]
    result = client.complete_multipart_upload(
        Bucket=BUCKET, Key="bad", UploadId=upload_id, MultipartUpload={"Part": unquoted}
    )
    assert result["ETag"] == multipart_etag(parts)
    err = complete(done)
    assert (err.get_status_code(), err.get_error_code()) == (404, "NoSuchUpload")


def test_parts_before_the_last_must_be_one_mib(client: Any) -> None:
    upload_id, done = upload_parts(client, "tiny", [os.urandom(100 * 1024), os.urandom(10)])
    with pytest.raises(CosServiceError) as exc:
        client.complete_multipart_upload(
            Bucket=BUCKET, Key="tiny", UploadId=upload_id, MultipartUpload={"Part": done}
        )
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (400, "EntityTooSmall")
    # A single small part is fine: it is the last one.
    result = client.complete_multipart_upload(
        Bucket=BUCKET, Key="tiny", UploadId=upload_id, MultipartUpload={"Part": done[:1]}
    )
    assert result["ETag"].endswith('-1"')


def test_part_number_limits(client: Any) -> None:
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="pn")["UploadId"]
    for number in (0, 10001):
        with pytest.raises(CosServiceError) as exc:
            client.upload_part(
                Bucket=BUCKET, Key="pn", Body=b"x", PartNumber=number, UploadId=upload_id
            )
        assert (exc.value.get_status_code(), exc.value.get_error_code()) == (400, "InvalidArgument")
    client.upload_part(Bucket=BUCKET, Key="pn", Body=b"x", PartNumber=10000, UploadId=upload_id)


def test_unknown_upload_id(client: Any) -> None:
    with pytest.raises(CosServiceError) as exc:
        client.upload_part(Bucket=BUCKET, Key="k", Body=b"x", PartNumber=1, UploadId="nope")
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (404, "NoSuchUpload")


def test_key_too_long(client: Any) -> None:
    client.put_object(Bucket=BUCKET, Key="k" * 850, Body=b"ok")
    client.put_object(Bucket=BUCKET, Key="é" * 425, Body=b"ok")  # 850 bytes of UTF-8
    for key in ("k" * 851, "é" * 426):
        with pytest.raises(CosServiceError) as exc:
            client.put_object(Bucket=BUCKET, Key=key, Body=b"no")
        assert (exc.value.get_status_code(), exc.value.get_error_code()) == (400, "KeyTooLong")


def test_metadata_too_large(client: Any) -> None:
    # 11 ("x-cos-meta-") + 1 + value: exactly 2048 bytes is allowed.
    client.put_object(Bucket=BUCKET, Key="m", Body=b"", Metadata={"x-cos-meta-a": "v" * 2036})
    with pytest.raises(CosServiceError) as exc:
        client.put_object(Bucket=BUCKET, Key="m", Body=b"", Metadata={"x-cos-meta-a": "v" * 2037})
    assert (exc.value.get_status_code(), exc.value.get_error_code()) == (400, "MetadataTooLarge")
    many = {f"x-cos-meta-k{i}": "v" * 200 for i in range(10)}
    with pytest.raises(CosServiceError) as exc:
        client.create_multipart_upload(Bucket=BUCKET, Key="m2", Metadata=many)
    assert exc.value.get_error_code() == "MetadataTooLarge"


def test_if_none_match_star_on_put(plain: Http) -> None:
    status, _, _ = plain.request("PUT", "once", body=b"1", headers={"If-None-Match": "*"})
    assert status == 200
    status, _, body = plain.request("PUT", "once", body=b"2", headers={"If-None-Match": "*"})
    assert status == 412
    assert b"<Code>PreconditionFailed</Code>" in body
    status, _, body = plain.request("GET", "once")
    assert (status, body) == (200, b"1")
