"""docker save/load, OCI layouts and docker import, checked against skopeo as the peer.

Every archive a peer reads was written by Skiff, and every archive Skiff loads in the peer tests was
written by skopeo. Bad input must leave no trace: no name recorded, no partial file in ingest/.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile

import pytest

from skiff.errors import InvalidArgument, NotFound
from skiff.image import archive
from skiff.image import manifest as mf
from skiff.image.changes import apply_changes
from skiff.image.content import DigestMismatch, digest_of
from skiff.image.store import Image
from tests.image import testimages
from tests.image.conftest import ImageRoot
from tests.image.testimages import BUSYBOX, skopeo

ECHO = "skiff-test/archive-echo"


# ---- helpers


def save_bytes(root: ImageRoot, *names: str) -> bytes:
    out = io.BytesIO()
    archive.save(list(names), out, root.content, root.images)
    return out.getvalue()


def members(data: bytes) -> dict[str, bytes | None]:
    """Archive members in order: regular files with their bytes, everything else as None."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()}


def make_tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def tar_dir(directory: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), name)
    return out.getvalue()


def small_rootfs() -> bytes:
    """A tiny rootfs tar, for tests where only the tar's framing matters (fast to compress)."""
    return make_tar({"etc/hostname": b"skiff\n", "bin/hello": b"#!/bin/sh\necho hello\n" * 50})


def assert_untouched(root: ImageRoot, names_before: list[str]) -> None:
    assert root.names() == names_before
    assert root.ingest_leftovers() == []


def json_of(root: ImageRoot, digest: str) -> dict:
    return json.loads(root.content.read(digest))


@pytest.fixture(scope="module")
def echo_image(image_root: ImageRoot, busybox_rootfs: str) -> Image:
    """A second image (other config, same layer) with two tags, beside busybox."""
    image = archive.import_rootfs(busybox_rootfs, image_root.content, image_root.images, f"{ECHO}:1",
                                  changes=['CMD ["echo", "hi"]'], created=testimages.CREATED)
    image_root.images.set(f"{ECHO}:2", image.target)
    return image


@pytest.fixture
def saved(tmp_path, image_root: ImageRoot, busybox_image: Image) -> str:
    path = str(tmp_path / "busybox.tar")
    with open(path, "wb") as f:
        archive.save([BUSYBOX], f, image_root.content, image_root.images)
    return path


# ---- save: Docker's format, which peers read as a docker-archive and as an OCI layout


