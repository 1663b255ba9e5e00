"""Layers: applying tars with every entry type and whiteouts, stacking them as overlay lowers the way
Docker shows them, making layers from upper dirs, and archives that try to escape or are broken.

The helpers at the top (``TarBuilder``, ``tree``, ``Mounts``) are shared with the snapshot and GC tests.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import socket
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.errors import InvalidArgument, Unsupported
from skiff.image import manifest as mf
from skiff.image.layer import EMPTY_LAYER_DIFF_ID, OPAQUE_XATTR, apply_layer, clean_name, make_layer
from skiff.image.snapshot import Mount, mount, unmount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers need root (mknod, chown, trusted xattrs, mounts)")

MTIME = 1_600_000_000


# ---- shared helpers ------------------------------------------------------------------------------

class TarBuilder:
    """A layer tar written entry by entry with tarfile (PAX format, like Docker's)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *, mode: int = 0o644,
            uid: int = 0, gid: int = 0, mtime: int = MTIME, linkname: str = "", dev: tuple[int, int] = (0, 0),
            xattrs: dict[str, bytes] | None = None) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
        info.linkname, (info.devmajor, info.devminor) = linkname, dev
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in (xattrs or {}).items()}
        if data is not None:
            info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def file(self, name: str, data: bytes = b"", **kw: object) -> TarBuilder:
        return self.add(name, tarfile.REGTYPE, data, **kw)  # type: ignore[arg-type]

    def dir(self, name: str, mode: int = 0o755, **kw: object) -> TarBuilder:
        return self.add(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]

    def symlink(self, name: str, target: str, **kw: object) -> TarBuilder:
        return self.add(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]

    def hardlink(self, name: str, target: str) -> TarBuilder:
        return self.add(name, tarfile.LNKTYPE, linkname=target)

    def whiteout(self, path: str) -> TarBuilder:
        head, _, base = path.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, directory: str) -> TarBuilder:
        return self.file(f"{directory}/.wh..wh..opq")

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def tree(root: str | Path, mtimes: bool = False) -> dict[str, tuple]:
    """Everything under ``root`` as comparable tuples: kind, mode, owner, content / target / device,
    xattrs (overlay's own excluded), and optionally mtimes of non-directories."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                detail: object = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                detail = None
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)
                      if not k.startswith(("trusted.overlay.", "security.selinux"))}
            entry: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, xattrs)
            if mtimes and not stat.S_ISDIR(st.st_mode):
                entry += (int(st.st_mtime),)
            result[os.path.relpath(path, root)] = entry
    return result


class Mounts:
    """Mounts made by a test, all unmounted by ``close`` (also when the test failed half-way)."""

    def __init__(self) -> None:
        self.targets: list[Path] = []

    def mount(self, mounts: list[Mount], target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        mount(mounts, target)
        self.targets.append(target)
        return target

    def close(self) -> None:
        while self.targets:
            unmount(self.targets.pop())


def mounted_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts()
    yield m
    m.close()
    assert mounted_under(tmp_path) == []


def overlay(lowers: list[Path]) -> list[Mount]:
    """A read-only overlay of layer directories (top first), as a view of them is mounted."""
    return [Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(str(p) for p in lowers)))]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- applying ------------------------------------------------------------------------------------

CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # v2, effective, cap_net_bind_service


def every_entry_type() -> bytes:
    return (TarBuilder()
            .dir("etc", mode=0o751, uid=3, gid=4, mtime=MTIME - 10)
            .file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, uid=1000, gid=1001)
            .file("bin/su", b"\x7fELF", mode=0o4755, uid=1000, xattrs={"security.capability": CAPABILITY})
            .file("bin/wall", b"wall", mode=0o2755, gid=5)
            .dir("tmp", mode=0o1777)
            .file("data", b"x", xattrs={"user.note": b"hello", "user.bin": b"\xff\xfe\x00\x01"})
            .symlink("etc/localtime", "/usr/share/zoneinfo/UTC", uid=7)
            .symlink("relative", "etc/hosts")
            .hardlink("etc/hosts.link", "etc/hosts")
            .add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
            .add("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0))
            .add("run/fifo", tarfile.FIFOTYPE, mode=0o620)
            .file("big", os.urandom(3 << 20))
            .bytes())


def test_every_entry_type_is_applied_faithfully(tmp_path: Path) -> None:
    data = every_entry_type()
    diff_id = apply_layer(io.BytesIO(data), tmp_path / "layer", mf.OCI_LAYER)
    assert diff_id == sha256(data)
    t = tree(tmp_path / "layer", mtimes=True)
    assert t["etc"][:4] == (stat.S_IFDIR, 0o751, 3, 4)
    assert t["etc/hosts"] == (stat.S_IFREG, 0o640, 1000, 1001, b"127.0.0.1 localhost\n", {}, MTIME)
    assert t["bin/su"][:4] == (stat.S_IFREG, 0o4755, 1000, 0)  # setuid survives the chown
    assert t["bin/su"][5] == {"security.capability": CAPABILITY}  # and so does the capability
    assert t["bin/wall"][1] == 0o2755 and t["tmp"][1] == 0o1777
    assert t["data"][5] == {"user.note": b"hello", "user.bin": b"\xff\xfe\x00\x01"}
    assert t["etc/localtime"][:5] == (stat.S_IFLNK, 0o777, 7, 0, "/usr/share/zoneinfo/UTC")
    assert t["relative"][4] == "etc/hosts"
    assert os.stat(tmp_path / "layer/etc/hosts.link").st_ino == os.stat(tmp_path / "layer/etc/hosts").st_ino
    assert t["dev/null"][:5] == (stat.S_IFCHR, 0o666, 0, 0, (1, 3))
    assert t["dev/loop0"][:5] == (stat.S_IFBLK, 0o660, 0, 6, (7, 0))
    assert t["run/fifo"][:2] == (stat.S_IFIFO, 0o620)
    assert os.stat(tmp_path / "layer/etc").st_mtime == MTIME - 10  # set after its entries were made
    assert t["bin"][:4] == (stat.S_IFDIR, 0o755, 0, 0)  # implied by bin/su: 0755 root


def test_compressed_and_plain_give_the_same_diff_id(tmp_path: Path) -> None:
    data = every_entry_type()
    plain = apply_layer(io.BytesIO(data), tmp_path / "plain")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(data))
    assert apply_layer(path, tmp_path / "gz", mf.DOCKER_LAYER_GZIP) == plain == sha256(data)
    # docker save writes uncompressed layers under a gzip media type: the magic number decides
    assert apply_layer(io.BytesIO(data), tmp_path / "mislabelled", mf.OCI_LAYER_GZIP) == plain
    assert tree(tmp_path / "plain", mtimes=True) == tree(tmp_path / "gz", mtimes=True)


def test_an_empty_layer_has_the_well_known_diff_id(tmp_path: Path) -> None:
    assert apply_layer(io.BytesIO(b"\0" * 1024), tmp_path / "empty") == EMPTY_LAYER_DIFF_ID  # Go's tar writer
    assert os.listdir(tmp_path / "empty") == []
    python_tar = TarBuilder().bytes()  # padded to a 10 KiB record: another digest, also empty
    assert apply_layer(io.BytesIO(python_tar), tmp_path / "padded") == sha256(python_tar)


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    data = (TarBuilder().dir("etc").whiteout("etc/motd").opaque("var/cache").file("var/cache/new", b"n")
            .whiteout("gone").file("kept", b"k").whiteout("kept").file(".wh..wh.plnk/123", b"aufs").bytes())
    apply_layer(io.BytesIO(data), tmp_path / "layer")
    layer = tmp_path / "layer"
    for name in ("etc/motd", "gone"):
        st = os.lstat(layer / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert os.getxattr(layer / "var/cache", OPAQUE_XATTR) == b"y"
    assert (layer / "var/cache/new").read_bytes() == b"n"
    assert (layer / "kept").read_bytes() == b"k"  # a whiteout hides lower layers only, not its own
    assert sorted(os.listdir(layer)) == ["etc", "gone", "kept", "var"]  # AUFS metadata skipped, as in Docker


def test_stacked_layers_show_what_docker_shows(tmp_path: Path, mounts: Mounts) -> None:
    base = (TarBuilder().dir("etc").file("etc/conf", b"v1").file("etc/motd", b"hi")
            .dir("var").dir("var/lib").dir("var/lib/app").file("var/lib/app/a", b"a").file("var/lib/app/b", b"b")
            .dir("opt").file("opt/tool/bin", b"tool").file("bin/sh", b"sh", mode=0o755).bytes())
    middle = (TarBuilder().whiteout("etc/conf").dir("var/lib/app", mode=0o700).opaque("var/lib/app")
              .file("var/lib/app/c", b"c").file("bin/sh", b"sh2", mode=0o755).symlink("bin/bash", "sh")
              .hardlink("bin/sh.hard", "bin/sh").bytes())
    top = (TarBuilder().whiteout("opt").file("etc/conf", b"v3").whiteout("bin/bash")
           .dir("opt2").file("opt2/x", b"x").bytes())
    layers = []
    for i, data in enumerate((base, middle, top)):
        layers.append(tmp_path / f"l{i}")
        apply_layer(io.BytesIO(data), layers[-1], lowers=[str(p) for p in reversed(layers[:-1])])
    merged = mounts.mount(overlay(list(reversed(layers))), tmp_path / "merged")
    files = {k: v[4] for k, v in tree(merged).items() if v[0] != stat.S_IFDIR}
    assert files == {"etc/conf": b"v3", "etc/motd": b"hi", "var/lib/app/c": b"c", "bin/sh": b"sh2",
                     "bin/sh.hard": b"sh2", "opt2/x": b"x"}
    assert sorted(os.listdir(merged)) == ["bin", "etc", "opt2", "var"]
    assert stat.S_IMODE(os.stat(merged / "var/lib/app").st_mode) == 0o700
    # var/lib in the middle layer was implied by var/lib/app: it took the base layer's attributes
    assert os.stat(layers[1] / "var/lib").st_mode == os.stat(layers[0] / "var/lib").st_mode


# ---- attacks: nothing outside the target is created or changed -----------------------------------

@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "/", "x/..", "../"]), max_size=8).map("/".join))
def test_clean_names_never_leave_the_root(name: str) -> None:
    try:
        parts = clean_name(name)
    except InvalidArgument:
        return
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts)
    root = "/layer"
    assert os.path.normpath(os.path.join(root, *parts)).startswith(root)


HOST_PWNED = f"/etc/skiff-pwned-{os.getpid()}"


def _attack(tmp_path: Path, data: bytes) -> tuple[Path, Exception | None]:
    jail = tmp_path / "jail"
    (jail / "sentinel").mkdir(parents=True)
    (jail / "sentinel/keep").write_bytes(b"keep")
    target = jail / "deep/layer"
    target.parent.mkdir()
    passwd_links = os.stat("/etc/passwd").st_nlink
    try:
        apply_layer(io.BytesIO(data), target)
        error = None
    except InvalidArgument as e:
        error = e
    assert sorted(os.listdir(jail)) == ["deep", "sentinel"]
    assert os.listdir(jail / "sentinel") == ["keep"] and (jail / "sentinel/keep").read_bytes() == b"keep"
    assert os.stat(jail / "sentinel/keep").st_nlink == 1
    assert os.listxattr(jail / "sentinel") == [] or OPAQUE_XATTR not in os.listxattr(jail / "sentinel")
    assert not os.path.lexists(HOST_PWNED) and os.stat("/etc/passwd").st_nlink == passwd_links
    if error is not None:
        assert not target.exists(), "a failed layer must leave nothing behind"
        assert os.listdir(jail / "deep") == []
    return target, error


REFUSED = {
    "dotdot": TarBuilder().file("../../sentinel/evil", b"x"),
    "dotdot-inside-first": TarBuilder().file("a/../../../sentinel/evil", b"x"),
    "symlink-to-root-then-through": TarBuilder().symlink("a", "/").file(f"a{HOST_PWNED}", b"x"),
    "symlink-relative-escape": TarBuilder().symlink("a", "../../sentinel").file("a/evil", b"x"),
    "symlink-dotdots": TarBuilder().symlink("a", "../../../../../../..").file("a/tmp/evil", b"x"),
    "hardlink-host-passwd": TarBuilder().hardlink("passwd", "/etc/passwd"),
    "hardlink-escape": TarBuilder().hardlink("keep", "../../sentinel/keep"),
    "hardlink-to-dir": TarBuilder().dir("d").hardlink("h", "d"),
    "whiteout-through-symlink": TarBuilder().symlink("a", "../../sentinel").whiteout("a/keep"),
    "opaque-through-symlink": TarBuilder().symlink("a", "../../sentinel").opaque("a"),
    "file-as-parent": TarBuilder().file("f", b"x").file("f/evil", b"x"),
    "whiteout-of-dotdot": TarBuilder().file(".wh...", b""),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_escaping_archives_are_refused(tmp_path: Path, name: str) -> None:
    _, error = _attack(tmp_path, REFUSED[name].bytes())
    assert error is not None, f"{name} was accepted"


def test_absolute_names_land_inside(tmp_path: Path) -> None:
    target, error = _attack(tmp_path, TarBuilder().file(HOST_PWNED, b"x").file("/sentinel/evil", b"y").bytes())
    assert error is None
    assert (target / HOST_PWNED.lstrip("/")).read_bytes() == b"x" and (target / "sentinel/evil").read_bytes() == b"y"


def test_an_entry_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    data = (TarBuilder().symlink("f", "../../sentinel/keep").file("f", b"evil")
            .symlink("d", "../../sentinel").dir("d").file("d/keep", b"evil")
            .symlink("s", "../../sentinel/keep").hardlink("h", "s")
            .symlink("p", "/etc/passwd").add("p", tarfile.CHRTYPE, dev=(1, 3)).bytes())
    target, error = _attack(tmp_path, data)
    assert error is None
    assert (target / "f").read_bytes() == b"evil" and not (target / "f").is_symlink()
    assert (target / "d/keep").read_bytes() == b"evil" and not (target / "d").is_symlink()
    assert os.readlink(target / "h") == "../../sentinel/keep"  # a link to the symlink itself
    assert stat.S_ISCHR(os.lstat(target / "p").st_mode)


def test_overlay_xattrs_in_a_layer_are_dropped(tmp_path: Path) -> None:
    data = TarBuilder().dir("d", xattrs={"trusted.overlay.redirect": b"/etc", "trusted.overlay.opaque": b"y",
                                         "user.ok": b"1"}).bytes()
    apply_layer(io.BytesIO(data), tmp_path / "layer")
    assert os.listxattr(tmp_path / "layer/d") == ["user.ok"]


def _truncated_at_header() -> bytes:
    data = TarBuilder().file("a", b"x" * 100).file("b", b"y").bytes()
    return data[:1024]  # a's header and data, then nothing: no end-of-archive block


def _bad_crc() -> bytes:
    gz = bytearray(gzip.compress(TarBuilder().file("a", b"x" * 5000).bytes()))
    gz[-8] ^= 0xFF
    return bytes(gz)


BROKEN = {
    "truncated-gzip": lambda: gzip.compress(every_entry_type())[:5000],
    "truncated-tar-in-header": lambda: every_entry_type()[:4000],
    "truncated-tar-in-data": lambda: every_entry_type()[:-1_000_000],
    "truncated-tar-at-header": _truncated_at_header,
    "truncated-end-block": lambda: TarBuilder().file("a", b"x").bytes()[:1024 + 100],
    "garbage": lambda: os.urandom(3000),
    "gzipped-garbage": lambda: gzip.compress(os.urandom(3000)),
    "bad-gzip-crc": _bad_crc,
    "empty": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_archives_are_refused_and_leave_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(BROKEN[name]()), tmp_path / "layer")
    assert not (tmp_path / "layer").exists()


def test_target_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer/old").write_text("old")
    with pytest.raises(InvalidArgument, match="empty"):
        apply_layer(io.BytesIO(TarBuilder().bytes()), tmp_path / "layer")
    assert (tmp_path / "layer/old").read_text() == "old"


def test_unknown_media_types_and_zstd_without_its_module(tmp_path: Path) -> None:
    with pytest.raises(Unsupported):
        apply_layer(io.BytesIO(TarBuilder().bytes()), tmp_path / "a", "application/vnd.oci.image.config.v1+json")
    if importlib.util.find_spec("zstandard") is not None:
        pytest.skip("zstandard is installed: the unsupported path cannot be seen")
    with pytest.raises(Unsupported, match="zstandard"):
        apply_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100), tmp_path / "b", mf.OCI_LAYER_ZSTD)
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is None, reason="zstandard is not installed")
def test_zstd_layers(tmp_path: Path) -> None:
    import zstandard

    data = every_entry_type()
    assert apply_layer(io.BytesIO(zstandard.compress(data)), tmp_path / "z", mf.OCI_LAYER_ZSTD) == sha256(data)


# ---- making --------------------------------------------------------------------------------------

def _upper_dir(path: Path) -> Path:
    """An upper dir as overlay leaves it: files, a whiteout, an opaque dir, links, a socket."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/new").write_text("new")
    os.chown(path / "etc/new", 1000, 1000)
    os.chmod(path / "etc/new", 0o4750)
    os.setxattr(path / "etc/new", "user.k", b"\xff")
    os.mknod(path / "etc/removed", stat.S_IFCHR, 0)
    (path / "var").mkdir()
    os.setxattr(path / "var", OPAQUE_XATTR, b"y")
    (path / "var/only").write_text("only")
    os.link(path / "etc/new", path / "var/hard")
    os.symlink("/etc/new", path / "link")
    os.mkfifo(path / "fifo")
    os.mknod(path / "tty", stat.S_IFCHR | 0o620, os.makedev(4, 1))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path / "sock"))
    return path


