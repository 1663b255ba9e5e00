"""Image layers: applying a layer tar into a directory, and making a layer tar from an overlay upper dir.

Each layer is applied into its own directory, to be stacked later as an overlay lowerdir (containerd's
overlay model), so OCI whiteouts are converted on the way in: ``.wh.<name>`` becomes an overlay
whiteout (a 0:0 character device) at ``<name>``, and ``.wh..wh..opq`` marks its directory opaque
(``trusted.overlay.opaque=y``). ``make_layer`` is the inverse, used to commit a container or a build
step: it tars an overlay upper directory back into the OCI format.

A layer is untrusted input. Extraction never writes outside the target directory: every entry name is
cleaned lexically (leading ``/`` stripped, ``..`` above the root refused), parent directories are opened
one component at a time from a directory fd with ``O_NOFOLLOW`` (a symlink or file where a directory is
needed is an error, never followed), every entry is created with ``O_EXCL`` semantics (an existing entry
of the same layer is removed first, never written through), hard links must point at an entry of the
same layer, and overlay's own xattrs are dropped from the tar (only the opaque marker may set one). A
corrupt or truncated archive raises ``InvalidArgument`` and the target directory is removed, so nothing
half-written is left behind.

Speed: the layer is read, inflated and hashed (its diff_id) on a thread of its own while the calling
thread parses headers (``_tarreader``, much leaner than ``tarfile``) and writes files straight from the
inflated chunks. Applying does not need the layers below, so layers can be applied side by side
(``extract_layer`` in parallel, then ``inherit_implied_dirs`` once the lowers exist); ``apply_layer`` is
both steps in one.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from skiff.errors import InvalidArgument, SystemFailure, Unsupported
from skiff.image import manifest as mf
from skiff.image._tarreader import CHAR, DIRECTORY, FIFO, HARDLINK, REGULAR, SYMLINK, TarEntry, TarReader
from skiff.image.content import ContentStore

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# The diff_id of a layer with no entries (1024 zero bytes), which Docker writes for metadata-only steps.
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

_PAX_XATTR = "SCHILY.xattr."
# Overlay's private xattrs mean something to the kernel (redirects, metacopy, opacity): a layer must not
# smuggle them in, and an upper dir's own ones are translated (opaque) or refused (redirect, metacopy).
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_UNEXPORTABLE_XATTRS = ("security.selinux",)  # the host's label, meaningless in an image
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_RAW_CHUNK = 256 << 10  # compressed bytes inflated at a time: ~1 MiB out, cache-sized
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Directories of the open path kept open at most: a layer's nesting must not exhaust the process's fds.
_KEPT_DEPTH = 32


# --------------------------------------------------------------------------------------------------
# Reading: decompression and the diff_id
# --------------------------------------------------------------------------------------------------

def compression_of(media_type: str | None) -> str | None:
    """'gzip', 'zstd' or '' (plain tar) for a layer media type; None when the type does not say."""
    if media_type is None:
        return None
    if media_type.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith((".tar", ".diff.tar")):
        return ""
    raise Unsupported(f"unsupported layer media type {media_type!r}")


class PrefixedStream:
    """A stream with bytes already read from its head put back in front (for sniffing magic numbers);
    the archive loader uses it too."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n < 0:
            data, self.head = self.head + self.rest.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data + (self.rest.read(n - len(data)) if len(data) < n else b"")


class _ZstdReader:
    """zstd decompression (all frames), its errors reported as a corrupt layer."""

    def __init__(self, raw: BinaryIO) -> None:
        try:
            import zstandard  # optional: only zstd layers need it
        except ImportError:
            raise Unsupported("zstd-compressed layers need the 'zstandard' Python module, which is not "
                              "installed") from None
        self._error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        try:
            return self._reader.read(n)
        except self._error as e:
            raise InvalidArgument(f"layer is corrupt or truncated (zstd: {e})") from None


