"""COS's XML: the request bodies cosencfs sends and the answers it reads.

ElementTree, namespace-tolerant (S3-compatible servers put the answers in
the S3 namespace, COS does not); keys in answers asked for with
``encoding-type=url`` are decoded when the answer says it is so encoded.
The SDK's own parser turns the XML into a string and ``eval``s it: for a
1000-key listing page that was most of the time of a cold ``ls -l``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from urllib.parse import unquote
from xml.etree import ElementTree

from cosencfs.store.base import ListPage, ObjectInfo, PartInfo, StoreErrorInfo, UploadInfo
from cosencfs.store.cosproto import BadAnswer, list_page, parse_iso_date, strip_etag
from cosencfs.store.wire import HttpStatusError

#: One page of parts, and the marker of the next page (None: the last page).
PartsPage = tuple[list[PartInfo], int | None]
#: One page of uploads, and the (key, upload id) markers of the next (None: the last page).
UploadsPage = tuple[list[UploadInfo], tuple[str, str] | None]


class _Doc:
    """An answer's root element, its namespace, and whether its keys are URL-encoded."""

    def __init__(self, body: bytes) -> None:
        try:
            self.root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            raise BadAnswer(f"answer is not XML: {exc}") from None
        tag = self.root.tag
        self.ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
        self.name = tag[len(self.ns) :]
        self.encoded = (self.root.findtext(self.ns + "EncodingType") or "").lower() == "url"

    def all(self, name: str, node: ElementTree.Element | None = None) -> list[ElementTree.Element]:
        return list((self.root if node is None else node).iterfind(self.ns + name))

    def text(self, name: str, node: ElementTree.Element | None = None) -> str:
        return (self.root if node is None else node).findtext(self.ns + name) or ""

    def key(self, name: str, node: ElementTree.Element | None = None) -> str:
        """A key or prefix, decoded when the answer is URL-encoded."""
        value = self.text(name, node)
        return unquote(value) if self.encoded else value

    def truncated(self) -> bool:
        return self.text("IsTruncated").strip().lower() == "true"


def _result(body: bytes, *, needs: str) -> _Doc:
    """An answer that must carry ``needs``: COS answers some requests 200 with an
    ``<Error>`` body (copies, completes), which means the operation did not happen."""
    doc = _Doc(body)
    if doc.name == "Error" or not doc.text(needs):
        raise HttpStatusError(
            200,
            doc.text("Code") or "InternalError",
            doc.text("Message") or f"answer without {needs}",
            doc.text("RequestId"),
        )
    return doc


def list_page_from_xml(body: bytes) -> ListPage:
    """A ListObjects (v1) answer."""
    doc = _Doc(body)
    objects = [
        ObjectInfo(
            key=doc.key("Key", item),
            size=int(doc.text("Size", item) or 0),
            etag=strip_etag(doc.text("ETag", item)),
            last_modified=parse_iso_date(doc.text("LastModified", item)),
            has_metadata=False,
        )
        for item in doc.all("Contents")
    ]
    prefixes = [doc.key("Prefix", p) for p in doc.all("CommonPrefixes")]
    return list_page(objects, prefixes, doc.truncated(), doc.key("NextMarker"))


def etag_of(body: bytes) -> str:
    """The ETag of a CopyObject, UploadPartCopy or CompleteMultipartUpload answer."""
    return strip_etag(_result(body, needs="ETag").text("ETag"))


def upload_id_of(body: bytes) -> str:
    """The upload id of an InitiateMultipartUpload answer."""
    return _result(body, needs="UploadId").text("UploadId")


def parts_page(body: bytes) -> PartsPage:
    doc = _Doc(body)
    parts = [
        PartInfo(
            part_number=int(doc.text("PartNumber", p)),
            etag=strip_etag(doc.text("ETag", p)),
            size=int(doc.text("Size", p) or 0),
        )
        for p in doc.all("Part")
    ]
    if not doc.truncated():
        return parts, None
    return parts, int(doc.text("NextPartNumberMarker") or 0)


def uploads_page(body: bytes) -> UploadsPage:
    doc = _Doc(body)
    uploads = [
        UploadInfo(
            key=doc.key("Key", u),
            upload_id=doc.text("UploadId", u),
            initiated=parse_iso_date(doc.text("Initiated", u)),
        )
        for u in doc.all("Upload")
    ]
    if not doc.truncated():
        return uploads, None
    return uploads, (doc.key("NextKeyMarker"), doc.text("NextUploadIdMarker"))


def delete_failures(body: bytes) -> dict[str, StoreErrorInfo]:
    """The keys a quiet DeleteMultipleObjects did not delete, and why."""
    doc = _Doc(body)
    return {
        doc.key("Key", e): StoreErrorInfo(code=doc.text("Code", e), message=doc.text("Message", e))
        for e in doc.all("Error")
    }


def _xml(root: ElementTree.Element) -> bytes:
    out: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=False)
    return out


def _child(parent: ElementTree.Element, name: str, text: str) -> None:
    ElementTree.SubElement(parent, name).text = text


def delete_body(keys: Sequence[str]) -> bytes:
    root = ElementTree.Element("Delete")
    _child(root, "Quiet", "true")
    for key in keys:
        _child(ElementTree.SubElement(root, "Object"), "Key", key)
    return _xml(root)


def complete_body(parts: Sequence[tuple[int, str]]) -> bytes:
    root = ElementTree.Element("CompleteMultipartUpload")
    for number, etag in parts:
        part = ElementTree.SubElement(root, "Part")
        _child(part, "PartNumber", str(number))
        _child(part, "ETag", f'"{etag}"')
    return _xml(root)


def content_md5(body: bytes) -> str:
    """Content-MD5 (DeleteMultipleObjects requires it)."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
