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
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.errors import InvalidArgument, Unsupported
from skiff.image import manifest as mf
from skiff.image._tarreader import TarReader
from skiff.image.layer import (
    EMPTY_LAYER_DIFF_ID,
    OPAQUE_XATTR,
    apply_layer,
    clean_name,
    extract_layer,
    inherit_implied_dirs,
    make_layer,
)
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
    xattrs (overlay's own excluded), and optionally mtimes of non-directories other than whiteouts."""
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
            # A whiteout's time is not carried: a layer writes its marker with mtime 0 (reproducible digests)
            # and applying it makes the whiteout at that moment.
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            if mtimes and not stat.S_ISDIR(st.st_mode) and not whiteout:
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


# ---- the tar reader: what tarfile writes, it reads the same ----------------------------------------

_NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_characters="/\x7f"),
                 min_size=1, max_size=12)


@st.composite
def _members(draw: st.DrawFn) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = []
    for i in range(draw(st.integers(1, 6))):
        depth = draw(st.integers(0, 12))  # deep paths make names past ustar's 100 (+155) bytes
        name = "/".join([*(draw(_NAMES) for _ in range(depth)), f"{draw(_NAMES)}-{i}"])
        info = tarfile.TarInfo(name)
        info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                          tarfile.CHRTYPE, tarfile.FIFOTYPE]))
        info.mode = draw(st.integers(0, 0o7777))
        info.uid, info.gid = draw(st.integers(0, 1 << 24)), draw(st.integers(0, 1 << 24))
        info.mtime = draw(st.integers(0, 1 << 34))
        data = None
        if info.type == tarfile.REGTYPE:
            data = draw(st.binary(max_size=3000))
            info.size = len(data)
        elif info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = "/".join(draw(_NAMES) for _ in range(draw(st.integers(1, 15))))
        elif info.type == tarfile.CHRTYPE:
            info.devmajor, info.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 1 << 20))
        members.append((info, data))
    return members


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _read_all(data: bytes, chunk: int = 1000) -> list[tuple]:
    reader = TarReader(iter([data[i:i + chunk] for i in range(0, len(data), chunk)]))
    found = []
    for entry in reader:
        out = io.BytesIO()
        if entry.size:
            reader.copy_data(lambda _fd, view, out=out: out.write(view), -1)
        name = entry.name.rstrip("/") if entry.type == "5" else entry.name  # tarfile drops a directory's slash
        found.append((name, entry.type, entry.mode & 0o7777, entry.uid, entry.gid, entry.mtime_ns // 10**9,
                      entry.linkname, (entry.devmajor, entry.devminor), out.getvalue()))
    reader.drain()
    return found


def _as_tarfile_reads(data: bytes) -> list[tuple]:
    found = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            kind = "0" if m.isreg() else m.type.decode()
            device = (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0)
            found.append((m.name, kind, m.mode, m.uid, m.gid, int(m.mtime), m.linkname, device,
                          f.read() if f is not None else b""))
    return found


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@settings(deadline=None)
@given(members=_members(), chunk=st.sampled_from([1, 511, 512, 1000, 1 << 16]))
def test_the_reader_reads_what_tarfile_writes(fmt: int, members: list, chunk: int) -> None:
    try:
        data = _tar(members, fmt)
    except ValueError:
        return  # ustar cannot hold this name, link or number
    assert _read_all(data, chunk) == _as_tarfile_reads(data)


def _header(name: bytes, kind: bytes = b"0", size: int = 0, checksum_delta: int = 0) -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108], block[108:116], block[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    block[124:136], block[136:148] = b"%011o\0" % size, b"%011o\0" % MTIME
    block[156:157], block[257:265] = kind, b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) + checksum_delta)
    return bytes(block)


def _pax(records: dict[str, bytes], global_: bool = False) -> bytes:
    body = b""
    for key, value in records.items():
        record = b" " + key.encode() + b"=" + value + b"\n"
        length = len(record) + 1
        length = len(record) + len(str(length + len(str(length)) - 1))
        body += str(length).encode() + record
    return _header(b"pax", b"g" if global_ else b"x", len(body)) + body + bytes(-len(body) % 512)