def _gunzipped(raw: BinaryIO) -> Iterator[bytes]:
    """gzip inflated chunk by chunk; multi-member files are handled, a truncated stream is an EOFError."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while data := raw.read(_RAW_CHUNK):
        while data:
            out = inflater.decompress(data)
            if out:
                yield out
            data = inflater.unused_data
            if inflater.eof and data:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
    if not inflater.eof:
        raise EOFError("compressed stream ended before the end-of-stream marker")


def _chunks_of(reader: BinaryIO | _ZstdReader) -> Iterator[bytes]:
    while data := reader.read(_CHUNK):
        yield data


def _uncompressed_chunks(raw: BinaryIO, media_type: str | None) -> Iterator[bytes]:
    """The uncompressed tar as chunks. The magic number decides (Docker writes uncompressed layers under
    gzip media types in ``docker save``); the media type only has to name a layer."""
    compression_of(media_type)
    head = raw.read(4)
    stream = PrefixedStream(head, raw)
    if head.startswith(_GZIP_MAGIC):
        return _gunzipped(stream)  # type: ignore[arg-type]
    if head == _ZSTD_MAGIC:
        return _chunks_of(_ZstdReader(stream))  # type: ignore[arg-type]
    if not head:
        raise InvalidArgument("layer is empty (not even an end-of-archive block)")
    return _chunks_of(stream)  # type: ignore[arg-type]


class _Inflow:
    """The uncompressed layer, produced on a thread of its own: read, inflated and hashed (the diff_id)
    there, so that it overlaps parsing and writing on the caller's thread; zlib and sha256 release the
    GIL, which is what GNU tar gets by piping through a separate gzip process."""

    _AHEAD = 8  # chunks made ahead of the reader

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._source = chunks
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(self._AHEAD)
        self._hash = hashlib.sha256()
        self._finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="layer-inflow", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in self._source:
                self._hash.update(chunk)
                if not self._put(chunk):
                    return
            self._put(None)
        except BaseException as e:  # handed to the reader, which raises it
            self._put(e)

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[bytes]:
        while not self._finished:
            item = self._queue.get()
            if item is None:
                self._finished = True
                return
            if isinstance(item, BaseException):
                self._finished = True
                if isinstance(item, (EOFError, zlib.error)):
                    raise InvalidArgument(f"layer is corrupt or truncated (decompression failed: {item})") from None
                raise item
            yield item

    @property
    def diff_id(self) -> str:
        """The sha256 of the whole uncompressed stream (only once it has all been read)."""
        assert self._finished, "the layer stream was not read to its end"
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


# --------------------------------------------------------------------------------------------------
# Applying: a symlink-safe tree of directory fds
# --------------------------------------------------------------------------------------------------

def clean_name(name: str) -> list[str]:
    """The components of a tar entry name below the layer root. A leading ``/`` is dropped (an absolute
    name lands inside the root, as Docker does); ``..`` is resolved lexically and may not climb above
    the root. Symlinks are never consulted: extraction never follows them."""
    trimmed = name[2:] if name.startswith("./") else name
    if trimmed and trimmed[0] not in "./" and "/." not in trimmed and "//" not in trimmed:
        return trimmed.rstrip("/").split("/")  # the common case: no empty, '.' or '..' component
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgument(f"layer entry {name!r} points outside the layer root")
            parts.pop()
        else:
            parts.append(part)
    return parts


def _proc(fd: int, name: str) -> str:
    """A path that reaches ``name`` in the directory ``fd`` for calls that take no dir_fd (xattrs);
    the magic link resolves to our fd's directory, and ``name`` itself is not followed (l*xattr)."""
    return f"/proc/self/fd/{fd}/{name}"


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_child(dir_fd: int, name: str, parts: Sequence[str]) -> int:
    """The directory ``name`` in ``dir_fd``, never through a symlink (``parts`` names it in errors)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidArgument(f"layer path {'/'.join(parts)!r} is a symlink or a file where a directory "
                                  "is needed (it is never followed)") from None
        raise


def _open_path(root_fd: int, parts: Sequence[str]) -> int:
    """An fd for the directory ``parts`` below ``root_fd``, walked one component at a time."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            nfd = _open_child(fd, name, parts[:i + 1])
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Tree:
    """A directory tree reached only through fds opened from its root with O_NOFOLLOW, one component at a
    time, so no symlink (whatever the layer put there) is ever followed.

    The directories on the path last opened stay open: tar entries come depth first, so the next entry's
    parent is nearly always on that path, and one ``openat`` (or none) reaches it. The open path is
    dropped whenever a directory in the tree is removed. Directories the layer implies without an entry
    of their own are made 0755 root and remembered in ``implied`` (see ``inherit_implied_dirs``).
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.implied: set[tuple[str, ...]] = set()
        self.removed = False  # did any entry replace another (so counting what was made is not usage)?
        self._names: list[str] = []
        self._fds: list[int] = []  # _fds[i] is the directory _names[:i + 1]

    def forget(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._names.clear()

    def open_dir(self, parts: Sequence[str], create: bool = False) -> int:
        """An fd for the directory ``parts`` (the caller closes it); missing ones are made if ``create``."""
        names, fds = self._names, self._fds
        head = parts[:_KEPT_DEPTH]
        if head != names:
            same = 0
            for have, want in zip(names, head, strict=False):
                if have != want:
                    break
                same += 1
            for fd in fds[same:]:
                os.close(fd)
            del fds[same:], names[same:]
            for i in range(same, len(head)):
                fds.append(self._child(fds[-1] if fds else self.root_fd, parts, i, create))
                names.append(parts[i])
        fd = os.dup(fds[-1] if fds else self.root_fd)
        try:
            for i in range(len(head), len(parts)):  # deeper than the kept path: one fd at a time
                child = self._child(fd, parts, i, create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _child(self, parent_fd: int, parts: Sequence[str], i: int, create: bool) -> int:
        try:
            return _open_child(parent_fd, parts[i], parts[:i + 1])
        except FileNotFoundError:
            if not create:
                raise
        os.mkdir(parts[i], 0o700, dir_fd=parent_fd)
        os.chown(parts[i], 0, 0, dir_fd=parent_fd, follow_symlinks=False)
        os.chmod(parts[i], 0o755, dir_fd=parent_fd)
        self.implied.add(tuple(parts[:i + 1]))
        return _open_child(parent_fd, parts[i], parts[:i + 1])


def _remove(dir_fd: int, name: str, keep_dir: bool = False, tree: _Tree | None = None) -> bool:
    """Remove whatever is at ``name`` (a directory with its contents, a symlink itself, never its target).
    Returns True if a directory was kept (``keep_dir`` and both are directories)."""
    st = _lstat(dir_fd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode) and keep_dir:
        return True
    if tree is not None:
        tree.removed = True
    if stat.S_ISDIR(st.st_mode):
        if tree is not None:
            tree.forget()  # the open path may run through what goes
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return False


def _replacing(make: Callable[[], object], dir_fd: int, name: str, tree: _Tree) -> None:
    """Create an entry with ``make``; if the layer already put one at ``name``, that one goes first."""
    try:
        make()
    except FileExistsError:
        _remove(dir_fd, name, tree=tree)
        make()


class _Applier:
    """Applies one tar's entries into a ``_Tree`` (see ``apply_layer``)."""

    def __init__(self, tree: _Tree, reader: TarReader) -> None:
        self.tree, self.reader = tree, reader
        self.dir_times: list[tuple[list[str], int]] = []
        self.blocks: dict[int, int] = {}  # inode -> 512-byte blocks of everything made (see usage)

    def _count(self, st: os.stat_result) -> None:
        self.blocks[st.st_ino] = st.st_blocks

    @property
    def usage(self) -> tuple[int, int] | None:
        """(bytes of disk blocks, inodes) of the tree, as ``du`` counts them, from what was made; None if an
        entry replaced another (then only a walk can tell)."""
        if self.tree.removed:
            return None
        self._count(os.fstat(self.tree.root_fd))
        return sum(self.blocks.values()) * 512, len(self.blocks)

    def apply(self, entry: TarEntry) -> None:
        parts = clean_name(entry.name)
        if not parts:
            if entry.type != DIRECTORY:
                raise InvalidArgument(f"layer entry {entry.name!r} names the root but is not a directory")
            return  # the root's attributes are the snapshot's, as containerd does
        if parts[0].startswith(WHITEOUT_META_PREFIX) and parts != [OPAQUE_MARKER]:
            return  # AUFS metadata (.wh..wh.plnk/, .wh..wh.aufs): not part of the filesystem, as in Docker
        pfd = self.tree.open_dir(parts[:-1], create=True)
        try:
            if parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(pfd, parts, entry)
            elif entry.type == REGULAR:
                self._regular(pfd, parts[-1], entry)
            elif entry.type == DIRECTORY:
                self._directory(pfd, parts, entry)
            elif entry.type == HARDLINK:
                self._hardlink(pfd, parts, entry)
            else:
                self._special(pfd, parts[-1], entry)
        finally:
            os.close(pfd)

    def _whiteout(self, pfd: int, parts: list[str], entry: TarEntry) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other metadata: nothing to apply
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise InvalidArgument(f"invalid whiteout {entry.name!r}")
        if _lstat(pfd, name) is not None:
            return  # whiteouts hide lower layers only; this layer's own entry stays
        os.mknod(name, stat.S_IFCHR, 0, dir_fd=pfd)  # mode 0, as overlay makes its own whiteouts
        os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        self._count(os.stat(name, dir_fd=pfd, follow_symlinks=False))

    # Metadata order, for every kind: owner first (chown clears setuid/setgid and file capabilities),
    # then xattrs, then the mode; mtimes last (directories' at the very end, after their entries).

    def _regular(self, pfd: int, base: str, entry: TarEntry) -> None:
        try:
            fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=pfd)
        except FileExistsError:  # the layer already put something there: it goes first
            _remove(pfd, base, tree=self.tree)
            fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            if entry.size:
                self.reader.copy_data(os.write, fd)
            os.fchown(fd, entry.uid, entry.gid)
            if entry.xattrs:
                self._xattrs(fd, entry)
            os.fchmod(fd, entry.mode & 0o7777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        self._count(os.stat(base, dir_fd=pfd, follow_symlinks=False))  # closed: no speculative preallocation

    def _directory(self, pfd: int, parts: list[str], entry: TarEntry) -> None:
        base = parts[-1]
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not _remove(pfd, base, keep_dir=True, tree=self.tree):  # a non-directory: replaced
                os.mkdir(base, 0o700, dir_fd=pfd)
        self.tree.implied.discard(tuple(parts))  # it has its own entry now
        os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if entry.xattrs:
            self._xattrs(_proc(pfd, base), entry)
        os.chmod(base, entry.mode & 0o7777, dir_fd=pfd)  # just made or checked here: not a symlink
        self.dir_times.append((parts, entry.mtime_ns))

    def _special(self, pfd: int, base: str, entry: TarEntry) -> None:
        """Symlinks, devices and fifos."""
        if entry.type == SYMLINK:
            if not entry.linkname:
                raise InvalidArgument(f"symlink {entry.name!r} has an empty target")
            _replacing(lambda: os.symlink(entry.linkname, base, dir_fd=pfd), pfd, base, self.tree)
        elif entry.type == FIFO:
            _replacing(lambda: os.mkfifo(base, 0o600, dir_fd=pfd), pfd, base, self.tree)
        else:
            kind = stat.S_IFCHR if entry.type == CHAR else stat.S_IFBLK
            device = os.makedev(entry.devmajor, entry.devminor)
            _replacing(lambda: os.mknod(base, kind | 0o600, device, dir_fd=pfd), pfd, base, self.tree)
        os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if entry.xattrs:
            self._xattrs(_proc(pfd, base), entry)
        if entry.type != SYMLINK:
            os.chmod(base, entry.mode & 0o7777, dir_fd=pfd)  # just made here: not a symlink
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        self._count(os.stat(base, dir_fd=pfd, follow_symlinks=False))

    def _hardlink(self, pfd: int, parts: list[str], entry: TarEntry) -> None:
        target = clean_name(entry.linkname)
        if not target or target == parts:
            raise InvalidArgument(f"hard link {entry.name!r} has an invalid target {entry.linkname!r}")
        try:
            tfd = self.tree.open_dir(target[:-1])
        except FileNotFoundError:
            tfd = None
        try:
            st = _lstat(tfd, target[-1]) if tfd is not None else None
            if st is None or stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"hard link {entry.name!r} -> {entry.linkname!r}: the target must be a "
                                      "non-directory entry earlier in the same layer")
            _remove(pfd, parts[-1], tree=self.tree)
            try:
                os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:  # the entry it replaced contained its target
                raise InvalidArgument(f"hard link {entry.name!r}: target {entry.linkname!r} vanished") from None
        finally:
            if tfd is not None:
                os.close(tfd)

    @staticmethod
    def _xattrs(target: int | str, entry: TarEntry) -> None:
        for name, value in entry.xattrs.items():
            if name.startswith(_OVERLAY_XATTRS):
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as e:
                # user.* is not allowed on symlinks and devices; some filesystems lack xattrs: skip,
                # as containerd does. Anything else is a real failure.
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def finish(self) -> None:
        """Directory mtimes last: creating their entries changed them. Directories are counted now, full."""
        for parts, ns in self.dir_times:
            try:
                fd = self.tree.open_dir(parts)
            except (FileNotFoundError, InvalidArgument):
                continue  # replaced by a later entry
            try:
                os.utime(fd, ns=(ns, ns))
                self._count(os.fstat(fd))
            finally:
                os.close(fd)
        for parts in sorted(self.tree.implied):
            try:
                fd = self.tree.open_dir(list(parts))
            except (FileNotFoundError, InvalidArgument):
                continue
            try:
                self._count(os.fstat(fd))
            finally:
                os.close(fd)


