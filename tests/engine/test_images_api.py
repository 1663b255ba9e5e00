"""The image routes of the Engine API, driven by the real docker CLI and docker-py against a running
``skiff engine`` (fixtures in conftest.py), with Debian's docker-registry on loopback as the registry.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.engine.conftest import DockerRunner, EngineProcess
from tests.image import testimages
from tests.registry.servers import RegistryProcess, start_docker_registry

pytestmark = pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo")),
                                reason="needs docker-registry and skopeo")

BUSYBOX_CREATED = "2024-01-01T00:00:00Z"
SIZE = r"\d+(\.\d+)?MB"  # busybox-static unpacked, as the CLI prints sizes


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """docker-registry on loopback holding the offline busybox image as ``busybox:latest``."""
    tmp = tmp_path_factory.mktemp("images-api")
    peer = start_docker_registry(tmp / "registry")
    try:
        layout = testimages.busybox_oci_layout(str(tmp / "layout"), "busybox:latest")
        testimages.skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                          f"docker://{peer.host}/busybox:latest")
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        return testimages.busybox_rootfs_tar(str(tmp_path_factory.mktemp("rootfs") / "rootfs.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def image_rows(docker: DockerRunner, *args: str) -> list[dict]:
    """``docker images`` as the CLI formats each row (``--format '{{json .}}'``)."""
    out = ok(docker("images", "--format", "{{json .}}", *args))
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def image_id(docker: DockerRunner, name: str) -> str:
    return ok(docker("image", "inspect", "--format", "{{.Id}}", name)).strip()


@pytest.fixture
def busybox(docker: DockerRunner, registry: RegistryProcess) -> Iterator[str]:
    """busybox pulled into the module's engine; every name made from it is removed afterwards."""
    name = f"{registry.host}/busybox:latest"
    ok(docker("pull", "-q", name))
    full_id = image_id(docker, name)
    yield name
    docker("rmi", "-f", full_id)


# ---------------------------------------------------------------------------------------------- pull, list, inspect

def test_pull_shows_progress_and_lists_the_image(docker: DockerRunner, registry: RegistryProcess) -> None:
    name = f"{registry.host}/busybox:latest"
    out = ok(docker("pull", name))
    assert "latest: Pulling from busybox" in out and "Pull complete" in out
    assert re.search(r"^Digest: sha256:[0-9a-f]{64}$", out, re.M)
    assert f"Status: Downloaded newer image for {name}" in out and out.splitlines()[-1] == name
    assert f"Status: Image is up to date for {name}" in ok(docker("pull", name))

    [row] = [r for r in image_rows(docker) if r["Repository"] == f"{registry.host}/busybox"]
    full_id = image_id(docker, name)
    assert row["Tag"] == "latest" and row["ID"] == full_id[7:19] and re.fullmatch(SIZE, row["Size"])
    assert row["CreatedSince"].endswith("ago")
    digests = ok(docker("images", "--digests", "--format", "{{.Digest}}", f"{registry.host}/busybox"))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", digests)

    [inspect] = json.loads(ok(docker("image", "inspect", name)))
    assert inspect["Id"] == full_id and inspect["RepoTags"] == [name] and inspect["Created"] == BUSYBOX_CREATED
    assert inspect["Config"]["Cmd"] == ["sh"] and inspect["RootFS"]["Type"] == "layers"
    assert inspect["GraphDriver"]["Name"] == "overlay2"
    history = ok(docker("history", "--format", "{{.ID}}|{{.Size}}|{{.Comment}}", name)).strip().split("|")
    assert history[0] == full_id[7:19] and re.fullmatch(SIZE, history[1])
    assert history[2] == "skiff test image: busybox-static"
    ok(docker("rmi", name))


def test_pull_of_a_missing_image_is_a_clear_error(docker: DockerRunner, engine: EngineProcess,
                                                  registry: RegistryProcess) -> None:
    result = docker("pull", f"{registry.host}/busybox:nope")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error response from daemon: manifest for {registry.host}/busybox:nope: "
                                      "manifest unknown: manifest unknown")
    assert result.stdout == ""

    # dockerd answers before streaming: an HTTP error, not a line in a 200 stream
    resp = engine.request("POST", f"/v1.45/images/create?fromImage={registry.host}/nothere&tag=latest",
                          headers={"X-Registry-Auth": "e30="})
    assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
    assert "nothere" in resp.json()["message"]
    unreachable = engine.request("POST", "/images/create?fromImage=127.0.0.1:9/busybox&tag=latest")
    assert unreachable.status == 500 and "127.0.0.1:9" in unreachable.json()["message"]
    assert docker("images", "-q").stdout == ""