def test_the_reader_takes_pax_records_exact_times_and_binary_xattrs_and_ignores_globals() -> None:
    data = (_pax({"uid": b"4000000000", "path": b"global"}, global_=True)  # ignored, as Docker does
            + _pax({"path": b"a/" + b"x" * 300, "SCHILY.xattr.user.k": b"\xff\x00\x01", "gid": b"4000000001",
                    "mtime": b"1600000000.123456789"})
            + _header(b"short") + _header(b"b") + bytes(1024))
    first, second = list(TarReader(iter([data])))
    assert (first.name, first.uid, first.gid, first.mtime_ns, first.xattrs) == (
        "a/" + "x" * 300, 0, 4000000001, 1600000000_123456789, {"user.k": b"\xff\x00\x01"})
    assert (second.name, second.uid, second.gid, second.mtime_ns, second.xattrs) == ("b", 0, 0, MTIME * 10**9, {})


def test_the_reader_treats_a_v7_regular_file_with_a_slash_as_a_directory() -> None:
    (entry,) = TarReader(iter([_header(b"dir/", b"\0") + bytes(1024)]))
    assert (entry.name, entry.type) == ("dir/", "5")


BAD_TARS = {
    "bad-checksum": lambda: _header(b"a", checksum_delta=1) + bytes(1024),
    "checksum-not-a-number": lambda: _header(b"a")[:148] + b"zzzzzzz\0" + _header(b"a")[156:] + bytes(1024),
    "size-not-a-number": lambda: _header(b"a")[:124] + b"zz" + _header(b"a")[126:] + bytes(1024),
    "sparse": lambda: _header(b"a", b"S") + bytes(1024),
    "pax-sparse": lambda: _pax({"GNU.sparse.major": b"1"}) + _header(b"a") + bytes(1024),
    "unknown-type": lambda: _header(b"a", b"Z") + bytes(1024),
    "pax-too-big": lambda: _header(b"pax", b"x", 2 << 20) + bytes(2 << 20) + bytes(1024),
    "pax-bad-record": lambda: _header(b"pax", b"x", 512) + b"99 path=x\n".ljust(512, b"\0") + bytes(1024),
    "pax-junk-after-a-record": lambda: _header(b"pax", b"x", 512) + b"9 path=x\nxxxxxxxx".ljust(512, b"x")
    + _header(b"a") + bytes(1024),
    "pax-record-shorter-than-its-length": lambda: _header(b"pax", b"x", 512) + b"3 path=x\n".ljust(512, b"\0")
    + _header(b"a") + bytes(1024),
    "pax-nul-in-path": lambda: _pax({"path": b"a\0b"}) + _header(b"a") + bytes(1024),
    "pax-uid-out-of-range": lambda: _pax({"uid": b"99999999999"}) + _header(b"a") + bytes(1024),
    "pax-bad-time": lambda: _pax({"mtime": b"12x"}) + _header(b"a") + bytes(1024),
    "pax-global-bad-record": lambda: _header(b"pax", b"g", 512) + b"99 x=y\n".ljust(512, b"\0") + bytes(1024),
    "pax-without-member": lambda: _pax({"path": b"a"}) + bytes(1024),
    "truncated-in-pax": lambda: _pax({"path": b"x" * 600})[:700],
    "no-end-block": lambda: _header(b"a"),
}


@pytest.mark.parametrize("name", sorted(BAD_TARS))
def test_the_reader_refuses_bad_headers(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        list(TarReader(iter([BAD_TARS[name]()])))
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(BAD_TARS[name]()), tmp_path / "layer")
    assert not (tmp_path / "layer").exists()


# ---- applying: replacing entries, the open-directory cache, streams of chunks ---------------------

def test_later_entries_replace_earlier_ones_of_the_same_layer(tmp_path: Path) -> None:
    data = (TarBuilder().dir("d").file("d/f", b"old").dir("a/b/c").file("a/b/c/1", b"1").file("x/y", b"y")
            .file("a/b/c/2", b"2")         # back into a directory whose fds were closed meanwhile
            .file("d", b"now a file")      # a directory (on the open path) replaced by a file
            .dir("d").file("d/g", b"g")    # and by a directory again
            .symlink("s", "d").file("s", b"file over symlink").dir("t").symlink("t", "d")
            .file("h", b"h").hardlink("h2", "h").file("h2", b"replaced link")
            .bytes())
    apply_layer(io.BytesIO(data), tmp_path / "layer")
    files = {k: v[4] for k, v in tree(tmp_path / "layer").items() if v[0] != stat.S_IFDIR}
    assert files == {"a/b/c/1": b"1", "a/b/c/2": b"2", "x/y": b"y", "d/g": b"g", "s": b"file over symlink",
                     "t": "d", "h": b"h", "h2": b"replaced link"}
    assert os.stat(tmp_path / "layer/h").st_nlink == 1


