"""The build context: the tar a client sends with ``POST /build``, unpacked where the builder can read it.

The archive is untrusted. It is unpacked with the image package's layer extractor (``skiff.image.layer``),
which never writes outside its target (names cleaned, parents opened without following symlinks, hard links
kept inside), into a fresh directory under the engine's data root. Docker accepts the context plain or
compressed with gzip, bzip2 or xz; so does this.

Paths the Dockerfile names (COPY/ADD sources, the Dockerfile itself) are resolved as Docker's
``FollowSymlinkInScope`` does: symlinks inside the context are followed, but a link (or a ``..``) can never
lead out of it; a source that would is refused with Docker's "forbidden path outside the build context".

``.dockerignore`` is applied once after unpacking: excluded files are removed, so nothing a COPY matches
can be one (the CLI filters the same way before sending; a raw API client gets the same result).

Cache keys for COPY/ADD come from ``source_hash``: for each file, its path below the source, type, mode,
owner, link target and content (not its mtime, as Docker's tarsum leaves mtimes out), so touching a file
keeps the cache and changing a byte or a permission bit does not.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import posixpath
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

from skiff.build.ignore import IgnoreMatcher
from skiff.errors import InvalidArgument, NotFound
from skiff.image.layer import PrefixedStream, extract_layer
from skiff.image.service import path_match
from skiff.rootpath import resolve_in_root

DEFAULT_DOCKERFILE = "Dockerfile"
IGNORE_FILE = ".dockerignore"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 512
_HASH_CHUNK = 1 << 20


class OutsideContext(InvalidArgument):
    """A path that leads out of the build context."""


class _Decompressed:
    """A bzip2 or xz stream read as its decompressed bytes (gzip is the layer extractor's own business)."""

    def __init__(self, raw: BinaryIO, decompressor: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self.raw, self.decompressor, self.pending = raw, decompressor, b""

    def read(self, n: int = -1) -> bytes:
        while not self.pending and not self.decompressor.eof:
            data = self.raw.read(1 << 20)
            if not data:
                raise InvalidArgument("build context is truncated (compressed stream ended early)")
            self.pending = self.decompressor.decompress(data)
        if n < 0 or n >= len(self.pending):
            out, self.pending = self.pending, b""
        else:
            out, self.pending = self.pending[:n], self.pending[n:]
        return out


class _EndedAsGoReadsIt:
    """A plain tar stream that, if it stops right after an entry's data (padding and end-of-archive blocks
    missing), gets them added; Go's tar reader, and so dockerd, takes such a stream as complete. The docker CLI
    sends one when it adds a Dockerfile from outside the context (its tar rewriter closes the pipe before the
    tar writer). A stream that stops inside an entry's data is left truncated, for the extractor to refuse."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.offset = 0  # bytes passed on
        self.next_header = 0  # where the next header block starts
        self.data_end = 0  # where the current entry's data ends (before its padding)
        self.header = b""
        self.tail = b""
        self.done = False

    def read(self, n: int = -1) -> bytes:
        if self.tail or self.done:
            out, self.tail = self.tail, b""
            return out
        data = self.raw.read(n)
        if not data:
            self.done = True
            if self.data_end <= self.offset < self.next_header or self.offset == self.next_header:
                return bytes(self.next_header - self.offset) + bytes(2 * _BLOCK)
            return b""
        self._track(data)
        return data

    def _track(self, data: bytes) -> None:
        position = self.offset
        self.offset += len(data)
        while self.next_header < self.offset:
            start = max(self.next_header - position, 0)
            self.header += data[start:start + _BLOCK - len(self.header)]
            if len(self.header) < _BLOCK:
                return
            block, self.header = self.header, b""
            size = _entry_size(block)
            self.data_end = self.next_header + _BLOCK + size
            self.next_header = self.data_end + (-size % _BLOCK)


def _entry_size(block: bytes) -> int:
    """The size field of a tar header (octal, or base-256 with the high bit set); 0 for a zero block."""
    field = block[124:136]
    if field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b" \0")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        return 0  # the extractor reports the bad header


def _plain_tar(stream: BinaryIO) -> BinaryIO:
    head = stream.read(6)
    rest: BinaryIO = PrefixedStream(head, stream)  # type: ignore[assignment]
    if head.startswith(_BZIP2_MAGIC):
        return _Decompressed(rest, bz2.BZ2Decompressor())  # type: ignore[return-value]
    if head.startswith(_XZ_MAGIC):
        return _Decompressed(rest, lzma.LZMADecompressor())  # type: ignore[return-value]
    if head.startswith(_GZIP_MAGIC):
        return rest  # the extractor inflates it
    return _EndedAsGoReadsIt(rest)  # type: ignore[return-value]


def receive(stream: BinaryIO, parent_dir: str) -> BuildContext:
    """Unpack the context archive read from ``stream`` (blocking) into a new directory under ``parent_dir``."""
    os.makedirs(parent_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="context-", dir=parent_dir)
    root = os.path.join(work, "root")
    try:
        head = stream.read(1)
        if head:
            extract_layer(_plain_tar(PrefixedStream(head, stream)), root)  # type: ignore[arg-type]
        else:
            os.mkdir(root, 0o755)  # an empty body: a context with nothing in it (a Dockerfile must come from -f)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BuildContext(work, root)


class BuildContext:
    """An unpacked context (``root``) inside its own work directory, which ``close`` removes."""

    def __init__(self, work_dir: str, root: str) -> None:
        self.work_dir, self.root = work_dir, root
        self._hashes: dict[str, str] = {}

    def close(self, trash_dir: str | None = None) -> None:
        """Remove the unpacked context. With ``trash_dir`` (on the same filesystem) it is only moved there, at
        once, and deleted by a background thread: unlinking thousands of files need not delay the build's
        answer (``Builder.start`` empties the trash of a daemon that died meanwhile)."""
        if trash_dir is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        os.makedirs(trash_dir, exist_ok=True)
        target = os.path.join(trash_dir, os.path.basename(self.work_dir))
        try:
            os.rename(self.work_dir, target)
        except OSError:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        threading.Thread(target=shutil.rmtree, args=(target, True), name="skiff-build-trash", daemon=True).start()

    def scratch_dir(self) -> str:
        """A new empty directory beside the context (downloads, archives being unpacked)."""
        return tempfile.mkdtemp(prefix="tmp-", dir=self.work_dir)

    # ---------------------------------------------------------------------------------- the Dockerfile

    def read_dockerfile(self, name: str) -> str:
        """The Dockerfile's text. ``name`` is relative to the context, as Docker takes it (the CLI puts a
        Dockerfile from outside into the archive under a name of its own); only the default name falls back to
        ``dockerfile``, as with Docker."""
        name = name or DEFAULT_DOCKERFILE
        candidates = [name] + (["dockerfile"] if name == DEFAULT_DOCKERFILE else [])
        for candidate in candidates:
            try:
                path = resolve_in_scope(self.root, candidate)
            except OutsideContext:
                raise InvalidArgument(f"the Dockerfile ({name}) must be within the build context") from None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                return data.decode("utf-8", "replace").removeprefix("\ufeff")
        raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}")

    def read_ignore_file(self) -> str | None:
        path = os.path.join(self.root, IGNORE_FILE)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        return None

    def apply_ignore(self, matcher: IgnoreMatcher) -> None:
        """Remove every path the matcher excludes: a directory whole when no exception can bring back anything
        below it (``skip_dir``), else entry by entry."""

        def walk(rel: str) -> None:
            path = os.path.join(self.root, rel) if rel else self.root
            with os.scandir(path) as entries:
                children = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
            for name, is_dir in children:
                child = f"{rel}/{name}" if rel else name
                host = os.path.join(self.root, child)
                if is_dir and not matcher.skip_dir(child):
                    walk(child)
                    if matcher.excluded(child):
                        _remove_if_empty(host)  # kept if an exception re-included something below
                elif matcher.excluded(child):
                    _remove(host)

        walk("")

    # ---------------------------------------------------------------------------------- sources

    def host_path(self, rel: str) -> str:
        return resolve_in_scope(self.root, rel)

    def source_hash(self, rel: str) -> str:
        """Docker's COPY cache identity for one source: ``file:<sha256>`` or ``dir:<sha256>`` (see the module
        docstring)."""
        if rel not in self._hashes:
            self._hashes[rel] = tree_hash(self.host_path(rel))
        return self._hashes[rel]


def find_sources(root: str, pattern: str, in_context: bool = True) -> list[str]:
    """The paths below ``root`` (relative, ``/``-separated; ``""`` is the root itself) a COPY source names: one
    path, or every path a wildcard pattern matches (Go's ``filepath.Match``: ``*`` stays within a segment).
    In a context (``in_context``) a ``..`` above the root is OutsideContext; in an image (``COPY --from``) the
    path is absolute there and ``..`` stops at ``/``. NotFound if nothing is there."""
    clean = _clean_relative(pattern) if in_context else posixpath.normpath("/" + pattern).lstrip("/")
    if not _has_wildcards(clean):
        if not os.path.lexists(resolve_in_scope(root, clean)):
            where = "build context or excluded by .dockerignore" if in_context else "the source image"
            raise NotFound(f"file not found in {where}: stat {pattern}: file does not exist")
        return [clean]
    fixed = []
    for part in clean.split("/"):
        if _has_wildcards(part):
            break
        fixed.append(part)
    top = "/".join(fixed)
    start = resolve_in_scope(root, top)
    found = [rel for rel in _walk(start, top) if path_match(clean, rel)] if os.path.isdir(start) else []
    if not found:
        raise NotFound(f"no source files were specified: {pattern} matches nothing")
    return found


def _walk(path: str, rel: str) -> Iterator[str]:
    with os.scandir(path) as entries:
        names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for name, is_dir in names:
        child = f"{rel}/{name}" if rel else name
        yield child
        if is_dir:
            yield from _walk(os.path.join(path, name), child)


def tree_hash(path: str) -> str:
    """``file:<hex>`` / ``dir:<hex>`` over a file or a whole tree (names, types, modes, owners, links, bytes)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return "file:" + _entry_digest(path, os.path.basename(path), st)
    digest = hashlib.sha256()
    for rel, child, cst in _tree(path):
        digest.update(_entry_digest(child, rel, cst).encode() + b"\n")
    return "dir:" + digest.hexdigest()


def _tree(top: str) -> Iterator[tuple[str, str, os.stat_result]]:
    stack = [""]
    while stack:
        rel = stack.pop()
        here = os.path.join(top, rel) if rel else top
        with os.scandir(here) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            child = os.path.join(top, child_rel)
            st = os.lstat(child)
            yield child_rel, child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child_rel)


def _entry_digest(path: str, name: str, st: os.stat_result) -> str:
    digest = hashlib.sha256()
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    header = f"{name}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_uid}\0{st.st_gid}\0{link}\0"
    digest.update(header.encode("utf-8", "surrogateescape"))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- paths

def _has_wildcards(path: str) -> bool:
    return any(c in path for c in "*?[")


def _clean_relative(path: str) -> str:
    """A source path as a context-relative path: ``/`` and ``.`` components dropped; ``..`` resolved, but
    never above the root."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise OutsideContext(f"forbidden path outside the build context: {path} ()")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def resolve_in_scope(root: str, path: str) -> str:
    """``root``/``path`` with every symlink followed as if ``root`` were ``/``: always inside ``root``. A path
    whose ``..`` climbs above the root lexically is OutsideContext (for a context, that is Docker's error);
    links are clamped."""
    _clean_relative(path)  # raises for a lexical escape
    return resolve_in_root(root, path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # something below was re-included
