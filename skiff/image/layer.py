"""Image layers: applying a layer tar into a directory, and making a layer tar from an overlay upper dir.

Each layer is applied into its own directory, to be stacked later as an overlay lowerdir (containerd's
overlay model), so OCI whiteouts are converted on the way in: ``.wh.<name>`` becomes an overlay
whiteout (a 0:0 character device) at ``<name>``, and ``.wh..wh..opq`` marks its directory opaque
(``trusted.overlay.opaque=y``). ``make_layer`` is the inverse, used to commit a container or a build
step: it tars an overlay upper directory back into the OCI format.

A layer is untrusted input. Extraction never writes outside the target directory: every entry name is
cleaned lexically (leading ``/`` stripped, ``..`` above the root refused), parent directories are opened
one component at a time from a directory fd with ``O_NOFOLLOW`` (a symlink or file where a directory is
needed is an error, never followed), an existing entry is removed before its replacement is created
(``O_EXCL``), hard links must point at an entry of the same layer, and overlay's own xattrs are dropped
from the tar (only the opaque marker may set one). A corrupt or truncated archive raises
``InvalidArgument`` and the target directory is removed, so nothing half-written is left behind.
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from skiff.errors import InvalidArgument, SystemFailure, Unsupported
from skiff.image import manifest as mf
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
_BLOCK = tarfile.BLOCKSIZE
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
        data, self.head = self.head[:n], self.head[n:]
        return data


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


class _Gunzip:
    """gzip decompression on a thread of its own, so it overlaps extraction on the caller's thread.

    zlib releases the GIL while it inflates, and inflating is a third of applying a typical layer; this is
    what GNU tar gets by piping through a separate gzip process. Multi-member files are handled; a
    truncated or corrupt stream raises ``InvalidArgument`` in the reader, as ``GzipFile`` would.
    """

    _AHEAD = 8  # decompressed chunks buffered ahead of the reader

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(self._AHEAD)
        self._buffer = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, name="gunzip", daemon=True)
        self._thread.start()

    def _inflate(self) -> None:
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while not self._stop.is_set():
                data = self._raw.read(_CHUNK)
                if not data:
                    break
                while data:
                    self._put(inflater.decompress(data))
                    data = inflater.unused_data
                    if inflater.eof and data:
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
            if not inflater.eof:
                raise EOFError("compressed stream ended before the end-of-stream marker")
            self._put(None)
        except BaseException as e:  # handed to the reader, which raises it
            self._put(e)

    def _put(self, item: bytes | BaseException | None) -> None:
        if item == b"":
            return
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        parts = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if not self._buffer:
                if self._done:
                    break
                item = self._chunks.get()
                if item is None:
                    self._done = True
                    break
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                self._buffer = memoryview(item)
            take = len(self._buffer) if want is None else min(want, len(self._buffer))
            parts.append(self._buffer[:take].tobytes())
            self._buffer = self._buffer[take:]
            if want is not None:
                want -= take
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _decompressed(raw: BinaryIO, media_type: str | None) -> BinaryIO:
    """The uncompressed tar stream. The magic number decides (Docker writes uncompressed layers under gzip
    media types in ``docker save``); the media type only has to name a layer."""
    compression_of(media_type)
    head = raw.read(4)
    stream = PrefixedStream(head, raw)
    if head.startswith(_GZIP_MAGIC):
        return _Gunzip(stream)  # type: ignore[arg-type,return-value]
    if head == _ZSTD_MAGIC:
        return _ZstdReader(stream)  # type: ignore[arg-type,return-value]
    if not head:
        raise InvalidArgument("layer is empty (not even an end-of-archive block)")
    return stream  # type: ignore[return-value]


class _TarStream:
    """The uncompressed layer as tarfile reads it: hashed for the diff_id on the way, remembering its last
    bytes so that the end-of-archive block after the last member can be checked (tarfile quietly accepts
    an archive cut at a header boundary, which would make a truncated layer look complete)."""

    _KEEP = 1 << 16

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.hash = hashlib.sha256()
        self.pos = 0
        self.tail = bytearray()
        self.tail_start = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.source.read(n if n is not None and n >= 0 else -1)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # gzip: truncated, bad CRC, bad header
            raise InvalidArgument(f"layer is corrupt or truncated (decompression failed: {e})") from None
        self.hash.update(data)
        self.pos += len(data)
        self.tail += data
        if len(self.tail) > 2 * self._KEEP:
            cut = len(self.tail) - self._KEEP
            del self.tail[:cut]
            self.tail_start += cut
        return data

    def finish(self, end: int) -> str:
        """Check the block at ``end`` (where tarfile stopped) is an end-of-archive block, read the rest
        (padding) for the hash, and return the diff_id."""
        while self.pos < end + _BLOCK and self.read(_BLOCK):
            pass
        start = end - self.tail_start
        block = bytes(self.tail[start:start + _BLOCK]) if start >= 0 else b""
        if len(block) != _BLOCK or block.count(0) != _BLOCK:
            raise InvalidArgument(f"layer tar is truncated or corrupt at byte {end}: no end-of-archive block")
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()


# --------------------------------------------------------------------------------------------------
# Applying: a symlink-safe tree of directory fds
# --------------------------------------------------------------------------------------------------

def clean_name(name: str) -> list[str]:
    """The components of a tar entry name below the layer root. A leading ``/`` is dropped (an absolute
    name lands inside the root, as Docker does); ``..`` is resolved lexically and may not climb above
    the root. Symlinks are never consulted: extraction never follows them."""
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


class _Tree:
    """A directory tree reached only through fds opened from its root with O_NOFOLLOW, one component at a
    time, so no symlink (whatever the layer put there) is ever followed."""

    def __init__(self, root_fd: int, lowers: Sequence[str] = ()) -> None:
        self.root_fd = root_fd
        self.lowers = lowers
        # The last directory opened: tar entries come grouped by directory, so this saves most of the
        # component-by-component walks. Dropped whenever anything in the tree is removed.
        self._cached: tuple[tuple[str, ...], int] | None = None

    def forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def open_dir(self, parts: Sequence[str], create: bool = False) -> int:
        """An fd for the directory ``parts`` (the caller closes it); missing ones are made if ``create``."""
        key = tuple(parts)
        if self._cached is not None and self._cached[0] == key:
            return os.dup(self._cached[1])
        fd = self._walk(parts, create)
        self.forget()
        self._cached = (key, os.dup(fd))
        return fd

    def _walk(self, parts: Sequence[str], create: bool) -> int:
        fd = os.dup(self.root_fd)
        try:
            for i, name in enumerate(parts):
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._mkdir_implied(fd, name, parts[:i + 1])
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise InvalidArgument(f"layer path {'/'.join(parts[:i + 1])!r} is a symlink or a file "
                                              "where a directory is needed (it is never followed)") from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _mkdir_implied(self, parent_fd: int, name: str, parts: Sequence[str]) -> None:
        """A directory the layer implies without an entry of its own: it takes the attributes the lower
        layers give that directory (else 0755 root), since in overlay the upper copy's attributes win."""
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        st = self._lower_stat(parts)
        mode, uid, gid = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) if st else (0o755, 0, 0)
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        os.chmod(name, mode, dir_fd=parent_fd)

    def _lower_stat(self, parts: Sequence[str]) -> os.stat_result | None:
        for lower in self.lowers:
            try:
                root = os.open(lower, _DIR_FLAGS)
            except OSError:
                continue
            try:
                fd = _Tree(root)._walk(parts, create=False)
            except (OSError, InvalidArgument):
                continue
            finally:
                os.close(root)
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        return None