def test_a_file_over_a_directory_on_the_open_path_cannot_be_written_through(tmp_path: Path) -> None:
    data = TarBuilder().dir("d").file("d/f", b"x").file("d", b"file").file("d/g", b"x").bytes()
    _, error = _attack(tmp_path, data)
    assert error is not None and "where a directory is needed" in str(error)


def test_extract_then_inherit_equals_apply_with_lowers(tmp_path: Path) -> None:
    base = TarBuilder().dir("var", mode=0o750, uid=1, gid=2).dir("var/lib", mode=0o700, uid=5, gid=6).bytes()
    top = TarBuilder().file("var/lib/app/conf", b"c").dir("var", mode=0o755).file("new/dir/f", b"f").bytes()
    apply_layer(io.BytesIO(base), tmp_path / "base")
    apply_layer(io.BytesIO(top), tmp_path / "together", lowers=[str(tmp_path / "base")])
    applied = extract_layer(io.BytesIO(top), tmp_path / "apart")  # without the lowers: as in a parallel unpack
    assert applied.implied_dirs == {("var", "lib"), ("var", "lib", "app"), ("new",), ("new", "dir")}
    assert stat.S_IMODE(os.stat(tmp_path / "apart/var/lib").st_mode) == 0o755  # until it inherits
    inherit_implied_dirs(tmp_path / "apart", applied.implied_dirs, [str(tmp_path / "base")])
    assert tree(tmp_path / "apart", mtimes=True) == tree(tmp_path / "together", mtimes=True)
    t = tree(tmp_path / "apart")
    assert t["var"][1:4] == (0o755, 0, 0)          # its own entry wins over the lower's
    assert t["var/lib"][1:4] == (0o700, 5, 6)      # implied: the lower's attributes
    assert t["var/lib/app"][1:4] == t["new/dir"][1:4] == (0o755, 0, 0)  # in no lower: 0755 root