def _entries(blob: bytes) -> list[tuple[str, bytes, str]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        return [(m.name, m.type, m.linkname) for m in t]


def test_make_layer_converts_overlay_markers(tmp_path: Path) -> None:
    out = io.BytesIO()
    layer = make_layer(_upper_dir(tmp_path / "upper"), out)
    blob = out.getvalue()
    assert (layer.digest, layer.size, layer.media_type) == (sha256(blob), len(blob), mf.OCI_LAYER_GZIP)
    assert layer.diff_id == sha256(gzip.decompress(blob))
    assert _entries(blob) == [
        ("etc", tarfile.DIRTYPE, ""), ("etc/new", tarfile.REGTYPE, ""), ("etc/.wh.removed", tarfile.REGTYPE, ""),
        ("fifo", tarfile.FIFOTYPE, ""), ("link", tarfile.SYMTYPE, "/etc/new"), ("tty", tarfile.CHRTYPE, ""),
        ("var", tarfile.DIRTYPE, ""), ("var/.wh..wh..opq", tarfile.REGTYPE, ""),
        ("var/hard", tarfile.LNKTYPE, "etc/new"), ("var/only", tarfile.REGTYPE, ""),
    ]


def test_make_layer_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    upper = _upper_dir(tmp_path / "upper")
    os.unlink(upper / "sock")
    first, second = io.BytesIO(), io.BytesIO()
    assert make_layer(upper, first) == make_layer(upper, second)
    assert first.getvalue() == second.getvalue()
    uncompressed = io.BytesIO()
    plain = make_layer(upper, uncompressed, compress=False)
    assert plain.diff_id == plain.digest == make_layer(upper, io.BytesIO()).diff_id
    # applied again, the upper dir comes back exactly: whiteouts, opaque marker, owners, modes, xattrs
    assert apply_layer(io.BytesIO(first.getvalue()), tmp_path / "again") == plain.diff_id
    assert tree(tmp_path / "again", mtimes=True) == tree(upper, mtimes=True)
    assert os.getxattr(tmp_path / "again/var", OPAQUE_XATTR) == b"y"


def test_make_layer_refuses_redirects(tmp_path: Path) -> None:
    (tmp_path / "upper/d").mkdir(parents=True)
    os.setxattr(tmp_path / "upper/d", "trusted.overlay.redirect", b"/old")
    with pytest.raises(Unsupported, match="redirect"):
        make_layer(tmp_path / "upper", io.BytesIO())


def test_applying_layers_leaks_no_file_descriptors_or_threads(tmp_path: Path) -> None:
    """Directory fds are cached while extracting and gzip is inflated on a thread: both must be gone after."""
    import threading

    data = gzip.compress(every_entry_type())
    bad = data[: len(data) // 2]
    before_fds, before_threads = set(os.listdir("/proc/self/fd")), threading.active_count()
    for i in range(3):
        apply_layer(io.BytesIO(data), tmp_path / f"ok{i}", mf.OCI_LAYER_GZIP)
        with pytest.raises(InvalidArgument):
            apply_layer(io.BytesIO(bad), tmp_path / f"bad{i}", mf.OCI_LAYER_GZIP)
    assert set(os.listdir("/proc/self/fd")) == before_fds
    assert threading.active_count() == before_threads