def _prepare_target(target_dir: str) -> int:
    try:
        os.mkdir(target_dir, 0o755)
    except FileExistsError:
        if not os.path.isdir(target_dir) or os.path.islink(target_dir) or os.listdir(target_dir):
            raise InvalidArgument(f"layer target {target_dir} must be missing or an empty directory") from None
    os.chmod(target_dir, 0o755)
    return os.open(target_dir, _DIR_FLAGS)


@dataclass(frozen=True)
class AppliedLayer:
    """What ``extract_layer`` did: the layer's diff_id, and the directories it implied without entries of
    their own (made 0755 root; ``inherit_implied_dirs`` gives them the lower layers' attributes)."""

    diff_id: str
    implied_dirs: frozenset[tuple[str, ...]]
    usage: tuple[int, int] | None = None  # (bytes of disk blocks, inodes) when known without a walk


def _extract(chunks: Iterator[bytes], root_fd: int) -> AppliedLayer:
    inflow = _Inflow(chunks)
    try:
        reader = TarReader(iter(inflow))
        tree = _Tree(root_fd)
        try:
            applier = _Applier(tree, reader)
            for entry in reader:
                applier.apply(entry)
            applier.finish()
            usage = applier.usage
        finally:
            tree.forget()
        reader.drain()  # the padding after the end-of-archive block is part of the diff_id
        return AppliedLayer(inflow.diff_id, frozenset(tree.implied), usage)
    finally:
        inflow.close()