def test_a_layer_can_arrive_as_chunks(tmp_path: Path) -> None:
    plain = every_entry_type()
    data = gzip.compress(plain)
    chunks = [data[i:i + 777] for i in range(0, len(data), 777)]
    assert extract_layer(chunks, tmp_path / "streamed").diff_id == sha256(plain)
    apply_layer(io.BytesIO(data), tmp_path / "whole")
    assert tree(tmp_path / "streamed", mtimes=True) == tree(tmp_path / "whole", mtimes=True)
    with pytest.raises(InvalidArgument):
        extract_layer(chunks[:len(chunks) // 2], tmp_path / "cut")
    assert not (tmp_path / "cut").exists()


# ---- unpacking an image's layers side by side ------------------------------------------------------

def _image(tmp_path: Path, layers: list[bytes], diff_ids: list[str] | None = None):
    """A content store holding gzip layers and an image (layers, diff_ids) that names them."""
    from types import SimpleNamespace

    from skiff.image.content import ContentStore

    content = ContentStore(str(tmp_path / "content"))
    blobs = [gzip.compress(data) for data in layers]
    descs = [mf.descriptor(mf.OCI_LAYER_GZIP, content.put(b), len(b)) for b in blobs]
    return content, SimpleNamespace(layers=descs, diff_ids=diff_ids or [sha256(d) for d in layers])


def test_layers_unpacked_side_by_side_stack_as_when_applied_in_turn(tmp_path: Path, mounts: Mounts) -> None:
    from skiff.image.snapshot import OverlaySnapshotter, chain_ids

    base = (TarBuilder().dir("var", mode=0o750, uid=1, gid=2).dir("var/lib", mode=0o700, uid=5, gid=6)
            .file("var/lib/old", b"old").file("etc/motd", b"hi").file("big", os.urandom(1 << 20)).bytes())
    middle = TarBuilder().file("var/lib/app/conf", b"c").whiteout("etc/motd").file("big", b"small").bytes()
    top = TarBuilder().opaque("var/lib").file("var/lib/only", b"only").bytes()
    content, image = _image(tmp_path, [base, middle, top])
    snapshots = OverlaySnapshotter(tmp_path / "snapshots")
    try:
        chains = chain_ids(image.diff_ids)
        assert snapshots.unpack(image, content) == chains[-1]
        assert [(i.name, i.parent) for i in snapshots.list()] == [(chains[0], None), (chains[1], chains[0]),
                                                                  (chains[2], chains[1])]
        middle_dir = Path(snapshots.upper_dir(chains[1]))
        assert os.stat(middle_dir / "var/lib").st_mode & 0o7777 == 0o700  # implied: took the base's attributes
        assert (os.stat(middle_dir / "var/lib").st_uid, os.stat(middle_dir / "var").st_gid) == (5, 2)
        view = mounts.mount(snapshots.view("v", chains[-1]), tmp_path / "view")
        files = {k: v[4] for k, v in tree(view).items() if v[0] != stat.S_IFDIR}
        assert files == {"var/lib/only": b"only", "big": b"small"}
    finally:
        snapshots.close()


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_a_failed_layer_stops_the_unpack_and_leaves_no_partial_snapshot(tmp_path: Path, bad: int) -> None:
    from skiff.image.snapshot import OverlaySnapshotter, chain_ids

    layers = [TarBuilder().file(f"f{i}", os.urandom(1 << 20)).file(f"d{i}/g", b"g").bytes() for i in range(3)]
    diff_ids = [sha256(d) for d in layers]
    diff_ids[bad] = sha256(b"lies")  # the layer's bytes match its digest, but not the config's diff_id
    content, image = _image(tmp_path, layers, diff_ids)
    snapshots = OverlaySnapshotter(tmp_path / "snapshots")
    try:
        with pytest.raises(InvalidArgument, match="diff_id"):
            snapshots.unpack(image, content)
        good = chain_ids(diff_ids)[:bad]
        assert [i.name for i in snapshots.list()] == good  # the layers below stay, usable
        assert len(os.listdir(snapshots.snapshots_dir)) == len(good)  # no directory of the others is left
    finally:
        snapshots.close()


def test_the_usage_counted_while_extracting_is_what_a_walk_finds(tmp_path: Path) -> None:
    from skiff.image.snapshot import disk_usage

    data = (TarBuilder().dir("etc").file("etc/big", os.urandom(100_000)).hardlink("etc/big.link", "etc/big")
            .symlink("etc/long", "x" * 300).whiteout("gone").opaque("var/cache").file("a/b/c/implied", b"i")
            .dir("etc", mode=0o700).bytes())  # a directory listed twice is one inode
    applied = extract_layer(io.BytesIO(data), tmp_path / "layer")
    walked = disk_usage(str(tmp_path / "layer"))
    assert applied.usage == (walked.size, walked.inodes)
    replaced = extract_layer(io.BytesIO(TarBuilder().file("f", b"1").file("f", b"2").bytes()), tmp_path / "again")
    assert replaced.usage is None  # something made was removed again: only a walk can tell


def test_unpacking_side_by_side_leaks_no_file_descriptors_or_threads(tmp_path: Path) -> None:
    import threading

    from skiff.image.snapshot import OverlaySnapshotter

    layers = [TarBuilder().file(f"f{i}", os.urandom(1 << 20)).dir(f"d{i}").file(f"d{i}/g", b"g").bytes()
              for i in range(4)]
    content, good = _image(tmp_path / "good", layers)
    _, bad = _image(tmp_path / "good", layers, [sha256(d) for d in layers[:3]] + [sha256(b"lies")])
    snapshots = OverlaySnapshotter(tmp_path / "snapshots")
    try:
        before_fds, before_threads = set(os.listdir("/proc/self/fd")), threading.active_count()
        with pytest.raises(InvalidArgument):
            snapshots.unpack(bad, content)
        snapshots.unpack(good, content)
        assert set(os.listdir("/proc/self/fd")) == before_fds
        assert threading.active_count() == before_threads
    finally:
        snapshots.close()


def test_deep_paths_do_not_exhaust_file_descriptors(tmp_path: Path) -> None:
    """The directories on the open path are kept open only to a bounded depth: a layer nesting far deeper
    applies within a small fd limit (and the daemon's other work keeps its fds)."""
    import resource

    deep = "/".join(["d"] * 400)
    data = TarBuilder().file(f"{deep}/f", b"bottom").file("top", b"t").file(f"{deep}/g", b"again").bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        apply_layer(io.BytesIO(data), tmp_path / "layer")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (tmp_path / "layer" / deep / "f").read_bytes() == b"bottom"
    assert (tmp_path / "layer" / deep / "g").read_bytes() == b"again"
