"""ImageService, in process on a temp root, against real peers: Debian's docker-registry on loopback (seeded
with skopeo from Skiff's own OCI layouts), the kernel's overlayfs, and Skiff's OCI runtime running a
container on a prepared root filesystem. Nothing here talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from skiff.errors import Conflict, InvalidArgument, NotFound
from skiff.image.archive import export_oci_layout, import_rootfs
from skiff.image.content import ContentStore
from skiff.image.service import ImageService, is_dangling, parse_timestamp, path_match
from skiff.image.store import ImageStore
from skiff.runtime.spec import default_spec
from tests.image import testimages
from tests.registry.servers import RegistryProcess, start_docker_registry
from tests.runtime.harness import Runtime, skiff_command

needs_peers = pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo")),
                                 reason="needs docker-registry and skopeo")

CREATED = datetime(2024, 1, 1, tzinfo=UTC)
LABELLED_CHANGES = (*testimages.BUSYBOX_CHANGES, "LABEL com.example.kind=test")


# ---------------------------------------------------------------------------------------------- peers

def seed(registry: RegistryProcess, rootfs: str, name: str, changes: tuple[str, ...]) -> None:
    """Put a busybox image made with ``changes`` into ``registry`` as ``name`` (skopeo copies it)."""
    with tempfile.TemporaryDirectory(prefix="skiff-seed-") as tmp:
        content = ContentStore(os.path.join(tmp, "content"))
        images = ImageStore(os.path.join(tmp, "images"), content)
        try:
            import_rootfs(rootfs, content, images, "seed:latest", changes=changes, created=CREATED)
            export_oci_layout("seed:latest", os.path.join(tmp, "layout"), content, images)
        finally:
            images.db.close()
        testimages.skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp}/layout:latest",
                          f"docker://{registry.host}/{name}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: str) -> Iterator[RegistryProcess]:
    """docker-registry holding ``busybox:latest``, ``busybox:labelled`` (another image, the same layer) and
    ``other/app:1`` (the same image as busybox:latest)."""
    peer = start_docker_registry(tmp_path_factory.mktemp("registry") / "data")
    try:
        seed(peer, busybox_rootfs, "busybox:latest", testimages.BUSYBOX_CHANGES)
        seed(peer, busybox_rootfs, "busybox:labelled", LABELLED_CHANGES)
        seed(peer, busybox_rootfs, "other/app:1", testimages.BUSYBOX_CHANGES)
        yield peer
    finally:
        peer.stop()


class Recorder:
    """What the service told the event bus."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, action: str, actor: str, attributes: dict[str, str]) -> None:
        self.events.append((action, actor, attributes))

    def actions(self) -> list[str]:
        return [e[0] for e in self.events]


async def open_service(root: Path) -> ImageService:
    service = ImageService(str(root / "image"), config_path=str(root / "no-docker-config.json"))
    await service.start()
    return service


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[ImageService]:
    svc = await open_service(tmp_path)
    svc.on_event = Recorder()
    yield svc
    await svc.stop()


def recorder(service: ImageService) -> Recorder:
    assert isinstance(service.on_event, Recorder)
    return service.on_event


def blob_count(service: ImageService) -> int:
    return len(list(service.content.digests()))


# ---------------------------------------------------------------------------------------------- pull and names

