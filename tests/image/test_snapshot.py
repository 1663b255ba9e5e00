"""The overlay snapshotter: a conformance suite in the manner of containerd's snapshots/testsuite (every
snapshot mounted for real and read through the kernel's overlay), then images: unpacking by chain ID,
committing a container's changes as a layer, and a busybox image running as a runtime's rootfs.

``SnapshotterSuite`` holds the behaviour any snapshotter must have; a test class binds it to one
implementation through the ``snapshotter`` fixture.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from skiff.image import manifest as mf
from skiff.image.content import ContentStore
from skiff.image.layer import OPAQUE_XATTR, apply_layer, make_layer, write_layer
from skiff.image.snapshot import (
    ACTIVE,
    COMMITTED,
    LABEL_DIFF_ID,
    VIEW,
    OverlaySnapshotter,
    chain_ids,
    mount,
    unmount,
)
from skiff.image.store import Image, ImageStore
from skiff.runtime.spec import default_spec
from tests.image.test_layer import Mounts, TarBuilder, mounted_under, sha256, tree
from tests.leakcheck import CGROUP_MARKER, SESSION_TAG, remove_marker_cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshots need root (overlay mounts)")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts()
    yield m
    m.close()
    assert mounted_under(tmp_path) == []


def write(root: Path, files: dict[str, str | None]) -> None:
    """Make ``files`` under ``root``: a name ending in / is a directory, None removes (recursively)."""
    for name, text in files.items():
        path = root / name.rstrip("/")
        if text is None:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def files_of(root: Path) -> dict[str, str]:
    """Regular files under ``root`` with their text, directories as name/."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            result[os.path.normpath(os.path.join(rel, d)) + "/"] = ""
        for f in filenames:
            result[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_text()
    return result


class SnapshotterSuite:
    """What every snapshotter must do. Subclasses provide the ``snapshotter`` fixture."""

    def layer(self, snapshotter, mounts: Mounts, tmp_path: Path, name: str, parent: str | None,
              files: dict[str, str | None]) -> str:
        """Prepare over ``parent``, mount, make ``files`` through the mount, unmount, commit as ``name``."""
        key = f"{name}-active"
        target = mounts.mount(snapshotter.prepare(key, parent), tmp_path / "work" / key)
        write(target, files)
        mounts.close()
        snapshotter.commit(name, key)
        return name

    def test_basic(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        base = {"foo": "foo\n", "a/": "", "a/b/": "", "a/b/c/": ""}
        self.layer(snapshotter, mounts, tmp_path, "committed", None, base)
        info = snapshotter.stat("committed")
        assert (info.name, info.kind, info.parent) == ("committed", COMMITTED, None)
        with pytest.raises(NotFound):
            snapshotter.stat("committed-active")

        target = mounts.mount(snapshotter.prepare("next", "committed"), tmp_path / "next")
        assert files_of(target) == {"foo": "foo\n", "a/": "", "a/b/": "", "a/b/c/": ""}
        write(target, {"bar": "bar\n", "foo": "bar\n", "a/b/": None})
        mounts.close()
        assert (snapshotter.stat("next").kind, snapshotter.stat("next").parent) == (ACTIVE, "committed")
        snapshotter.commit("committed-next", "next")
        assert snapshotter.stat("committed-next").parent == "committed"

        view = mounts.mount(snapshotter.view("view", "committed-next"), tmp_path / "view")
        assert files_of(view) == {"foo": "bar\n", "bar": "bar\n", "a/": ""}
        mounts.close()
        assert {i.name for i in snapshotter.list()} == {"committed", "committed-next", "view"}
        snapshotter.remove("view")
        with pytest.raises(Conflict, match="remove"):
            snapshotter.remove("committed")
        snapshotter.remove("committed-next")
        snapshotter.remove("committed")
        assert snapshotter.list() == []

    def test_stat_kinds_parents_and_labels(self, snapshotter) -> None:
        snapshotter.prepare("a", None, labels={"x": "1"})
        snapshotter.commit("c1", "a", labels={"y": "2"})
        snapshotter.prepare("b", "c1")
        snapshotter.view("v", "c1")
        stats = {i.name: i for i in snapshotter.list()}
        assert {n: (i.kind, i.parent) for n, i in stats.items()} == {
            "c1": (COMMITTED, None), "b": (ACTIVE, "c1"), "v": (VIEW, "c1")}
        assert stats["c1"].labels == {"x": "1", "y": "2"}
        assert stats["c1"].created <= stats["c1"].updated

    def test_keys_are_unique(self, snapshotter) -> None:
        snapshotter.prepare("base", None)
        snapshotter.commit("snap", "base")
        snapshotter.prepare("new", "snap")
        for make in (snapshotter.prepare, snapshotter.view):
            for key in ("new", "snap"):
                with pytest.raises(AlreadyExists):
                    make(key, "snap")
        snapshotter.prepare("other", "snap")
        with pytest.raises(AlreadyExists):
            snapshotter.commit("snap", "other")

    def test_operations_in_the_wrong_state(self, snapshotter) -> None:
        snapshotter.prepare("a", None)
        snapshotter.view("v", None)
        with pytest.raises(Conflict):
            snapshotter.prepare("child", "a")  # an active snapshot cannot be a parent
        with pytest.raises(Conflict):
            snapshotter.commit("c", "v")
        snapshotter.commit("c", "a")
        with pytest.raises(Conflict):
            snapshotter.commit("c2", "c")
        with pytest.raises(Conflict):
            snapshotter.mounts("c")
        for call in (lambda: snapshotter.stat("nope"), lambda: snapshotter.remove("nope"),
                     lambda: snapshotter.prepare("x", "nope"), lambda: snapshotter.mounts("nope")):
            with pytest.raises(NotFound):
                call()
        with pytest.raises(InvalidArgument):
            snapshotter.prepare("", None)

    def test_deleted_files_stay_deleted_in_children(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        self.layer(snapshotter, mounts, tmp_path, "l1", None, {"foo": "foo", "foobar": "foobar"})
        self.layer(snapshotter, mounts, tmp_path, "l2", "l1", {"foobar": None})
        self.layer(snapshotter, mounts, tmp_path, "l3", "l2", {})
        view = mounts.mount(snapshotter.view("v", "l3"), tmp_path / "v")
        assert files_of(view) == {"foo": "foo"}

    def test_a_removed_and_recreated_directory_hides_the_lower_one(self, snapshotter, mounts: Mounts,
                                                                  tmp_path: Path) -> None:
        self.layer(snapshotter, mounts, tmp_path, "l1", None, {"d/a": "a", "d/b": "b", "d/sub/x": "x"})
        self.layer(snapshotter, mounts, tmp_path, "l2", "l1", {"d/": None})
        self.layer(snapshotter, mounts, tmp_path, "l3", "l2", {"d/c": "c"})
        view = mounts.mount(snapshotter.view("v", "l3"), tmp_path / "v")
        assert files_of(view) == {"d/": "", "d/c": "c"}
        mounts.close()
        # the same, in one layer: overlay marks the new directory opaque
        self.layer(snapshotter, mounts, tmp_path, "l4", "l1", {"d/": None, "d/new": "new"})
        view = mounts.mount(snapshotter.view("v2", "l4"), tmp_path / "v2")
        assert files_of(view) == {"d/": "", "d/new": "new"}

    def test_an_intermediate_snapshot_cannot_be_removed(self, snapshotter) -> None:
        snapshotter.prepare("base-a", None)
        snapshotter.commit("base", "base-a")
        snapshotter.prepare("mid-a", "base")
        snapshotter.commit("mid", "mid-a")
        snapshotter.prepare("top", "mid")
        with pytest.raises(Conflict):
            snapshotter.remove("mid")
        with pytest.raises(Conflict):
            snapshotter.remove("base")
        for key in ("top", "mid", "base"):
            snapshotter.remove(key)

    @pytest.mark.parametrize("depth", [0, 1, 2])
    def test_views_are_read_only(self, snapshotter, mounts: Mounts, tmp_path: Path, depth: int) -> None:
        parent = None
        for i in range(depth):
            parent = self.layer(snapshotter, mounts, tmp_path, f"l{i}", parent, {f"f{i}": str(i)})
        view = mounts.mount(snapshotter.view("v", parent), tmp_path / "v")
        assert files_of(view) == {f"f{i}": str(i) for i in range(depth)}
        with pytest.raises(OSError) as e:
            (view / "new").write_text("x")
        assert e.value.errno == errno.EROFS

    def test_keys_can_be_reused_after_removal(self, snapshotter) -> None:
        snapshotter.prepare("committed-a", None)
        snapshotter.commit("committed-1", "committed-a")
        snapshotter.prepare("reuse-1", "committed-1")
        snapshotter.remove("reuse-1")
        snapshotter.view("reuse-1", "committed-1")
        snapshotter.remove("reuse-1")
        snapshotter.prepare("reuse-1", None)
        snapshotter.remove("committed-1")
        snapshotter.commit("committed-1", "reuse-1")

    def test_files_moved_and_linked_from_a_lower_layer(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        self.layer(snapshotter, mounts, tmp_path, "l1", None, {"dir1/f1": "Hello", "dir2/f2": "..."})
        key = "l2-active"
        target = mounts.mount(snapshotter.prepare(key, "l1"), tmp_path / "l2")
        os.rename(target / "dir1/f1", target / "dir1/moved")
        os.link(target / "dir2/f2", target / "dir2/f2-link")
        os.unlink(target / "dir2/f2")
        mounts.close()
        snapshotter.commit("l2", key)
        view = mounts.mount(snapshotter.view("v", "l2"), tmp_path / "v")
        assert files_of(view) == {"dir1/": "", "dir1/moved": "Hello", "dir2/": "", "dir2/f2-link": "..."}

    def test_owners_and_modes_changed_in_a_child(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        self.layer(snapshotter, mounts, tmp_path, "l1", None, {"f": "f", "d/": ""})
        target = mounts.mount(snapshotter.prepare("l2-active", "l1"), tmp_path / "l2")
        os.chown(target / "f", 1000, 2000)
        os.chmod(target / "d", 0o700)
        mounts.close()
        snapshotter.commit("l2", "l2-active")
        view = mounts.mount(snapshotter.view("v", "l2"), tmp_path / "v")
        st = os.stat(view / "f")
        assert (st.st_uid, st.st_gid) == (1000, 2000) and os.stat(view / "d").st_mode & 0o777 == 0o700

    def test_the_root_of_a_new_snapshot_is_0755(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        target = mounts.mount(snapshotter.prepare("a", None), tmp_path / "a")
        assert os.stat(target).st_mode & 0o777 == 0o755

    def test_usage(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        target = mounts.mount(snapshotter.prepare("a", None), tmp_path / "a")
        (target / "big").write_bytes(b"x" * (1 << 20))
        (target / "small").write_bytes(b"y")
        active = snapshotter.usage("a")
        mounts.close()
        snapshotter.commit("c", "a")
        assert snapshotter.usage("c") == active
        assert active.size >= 1 << 20 and active.inodes == 3  # the root and two files

    def test_128_layers_stack(self, snapshotter, mounts: Mounts, tmp_path: Path) -> None:
        """More layers than one page of overlay options can name with absolute paths."""
        parent = self.layer(snapshotter, mounts, tmp_path, "layer-0", None,
                            {"bottom": "way at the bottom", "overwriteme": "FIRST!", "onlyme/bottom": "bye"})
        expected = {"bottom": "way at the bottom", "onlyme/": "", "onlyme/bottom": "bye"}
        for i in range(1, 128):
            snapshotter.prepare(f"layer-{i}-active", parent)
            write(Path(snapshotter.upper_dir(f"layer-{i}-active")), {f"addhere/file-{i}": "same"})
            snapshotter.commit(f"layer-{i}", f"layer-{i}-active")
            parent = f"layer-{i}"
            expected[f"addhere/file-{i}"] = "same"
        last = self.layer(snapshotter, mounts, tmp_path, "layer-128", parent,
                          {"overwriteme": "128 WAS HERE", "onlyme/": None, "onlyme/new": "only me"})
        m = snapshotter.view("full", last)
        assert len(",".join(m[0].options)) > os.sysconf("SC_PAGE_SIZE")
        view = mounts.mount(m, tmp_path / "full")
        assert files_of(view) == {**{k: v for k, v in expected.items() if not k.startswith("onlyme")},
                                  "addhere/": "", "overwriteme": "128 WAS HERE", "onlyme/": "",
                                  "onlyme/new": "only me"}


class TestOverlaySnapshotter(SnapshotterSuite):
    @pytest.fixture
    def snapshotter(self, tmp_path: Path) -> Iterator[OverlaySnapshotter]:
        s = OverlaySnapshotter(tmp_path / "snapshots")
        yield s
        s.close()

    def test_state_survives_reopening_and_debris_is_removed(self, tmp_path: Path) -> None:
        s = OverlaySnapshotter(tmp_path / "root")
        s.prepare("a", None, labels={"k": "v"})
        s.commit("c", "a")
        s.view("v", "c")
        before = s.list()
        s.close()
        for debris in ("new-123", "999", "rm-5"):
            (tmp_path / "root/snapshots" / debris / "fs").mkdir(parents=True)
        s = OverlaySnapshotter(tmp_path / "root")
        assert s.list() == before
        assert sorted(os.listdir(tmp_path / "root/snapshots")) == sorted(
            os.path.basename(os.path.dirname(s.upper_dir(k))) for k in ("c", "v"))
        s.close()

    def test_debris_with_the_next_id_does_not_leak_into_a_new_snapshot(self, snapshotter) -> None:
        # a crash after the directory was renamed but before the transaction committed: the id is reused
        junk = Path(snapshotter.snapshots_dir) / "1/fs/junk"
        junk.mkdir(parents=True)
        snapshotter.prepare("a", None)
        assert snapshotter.upper_dir("a") == str(junk.parent) and os.listdir(junk.parent) == []

    def test_an_active_snapshot_without_parent_is_a_bind_mount(self, snapshotter) -> None:
        (m,) = snapshotter.prepare("a", None)
        assert (m.type, m.source, m.options) == ("bind", snapshotter.upper_dir("a"), ("rbind", "rw"))
        snapshotter.commit("c", "a")
        (m,) = snapshotter.view("v", "c")
        assert (m.type, m.source, m.options) == ("bind", snapshotter.upper_dir("c"), ("rbind", "ro"))
        (m,) = snapshotter.prepare("b", "c")
        assert m.type == "overlay" and f"lowerdir={snapshotter.upper_dir('c')}" in m.options
        assert m.to_dict()["type"] == "overlay"

    def test_unmount_takes_off_stacked_mounts_and_tolerates_none(self, snapshotter, tmp_path: Path) -> None:
        snapshotter.prepare("a", None)
        snapshotter.commit("c", "a")
        target = tmp_path / "t"
        target.mkdir()
        unmount(target)  # nothing mounted: fine
        mount(snapshotter.view("v1", "c"), target)
        mount(snapshotter.view("v2", "c"), target)
        assert len(mounted_under(tmp_path)) == 2
        unmount(target)
        assert mounted_under(tmp_path) == []

    def test_a_root_overlay_cannot_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidArgument):
            OverlaySnapshotter(tmp_path / "a:b")


# ---- images --------------------------------------------------------------------------------------

def make_image(content: ContentStore, images: ImageStore, name: str, layers: list[bytes],
               diff_ids: list[str] | None = None) -> Image:
    """Store layer blobs, a config and a manifest, and name the image."""
    descs = [mf.descriptor(mf.OCI_LAYER, content.put(data), len(data)) for data in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(d) for d in layers]}}).encode()
    manifest = mf.canonical({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                             "config": mf.descriptor(mf.OCI_CONFIG, content.put(config), len(config)),
                             "layers": descs})
    return images.set(name, mf.descriptor(mf.OCI_MANIFEST, content.put(manifest), len(manifest)))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ContentStore, ImageStore, OverlaySnapshotter]]:
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "images"), content)
    snapshotter = OverlaySnapshotter(tmp_path / "snapshots")
    yield content, images, snapshotter
    snapshotter.close()
    images.db.close()


