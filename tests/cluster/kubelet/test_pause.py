"""The agent's sandbox image archive (``skiff/cluster/kubelet/pause.py``), checked without an engine: what the
engine loads is tested in test_server_agent.py."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from skiff.cluster.kubelet import pause
from skiff.errors import InvalidArgument


def busybox() -> Path:
    if not pause.BUSYBOX.exists() or not pause.is_static(pause.BUSYBOX.read_bytes()):
        pytest.skip("no static /bin/busybox (Debian's busybox-static)")
    return pause.BUSYBOX


def test_archive_is_a_docker_save_of_one_image() -> None:
    data = pause.archive_bytes(pause.PAUSE_IMAGE, busybox())
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["skiff/pause:3.10"]
        config = json.load(archive.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        layer_bytes = archive.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert config["config"]["Entrypoint"] == pause.COMMAND
    assert "trap 'exit 0' TERM" in pause.COMMAND[-1]
    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        members = {m.name: m for m in layer.getmembers()}
        assert members["bin/busybox"].size == busybox().stat().st_size
        assert members["bin/sh"].linkname == members["bin/sleep"].linkname == "busybox"
    # deterministic: the same machine always makes the same image id
    assert pause.archive_bytes(pause.PAUSE_IMAGE, busybox()) == data


def test_only_skiff_pause_is_ours() -> None:
    assert pause.is_own("skiff/pause:3.10") and pause.is_own("docker.io/skiff/pause:other")
    assert not pause.is_own("registry.k8s.io/pause:3.10")
    assert not pause.is_own("skiff/pause@sha256:" + "0" * 64)


def test_a_dynamic_busybox_is_refused(tmp_path: Path) -> None:
    dynamic = shutil.which("ls")
    assert dynamic is not None and not pause.is_static(Path(dynamic).read_bytes())
    with pytest.raises(InvalidArgument, match="not statically linked"):
        pause.archive_bytes(pause.PAUSE_IMAGE, Path(dynamic))
    with pytest.raises(InvalidArgument, match="install busybox-static"):
        pause.archive_bytes(pause.PAUSE_IMAGE, tmp_path / "absent")