def test_names_with_slashes_route_to_the_image(engine: EngineProcess, busybox: str) -> None:
    assert engine.request("GET", f"/v1.45/images/{busybox}/json").json()["RepoTags"] == [busybox]
    assert engine.request("GET", f"/images/{busybox}/history").json()[0]["Tags"] == [busybox]
    missing = engine.request("GET", "/images/no/such/image:1/json")
    assert missing.status == 404 and missing.json() == {"message": "No such image: no/such/image:1"}
    assert engine.request("POST", f"/images/{busybox}/tag").status == 400  # no repo
    assert engine.request("GET", "/images/json?filters=" + quote(json.dumps({"nope": ["x"]}))).status == 400


# ---------------------------------------------------------------------------------------------- tag, rmi, push

def test_tag_and_rmi(docker: DockerRunner, busybox: str) -> None:
    ok(docker("tag", busybox, "mybox:1"))
    ok(docker("tag", "mybox:1", "mybox:2"))
    assert sorted(r["Tag"] for r in image_rows(docker, "mybox")) == ["1", "2"]
    assert ok(docker("rmi", "mybox:1")) == "Untagged: mybox:1\n"

    full_id = image_id(docker, busybox)
    refused = docker("rmi", full_id[7:19])
    assert refused.returncode == 1 and "must be forced" in refused.stderr
    assert ok(docker("rmi", "mybox:2")) == "Untagged: mybox:2\n"
    missing = docker("rmi", "mybox:3")
    assert missing.returncode == 1 and "No such image: mybox:3" in missing.stderr


def test_rmi_of_the_last_name_deletes(docker: DockerRunner, registry: RegistryProcess) -> None:
    name = f"{registry.host}/busybox:latest"
    ok(docker("pull", "-q", name))
    full_id = image_id(docker, name)
    lines = ok(docker("rmi", name)).splitlines()
    assert lines[0] == f"Untagged: {name}"
    assert re.fullmatch(rf"Untagged: {re.escape(registry.host)}/busybox@sha256:[0-9a-f]{{64}}", lines[1])
    assert lines[2:] == [f"Deleted: {full_id}"]
    assert docker("image", "inspect", name).returncode == 1


def test_push(docker: DockerRunner, registry: RegistryProcess, busybox: str) -> None:
    target = f"{registry.host}/pushed:v1"
    ok(docker("tag", busybox, target))
    out = ok(docker("push", target))
    assert f"The push refers to repository [{registry.host}/pushed]" in out
    match = re.search(r"^v1: digest: (sha256:[0-9a-f]{64}) size: \d+$", out, re.M)
    assert match, out
    manifest = registry.request("HEAD", "/v2/pushed/manifests/v1",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert manifest.status == 200 and manifest.headers["Docker-Content-Digest"] == match.group(1)
    missing = docker("push", f"{registry.host}/pushed:nope")
    assert missing.returncode == 1 and "does not exist locally" in missing.stderr


# ---------------------------------------------------------------------------------------------- archives, prune

def test_save_and_load_round_trip(docker: DockerRunner, tmp_path: Path, busybox: str) -> None:
    archive = tmp_path / "busybox.tar"
    full_id = image_id(docker, busybox)
    ok(docker("save", "-o", str(archive), busybox))
    assert archive.stat().st_size > 1_000_000
    ok(docker("rmi", busybox))
    assert ok(docker("load", "-i", str(archive))) == f"Loaded image: {busybox}\n"
    assert image_id(docker, busybox) == full_id

    ok(docker("save", "-o", str(tmp_path / "by-id.tar"), full_id[7:19]))
    ok(docker("rmi", busybox))
    assert ok(docker("load", "-q", "-i", str(tmp_path / "by-id.tar"))) == f"Loaded image ID: {full_id}\n"
    assert [r["Repository"] for r in image_rows(docker, "--filter", "dangling=true")] == ["<none>"]
    ok(docker("tag", full_id, busybox))  # so the fixture finds it again
    failed = docker("save", "-o", str(tmp_path / "none.tar"), "nothere:1")
    assert failed.returncode == 1 and "No such image: nothere:1" in failed.stderr


def test_import_with_changes(docker: DockerRunner, rootfs_tar: str) -> None:
    out = ok(docker("import", "--change", 'CMD ["sh"]', "--change", "ENV A=1", "-m", "imported here",
                    rootfs_tar, "imported:1"))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out)
    [inspect] = json.loads(ok(docker("image", "inspect", "imported:1")))
    assert inspect["Id"] == out.strip() and inspect["Config"] == {"Env": ["A=1"], "Cmd": ["sh"]}
    assert ok(docker("history", "--format", "{{.Comment}}", "imported:1")) == "imported here\n"
    bad = docker("import", "--change", "RUN true", rootfs_tar)
    assert bad.returncode == 1 and "run is not a valid change command" in bad.stderr
    ok(docker("rmi", "imported:1"))