BASE = TarBuilder().dir("etc").file("etc/os-release", b"base").file("bin/tool", b"v1", mode=0o755).bytes()
APP = TarBuilder().file("app/main", b"app").whiteout("etc/os-release").bytes()
OTHER = TarBuilder().file("other", b"other").bytes()


def test_unpack_applies_each_layer_once_named_by_chain_id(stores, mounts: Mounts, tmp_path: Path) -> None:
    content, images, snapshotter = stores
    image = make_image(content, images, "app:1", [BASE, APP])
    chains = chain_ids(image.diff_ids)
    assert snapshotter.unpack(image, content) == chains[-1]
    assert [(i.name, i.parent, i.labels[LABEL_DIFF_ID]) for i in snapshotter.list()] == [
        (chains[0], None, sha256(BASE)), (chains[1], chains[0], sha256(APP))]
    before = snapshotter.list()
    assert snapshotter.unpack(image, content) == chains[-1]
    other = make_image(content, images, "other:1", [BASE, OTHER])
    snapshotter.unpack(other, content)
    after = snapshotter.list()
    assert after[:2] == before and len(after) == 3  # the shared base was not applied again
    rootfs = mounts.mount(snapshotter.prepare("container", chains[-1]), tmp_path / "rootfs")
    assert files_of(rootfs) == {"etc/": "", "bin/": "", "bin/tool": "v1", "app/": "", "app/main": "app"}


