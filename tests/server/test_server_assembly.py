"""Parts received into their object's file (cosencfs/server/assembly.py): completing
an upload whose parts lie end to end copies nothing; every other upload is
copied as before, from where its parts lie; what the server checks is unchanged."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosencfs.server import LocalCosServer
from cosencfs.server.auth import cos_authorization
from tests.server._server_helpers import BUCKET, SECRET_ID, SECRET_KEY, VHOST
from tests.server.test_server_multipart import multipart_etag, read_body, upload_parts
from tests.server.test_server_persistence import wait_for

if TYPE_CHECKING:
    from cosencfs.server.assembly import Assemblies

MIB = 1024 * 1024


def _assemblies(server: LocalCosServer) -> Assemblies:
    ctx = server._ctx
    if ctx is None:
        raise RuntimeError("server not running")
    return ctx.uploads.assemblies


def _complete(client: Any, key: str, upload_id: str, done: list[dict[str, Any]]) -> str:
    result = client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Part": done}
    )
    return str(result["ETag"])


def _data_files(root: Path) -> list[Path]:
    return [p for p in (root / "data").rglob("*") if p.is_file()]


def test_parts_end_to_end_complete_without_a_copy(
    client: Any, server: LocalCosServer, server_root: Path
) -> None:
    """Equal parts and a shorter last one, sent out of order: the object is
    the file they were received into (nothing copied, one data file left,
    nothing in tmp/); its bytes and ETag are those of the parts."""
    parts = [os.urandom(MIB), os.urandom(MIB), os.urandom(MIB), os.urandom(1234)]
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="asm")["UploadId"]
    done = []
    for number in (2, 1, 4, 3):
        resp = client.upload_part(
            Bucket=BUCKET, Key="asm", Body=parts[number - 1], PartNumber=number, UploadId=upload_id
        )
        done.append({"PartNumber": number, "ETag": resp["ETag"]})
    done.sort(key=lambda d: d["PartNumber"])
    received = {p.stat().st_ino for p in _data_files(server_root)}
    assert len(received) == 1  # four parts, one file: each a link to it
    assert _complete(client, "asm", upload_id, done) == multipart_etag(parts)
    assert read_body(client.get_object(Bucket=BUCKET, Key="asm")) == b"".join(parts)
    (obj,) = _data_files(server_root)
    assert obj.stat().st_ino in received  # the object is the file the parts came into
    assert not list((server_root / "tmp").iterdir())
    asm = _assemblies(server)
    assert (asm.taken, asm.copied) == (1, 0)
    # A copy of the object (hard links) and a ranged read see the same bytes.
    client.copy_object(
        Bucket=BUCKET,
        Key="asm2",
        CopySource={"Bucket": BUCKET, "Key": "asm", "Region": "ap-guangzhou"},
    )
    got = client.get_object(Bucket=BUCKET, Key="asm2", Range=f"bytes={MIB - 5}-{2 * MIB + 4}")
    assert read_body(got) == b"".join(parts)[MIB - 5 : 2 * MIB + 5]


def test_a_replaced_part_or_a_subset_is_copied_from_where_the_parts_lie(
    client: Any, server: LocalCosServer
) -> None:
    asm = _assemblies(server)
    parts = [os.urandom(MIB), os.urandom(MIB), os.urandom(500)]
    upload_id, done = upload_parts(client, "rep", parts)
    # Part 2 again: its slot was written once, so the new one has a file of its own.
    parts[1] = os.urandom(MIB)
    resp = client.upload_part(
        Bucket=BUCKET, Key="rep", Body=parts[1], PartNumber=2, UploadId=upload_id
    )
    done[1] = {"PartNumber": 2, "ETag": resp["ETag"]}
    assert _complete(client, "rep", upload_id, done) == multipart_etag(parts)
    assert (asm.taken, asm.copied) == (0, 1)
    assert read_body(client.get_object(Bucket=BUCKET, Key="rep")) == b"".join(parts)
    # Parts 1 and 3 only (a gap in the file): copied, from their offsets.
    parts = [os.urandom(MIB), os.urandom(MIB), os.urandom(700)]
    upload_id, done = upload_parts(client, "gap", parts)
    del done[1]
    assert _complete(client, "gap", upload_id, done) == multipart_etag([parts[0], parts[2]])
    assert (asm.taken, asm.copied) == (0, 2)
    assert read_body(client.get_object(Bucket=BUCKET, Key="gap")) == parts[0] + parts[2]


def test_an_aborted_upload_leaves_no_file(
    client: Any, server: LocalCosServer, server_root: Path
) -> None:
    upload_id, _ = upload_parts(client, "ab", [os.urandom(MIB), os.urandom(MIB)])
    assert list((server_root / "tmp").iterdir())  # the assembly
    client.abort_multipart_upload(Bucket=BUCKET, Key="ab", UploadId=upload_id)
    assert not list((server_root / "tmp").iterdir())
    assert not _data_files(server_root)


def test_a_part_that_failed_before_its_slot_lets_completion_take_the_file(
    client: Any, server: LocalCosServer
) -> None:
    """A part whose client went away before the body reached its slot gives
    the slot's claim back: completing the parts that did arrive still takes
    the file (a claim left counted would make every completion copy)."""
    part = os.urandom(MIB)
    upload_id, done = upload_parts(client, "gone", [part])
    params = {"partNumber": "2", "uploadId": upload_id}
    headers = {"Host": VHOST, "Content-Length": str(MIB)}
    auth = cos_authorization(
        SECRET_ID, SECRET_KEY, method="PUT", path="/gone", params=params, headers=headers
    )
    head = f"PUT /gone?partNumber=2&uploadId={upload_id} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((head + f"Authorization: {auth}\r\n\r\n").encode() + b"x" * 100)
    asm = _assemblies(server)
    state = asm._by_upload[upload_id]
    wait_for(lambda: 2 in state.claimed and state.active == 0)
    assert _complete(client, "gone", upload_id, done) == multipart_etag([part])
    assert (asm.taken, asm.copied) == (1, 0)
    assert read_body(client.get_object(Bucket=BUCKET, Key="gone")) == part