def _guarded(target: str, work: Callable[[], AppliedLayer]) -> AppliedLayer:
    """Run ``work``; on any failure remove ``target`` and re-raise (OSError as SystemFailure)."""
    try:
        return work()
    except BaseException as e:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(e, OSError):
            raise SystemFailure(f"applying layer into {target}: {e}") from e
        raise


def extract_layer(source: str | os.PathLike[str] | BinaryIO | Iterable[bytes], target_dir: str | os.PathLike[str],
                  media_type: str | None = None) -> AppliedLayer:
    """Extract a layer into ``target_dir`` (missing or empty) without looking at the layers below: the
    first half of ``apply_layer``, which may run for several layers of one image at once. ``source`` is a
    path, a binary stream, or an iterable of the layer's bytes (a download as it arrives)."""
    target = os.fspath(target_dir)
    root_fd = _prepare_target(target)
    try:
        def work() -> AppliedLayer:
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as f:
                    return _extract(_uncompressed_chunks(f, media_type), root_fd)
            if hasattr(source, "read"):
                return _extract(_uncompressed_chunks(source, media_type), root_fd)  # type: ignore[arg-type]
            return _extract(_uncompressed_chunks(_IterStream(source), media_type), root_fd)  # type: ignore[arg-type]

        return _guarded(target, work)
    finally:
        os.close(root_fd)