def test_concurrent_unpacks_of_one_image_agree(stores) -> None:
    content, images, snapshotter = stores
    image = make_image(content, images, "app:1", [BASE, APP, OTHER])
    with ThreadPoolExecutor(4) as pool:
        tops = list(pool.map(lambda _: snapshotter.unpack(image, content), range(4)))
    assert tops == [chain_ids(image.diff_ids)[-1]] * 4
    assert [i.name for i in snapshotter.list()] == chain_ids(image.diff_ids)  # losers' work removed
    assert len(os.listdir(snapshotter.snapshots_dir)) == 3


def test_chain_ids_follow_the_oci_rule() -> None:
    a, b, c = (f"sha256:{x * 64}" for x in "abc")
    ab = sha256(f"{a} {b}".encode())
    assert chain_ids([a, b, c]) == [a, ab, sha256(f"{ab} {c}".encode())]
    assert chain_ids([]) == []


def test_unpack_refuses_a_layer_whose_diff_id_is_wrong(stores) -> None:
    content, images, snapshotter = stores
    image = make_image(content, images, "bad:1", [BASE, APP], diff_ids=[sha256(BASE), sha256(b"lies")])
    with pytest.raises(InvalidArgument, match="diff_id"):
        snapshotter.unpack(image, content)
    assert [i.name for i in snapshotter.list()] == [sha256(BASE)]  # the good base stays, usable
    assert len(os.listdir(snapshotter.snapshots_dir)) == 1


