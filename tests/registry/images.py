"""Test images made offline: OCI image layouts built from files, and oci-archives of them.

Everything is deterministic (fixed mtimes, owners and gzip headers), so the same inputs give the same
digests and two registries can be compared by the digests they report. The benchmark uses this too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BUSYBOX = "/bin/busybox"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_files(files: dict[str, bytes | tuple[str, str]]) -> bytes:
    """An uncompressed layer tar: path -> content, or path -> ("symlink", target). Parents are added."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            if isinstance(content, tuple):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content[1], 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def busybox_layers() -> list[bytes]:
    """Two layers: busybox with a few applet links, then a small file of our own."""
    applets = ("sh", "ls", "cat", "echo", "true")
    base: dict[str, bytes | tuple[str, str]] = {"bin/busybox": Path(BUSYBOX).read_bytes()}
    base.update({f"bin/{a}": ("symlink", "busybox") for a in applets})
    extra: dict[str, bytes | tuple[str, str]] = {"etc/skiff-test.txt": b"made by the skiff registry tests\n"}
    return [tar_files(base), tar_files(extra)]


@dataclass
class Image:
    """An OCI image layout on disk and the digests of what it holds."""

    layout: Path
    tag: str
    manifest: str
    config: str
    layers: list[str]  # compressed layer digests
    diff_ids: list[str]  # uncompressed layer digests

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest[7:]).read_bytes()


def write_layout(root: Path, layer_tars: list[bytes], tag: str = "latest", compresslevel: int = 6,
                 architecture: str = "amd64") -> Image:
    """An OCI image layout at ``root`` with gzip layers from ``layer_tars``."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    diff_ids = [sha256(t) for t in layer_tars]
    gzipped = [gzip.compress(t, compresslevel=compresslevel, mtime=0) for t in layer_tars]
    layers = [put(g) for g in gzipped]
    config = json.dumps({
        "created": "2024-01-01T00:00:00Z", "architecture": architecture, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_digest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(g)}
                   for d, g in zip(layers, gzipped, strict=True)],
    }, sort_keys=True).encode()
    manifest_digest = put(manifest)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Image(root, tag, manifest_digest, config_digest, layers, diff_ids)


def write_multi_platform_layout(root: Path, layer_tars: list[bytes], tag: str,
                                architectures: tuple[str, ...] = ("amd64", "arm64")) -> tuple[str, list[Image]]:
    """A layout whose ``tag`` is an image index over one image per architecture (sharing layers).

    Returns the index digest and the images. (The images are not runnable on other architectures;
    registries do not care.)"""
    variants = [write_layout(root, layer_tars, tag, architecture=arch) for arch in architectures]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": image.manifest, "size": len(image.blob(image.manifest)),
         "platform": {"os": "linux", "architecture": arch}}
        for arch, image in zip(architectures, variants, strict=True)]}, sort_keys=True).encode()
    digest = sha256(index)
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(index)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": digest, "size": len(index),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return digest, variants


def write_archive(layout: Path, archive: Path) -> Path:
    """An oci-archive: the layout's files in a tar."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=os.path.relpath(path, layout), recursive=False)
    return archive


def read_layout(root: Path, tag: str | None = None) -> tuple[dict, dict]:
    """(manifest, config) of the image in an OCI layout (the one tagged ``tag``, else the only one)."""
    index = json.loads((root / "index.json").read_text())
    entries = index["manifests"]
    if tag is not None:
        entries = [m for m in entries if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    assert len(entries) == 1, entries
    manifest = json.loads((root / "blobs" / "sha256" / entries[0]["digest"][7:]).read_bytes())
    config = json.loads((root / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    return manifest, config