@needs_peers
@pytest.mark.asyncio
async def test_pull_names_unpacks_and_resolves(service: ImageService, registry: RegistryProcess) -> None:
    progress: list[dict] = []
    image = await service.pull(f"{registry.host}/busybox", progress=progress.append)

    statuses = [p["status"] for p in progress]
    assert statuses[0] == "Pulling from busybox" and "Pull complete" in statuses
    assert statuses[-1] == f"Status: Downloaded newer image for {registry.host}/busybox:latest"
    pulled = ("pull", f"{registry.host}/busybox:latest", {"name": f"{registry.host}/busybox"})
    assert recorder(service).events == [pulled]

    image_id = image.config_digest
    for text in (f"{registry.host}/busybox", f"{registry.host}/busybox:latest", image_id, image_id[7:],
                 image_id[7:19], image_id[:19], f"{registry.host}/busybox@{image.repo_digest}"):
        assert service.resolve(text).config_digest == image_id, text
    with pytest.raises(NotFound, match=re.escape(f"No such image: {registry.host}/nothere:latest")):
        service.resolve(f"{registry.host}/nothere")
    with pytest.raises(NotFound, match=re.escape("No such image: 0123456789ab:latest")):
        service.resolve("0123456789ab")  # a name as much as a short ID: Docker names it as a name

    [summary] = service.summaries()
    assert summary["Id"] == image_id and summary["RepoTags"] == [f"{registry.host}/busybox:latest"]
    assert summary["RepoDigests"] == [f"{registry.host}/busybox@{image.repo_digest}"]
    assert summary["Created"] == int(CREATED.timestamp()) and summary["Size"] > 1_000_000
    assert (summary["SharedSize"], summary["Containers"], summary["ParentId"]) == (-1, -1, "")

    inspect = service.inspect(f"{registry.host}/busybox")
    assert inspect["Config"]["Cmd"] == ["sh"] and inspect["Os"] == "linux"
    assert inspect["RootFS"] == {"Type": "layers", "Layers": image.diff_ids}
    assert os.path.isfile(os.path.join(inspect["GraphDriver"]["Data"]["UpperDir"], "bin", "busybox")), "unpacked"


@needs_peers
@pytest.mark.asyncio
async def test_pull_of_a_missing_tag_is_not_found(service: ImageService, registry: RegistryProcess) -> None:
    with pytest.raises(NotFound, match="manifest unknown"):
        await service.pull(f"{registry.host}/busybox:nope")
    assert service.list() == [] and recorder(service).events == []


