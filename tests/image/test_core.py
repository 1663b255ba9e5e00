"""The image core: references normalised as Docker does, the verified content store, manifests,
platform selection and image names."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.errors import InvalidArgument, NotFound
from skiff.image import manifest as mf
from skiff.image.content import ContentStore, DigestMismatch, digest_of
from skiff.image.reference import parse
from skiff.image.store import ImageStore


@pytest.mark.parametrize(("text", "full", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("index.docker.io/library/x:1", "docker.io/library/x:1", "x:1"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
    ("127.0.0.1:5000/a", "127.0.0.1:5000/a:latest", "127.0.0.1:5000/a:latest"),
    ("quay.io/org/img@sha256:" + "a" * 64, "quay.io/org/img@sha256:" + "a" * 64, "quay.io/org/img@sha256:" + "a" * 64),
    ("busybox:1@sha256:" + "b" * 64, "docker.io/library/busybox:1@sha256:" + "b" * 64,
     "busybox:1@sha256:" + "b" * 64),
])
def test_references_normalise_like_docker(text, full, familiar):
    ref = parse(text)
    assert (str(ref), ref.familiar()) == (full, familiar)


@pytest.mark.parametrize("bad", ["", "library/UPPER", "a:b:c", "x@sha256:short", "bad tag:x y", "a//b", "-a/b",
                                 "host:port/x"])
def test_bad_references_are_refused(bad):
    with pytest.raises(InvalidArgument):
        parse(bad)


def test_content_store_verifies_and_never_keeps_a_lie(tmp_path):
    store = ContentStore(str(tmp_path))
    digest = store.put(b"hello")
    assert digest == digest_of(b"hello") and store.read(digest) == b"hello" and store.size(digest) == 5
    with pytest.raises(DigestMismatch):
        store.put(b"hellO", expected=digest_of(b"other"))
    with pytest.raises(DigestMismatch), store.writer(digest_of(b"abc"), expected_size=2) as w:
        w.write(b"abc")
    assert sorted(store.digests()) == [digest] and os.listdir(store.ingest) == []
    with pytest.raises(NotFound):
        store.read(digest_of(b"missing"))


def test_content_store_cleans_ingest_left_by_a_crash(tmp_path):
    store = ContentStore(str(tmp_path))
    w = store.writer()
    w.write(b"half")  # the process "dies" here: nothing committed
    w.file.close()
    assert os.listdir(store.ingest)
    ContentStore(str(tmp_path))
    assert os.listdir(store.ingest) == [] and list(store.digests()) == []


@given(st.binary(max_size=4096))
def test_content_digest_is_sha256_of_the_bytes(data):
    import hashlib

    assert digest_of(data) == "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(layers=1) -> dict:
    return {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
            "config": mf.descriptor(mf.OCI_CONFIG, digest_of(b"c"), 1),
            "layers": [mf.descriptor(mf.OCI_LAYER_GZIP, digest_of(bytes([i])), 1) for i in range(layers)]}


def test_manifest_parsing_validates_and_refuses_unknown_types():
    kind, doc = mf.parse(json.dumps(_manifest()).encode())
    assert kind == mf.OCI_MANIFEST and len(doc["layers"]) == 1
    for bad in (b"{", b"[]", json.dumps({"mediaType": "application/x-unknown"}).encode(),
                json.dumps({**_manifest(), "layers": [{"digest": "md5:x", "size": 1}]}).encode(),
                json.dumps({**_manifest(), "config": {"digest": digest_of(b"c"), "size": -1}}).encode()):
        with pytest.raises(InvalidArgument):
            mf.parse(bad)


def test_platform_selection_from_an_index():
    index = {"mediaType": mf.OCI_INDEX, "manifests": [
        {**mf.descriptor(mf.OCI_MANIFEST, digest_of(b"arm"), 1), "platform": {"os": "linux", "architecture": "arm64",
                                                                              "variant": "v8"}},
        {**mf.descriptor(mf.OCI_MANIFEST, digest_of(b"amd"), 1), "platform": {"os": "linux", "architecture": "amd64"}},
        {**mf.descriptor(mf.OCI_MANIFEST, digest_of(b"att"), 1),
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
    ]}
    assert mf.select_platform(index, mf.Platform.parse("linux/amd64"))["digest"] == digest_of(b"amd")
    assert mf.select_platform(index, mf.Platform.parse("linux/arm64"))["digest"] == digest_of(b"arm")
    assert mf.select_platform(index, mf.Platform.parse("linux/aarch64"))["digest"] == digest_of(b"arm")
    with pytest.raises(NotFound, match="linux/s390x"):
        mf.select_platform(index, mf.Platform.parse("linux/s390x"))
    with pytest.raises(InvalidArgument):
        mf.Platform.parse("linux//")


def test_image_names_point_at_manifests(tmp_path):
    content = ContentStore(str(tmp_path / "content"))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(b"layer")]}}).encode()
    config_digest = content.put(config)
    manifest = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                "config": mf.descriptor(mf.OCI_CONFIG, config_digest, len(config)), "layers": []}
    raw = json.dumps(manifest).encode()
    target = mf.descriptor(mf.OCI_MANIFEST, content.put(raw), len(raw))
    images = ImageStore(str(tmp_path / "images"), content)
    images.set("busybox", target, repo_digest=target["digest"])
    image = images.get("docker.io/library/busybox:latest")
    assert image.config_digest == config_digest and image.diff_ids == [digest_of(b"layer")]
    assert [i.name for i in images.by_id(config_digest[7:19])] == ["docker.io/library/busybox:latest"]
    images.delete("busybox:latest")
    with pytest.raises(NotFound):
        images.get("busybox")
