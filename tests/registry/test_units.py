"""The registry's pieces on their own: names, ranges, manifest checks, htpasswd, storage and uploads."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import bcrypt
import pytest

from skiff.errors import Conflict
from skiff.registry import auth, manifests, names, ranges
from skiff.registry.cli import parse_listen
from skiff.registry.errors import DistributionError
from skiff.registry.storage import Storage


def code(excinfo: pytest.ExceptionInfo[DistributionError]) -> str:
    return excinfo.value.code


@pytest.mark.parametrize("name", ["a", "a/b/c", "library/busybox", "a.b_c__d-e/f--g", "x" * 255])
def test_valid_names(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "a/./b", "a/../b", "_a", "a/_layers", "a-", "x" * 256])
def test_invalid_names(name: str) -> None:
    with pytest.raises(DistributionError) as e:
        names.check_name(name)
    assert code(e) == "NAME_INVALID"


def test_digests() -> None:
    sha = "sha256:" + "a" * 64
    assert names.check_digest(sha) == sha and names.is_sha256(sha)
    sha512 = "sha512:" + "b" * 128
    assert names.check_digest(sha512) == sha512 and not names.is_sha256(sha512)
    for bad in ("sha256:abc", "sha256:" + "A" * 64, "nocolon", "sha256:" + "a" * 64 + "/x"):
        with pytest.raises(DistributionError):
            names.check_digest(bad)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-0", (0, 0)), ("bytes=2-", (2, 9)), ("bytes=-3", (7, 9)), ("bytes=-30", (0, 9)),
    ("bytes=5-100", (5, 9)), ("bytes=0-1,4-5", None),
])
def test_download_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert ranges.download_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=4-2", "bytes=-0", "bytes=-", "items=1-2", "bytes=a-b"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(DistributionError) as e:
        ranges.download_range(header, 10)
    assert (e.value.status, e.value.headers["Content-Range"]) == (416, "bytes */10")


def test_upload_ranges() -> None:
    assert ranges.upload_range("0-99") == (0, 99)
    assert ranges.upload_range("bytes 100-199/*") == (100, 199)
    assert ranges.upload_range(None) is None
    for bad in ("9-3", "abc", "-5"):
        with pytest.raises(DistributionError):
            ranges.upload_range(bad)
    assert ranges.upload_progress(0) == "0-0" and ranges.upload_progress(10) == "0-9"


def descriptor(data: bytes, media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_manifest_checks() -> None:
    doc = {"schemaVersion": 2, "config": descriptor(b"c"), "layers": [descriptor(b"l"),
           {**descriptor(b"f", manifests.FOREIGN_LAYERS[0]), "urls": ["https://example.invalid/f"]}]}
    checked = manifests.check(json.dumps(doc).encode(), manifests.OCI_MANIFEST)
    assert checked.media_type == manifests.OCI_MANIFEST
    assert checked.blobs == [doc["config"]["digest"], doc["layers"][0]["digest"]]  # foreign layer not required
    index = {"schemaVersion": 2, "manifests": [descriptor(b"m", manifests.OCI_MANIFEST)]}
    checked = manifests.check(json.dumps(index).encode(), None)
    assert (checked.media_type, checked.manifests) == (manifests.OCI_INDEX, [index["manifests"][0]["digest"]])
    docker = {**doc, "mediaType": manifests.DOCKER_MANIFEST}
    assert manifests.check(json.dumps(docker).encode(), "application/json").media_type == manifests.DOCKER_MANIFEST


@pytest.mark.parametrize("body", [
    b"", b"null", b'"s"', b'{"schemaVersion": 1}', b'{"schemaVersion": 2, "layers": []}',
    b'{"schemaVersion": 2, "config": {"digest": "x", "size": 1}, "layers": []}',
    b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"a" * 64 + b'", "size": -1}, "layers": []}',
    b'{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"}',
    b'{"schemaVersion": 2, "manifests": {}}',
])
def test_invalid_manifests(body: bytes) -> None:
    with pytest.raises(DistributionError) as e:
        manifests.check(body, None)
    assert code(e) == "MANIFEST_INVALID"


def test_htpasswd_formats(tmp_path: Path) -> None:
    bcrypted = bcrypt.hashpw(b"pw1", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw2").digest()).decode()
    path = tmp_path / "htpasswd"
    path.write_text(f"# users\nalice:{bcrypted}\nbob:{sha}\ncarol:pw3\ndave:$apr1$xyz$abc\n\nbroken\n")
    users = auth.Htpasswd(str(path))

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert users.check(header("alice", "pw1")) == "alice"
    assert users.check(header("alice", "pw1")) == "alice"  # from the cache
    assert users.check(header("bob", "pw2")) == "bob"
    assert users.check(header("carol", "pw3")) == "carol"
    for user, password in [("alice", "pw2"), ("bob", "x"), ("dave", "abc"), ("nobody", "pw1"), ("carol", "")]:
        assert users.check(header(user, password)) is None, user
    for bad in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert users.check(bad) is None
    # Changing the file takes effect without a restart, and drops cached successes.
    path.write_text(f"alice:{bcrypt.hashpw(b'new', bcrypt.gensalt(rounds=4)).decode()}\n")
    os.utime(path, ns=(1, 1))
    assert users.check(header("alice", "pw1")) is None
    assert users.check(header("alice", "new")) == "alice"


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert parse_listen(":5000") == ("0.0.0.0", 5000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("5000", "host:", "host:99999"):
        with pytest.raises(Exception):  # noqa: B017 - argparse's ArgumentTypeError
            parse_listen(bad)


def upload(storage: Storage, repo: str, parts: list[bytes]):
    session = storage.uploads.create(repo)
    for part in parts:
        appender = storage.uploads.begin(session)
        appender.write([part])
        appender.commit()
    return session


def test_storage_upload_and_manifest(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    data = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage.finish_upload(upload(storage, "a/b", [data[:5], data[5:]]), digest)
    assert storage.blob_size("a/b", digest) == len(data)
    assert not storage.has_blob("other", digest)
    assert os.listdir(tmp_path / "uploads") == []
    assert oct(os.stat(storage.blob_path(digest)).st_mode & 0o777) == "0o444"
    assert storage.mount_blob("other", digest, "a/b") and storage.has_blob("other", digest)
    config = b"{}"
    storage.finish_upload(upload(storage, "a/b", [config]), "sha256:" + hashlib.sha256(config).hexdigest())
    manifest = json.dumps({"schemaVersion": 2, "config": descriptor(config), "layers": [descriptor(data)]}).encode()
    m = storage.put_manifest("a/b", "v1", manifest, manifests.OCI_MANIFEST)
    assert storage.manifest("a/b", "v1").digest == m
    assert storage.tags("a/b") == ["v1"]
    assert storage.repositories() == ["a/b"]


def test_rollback_and_recovery(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    session = upload(storage, "r", [b"acknowledged"])
    appender = storage.uploads.begin(session)
    appender.write([b" not acknowledged"])
    appender.rollback()
    assert session.offset == len(b"acknowledged")
    assert os.path.getsize(session.data) == session.offset
    # A crash mid-write leaves extra bytes: a restart cuts them off and rebuilds the hash from disk.
    with open(session.data, "ab") as f:
        f.write(b"garbage")
    with pytest.raises(Conflict):  # one process per data directory
        Storage(str(tmp_path))
    storage.close()
    again = Storage(str(tmp_path))
    resumed = again.uploads.get("r", session.uuid)
    assert os.path.getsize(resumed.data) == resumed.offset == len(b"acknowledged")
    assert resumed.digest() == "sha256:" + hashlib.sha256(b"acknowledged").hexdigest()
    with pytest.raises(DistributionError) as e:
        again.uploads.get("other-repo", session.uuid)
    assert code(e) == "BLOB_UPLOAD_UNKNOWN"
    with pytest.raises(DistributionError) as e:
        again.finish_upload(resumed, "sha256:" + "0" * 64)
    assert code(e) == "DIGEST_INVALID"
    assert os.listdir(tmp_path / "uploads") == [] and os.listdir(tmp_path / "blobs" / "sha256") == []


def test_garbage_collection(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    kept, dropped = b"kept", b"dropped"
    for data in (kept, dropped):
        storage.finish_upload(upload(storage, "gc", [data]), "sha256:" + hashlib.sha256(data).hexdigest())
    config = b"{}"
    storage.finish_upload(upload(storage, "gc", [config]), "sha256:" + hashlib.sha256(config).hexdigest())
    manifest = json.dumps({"schemaVersion": 2, "config": descriptor(config), "layers": [descriptor(kept)]}).encode()
    m = storage.put_manifest("gc", "t", manifest, manifests.OCI_MANIFEST)
    storage.unlink_blob("gc", descriptor(dropped)["digest"])
    assert storage.collect_garbage(dry_run=True) == [descriptor(dropped)["digest"]]
    assert storage.collect_garbage() == [descriptor(dropped)["digest"]]
    assert storage.collect_garbage() == []
    storage.delete_manifest("gc", m)
    assert storage.collect_garbage() == [m]
    assert storage.blob_size("gc", descriptor(kept)["digest"]) == len(kept)
