"""Each COS operation described once as HTTP (``cosencfs.store.cosops``), as the SDK sends it."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from qcloud_cos.cos_comm import gen_copy_source_url, get_md5

from cosencfs.server import LocalCosServer
from cosencfs.store import cosops
from cosencfs.store.cos import CosStore, make_cos_config
from cosencfs.store.cosproto import BadAnswer
from cosencfs.store.cosxml import etag_of, list_page_from_xml, uploads_page
from cosencfs.store.wire import HttpStatusError, Signer


def test_operations_describe_their_requests() -> None:
    get = cosops.get_object("k", 16, 32, "e")
    assert (get.name, get.http.method, get.http.key) == ("GetObject", "GET", "k")
    assert dict(get.http.headers) == {"Range": "bytes=16-31", "If-Match": '"e"'}
    assert (get.counts_down, get.up) == (True, 0)
    assert dict(cosops.get_object("k", 10, None, None).http.headers) == {"Range": "bytes=10-"}
    assert dict(cosops.get_object("k", 0, None, None).http.headers) == {}
    part = cosops.upload_part("k", "id", 3, b"tiny")
    assert (part.http.method, dict(part.http.params), part.up) == (
        "PUT",
        {"partNumber": 3, "uploadId": "id"},
        4,
    )
    listing = cosops.list_objects("p/", "/", "m", 10)
    assert (listing.http.key, listing.http.params["encoding-type"]) == ("", "url")
    assert cosops.head_bucket().http.method == "HEAD"
    abort = cosops.abort_multipart("k", "id")
    assert (abort.http.method, dict(abort.http.params)) == ("DELETE", {"uploadId": "id"})


def test_batch_delete_body_is_the_sdks_with_its_md5() -> None:
    keys = ["a", "dir/b c", "amp&<>"]
    op = cosops.delete_objects(keys)
    body = op.http.body
    assert isinstance(body, bytes)
    assert op.http.headers["Content-MD5"] == get_md5(body).decode()
    root = ElementTree.fromstring(body)
    assert root.findtext("Quiet") == "true"
    assert [o.findtext("Key") for o in root.iterfind("Object")] == keys
    assert (op.http.method, dict(op.http.params), op.up) == ("POST", {"delete": ""}, 0)


def test_copy_source_is_named_as_the_sdk_names_it(server: LocalCosServer, store: CosStore) -> None:
    conf = make_cos_config(store.settings)
    source = {"Bucket": store.bucket, "Region": "ap-guangzhou", "Key": "dir/a b+c"}
    expected = gen_copy_source_url(source, conf._enable_old_domain, conf._enable_internal_domain)
    assert Signer(conf, store.bucket).copy_source(source) == expected


def test_error_answers_in_200_and_non_xml_answers() -> None:
    with pytest.raises(HttpStatusError) as info:
        etag_of(b"<Error><Code>InternalError</Code><Message>later</Message></Error>")
    assert (info.value.status, info.value.code) == (200, "InternalError")
    with pytest.raises(HttpStatusError):
        etag_of(b"<CopyObjectResult></CopyObjectResult>")
    assert etag_of(b'<CopyObjectResult><ETag>"abc"</ETag></CopyObjectResult>') == "abc"
    with pytest.raises(BadAnswer):
        list_page_from_xml(b"<html>proxy error")


def test_uploads_page_decodes_url_encoded_keys() -> None:
    body = (
        b"<ListMultipartUploadsResult><EncodingType>url</EncodingType>"
        b"<IsTruncated>true</IsTruncated><NextKeyMarker>a%20b</NextKeyMarker>"
        b"<NextUploadIdMarker>u2</NextUploadIdMarker>"
        b"<Upload><Key>a%20b</Key><UploadId>u1</UploadId>"
        b"<Initiated>2026-12-06T10:00:00.000Z</Initiated></Upload>"
        b"</ListMultipartUploadsResult>"
    )
    uploads, markers = uploads_page(body)
    assert [(u.key, u.upload_id) for u in uploads] == [("a b", "u1")]
    assert markers == ("a b", "u2")
