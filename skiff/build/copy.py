"""COPY and ADD: files from the context (or another image) written into a step's mounted root filesystem.

Docker's rules, as its builder applies them:
- a directory source copies its *contents*; a file lands at the destination, or inside it when the
  destination ends with ``/`` or is an existing directory; several sources need a ``/``-terminated
  destination;
- relative destinations are relative to WORKDIR; missing parent directories are made (0755, owned by the
  ``--chown`` owner when given, else root);
- files keep their mode and mtime; they belong to root (``0:0``) unless ``--chown user[:group]`` names other
  owners, looked up in the *image's* ``/etc/passwd`` and ``/etc/group`` (a number is taken as is; a lone
  user also names the group, as Docker's legacy builder reads it); ``--chmod`` (octal) sets every copied
  file's and directory's mode;
- ADD unpacks a local tar archive (plain, gzip, bzip2, xz) into the destination directory, and fetches a
  URL into a file (mode 0600, mtime from ``Last-Modified``).

Everything written goes through ``resolve_in_scope`` of the root filesystem, so a symlink in the image
(``/bin -> usr/bin``) is followed as the container would see it but never leads outside the rootfs.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass

from skiff.build.context import resolve_in_scope
from skiff.errors import InvalidArgument, NotFound
from skiff.image.layer import extract_layer

_COPY_CHUNK = 1 << 20
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


@dataclass
class Source:
    """One thing to copy: a host path (file or directory) and the name it has in the Dockerfile's terms."""

    path: str
    name: str  # the base name used for a file copied into a directory
    unpack: bool = False  # ADD of a local archive


def lookup_owner(rootfs: str, spec: str) -> Owner:
    """``--chown`` resolved against the image's own files (see the module docstring)."""
    user, _, group = spec.partition(":")
    group = group or user
    if not user:
        raise InvalidArgument(f"invalid --chown {spec!r}: a user is required")
    return Owner(_lookup(rootfs, "/etc/passwd", user, "user"), _lookup(rootfs, "/etc/group", group, "group"))