def test_prune_removes_dangling_images(docker: DockerRunner, rootfs_tar: str, busybox: str) -> None:
    dangling = ok(docker("import", rootfs_tar)).strip()  # no name: dangling
    rows = image_rows(docker, "--filter", "dangling=true")
    assert [(r["Repository"], r["Tag"], r["ID"]) for r in rows] == [("<none>", "<none>", dangling[7:19])]
    assert dangling[7:19] in ok(docker("images", "-a", "-q"))

    out = ok(docker("image", "prune", "-f"))
    assert f"deleted: {dangling}" in out and "Total reclaimed space:" in out
    assert image_rows(docker, "--filter", "dangling=true") == []
    assert image_id(docker, busybox)  # tagged images stay


# ---------------------------------------------------------------------------------------------- docker-py, events

def test_docker_py(docker_client, registry: RegistryProcess) -> None:  # type: ignore[no-untyped-def]
    import docker

    image = docker_client.images.pull(f"{registry.host}/busybox", tag="latest")
    assert image.tags == [f"{registry.host}/busybox:latest"] and image.id.startswith("sha256:")
    assert image.id in [i.id for i in docker_client.images.list()]
    assert docker_client.images.get(image.short_id).attrs["RepoTags"] == image.tags
    image.tag(f"{registry.host}/pybox", "v2")
    assert docker_client.images.get(f"{registry.host}/pybox:v2").id == image.id
    with pytest.raises(docker.errors.NotFound):
        docker_client.images.pull(f"{registry.host}/busybox", tag="nope")
    docker_client.images.remove(f"{registry.host}/pybox:v2")
    docker_client.images.remove(image.id)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image.id)


def test_image_events(docker: DockerRunner, engine: EngineProcess, registry: RegistryProcess, tmp_path: Path,
                      rootfs_tar: str) -> None:
    since = time.time()
    name = f"{registry.host}/busybox:latest"
    ok(docker("pull", "-q", name))
    full_id = image_id(docker, name)
    ok(docker("tag", name, f"{registry.host}/evented:1"))
    ok(docker("push", f"{registry.host}/evented:1"))
    ok(docker("save", "-o", str(tmp_path / "a.tar"), name))
    ok(docker("load", "-i", str(tmp_path / "a.tar")))
    imported = ok(docker("import", rootfs_tar)).strip()
    ok(docker("rmi", "-f", full_id, imported))
    until = time.time() + 1
    out = ok(docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=image",
                    "--format", "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}"))
    events = out.splitlines()
    assert events[:3] == [f"pull {name} {registry.host}/busybox",
                          f"tag {full_id} {registry.host}/evented:1",
                          f"push {registry.host}/evented:1 {registry.host}/evented"]
    assert events[3:5] == [f"save {full_id} {full_id}", f"load {full_id} {full_id}"]
    assert events[5] == f"import {imported} {imported}"
    assert f"delete {full_id} {full_id}" in events and f"delete {imported} {imported}" in events
    assert sum(1 for e in events if e.startswith(f"untag {full_id}")) == 2