class _IterStream:
    """An iterable of byte chunks read as a stream."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._rest = b""

    def read(self, n: int = -1) -> bytes:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._rest = bytes(chunk)
        if n < 0 or n >= len(self._rest):
            data, self._rest = self._rest, b""
            return data
        data, self._rest = self._rest[:n], self._rest[n:]
        return data


def _lower_stat(roots: Sequence[int], parts: Sequence[str]) -> os.stat_result | None:
    for root in roots:
        try:
            fd = _open_path(root, parts)
        except (OSError, InvalidArgument):
            continue
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
    return None


def inherit_implied_dirs(target_dir: str | os.PathLike[str], implied: Iterable[Sequence[str]],
                         lowers: Sequence[str]) -> None:
    """Give each directory a layer implied without an entry the attributes the lower layers (top first)
    give it, since in overlay the upper copy's attributes win; one they lack stays 0755 root."""
    implied = sorted(implied)
    if not implied or not lowers:
        return
    roots: list[int] = []
    root = os.open(os.fspath(target_dir), _DIR_FLAGS)
    try:
        for lower in lowers:
            try:
                roots.append(os.open(lower, _DIR_FLAGS))
            except OSError:
                continue
        for parts in implied:
            st = _lower_stat(roots, parts)
            if st is None:
                continue
            try:
                fd = _open_path(root, parts)
            except (OSError, InvalidArgument):
                continue  # a later entry of the layer replaced it
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            finally:
                os.close(fd)
    finally:
        for fd in (root, *roots):
            os.close(fd)