def _lookup(rootfs: str, path: str, name: str, kind: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        with open(resolve_in_scope(rootfs, path), encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                    return int(fields[2])
    except OSError:
        pass
    raise InvalidArgument(f"unable to convert uid/gid chown string to host mapping: can't find uid for user {name}: "
                          f"no such user: {name}" if kind == "user" else
                          f"unable to convert uid/gid chown string to host mapping: can't find gid for group "
                          f"{name}: no such group: {name}")


def parse_chmod(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise InvalidArgument(f"invalid --chmod {text!r}: want an octal mode such as 755") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"invalid --chmod {text!r}: out of range")
    return mode


def destination(dest: str, workdir: str) -> str:
    """The absolute destination path, keeping a trailing ``/`` (it means "a directory")."""
    trailing = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
    path = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    path = posixpath.normpath(path)
    return path.rstrip("/") + "/" if trailing and path != "/" else path


class Copier:
    """Writes sources into ``rootfs`` (a mounted snapshot) with one owner and optional mode."""

    def __init__(self, rootfs: str, owner: Owner | None, mode: int | None) -> None:
        self.rootfs, self.owner, self.mode = rootfs, owner or Owner(0, 0), mode
        self._chowned = owner is not None

    def copy(self, sources: list[Source], dest: str) -> None:
        if len(sources) > 1 and not dest.endswith("/"):
            raise InvalidArgument("When using COPY with more than one source file, the destination must be a "
                                  "directory and end with a /")
        for source in sources:
            st = os.stat(source.path)
            if source.unpack:
                self._unpack(source.path, dest)
            elif stat.S_ISDIR(st.st_mode):
                target = self._mkdir_all(dest)
                self._copy_tree(source.path, target)
            else:
                self._copy_file_to(source, st, dest)

    # -------------------------------------------------------------------------------- files

    def _copy_file_to(self, source: Source, st: os.stat_result, dest: str) -> None:
        host_dest = resolve_in_scope(self.rootfs, dest)
        if dest.endswith("/") or os.path.isdir(host_dest):
            directory = self._mkdir_all(dest)
            target = os.path.join(directory, source.name)
        else:
            self._mkdir_all(posixpath.dirname(dest.rstrip("/")) or "/")
            target = host_dest
        self._copy_entry(source.path, target, st)

    def _copy_tree(self, src_dir: str, dst_dir: str) -> None:
        with os.scandir(src_dir) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            src = os.path.join(src_dir, name)
            dst = os.path.join(dst_dir, name)
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                if os.path.isdir(dst) and not os.path.islink(dst):
                    self._own(dst, st, is_dir=True)
                else:
                    _remove(dst)
                    os.mkdir(dst, 0o700)
                    self._own(dst, st, is_dir=True)
                self._copy_tree(src, dst)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            else:
                self._copy_entry(src, dst, st)

    def _copy_entry(self, src: str, dst: str, st: os.stat_result) -> None:
        """One non-directory entry (a regular file, a symlink, a fifo or device) at ``dst``, replacing what is there
        (a directory there is an error, as in Docker)."""
        if os.path.isdir(dst) and not os.path.islink(dst):
            raise InvalidArgument(f"cannot overwrite directory {dst[len(self.rootfs):]!r} with a file")
        _remove(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            _copy_bytes(src, dst)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(dst, 0o600)
        else:
            return  # sockets and devices in a context are not copied
        self._own(dst, st, is_dir=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _own(self, path: str, st: os.stat_result, is_dir: bool) -> None:
        os.chown(path, self.owner.uid, self.owner.gid, follow_symlinks=False)
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return
        mode = self.mode if self.mode is not None else stat.S_IMODE(st.st_mode)
        os.chmod(path, mode)

    def _mkdir_all(self, dest: str) -> str:
        """Make ``dest`` (absolute, in the image) a directory, with missing parents; its host path."""
        parts = [p for p in dest.split("/") if p]
        current = "/"
        for part in parts:
            current = posixpath.join(current, part)
            host = resolve_in_scope(self.rootfs, current)
            if os.path.isdir(host):
                continue
            if os.path.lexists(host):
                raise InvalidArgument(f"cannot copy to {dest}: {current} is not a directory")
            os.mkdir(host, 0o755)
            os.chown(host, self.owner.uid, self.owner.gid)
            os.chmod(host, 0o755)
        return resolve_in_scope(self.rootfs, dest)

    # -------------------------------------------------------------------------------- archives

    def _unpack(self, archive: str, dest: str) -> None:
        """ADD's auto-extraction: the archive's entries under ``dest`` (made a directory), owners as archived
        (Docker keeps them for ADD of an archive), extracted safely aside and then merged in."""
        target = self._mkdir_all(dest)
        # Unpacked beside its destination (the same filesystem, so the merge is renames); gone before the commit.
        staging = os.path.join(target, f".skiff-unpack-{secrets.token_hex(6)}")
        with open(archive, "rb") as f:
            extract_layer(_decompressed(f), staging)
        try:
            _merge_tree(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _merge_tree(src_dir: str, dst_dir: str) -> None:
    with os.scandir(src_dir) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode) and os.path.isdir(dst) and not os.path.islink(dst):
            _merge_tree(src, dst)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            continue
        _remove(dst)
        os.rename(src, dst)


def _decompressed(f: object) -> object:
    """A tar stream whatever its compression (gzip is recognised by the extractor itself)."""
    import bz2
    import lzma

    from skiff.image.layer import PrefixedStream

    head = f.read(6)  # type: ignore[attr-defined]
    stream = PrefixedStream(head, f)  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream)  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream)  # type: ignore[arg-type]
    return stream


def is_archive(path: str) -> bool:
    """Whether ADD unpacks this local file: Docker decides by content (a readable tar, maybe compressed)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False


def fetch_url(url: str, directory: str, timeout: float = 60.0) -> Source:
    """ADD <url>: the body in a file under ``directory`` named after the URL's last path component, mode 0600,
    mtime from ``Last-Modified`` (as Docker's builder)."""
    parsed = urllib.parse.urlsplit(url)
    name = posixpath.basename(parsed.path.rstrip("/")) or "__unnamed__"
    path = os.path.join(directory, name)
    request = urllib.request.Request(url, headers={"User-Agent": "skiff-builder"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, _COPY_CHUNK)
            modified = response.headers.get("Last-Modified")
    except OSError as e:
        raise NotFound(f"failed to GET {url}: {e}") from None
    os.chmod(path, 0o600)
    if modified:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(path, (when, when))
    return Source(path, name)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _copy_bytes(src: str, dst: str) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd_in).st_size
            copied = 0
            while copied < size:
                try:
                    n = os.copy_file_range(fd_in, fd_out, size - copied)
                except OSError:  # across filesystems (context -> overlay) older kernels refuse it
                    break
                if n <= 0:
                    break
                copied += n
            if copied < size:  # no copy_file_range here, or a file that changed size
                os.lseek(fd_in, copied, os.SEEK_SET)
                while chunk := os.read(fd_in, _COPY_CHUNK):
                    os.write(fd_out, chunk)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def archive_suffix(name: str) -> bool:
    return name.endswith(_ARCHIVE_SUFFIXES)