def test_unpack_of_a_corrupt_layer_leaves_no_snapshot(stores) -> None:
    content, images, snapshotter = stores
    image = make_image(content, images, "bad:1", [BASE[:3000]], diff_ids=[sha256(BASE)])
    with pytest.raises(InvalidArgument):
        snapshotter.unpack(image, content)
    assert snapshotter.list() == [] and os.listdir(snapshotter.snapshots_dir) == []


def test_a_container_commit_rebuilds_the_same_tree(stores, mounts: Mounts, tmp_path: Path) -> None:
    """Changes made in a container (add, modify, delete a lower file, replace a dir, chmod, symlink),
    made into a layer and applied in a fresh snapshotter over the same lowers, give the same tree."""
    content, images, snapshotter = stores
    base = (TarBuilder().dir("etc").file("etc/conf", b"v1").file("etc/motd", b"motd")
            .dir("srv").file("srv/a", b"a").file("srv/sub/b", b"b").file("bin/x", b"x", mode=0o755).bytes())
    image = make_image(content, images, "base:1", [base, APP])
    top = snapshotter.unpack(image, content)
    rootfs = mounts.mount(snapshotter.prepare("ctr", top), tmp_path / "rootfs")
    write(rootfs, {"etc/conf": "v2", "etc/motd": None, "srv/": None, "srv/new": "new", "added/deep/f": "f"})
    os.chmod(rootfs / "bin/x", 0o700)
    os.chown(rootfs / "added/deep/f", 1000, 1000)
    os.symlink("../etc/conf", rootfs / "added/link")
    expected = tree(rootfs)
    mounts.close()

    layer = write_layer(snapshotter.upper_dir("ctr"), content)
    committed = make_image(content, images, "committed:1", [base, APP, content.read(layer.digest)],
                           diff_ids=[*image.diff_ids, layer.diff_id])
    fresh = OverlaySnapshotter(tmp_path / "fresh")
    try:
        again = mounts.mount(fresh.view("v", fresh.unpack(committed, content)), tmp_path / "again")
        assert tree(again) == expected
        assert "srv/a" not in expected and "etc/motd" not in expected
        mounts.close()
    finally:
        fresh.close()