def apply_layer(source: str | os.PathLike[str] | BinaryIO, target_dir: str | os.PathLike[str],
                media_type: str | None = None, *, lowers: Sequence[str] = ()) -> str:
    """Extract a layer (gzip, zstd or plain tar, told apart by magic number) into ``target_dir``, which
    must be missing or empty, converting whiteouts to overlay's form; returns its diff_id (the sha256 of
    the uncompressed tar, computed while extracting).

    ``lowers`` are the directories of the layers below, top first: a directory this layer implies without
    an entry takes their attributes. On any failure ``target_dir`` is removed and the error re-raised:
    ``InvalidArgument`` for a bad, truncated or malicious archive, ``Unsupported`` for zstd without the
    ``zstandard`` module, ``SystemFailure`` when the filesystem refuses.
    """
    target = os.fspath(target_dir)
    applied = extract_layer(source, target, media_type)

    def inherit() -> AppliedLayer:
        inherit_implied_dirs(target, applied.implied_dirs, lowers)
        return applied

    return _guarded(target, inherit).diff_id


# --------------------------------------------------------------------------------------------------
# Making: an overlay upper dir as an OCI layer
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewLayer:
    """A layer ``make_layer`` wrote: what the manifest (digest, size) and the config (diff_id) record."""

    digest: str
    diff_id: str
    size: int
    media_type: str

    def descriptor(self) -> dict:
        return mf.descriptor(self.media_type, self.digest, self.size)