@needs_peers
@pytest.mark.asyncio
async def test_tag_and_untag(service: ImageService, registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    service.tag(f"{registry.host}/busybox", "mybox:1")
    assert service.summaries()[0]["RepoTags"] == [f"{registry.host}/busybox:latest", "mybox:1"]

    assert service.remove("mybox:1") == [{"Untagged": "mybox:1"}]
    assert service.resolve(image.config_digest).name == f"{registry.host}/busybox:latest"
    with pytest.raises(InvalidArgument):
        service.tag(f"{registry.host}/busybox", f"mybox@{image.repo_digest}")
    events = recorder(service).events
    assert ("tag", image.config_digest, {"name": "mybox:1"}) in events
    assert ("untag", image.config_digest, {"name": image.config_digest}) in events


@needs_peers
@pytest.mark.asyncio
async def test_remove_by_id_follows_docker_rules(service: ImageService, registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    service.tag(image.config_digest, "mybox:1")
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        service.remove(image.config_digest[7:19])

    records = service.remove(image.config_digest[7:19], force=True)
    assert records == [{"Untagged": f"{registry.host}/busybox:latest"},
                       {"Untagged": f"{registry.host}/busybox@{image.repo_digest}"},
                       {"Untagged": "mybox:1"},
                       {"Deleted": image.config_digest}]
    assert recorder(service).actions()[-1] == "delete"
    service.collect_garbage()
    assert service.list() == [] and blob_count(service) == 0 and service.snapshots.list() == []


@needs_peers
@pytest.mark.asyncio
async def test_an_image_in_use_needs_force(service: ImageService, registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    service.in_use = lambda image_id: image_id == image.config_digest
    with pytest.raises(Conflict, match="must force"):
        service.remove(f"{registry.host}/busybox")
    with pytest.raises(Conflict, match="must be forced"):
        service.remove(image.config_digest)
    service.tag(image.config_digest, f"{registry.host}/busybox:two")
    assert service.remove(f"{registry.host}/busybox:two") == [{"Untagged": f"{registry.host}/busybox:two"}]
    assert service.remove(f"{registry.host}/busybox", force=True)[-1] == {"Deleted": image.config_digest}


@needs_peers
@pytest.mark.asyncio
async def test_a_moved_tag_leaves_a_dangling_image(service: ImageService, registry: RegistryProcess) -> None:
    old = await service.pull(f"{registry.host}/busybox:latest")
    new = await service.pull(f"{registry.host}/busybox:labelled")
    assert old.layers == new.layers and old.config_digest != new.config_digest
    service.tag(f"{registry.host}/busybox:labelled", f"{registry.host}/busybox:latest")

    [dangling] = service.summaries(filters={"dangling": ["true"]})
    assert dangling["Id"] == old.config_digest and dangling["RepoTags"] == [] and dangling["RepoDigests"] == []
    assert [s["Id"] for s in service.summaries(filters={"dangling": ["false"]})] == [new.config_digest]
    assert len(service.summaries(all=True)) == 2
    assert any(is_dangling(i.name) for i in service.images.list())

    service.collect_garbage()  # a dangling image is kept, blobs and all
    assert service.inspect(old.config_digest[7:19])["RepoTags"] == []
    service.tag(old.config_digest, "kept:1")
    assert not any(is_dangling(i.name) for i in service.images.list())

    service.remove("kept:1")  # its last name: deleted

    service.remove(f"{registry.host}/busybox:labelled")  # a pull that moves a tag leaves a dangling image too
    await service.pull(f"{registry.host}/busybox:latest")
    [dangling] = service.summaries(filters={"dangling": ["1"]})
    assert dangling["Id"] == new.config_digest

    before = blob_count(service)
    report = await service.prune()
    assert report["ImagesDeleted"] == [{"Deleted": dangling["Id"]}] and report["SpaceReclaimed"] > 0
    assert blob_count(service) < before and service.summaries(filters={"dangling": ["true"]}) == []


@needs_peers
@pytest.mark.asyncio
async def test_list_filters(service: ImageService, registry: RegistryProcess) -> None:
    plain = await service.pull(f"{registry.host}/busybox:latest")
    labelled = await service.pull(f"{registry.host}/busybox:labelled")
    service.tag(plain.config_digest, "example/web:1")

    def ids(**filters: list[str]) -> list[str]:
        return sorted(s["Id"] for s in service.summaries(filters=filters))

    assert ids(label=["com.example.kind"]) == [labelled.config_digest]
    assert ids(label=["com.example.kind=test"]) == [labelled.config_digest]
    assert ids(label=["com.example.kind=other"]) == []
    assert ids(reference=["example/*"]) == [plain.config_digest]
    assert ids(reference=["*"]) == []  # * stops at a slash, as Go's path.Match
    assert ids(reference=[f"{registry.host}/busybox:label*"]) == [labelled.config_digest]
    assert ids(before=["example/web:1"]) == [] and ids(since=["example/web:1"]) == []
    assert ids(until=["2025-01-01T00:00:00Z"]) == sorted([plain.config_digest, labelled.config_digest])
    with pytest.raises(InvalidArgument, match="invalid filter 'nope'"):
        service.summaries(filters={"nope": ["x"]})
    with pytest.raises(InvalidArgument):
        service.summaries(filters={"dangling": ["maybe"]})


@needs_peers
@pytest.mark.asyncio
async def test_history(service: ImageService, registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    [entry] = service.history(image.config_digest)
    assert entry["Id"] == image.config_digest and entry["Tags"] == [f"{registry.host}/busybox:latest"]
    assert entry["Created"] == int(CREATED.timestamp()) and entry["Size"] > 1_000_000


@needs_peers
@pytest.mark.asyncio
async def test_push_every_tag_of_a_repository(tmp_path: Path, service: ImageService,
                                              registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    service.tag(image.config_digest, f"{registry.host}/pushed:a")
    service.tag(image.config_digest, f"{registry.host}/pushed:b")
    progress: list[dict] = []
    digest = await service.push(f"{registry.host}/pushed", progress=progress.append)
    assert [p["aux"]["Tag"] for p in progress if "aux" in p] == ["a", "b"]
    assert f"{registry.host}/pushed@{digest}" in service.inspect(f"{registry.host}/pushed:a")["RepoDigests"]
    with pytest.raises(NotFound, match="An image does not exist locally with the tag"):
        await service.push(f"{registry.host}/nothing")

    other = await open_service(tmp_path / "second")
    try:
        pulled = await other.pull(f"{registry.host}/pushed:b")
        assert pulled.config_digest == image.config_digest and pulled.repo_digest == digest
    finally:
        await other.stop()


# ---------------------------------------------------------------------------------------------- archives

@needs_peers
@pytest.mark.asyncio
async def test_save_load_and_import(tmp_path: Path, service: ImageService, registry: RegistryProcess,
                                    busybox_rootfs: str) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    archive = io.BytesIO()
    await service.save([f"{registry.host}/busybox"], archive)
    by_id = io.BytesIO()
    await service.save([image.config_digest[7:19]], by_id)
    with pytest.raises(NotFound):
        await service.save(["nothere:1"], io.BytesIO())

    other = await open_service(tmp_path / "second")
    other.on_event = loaded = Recorder()
    try:
        assert await other.load(io.BytesIO(archive.getvalue())) == [f"{registry.host}/busybox:latest"]
        assert other.resolve(f"{registry.host}/busybox").config_digest == image.config_digest
        other.remove(f"{registry.host}/busybox")
        assert await other.load(io.BytesIO(by_id.getvalue())) == [image.config_digest]
        [summary] = other.summaries(filters={"dangling": ["true"]})  # loaded without a name: kept, dangling
        assert summary["Id"] == image.config_digest
        other.collect_garbage()
        assert other.inspect(image.config_digest)["Id"] == image.config_digest
    finally:
        await other.stop()

    with open(busybox_rootfs, "rb") as f:
        imported = await service.import_(f, "imported:1", ['CMD ["sh", "-c", "echo hi"]'], "from a test")
    assert service.inspect("imported:1")["Config"]["Cmd"] == ["sh", "-c", "echo hi"]
    assert service.history("imported:1")[0]["Comment"] == "from a test"
    with open(busybox_rootfs, "rb") as f:
        nameless = await service.import_(f)
    assert is_dangling(nameless.name) and nameless.config_digest != imported.config_digest
    assert service.resolve(nameless.config_digest[7:19]).target == nameless.target
    assert recorder(service).actions().count("save") == 2 and "import" in recorder(service).actions()
    assert loaded.events[0] == ("load", image.config_digest, {"name": image.config_digest})


# ---------------------------------------------------------------------------------------------- containers

@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    rt = Runtime("skiff", skiff_command(), tmp_path / "runtime-root")
    yield rt
    assert not rt.cleanup()


def run_in(service: ImageService, rt: Runtime, bundle: Path, cid: str, args: list[str]) -> str:
    """Run ``args`` in a container on the snapshot ``cid`` mounted at ``bundle/rootfs``; its stdout."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    spec = default_spec(terminal=False, args=args)
    spec["root"]["readonly"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    service.mount_rootfs(cid, str(rootfs))
    try:
        result = rt.run(bundle, cid)
        assert result.returncode == 0, result.stderr
        return result.stdout
    finally:
        service.unmount_rootfs(str(rootfs))


@needs_peers
@pytest.mark.asyncio
async def test_rootfs_runs_a_container_and_commits(tmp_path: Path, service: ImageService, registry: RegistryProcess,
                                                   runtime: Runtime) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    first, second = runtime.new_id("image"), runtime.new_id("commit")
    try:
        mounts = service.prepare_rootfs(first, image)
        assert mounts[0]["type"] == "overlay" and any(o.startswith("lowerdir=") for o in mounts[0]["options"])
        out = run_in(service, runtime, tmp_path / "b1", first, ["sh", "-c", "cat /etc/passwd; echo made > /made"])
        assert out.startswith("root:x:0:0:")

        committed = service.commit_rootfs(first, ['CMD ["cat", "/made"]'], author="tests", message="a commit",
                                          reference="committed:1")
        assert committed.config_digest == service.resolve("committed:1").config_digest
        assert len(committed.layers) == 2 and committed.config["config"]["Cmd"] == ["cat", "/made"]
        assert service.inspect("committed:1")["Author"] == "tests"

        service.prepare_rootfs(second, committed)
        assert run_in(service, runtime, tmp_path / "b2", second, committed.config["config"]["Cmd"]) == "made\n"
    finally:
        for cid in (first, second):
            service.remove_rootfs(cid)
    service.remove("committed:1")
    service.remove(f"{registry.host}/busybox")
    service.collect_garbage()
    assert service.snapshots.list() == [] and blob_count(service) == 0


@needs_peers
@pytest.mark.asyncio
async def test_an_image_a_container_uses_keeps_its_blobs(service: ImageService, registry: RegistryProcess) -> None:
    image = await service.pull(f"{registry.host}/busybox")
    service.prepare_rootfs("c1", image)
    try:
        service.remove(f"{registry.host}/busybox", force=True)
        service.collect_garbage()
        assert blob_count(service) == 3  # manifest, config, layer: docker commit still needs them
    finally:
        service.remove_rootfs("c1")
    service.collect_garbage()
    assert blob_count(service) == 0 and service.snapshots.list() == []


@needs_peers
@pytest.mark.asyncio
async def test_prune_all_spares_images_in_use(service: ImageService, registry: RegistryProcess) -> None:
    plain = await service.pull(f"{registry.host}/busybox:latest")
    labelled = await service.pull(f"{registry.host}/busybox:labelled")
    service.in_use = lambda image_id: image_id == plain.config_digest
    assert (await service.prune())["ImagesDeleted"] is None  # nothing dangling
    with pytest.raises(InvalidArgument):
        await service.prune(filters={"until": ["not a time"]})
    assert (await service.prune(filters={"dangling": ["false"], "label": ["com.example.kind=other"]}))[
        "ImagesDeleted"] is None
    report = await service.prune(filters={"dangling": ["false"]})
    assert report["ImagesDeleted"] == [{"Untagged": f"{registry.host}/busybox:labelled"},
                                       {"Untagged": f"{registry.host}/busybox@{labelled.repo_digest}"},
                                       {"Deleted": labelled.config_digest}]
    assert [i.config_digest for i in service.list()] == [plain.config_digest]


@needs_peers
@pytest.mark.asyncio
async def test_disk_usage(service: ImageService, registry: RegistryProcess) -> None:
    plain = await service.pull(f"{registry.host}/busybox:latest")
    labelled = await service.pull(f"{registry.host}/busybox:labelled")
    service.in_use = lambda image_id: image_id == plain.config_digest
    rows = {row["Id"]: row for row in service.df()}
    assert (rows[plain.config_digest]["Containers"], rows[labelled.config_digest]["Containers"]) == (1, 0)
    size = rows[plain.config_digest]["Size"]
    assert rows[plain.config_digest]["SharedSize"] == size > 0  # both images are the one busybox layer
    assert service.layers_size() == size

    service.prepare_rootfs("c1", plain)
    try:
        Path(service.upper_dir("c1"), "written").write_bytes(b"x" * 10)
        assert os.listdir(service.upper_dir("c1")) == ["written"]
    finally:
        service.remove_rootfs("c1")
    with pytest.raises(NotFound):
        service.upper_dir("c1")


# ---------------------------------------------------------------------------------------------- helpers

def test_path_match_is_go_path_match() -> None:
    assert path_match("busybox*", "busybox:latest")
    assert not path_match("*", "library/busybox")
    assert path_match("*/busybox", "library/busybox")
    assert path_match("b?sybox", "busybox") and not path_match("b?sybox", "b/sybox")
    assert path_match("[a-c]usybox", "busybox") and not path_match("[^b]usybox", "busybox")


def test_parse_timestamp() -> None:
    assert parse_timestamp("1700000000") == 1700000000
    assert parse_timestamp("2024-01-01T00:00:00Z") == CREATED.timestamp()
    assert parse_timestamp("1h", now=10_000) == 10_000 - 3600
    with pytest.raises(InvalidArgument):
        parse_timestamp("yesterday")