# ---- a real image as a runtime's root filesystem --------------------------------------------------

def _busybox_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", root / "bin" / applet)
    for d, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777), ("root", 0o700),
                    ("etc", 0o755)):
        (root / d).mkdir(exist_ok=True)
        os.chmod(root / d, mode)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox-static is not installed")
def test_a_busybox_image_runs_on_an_overlay_rootfs(stores, mounts: Mounts, tmp_path: Path) -> None:
    content, images, snapshotter = stores
    layer = write_layer(_busybox_tree(tmp_path / "busybox"), content)
    data = content.read(layer.digest)
    image = make_image(content, images, "busybox:test", [data], diff_ids=[layer.diff_id])
    rootfs = mounts.mount(snapshotter.prepare("ctr", snapshotter.unpack(image, content)), tmp_path / "bundle/rootfs")
    cid = f"{SESSION_TAG}-img-{os.getpid()}"
    spec = default_spec(terminal=False, args=["sh", "-c", "echo ok; echo hi > /root/note; rm /bin/ls"])
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["linux"]["cgroupsPath"] = f"/{CGROUP_MARKER}/{cid}"
    (tmp_path / "bundle/config.json").write_text(json.dumps(spec))
    runtime = [str(Path(sys.executable).parent / "skiff-runtime"), "--root", str(tmp_path / "state")]
    try:
        result = subprocess.run([*runtime, "run", "--bundle", str(tmp_path / "bundle"), cid],
                                capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    finally:
        subprocess.run([*runtime, "delete", "--force", cid], capture_output=True, check=False)
        remove_marker_cgroups()
    mounts.close()
    # what the container did is the next layer
    out = io.BytesIO()
    changes = make_layer(snapshotter.upper_dir("ctr"), out)
    applied = apply_layer(io.BytesIO(out.getvalue()), tmp_path / "changes")
    assert applied == changes.diff_id
    assert (tmp_path / "changes/root/note").read_text() == "hi\n"
    assert os.stat(tmp_path / "changes/bin/ls", follow_symlinks=False).st_rdev == 0  # a whiteout
    assert not os.path.exists(tmp_path / "changes/bin/busybox")
    assert OPAQUE_XATTR not in os.listxattr(tmp_path / "changes/root")