def test_save_writes_dockers_layout(image_root: ImageRoot, busybox_image: Image) -> None:
    files = members(save_bytes(image_root, BUSYBOX))
    manifest = busybox_image.manifest
    blob_names = sorted(f"blobs/sha256/{d['digest'][7:]}" for d in [busybox_image.target, manifest["config"],
                                                                   *manifest["layers"]])
    assert list(files) == ["blobs", "blobs/sha256", *blob_names, "index.json", "manifest.json", "oci-layout",
                           "repositories"]
    assert files["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'
    index = json.loads(files["index.json"])
    assert index == {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [{
        **busybox_image.target,
        "annotations": {"io.containerd.image.name": "docker.io/skiff-test/busybox:latest",
                        "org.opencontainers.image.ref.name": "latest"}}]}
    layer = manifest["layers"][0]["digest"][7:]
    assert json.loads(files["manifest.json"]) == [{
        "Config": f"blobs/sha256/{busybox_image.config_digest[7:]}", "RepoTags": ["skiff-test/busybox:latest"],
        "Layers": [f"blobs/sha256/{layer}"]}]
    assert files["repositories"] == b'{"skiff-test/busybox":{"latest":"%s"}}\n' % layer.encode()
    for name in blob_names:
        assert digest_of(files[name]) == "sha256:" + name.rsplit("/", 1)[1]


def test_skopeo_reads_save_as_docker_archive(tmp_path, saved: str, busybox_image: Image) -> None:
    info = json.loads(skopeo("inspect", f"docker-archive:{saved}"))
    assert info["Layers"] == busybox_image.diff_ids
    assert (info["Architecture"], info["Os"]) == (busybox_image.config["architecture"], busybox_image.config["os"])
    assert json.loads(skopeo("inspect", "--config", f"docker-archive:{saved}")) == busybox_image.config
    skopeo("copy", f"docker-archive:{saved}", f"oci:{tmp_path}/copy:latest")
    index = json.loads((tmp_path / "copy" / "index.json").read_text())
    copied = json.loads((tmp_path / "copy" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((tmp_path / "copy" / "blobs" / "sha256" / copied["config"]["digest"][7:]).read_text())
    assert config["rootfs"] == busybox_image.config["rootfs"]


def test_skopeo_reads_save_as_oci_archive(saved: str, busybox_image: Image) -> None:
    raw = json.loads(skopeo("inspect", "--raw", f"oci-archive:{saved}:latest"))
    assert raw == busybox_image.manifest


def test_save_several_images_tags_and_ids(image_root: ImageRoot, busybox_image: Image, echo_image: Image,
                                          fresh_root: ImageRoot) -> None:
    data = save_bytes(image_root, BUSYBOX, ECHO, busybox_image.config_digest[7:19])
    files = members(data)
    entries = json.loads(files["index.json"])["manifests"]
    assert [e.get("annotations", {}).get("io.containerd.image.name") for e in entries] == [
        "docker.io/skiff-test/busybox:latest", f"docker.io/{ECHO}:1", f"docker.io/{ECHO}:2"]
    items = json.loads(files["manifest.json"])
    assert [i["RepoTags"] for i in items] == [["skiff-test/busybox:latest"], [f"{ECHO}:1", f"{ECHO}:2"]]
    assert json.loads(files["repositories"]).keys() == {"skiff-test/busybox", ECHO}

    by_id = members(save_bytes(image_root, busybox_image.config_digest[7:19]))
    assert json.loads(by_id["manifest.json"])[0]["RepoTags"] is None
    assert "annotations" not in json.loads(by_id["index.json"])["manifests"][0]
    assert "repositories" not in by_id

    loaded = archive.load(io.BytesIO(data), fresh_root.content, fresh_root.images)
    assert loaded == ["docker.io/skiff-test/busybox:latest", f"docker.io/{ECHO}:1", f"docker.io/{ECHO}:2"]


def test_save_round_trip_is_byte_identical(image_root: ImageRoot, busybox_image: Image, echo_image: Image,
                                           fresh_root: ImageRoot) -> None:
    first = save_bytes(image_root, BUSYBOX, ECHO)
    archive.load(io.BytesIO(first), fresh_root.content, fresh_root.images)
    assert fresh_root.images.get(BUSYBOX).target == busybox_image.target
    assert save_bytes(fresh_root, BUSYBOX, ECHO) == first


def test_save_refuses_unknown_names_and_missing_blobs(image_root: ImageRoot, fresh_root: ImageRoot,
                                                      busybox_rootfs: str) -> None:
    with pytest.raises(NotFound):
        save_bytes(image_root, "skiff-test/nothing-here:1")
    image = archive.import_rootfs(busybox_rootfs, fresh_root.content, fresh_root.images, "x/y:1")
    fresh_root.content.delete(image.layers[0]["digest"])
    out = io.BytesIO()
    with pytest.raises(NotFound):
        archive.save(["x/y:1"], out, fresh_root.content, fresh_root.images)
    assert out.getvalue() == b""


# ---- load: what skopeo writes, and the legacy layout


def test_load_skopeo_docker_archive(tmp_path, fresh_root: ImageRoot, busybox_image: Image) -> None:
    path = testimages.busybox_docker_archive(str(tmp_path / "docker.tar"))
    assert archive.load(path, fresh_root.content, fresh_root.images) == ["docker.io/skiff-test/busybox:latest"]
    image = fresh_root.images.get(BUSYBOX)
    assert image.target["mediaType"] == mf.DOCKER_MANIFEST
    assert image.config_digest == busybox_image.config_digest  # the same image, the same ID
    assert image.manifest["config"]["mediaType"] == mf.DOCKER_CONFIG
    assert [(layer["mediaType"], layer["digest"]) for layer in image.layers] == [
        (archive.DOCKER_LAYER, busybox_image.diff_ids[0])]
    assert fresh_root.ingest_leftovers() == []


def test_load_skopeo_oci_archive(tmp_path, fresh_root: ImageRoot, busybox_image: Image) -> None:
    path = testimages.busybox_oci_archive(str(tmp_path / "oci.tar"))
    # skopeo names the entry by tag only ("latest"), which is no image name: loaded by ID, unnamed.
    assert archive.load(path, fresh_root.content, fresh_root.images) == [busybox_image.config_digest]
    assert fresh_root.names() == []
    assert archive.import_oci_layout(path, fresh_root.content, fresh_root.images, name="skiff-test/bb:7") == [
        "docker.io/skiff-test/bb:7"]
    assert fresh_root.images.get("skiff-test/bb:7").target == busybox_image.target


def test_load_gzip_compressed_archive(saved: str, fresh_root: ImageRoot, busybox_image: Image) -> None:
    with open(saved, "rb") as f:
        data = gzip.compress(f.read())
    assert archive.load(io.BytesIO(data), fresh_root.content, fresh_root.images) == [
        "docker.io/skiff-test/busybox:latest"]


def legacy_archive(rootfs: bytes, layer: bytes | None = None, diff_id: str | None = None) -> tuple[bytes, list]:
    """A pre-OCI ``docker save`` archive: two images sharing a layer (linked), one of them untagged."""
    diff_id = diff_id or digest_of(rootfs)
    configs = [json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": [cmd]},
                           "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode() for cmd in ("sh", "true")]
    v1 = ["a" * 64, "b" * 64]
    files = {f"{v1[0]}/VERSION": b"1.0", f"{v1[0]}/json": b"{}", f"{v1[0]}/layer.tar": layer or rootfs,
             f"{v1[1]}/json": b"{}", **{f"{digest_of(c)[7:]}.json": c for c in configs}}
    items = [{"Config": f"{digest_of(configs[0])[7:]}.json", "RepoTags": ["legacy/busybox:1"],
              "Layers": [f"{v1[0]}/layer.tar"]},
             {"Config": f"{digest_of(configs[1])[7:]}.json", "RepoTags": None, "Layers": [f"{v1[1]}/layer.tar"]}]
    files["manifest.json"] = json.dumps(items).encode()
    files["repositories"] = json.dumps({"legacy/busybox": {"1": v1[0]}}).encode()
    return make_tar(files, {f"{v1[1]}/layer.tar": f"../{v1[0]}/layer.tar"}), [digest_of(c) for c in configs]


def test_load_legacy_layout(busybox_rootfs: str, fresh_root: ImageRoot) -> None:
    with open(busybox_rootfs, "rb") as f:
        rootfs = f.read()
    data, config_digests = legacy_archive(rootfs)
    loaded = archive.load(io.BytesIO(data), fresh_root.content, fresh_root.images)
    assert loaded == ["docker.io/legacy/busybox:1", config_digests[1]]
    image = fresh_root.images.get("legacy/busybox:1")
    assert image.target == {"mediaType": mf.DOCKER_MANIFEST, "digest": image.target["digest"],
                            "size": image.target["size"], "platform": {"architecture": "amd64", "os": "linux"}}
    assert json_of(fresh_root, image.target["digest"]) == {
        "schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST,
        "config": {"mediaType": mf.DOCKER_CONFIG, "digest": config_digests[0],
                   "size": fresh_root.content.size(config_digests[0])},
        "layers": [{"mediaType": archive.DOCKER_LAYER, "digest": digest_of(rootfs), "size": len(rootfs)}]}
    assert fresh_root.content.read(image.layers[0]["digest"]) == rootfs  # the layer digest is its diff_id


def test_load_legacy_gzip_layer_checks_its_diff_id(busybox_rootfs: str, fresh_root: ImageRoot) -> None:
    with open(busybox_rootfs, "rb") as f:
        rootfs = f.read()
    data, _ = legacy_archive(rootfs, layer=gzip.compress(rootfs))
    archive.load(io.BytesIO(data), fresh_root.content, fresh_root.images)
    assert fresh_root.images.get("legacy/busybox:1").layers[0]["mediaType"] == mf.DOCKER_LAYER_GZIP
    bad, _ = legacy_archive(rootfs, diff_id="sha256:" + "0" * 64)
    before = fresh_root.names()
    with pytest.raises(InvalidArgument, match="diff_id"):
        archive.load(io.BytesIO(bad), fresh_root.content, fresh_root.images)
    assert_untouched(fresh_root, before)


# ---- OCI layout directories


def test_oci_layout_directory_round_trip(tmp_path, image_root: ImageRoot, busybox_image: Image,
                                         fresh_root: ImageRoot) -> None:
    layout = str(tmp_path / "layout")
    archive.export_oci_layout(BUSYBOX, layout, image_root.content, image_root.images)
    assert json.loads(skopeo("inspect", "--raw", f"oci:{layout}:latest")) == busybox_image.manifest
    assert archive.import_oci_layout(layout, fresh_root.content, fresh_root.images) == [
        "docker.io/skiff-test/busybox:latest"]
    assert fresh_root.images.get(BUSYBOX).target == busybox_image.target
    stream = io.BytesIO()
    archive.export_oci_layout(BUSYBOX, stream, image_root.content, image_root.images)
    assert list(members(stream.getvalue()))[-2:] == ["index.json", "oci-layout"]


def test_oci_layout_with_several_images_picks_by_tag(tmp_path, image_root: ImageRoot, busybox_image: Image,
                                                     echo_image: Image, fresh_root: ImageRoot) -> None:
    layout = str(tmp_path / "layout")
    for name in (BUSYBOX, f"{ECHO}:1", f"{ECHO}:2"):
        archive.export_oci_layout(name, layout, image_root.content, image_root.images)
    archive.export_oci_layout(BUSYBOX, layout, image_root.content, image_root.images)  # replaces, not adds
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in index["manifests"]] == ["1", "2", "latest"]
    assert archive.import_oci_layout(layout, fresh_root.content, fresh_root.images, name="mine/echo:2") == [
        "docker.io/mine/echo:2"]
    assert fresh_root.images.get("mine/echo:2").target == echo_image.target
    with pytest.raises(InvalidArgument, match="named '9'"):
        archive.import_oci_layout(layout, fresh_root.content, fresh_root.images, name="mine/echo:9")
    assert fresh_root.names() == ["docker.io/mine/echo:2"]


def test_nested_index_resolves_to_host_platform(tmp_path, image_root: ImageRoot, busybox_image: Image,
                                                fresh_root: ImageRoot) -> None:
    layout = tmp_path / "layout"
    archive.export_oci_layout(BUSYBOX, str(layout), image_root.content, image_root.images)
    host = mf.Platform.host()
    other = {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 500,  # absent: never needed
             "platform": {"architecture": "s390x", "os": "linux"}}
    chosen = {**busybox_image.target, "platform": {"architecture": host.architecture, "os": host.os}}
    inner = archive.go_json({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [other, chosen]})
    (layout / "blobs" / "sha256" / digest_of(inner)[7:]).write_bytes(inner)
    outer = {"schemaVersion": 2, "manifests": [{
        "mediaType": mf.OCI_INDEX, "digest": digest_of(inner), "size": len(inner),
        "annotations": {"io.containerd.image.name": "docker.io/skiff-test/multi:1"}}]}
    (layout / "index.json").write_text(json.dumps(outer))
    assert archive.import_oci_layout(str(layout), fresh_root.content, fresh_root.images) == [
        "docker.io/skiff-test/multi:1"]
    assert fresh_root.images.get("skiff-test/multi:1").target == chosen
    with pytest.raises(NotFound, match="s390x"):
        archive.import_oci_layout(str(layout), fresh_root.content, fresh_root.images, platform="linux/riscv64")


# ---- bad input: a clear error, and nothing recorded


@pytest.fixture
def populated(fresh_root: ImageRoot, saved: str) -> ImageRoot:
    """A fresh root that already holds busybox (so a failed load must leave that name as it was)."""
    archive.load(saved, fresh_root.content, fresh_root.images)
    return fresh_root


def test_corrupt_archive(populated: ImageRoot) -> None:
    before = populated.names()
    for data in (os.urandom(8192), gzip.compress(os.urandom(8192)), gzip.compress(b"x" * 10000)[:-20], b""):
        with pytest.raises(InvalidArgument):
            archive.load(io.BytesIO(data), populated.content, populated.images)
        assert_untouched(populated, before)


def test_truncated_archive(saved: str, fresh_root: ImageRoot) -> None:
    with open(saved, "rb") as f:
        data = f.read()
    with tarfile.open(saved) as tar:
        offsets = {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}
    # Inside the layer, inside a small blob, inside index.json's header and data, and on the header
    # boundary before manifest.json (index.json is whole, but oci-layout never came).
    cuts = [len(data) // 2, offsets["index.json"][0] - 100, offsets["index.json"][0] + 100,
            offsets["index.json"][1] + 100, offsets["manifest.json"][0]]
    packed = gzip.compress(data)
    truncated = [data[:cut] for cut in cuts] + [packed[: len(packed) // 2], packed[:-4]]
    for body in truncated:
        with pytest.raises(InvalidArgument):
            archive.load(io.BytesIO(body), fresh_root.content, fresh_root.images)
        assert_untouched(fresh_root, [])


def corrupted_layout(tmp_path, root: ImageRoot, image: Image) -> str:
    layout = str(tmp_path / "corrupt")
    archive.export_oci_layout(BUSYBOX, layout, root.content, root.images)
    layer = os.path.join(layout, "blobs", "sha256", image.layers[0]["digest"][7:])
    os.chmod(layer, 0o644)
    with open(layer, "r+b") as f:
        f.seek(os.path.getsize(layer) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return layout


def test_blob_digest_mismatch_in_oci_layout(tmp_path, image_root: ImageRoot, busybox_image: Image,
                                            fresh_root: ImageRoot) -> None:
    layout = corrupted_layout(tmp_path, image_root, busybox_image)
    with pytest.raises(DigestMismatch, match=busybox_image.layers[0]["digest"][7:]):
        archive.import_oci_layout(layout, fresh_root.content, fresh_root.images)
    assert_untouched(fresh_root, [])
    assert not fresh_root.content.has(busybox_image.layers[0]["digest"])
    with pytest.raises(DigestMismatch):
        archive.load(io.BytesIO(tar_dir(layout)), fresh_root.content, fresh_root.images)
    assert_untouched(fresh_root, [])
    assert not fresh_root.content.has(busybox_image.layers[0]["digest"])


def rewrite_archive(data: bytes, change: dict[str, bytes]) -> bytes:
    files = {name: body for name, body in members(data).items() if body is not None}
    return make_tar({**files, **change})


def test_unknown_media_types(saved: str, busybox_image: Image, populated: ImageRoot) -> None:
    with open(saved, "rb") as f:
        data = f.read()
    index = json.loads(members(data)["index.json"])
    index["manifests"][0]["mediaType"] = "application/vnd.example.thing.v1+json"
    before = populated.names()
    with pytest.raises(InvalidArgument, match="unsupported media type"):
        archive.load(io.BytesIO(rewrite_archive(data, {"index.json": json.dumps(index).encode()})),
                     populated.content, populated.images)
    assert_untouched(populated, before)

    manifest = dict(busybox_image.manifest, layers=[dict(busybox_image.layers[0], mediaType="application/x-blob")])
    body = archive.go_json(manifest)
    index["manifests"][0].update(mediaType=mf.OCI_MANIFEST, digest=digest_of(body), size=len(body))
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = "docker.io/skiff-test/other:1"
    changed = {"index.json": json.dumps(index).encode(), f"blobs/sha256/{digest_of(body)[7:]}": body}
    with pytest.raises(InvalidArgument, match="unsupported layer media type"):
        archive.load(io.BytesIO(rewrite_archive(data, changed)), populated.content, populated.images)
    assert_untouched(populated, before)


def test_manifest_json_naming_a_missing_file(busybox_rootfs: str, populated: ImageRoot) -> None:
    with open(busybox_rootfs, "rb") as f:
        data, _ = legacy_archive(f.read())
    items = json.loads(members(data)["manifest.json"])
    items[1]["Layers"] = ["missing/layer.tar"]  # the first image is fine: it must not be named either
    items[0]["RepoTags"] = [BUSYBOX]
    before = [(i.name, i.target) for i in populated.images.list()]
    with pytest.raises(InvalidArgument, match=r"missing/layer\.tar"):
        archive.load(io.BytesIO(rewrite_archive(data, {"manifest.json": json.dumps(items).encode()})),
                     populated.content, populated.images)
    assert [(i.name, i.target) for i in populated.images.list()] == before
    assert populated.ingest_leftovers() == []


# ---- docker import


CHANGES = ['CMD ["nginx","-g","daemon off;"]', "ENV A=1 B=2", "EXPOSE 80/tcp", "WORKDIR /srv", "USER nobody",
           "LABEL a=b"]


def test_import_rootfs_with_changes(busybox_rootfs: str, fresh_root: ImageRoot) -> None:
    with open(busybox_rootfs, "rb") as f:
        rootfs = f.read()
    image = archive.import_rootfs(io.BytesIO(rootfs), fresh_root.content, fresh_root.images, "skiff-test/imp:1",
                                  changes=CHANGES, message="imported")
    raw = fresh_root.content.read(image.config_digest)
    config = json.loads(raw)
    created = config["created"]
    host = mf.Platform.host()
    assert config == {
        "created": created, "architecture": host.architecture, "os": host.os,
        **({"variant": host.variant} if host.variant else {}),
        "rootfs": {"type": "layers", "diff_ids": [digest_of(rootfs)]},
        "history": [{"created": created, "comment": "imported"}],
        "config": {"User": "nobody", "ExposedPorts": {"80/tcp": {}}, "Env": ["A=1", "B=2"],
                   "Cmd": ["nginx", "-g", "daemon off;"], "WorkingDir": "/srv", "Labels": {"a": "b"}},
    }
    assert list(config["config"]) == ["User", "ExposedPorts", "Env", "Cmd", "WorkingDir", "Labels"]  # Go's order
    assert raw == archive.go_json(config)
    assert created.endswith("Z") and created[:4].isdigit()
    assert image.manifest == {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                              "config": {"mediaType": mf.OCI_CONFIG, "digest": image.config_digest, "size": len(raw)},
                              "layers": [image.layers[0]]}
    assert image.layers[0]["mediaType"] == mf.OCI_LAYER_GZIP
    assert gzip.decompress(fresh_root.content.read(image.layers[0]["digest"])) == rootfs
    assert fresh_root.images.get("skiff-test/imp:1").target == image.target


def test_import_rootfs_compressed_inputs_and_platform(fresh_root: ImageRoot) -> None:
    rootfs = small_rootfs()
    packed = gzip.compress(rootfs)
    image = archive.import_rootfs(io.BytesIO(packed), fresh_root.content, fresh_root.images,
                                  platform="linux/arm64")
    assert image.name == "" and fresh_root.names() == []
    assert image.layers[0]["digest"] == digest_of(packed)  # a gzip rootfs is kept as it came
    assert image.diff_ids == [digest_of(rootfs)]
    assert (image.config["architecture"], image.config["variant"], image.config["config"]) == ("arm64", "v8", {})
    for compress in (bz2.compress, lzma.compress):
        other = archive.import_rootfs(io.BytesIO(compress(rootfs)), fresh_root.content, fresh_root.images)
        assert other.diff_ids == [digest_of(rootfs)]


@pytest.mark.parametrize("change", [
    "RUN echo hi", "FROM busybox", "EXPOSE 80/xyz", "EXPOSE 70000", "STOPSIGNAL SIGNOPE", "ENV", "ENV A",
    'CMD ["a", 1]', "HEALTHCHECK --interval=1ns CMD true", "HEALTHCHECK CMD", "HEALTHCHECK PING x",
    "ONBUILD ONBUILD RUN x", "ONBUILD FROM x", "CMD --help", "USER ${NAME", "LABEL =b", "VOLUME [\"\"]",
])
def test_import_rootfs_refuses_bad_changes(change: str, busybox_rootfs: str, fresh_root: ImageRoot) -> None:
    with pytest.raises(InvalidArgument):
        archive.import_rootfs(busybox_rootfs, fresh_root.content, fresh_root.images, "x/y:1", changes=[change])
    assert list(fresh_root.content.digests()) == [] and fresh_root.names() == []


def test_import_rootfs_refuses_bad_tars(busybox_rootfs: str, fresh_root: ImageRoot) -> None:
    with open(busybox_rootfs, "rb") as f:
        rootfs = f.read()
    for data in (os.urandom(4096), rootfs[: len(rootfs) // 2], rootfs[:700], gzip.compress(rootfs)[:-100]):
        with pytest.raises(InvalidArgument):
            archive.import_rootfs(io.BytesIO(data), fresh_root.content, fresh_root.images, "x/y:1")
        assert list(fresh_root.content.digests()) == [] and fresh_root.ingest_leftovers() == []
    with pytest.raises(InvalidArgument):
        archive.import_rootfs(io.BytesIO(rootfs), fresh_root.content, fresh_root.images, "x/y@sha256:" + "a" * 64)


@pytest.mark.parametrize(("changes", "expected"), [
    (["CMD echo $HOME"], {"Cmd": ["/bin/sh", "-c", "echo $HOME"]}),
    (['CMD ["a"]', "ENTRYPOINT b"], {"Entrypoint": ["/bin/sh", "-c", "b"], "Cmd": ["a"]}),
    (['ENTRYPOINT ["b"]'], {"Entrypoint": ["b"]}),
    (["CMD []"], {}),
    (["ENV A=1", 'ENV B="$A two" C=${A:-x}${Z:-z} D=\\$A', "ENV A 2 3"],
     {"Env": ["A=2 3", "B=1 two", "C=1z", "D=$A"]}),
    (["ENV P=/opt", "WORKDIR $P", "WORKDIR sub/../app", "USER ${U:-app}:grp"],
     {"Env": ["P=/opt"], "WorkingDir": "/opt/app", "User": "app:grp"}),
    (['LABEL "x y"="a b" c=\'$d\'', "LABEL c=2"], {"Labels": {"c": "2", "x y": "a b"}}),
    (["ENV PORTS=\"53/udp 9000-9001\"", "EXPOSE $PORTS 80"],
     {"Env": ["PORTS=53/udp 9000-9001"], "ExposedPorts": {"53/udp": {}, "80/tcp": {}, "9000/tcp": {},
                                                          "9001/tcp": {}}}),
    (['VOLUME ["/a", "/b"]', "VOLUME /c /d"], {"Volumes": {"/a": {}, "/b": {}, "/c": {}, "/d": {}}}),
    (["STOPSIGNAL SIGRTMIN+3"], {"StopSignal": "SIGRTMIN+3"}),
    (["stopsignal 9"], {"StopSignal": "9"}),
    (["ONBUILD RUN echo hi", "onbuild copy . /x"], {"OnBuild": ["RUN echo hi", "copy . /x"]}),
    (["HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/"],
     {"Healthcheck": {"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 90_000_000_000,
                      "Retries": 3}}),
    (['HEALTHCHECK --timeout=500ms CMD ["true"]'], {"Healthcheck": {"Test": ["CMD", "true"],
                                                                    "Timeout": 500_000_000}}),
    (["HEALTHCHECK NONE"], {"Healthcheck": {"Test": ["NONE"]}}),
    (["# a comment", "", "ENV A=1 \\", "  B=2"], {"Env": ["A=1", "B=2"]}),
])
def test_apply_changes(changes: list[str], expected: dict) -> None:
    assert apply_changes(changes) == expected


# ---- the nginx image (built once with mmdebstrap, cached)


def test_nginx_image_saves_for_skopeo(tmp_path, image_root: ImageRoot, nginx_image: Image) -> None:
    assert nginx_image.config["config"] == {
        "ExposedPorts": {"80/tcp": {}}, "Env": [testimages.PATH_ENV], "Cmd": ["nginx", "-g", "daemon off;"],
        "StopSignal": "SIGQUIT"}
    path = str(tmp_path / "nginx.tar")
    with open(path, "wb") as f:
        archive.save([testimages.NGINX], f, image_root.content, image_root.images)
    info = json.loads(skopeo("inspect", f"docker-archive:{path}"))
    assert info["Layers"] == nginx_image.diff_ids
    assert json.loads(skopeo("inspect", "--config", f"docker-archive:{path}")) == nginx_image.config
