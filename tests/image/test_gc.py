"""Garbage collection: what image names reach stays (through indexes, manifests, configs and layers,
and the snapshots of their layer chains); the rest goes, and writers in progress are never raced."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.errors import InvalidArgument
from skiff.image import manifest as mf
from skiff.image.content import ContentStore
from skiff.image.gc import Lease, collect_garbage, leased_digests, reachable_blobs, unused_snapshots
from skiff.image.snapshot import LABEL_GC_ROOT, LABEL_UNPACKING, OverlaySnapshotter, chain_ids
from skiff.image.store import Image, ImageStore
from tests.image.test_layer import TarBuilder, sha256
from tests.image.test_snapshot import APP, BASE, OTHER, make_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshots need root")

OLD = TarBuilder().file("old", b"old").bytes()
ARM = TarBuilder().file("arm", b"arm64").bytes()

Stores = tuple[ContentStore, ImageStore, OverlaySnapshotter]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "images"), content)
    snapshotter = OverlaySnapshotter(tmp_path / "snapshots")
    yield content, images, snapshotter
    snapshotter.close()
    images.db.close()


def blobs_of(content: ContentStore, image: Image) -> set[str]:
    return {image.target["digest"], image.config_digest, *(layer["digest"] for layer in image.layers)}


def unnamed(content: ContentStore, images: ImageStore, layers: list[bytes]) -> Image:
    """An image stored but not named (its name deleted again)."""
    image = make_image(content, images, "scratch:unnamed", layers)
    images.delete("scratch:unnamed")
    return image


def multi_platform(content: ContentStore, images: ImageStore) -> tuple[Image, Image, str]:
    """``multi:1`` pulled by its index: amd64 named, arm64 stored too, a third platform never pulled."""
    amd64 = make_image(content, images, "multi:1", [BASE])
    arm64 = unnamed(content, images, [ARM])
    missing = mf.descriptor(mf.OCI_MANIFEST, "sha256:" + "e" * 64, 100, platform={"os": "linux",
                                                                                   "architecture": "s390x"})
    index = mf.canonical({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {**amd64.target, "platform": {"os": "linux", "architecture": "amd64"}},
        {**arm64.target, "platform": {"os": "linux", "architecture": "arm64"}}, missing]})
    index_digest = content.put(index)
    images.set("multi:1", amd64.target, repo_digest=index_digest)
    return amd64, arm64, index_digest


def test_only_what_no_name_reaches_is_collected(stores: Stores) -> None:
    content, images, snapshotter = stores
    app = make_image(content, images, "app:1", [BASE, APP])
    other = make_image(content, images, "other:1", [BASE, OTHER])
    amd64, arm64, index = multi_platform(content, images)
    old = unnamed(content, images, [OLD])
    stray = content.put(b"a blob nothing refers to")
    keep = blobs_of(content, app) | blobs_of(content, other) | blobs_of(content, amd64) | blobs_of(content, arm64)
    keep.add(index)
    assert reachable_blobs(content, images) >= keep
    sizes = {d: content.size(d) for d in content.digests()}
    gone = blobs_of(content, old) - keep | {stray}

    result = collect_garbage(content, images, snapshotter)
    assert sorted(result.blobs) == sorted(gone)
    assert set(content.digests()) == keep
    assert result.bytes_freed == sum(sizes[d] for d in gone) and result.snapshots == []
    assert collect_garbage(content, images, snapshotter).blobs == []


def test_removing_a_name_frees_what_only_it_used(stores: Stores) -> None:
    content, images, snapshotter = stores
    app = make_image(content, images, "app:1", [BASE, APP])
    other = make_image(content, images, "other:1", [BASE, OTHER])
    for image in (app, other):
        snapshotter.unpack(image, content)
    app_chain = chain_ids(app.diff_ids)
    only_app = blobs_of(content, app) - blobs_of(content, other)
    freed = sum(content.size(d) for d in only_app) + snapshotter.usage(app_chain[1]).size
    images.delete("app:1")

    result = collect_garbage(content, images, snapshotter)
    assert result.snapshots == [app_chain[1]]  # the shared base stays
    assert set(result.blobs) == only_app and result.bytes_freed == freed
    assert {i.name for i in snapshotter.list()} == set(chain_ids(other.diff_ids))
    assert sorted(os.listdir(snapshotter.snapshots_dir)) == sorted(
        os.path.basename(os.path.dirname(snapshotter.upper_dir(c))) for c in chain_ids(other.diff_ids))


def test_snapshots_in_use_or_marked_as_roots_are_kept(stores: Stores) -> None:
    content, images, snapshotter = stores
    old = make_image(content, images, "old:1", [BASE, OLD])
    chain = snapshotter.unpack(old, content)
    snapshotter.prepare("container", chain)  # a container of an image whose name is gone
    snapshotter.prepare("build-a", None)
    snapshotter.commit("build-step", "build-a", labels={LABEL_GC_ROOT: "builder"})
    snapshotter.prepare("loose-a", None)
    snapshotter.commit("loose", "loose-a")
    images.delete("old:1")

    assert unused_snapshots(content, images, snapshotter) == ["loose"]
    result = collect_garbage(content, images, snapshotter)
    assert result.snapshots == ["loose"]
    snapshotter.remove("container")
    assert collect_garbage(content, images, snapshotter).snapshots == [chain, chain_ids(old.diff_ids)[0]]


def test_unpacks_of_dead_processes_are_cleaned_up(stores: Stores) -> None:
    content, images, snapshotter = stores
    image = make_image(content, images, "app:1", [BASE])
    base = snapshotter.unpack(image, content)
    dead = subprocess.Popen(["true"])
    dead.wait()
    snapshotter.prepare("unpack-dead", base, labels={LABEL_UNPACKING: str(dead.pid)})
    snapshotter.prepare("unpack-live", base, labels={LABEL_UNPACKING: str(os.getpid())})
    assert collect_garbage(content, images, snapshotter).snapshots == ["unpack-dead"]
    assert {i.name for i in snapshotter.list()} == {base, "unpack-live"}


def test_leases_protect_a_writer_until_released(stores: Stores, tmp_path: Path) -> None:
    content, images, snapshotter = stores
    pulled = unnamed(content, images, [OLD])  # a pull that has stored blobs but not yet named them
    with Lease(content, [pulled.target["digest"]]) as lease:
        assert collect_garbage(content, images, snapshotter).blobs == []  # the manifest keeps what it needs
        lease.add(content.put(b"late"))
        assert collect_garbage(content, images, snapshotter).blobs == []
    assert len(collect_garbage(content, images, snapshotter).blobs) == 4

    dead = subprocess.Popen(["true"])
    dead.wait()
    lease_dir = Path(content.root) / "leases"
    (lease_dir / "stale.json").write_text(json.dumps({"pid": dead.pid, "digests": [sha256(b"x")]}))
    assert leased_digests(content) == set()
    assert not (lease_dir / "stale.json").exists()


def test_a_lease_keeps_snapshots_named_by_its_digests(stores: Stores) -> None:
    content, images, snapshotter = stores
    image = unnamed(content, images, [BASE, OLD])  # unpacked by a pull that has not named it yet
    top = snapshotter.unpack(image, content)
    with Lease(content, [top]):
        assert collect_garbage(content, images, snapshotter).snapshots == []
    assert collect_garbage(content, images, snapshotter).snapshots == chain_ids(image.diff_ids)[::-1]


def test_blobs_being_written_are_not_touched(stores: Stores) -> None:
    content, images, snapshotter = stores
    data = b"x" * 100_000
    with content.writer(sha256(data), len(data)) as writer:
        writer.write(data[:50_000])
        assert collect_garbage(content, images, snapshotter).blobs == []
        assert os.listdir(content.ingest) == [os.path.basename(writer.temp)]
        writer.write(data[50_000:])
        assert writer.commit() == sha256(data)
    assert collect_garbage(content, images, snapshotter, grace=60).blobs == []  # just committed
    assert collect_garbage(content, images, snapshotter).blobs == [sha256(data)]


def test_a_dry_run_removes_nothing(stores: Stores) -> None:
    content, images, snapshotter = stores
    old = unnamed(content, images, [OLD])
    snapshotter.unpack(old, content)
    before_blobs, before_snaps = set(content.digests()), snapshotter.list()
    result = collect_garbage(content, images, snapshotter, dry_run=True)
    assert set(result.blobs) == before_blobs and result.snapshots == [sha256(OLD)]
    assert set(content.digests()) == before_blobs and snapshotter.list() == before_snaps


def test_an_unreadable_manifest_stops_collection(stores: Stores) -> None:
    content, images, snapshotter = stores
    stray = content.put(b"stray")
    broken = content.put(b"{not json")
    images.set("broken:1", mf.descriptor(mf.OCI_MANIFEST, broken, 9))
    with pytest.raises(InvalidArgument, match="unreadable"):
        collect_garbage(content, images, snapshotter)
    assert content.has(stray)