class _HashingWriter:
    """Counts and hashes what passes through to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _exported_xattrs(path: str) -> tuple[dict[str, str], bool]:
    """The PAX records for a file's xattrs, and whether overlay marked it opaque. Redirects and metacopy
    would make the upper dir an incomplete picture of the change, so they are refused."""
    records, opaque = {}, False
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return records, opaque
        raise
    for name in sorted(names):
        value = os.getxattr(path, name, follow_symlinks=False)
        if name in (OPAQUE_XATTR, "user.overlay.opaque"):
            opaque = value == b"y"
        elif name.endswith((".overlay.redirect", ".overlay.metacopy")):
            raise Unsupported(f"{path}: overlay {name} (redirect_dir/metacopy) cannot be exported as a layer")
        elif not name.startswith(_OVERLAY_XATTRS) and name not in _UNEXPORTABLE_XATTRS:
            records[_PAX_XATTR + name] = value.decode("utf-8", "surrogateescape")
    return records, opaque


class _LayerWriter:
    """Walks an upper dir in sorted order and writes OCI layer entries for it."""

    def __init__(self, upper: str, tar: tarfile.TarFile) -> None:
        self.upper, self.tar = upper, tar
        self.inodes: dict[tuple[int, int], str] = {}

    def walk(self, rel: str = "") -> None:
        path = os.path.join(self.upper, rel) if rel else self.upper
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(os.path.join(self.upper, child))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                self._marker(f"{rel}/{WHITEOUT_PREFIX}{name}" if rel else WHITEOUT_PREFIX + name)
            elif stat.S_ISDIR(st.st_mode):
                opaque = self._add(child, st)
                if opaque:
                    self._marker(f"{child}/{OPAQUE_MARKER}")
                self.walk(child)
            elif not stat.S_ISSOCK(st.st_mode):  # sockets are not content
                self._add(child, st)

    def _marker(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime, info.uname, info.gname = 0o600, 0, "", ""
        self.tar.addfile(info)

    def _add(self, rel: str, st: os.stat_result) -> bool:
        path = os.path.join(self.upper, rel)
        info = tarfile.TarInfo(rel)
        info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        info.mtime, info.uname, info.gname = int(st.st_mtime), "", ""
        info.pax_headers, opaque = _exported_xattrs(path)
        if stat.S_ISREG(st.st_mode):
            return self._add_regular(info, path, st)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        self.tar.addfile(info)
        return opaque

    def _add_regular(self, info: tarfile.TarInfo, path: str, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.inodes:
            info.type, info.linkname = tarfile.LNKTYPE, self.inodes[key]
            self.tar.addfile(info)
            return False
        self.inodes[key] = info.name
        info.size = st.st_size
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            self.tar.addfile(info, f)
        return False


def make_layer(upper_dir: str | os.PathLike[str], out: BinaryIO, *, compress: bool = True,
               level: int = 6) -> NewLayer:
    """Write ``upper_dir`` (an overlay upper: the changes a container or a build step made) to ``out`` as
    an OCI layer: overlay whiteouts become ``.wh.<name>``, opaque dirs get ``.wh..wh..opq``, entries are
    sorted, owners numeric, xattrs PAX records, mtimes whole seconds, gzip without name or time, so the
    same tree always gives the same bytes. The compressed digest and the diff_id are computed in the same
    pass. The upper dir must not change meanwhile (pause or stop the container)."""
    compressed = _HashingWriter(out)
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,  # type: ignore[arg-type]
                       compresslevel=level) if compress else None
    plain = _HashingWriter(gz if gz is not None else compressed)  # type: ignore[arg-type]
    with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        _LayerWriter(os.fspath(upper_dir), tar).walk()
    if gz is not None:
        gz.close()
    media_type = mf.OCI_LAYER_GZIP if compress else mf.OCI_LAYER
    return NewLayer(compressed.digest, plain.digest, compressed.size, media_type)


def write_layer(upper_dir: str | os.PathLike[str], content: ContentStore, *, compress: bool = True) -> NewLayer:
    """``make_layer`` straight into the content store (a verified writer, committed atomically)."""
    with content.writer() as w:
        layer = make_layer(upper_dir, w, compress=compress)  # type: ignore[arg-type]
        w.commit()
    return layer
