"""Skiff's registry client against Skiff's own registry server: push, pull back byte-identical,
push again (all layers exist), mount into a second repository, and skopeo reads what was pushed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.image.test_distribution import busybox_image, make_local, pull, push, run, statuses, store_image
from tests.registry import servers


@pytest.fixture
def skiff_registry(tmp_path: Path):
    proc = servers.start_skiff(tmp_path / "registry-data")
    yield proc
    proc.stop()


def test_push_and_pull_through_skiff_registry(skiff_registry, tmp_path: Path) -> None:
    host = skiff_registry.url.removeprefix("http://")
    built = busybox_image("skiff-registry-roundtrip")
    source = make_local(str(tmp_path / "source"))
    store_image(source, f"{host}/team/app:v1", built)

    digest, events = run(push(source, f"{host}/team/app:v1"))
    assert digest == built.descriptor["digest"] and "Pushed" in statuses(events)
    _, again = run(push(source, f"{host}/team/app:v1"))
    assert "Layer already exists" in statuses(again) and "Pushed" not in statuses(again)

    source.images.set(f"{host}/other/app:v1", built.descriptor)
    _, mounted = run(push(source, f"{host}/other/app:v1"))
    assert any(s.startswith("Mounted from team/app") for s in statuses(mounted)), statuses(mounted)

    target = make_local(str(tmp_path / "target"))
    image, _ = run(pull(target, f"{host}/team/app:v1"))
    assert image.target["digest"] == built.descriptor["digest"]
    for blob_digest, data in built.blobs().items():
        assert target.content.read(blob_digest) == data  # byte-identical, config and layers

    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/other/app:v1"],
                         capture_output=True, check=True).stdout
    assert json.loads(raw) == json.loads(source.content.read(built.descriptor["digest"]))