def _remove(dir_fd: int, name: str, keep_dir: bool = False, tree: _Tree | None = None) -> bool:
    """Remove whatever is at ``name`` (a directory with its contents, a symlink itself, never its target).
    Returns True if a directory was kept (``keep_dir`` and both are directories)."""
    st = _lstat(dir_fd, name)
    if st is None:
        return False
    if tree is not None and not (keep_dir and stat.S_ISDIR(st.st_mode)):
        tree.forget()  # the cached directory may be what goes
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return False


class _Applier:
    """Applies one tar's entries into a ``_Tree`` (see ``apply_layer``)."""

    def __init__(self, tree: _Tree, tar: tarfile.TarFile) -> None:
        self.tree, self.tar = tree, tar
        self.dir_times: list[tuple[list[str], int]] = []

    def apply(self, member: tarfile.TarInfo) -> None:
        parts = clean_name(member.name)
        if not parts:
            if not member.isdir():
                raise InvalidArgument(f"layer entry {member.name!r} names the root but is not a directory")
            return  # the root's attributes are the snapshot's, as containerd does
        if parts[0].startswith(WHITEOUT_META_PREFIX) and parts != [OPAQUE_MARKER]:
            return  # AUFS metadata (.wh..wh.plnk/, .wh..wh.aufs): not part of the filesystem, as in Docker
        base = parts[-1]
        pfd = self.tree.open_dir(parts[:-1], create=True)
        try:
            if base.startswith(WHITEOUT_PREFIX):
                self._whiteout(pfd, parts, member)
            else:
                self._entry(pfd, parts, member)
        finally:
            os.close(pfd)

    def _whiteout(self, pfd: int, parts: list[str], member: tarfile.TarInfo) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other metadata: nothing to apply
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise InvalidArgument(f"invalid whiteout {member.name!r}")
        if _lstat(pfd, name) is not None:
            return  # whiteouts hide lower layers only; this layer's own entry stays
        os.mknod(name, stat.S_IFCHR, 0, dir_fd=pfd)  # mode 0, as overlay makes its own whiteouts
        os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def _entry(self, pfd: int, parts: list[str], member: tarfile.TarInfo) -> None:
        if member.islnk():
            self._hardlink(pfd, parts, member)
            return
        base = parts[-1]
        kept_dir = _remove(pfd, base, keep_dir=member.isdir(), tree=self.tree)  # never write through it
        fd = self._create(pfd, base, member, kept_dir)
        try:
            self._metadata(pfd, base, member, fd)
        finally:
            if fd is not None:
                os.close(fd)
        if member.isdir():
            self.dir_times.append((parts, _mtime_ns(member)))

    def _create(self, pfd: int, base: str, member: tarfile.TarInfo, kept_dir: bool) -> int | None:
        """Make the entry (modes are set later, after the owner); returns the fd of a regular file."""
        if member.isreg():
            return self._regular(pfd, base, member)
        if member.isdir():
            if not kept_dir:
                os.mkdir(base, 0o700, dir_fd=pfd)
        elif member.issym():
            if not member.linkname:
                raise InvalidArgument(f"symlink {member.name!r} has an empty target")
            os.symlink(member.linkname, base, dir_fd=pfd)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            raise InvalidArgument(f"layer entry {member.name!r} has an unsupported type {member.type!r}")
        return None

    def _regular(self, pfd: int, base: str, member: tarfile.TarInfo) -> int:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = self.tar.extractfile(member)
            left = member.size
            while left > 0 and src is not None:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(chunk)
            if left:
                raise InvalidArgument(f"layer is truncated: {member.name!r} is missing {left} bytes")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _hardlink(self, pfd: int, parts: list[str], member: tarfile.TarInfo) -> None:
        target = clean_name(member.linkname)
        if not target or target == parts:
            raise InvalidArgument(f"hard link {member.name!r} has an invalid target {member.linkname!r}")
        try:
            tfd = self.tree.open_dir(target[:-1])
        except FileNotFoundError:
            tfd = None
        try:
            st = _lstat(tfd, target[-1]) if tfd is not None else None
            if st is None or stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"hard link {member.name!r} -> {member.linkname!r}: the target must be a "
                                      "non-directory entry earlier in the same layer")
            _remove(pfd, parts[-1], tree=self.tree)
            try:
                os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:  # the entry it replaced contained its target
                raise InvalidArgument(f"hard link {member.name!r}: target {member.linkname!r} vanished") from None
        finally:
            if tfd is not None:
                os.close(tfd)

    def _metadata(self, pfd: int, base: str, member: tarfile.TarInfo, fd: int | None) -> None:
        # Owner first (chown clears setuid/setgid and file capabilities), then xattrs, then the mode.
        os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        self._xattrs(pfd, base, member)
        if not member.issym():
            if fd is not None:
                os.fchmod(fd, member.mode & 0o7777)
            else:
                os.chmod(base, member.mode & 0o7777, dir_fd=pfd)  # just made here: not a symlink
        if not member.isdir():
            ns = _mtime_ns(member)
            os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _xattrs(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_PAX_XATTR):
                continue
            name = key[len(_PAX_XATTR):]
            if name.startswith(_OVERLAY_XATTRS):
                continue
            try:
                os.setxattr(_proc(pfd, base), name, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as e:
                # user.* is not allowed on symlinks and devices; some filesystems lack xattrs: skip,
                # as containerd does. Anything else is a real failure.
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def finish(self) -> None:
        """Directory mtimes last: creating their entries changed them."""
        for parts, ns in self.dir_times:
            try:
                fd = self.tree.open_dir(parts)
            except (FileNotFoundError, InvalidArgument):
                continue  # replaced by a later entry
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return int(member.mtime * 1_000_000_000)


def _prepare_target(target_dir: str) -> int:
    try:
        os.mkdir(target_dir, 0o755)
    except FileExistsError:
        if not os.path.isdir(target_dir) or os.path.islink(target_dir) or os.listdir(target_dir):
            raise InvalidArgument(f"layer target {target_dir} must be missing or an empty directory") from None
    os.chmod(target_dir, 0o755)
    return os.open(target_dir, _DIR_FLAGS)


def _apply_stream(source: BinaryIO, root_fd: int, media_type: str | None, lowers: Sequence[str]) -> str:
    decompressed = _decompressed(source, media_type)
    try:
        return _apply_tar(_TarStream(decompressed), root_fd, lowers)
    finally:
        if isinstance(decompressed, _Gunzip):
            decompressed.close()


def _apply_tar(stream: _TarStream, root_fd: int, lowers: Sequence[str]) -> str:
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 - with below
    except tarfile.TarError as e:
        raise InvalidArgument(f"layer is not a tar archive: {e}") from None
    with tar:
        tree = _Tree(root_fd, lowers)
        applier = _Applier(tree, tar)
        try:
            try:
                while (member := tar.next()) is not None:
                    tar.members.clear()  # stream mode remembers every member otherwise
                    applier.apply(member)
            except tarfile.TarError as e:
                raise InvalidArgument(f"layer tar is corrupt or truncated: {e}") from None
            applier.finish()
        finally:
            tree.forget()
        return stream.finish(tar.offset)


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
    root_fd = _prepare_target(target)
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return _apply_stream(f, root_fd, media_type, lowers)
        return _apply_stream(source, root_fd, media_type, lowers)
    except BaseException as e:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(e, OSError):
            raise SystemFailure(f"applying layer into {target}: {e}") from e
        raise
    finally:
        os.close(root_fd)


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
