"""The overlay snapshotter: image layers as stacked directories, containers' root filesystems as overlays.

The model is containerd's. A *committed* snapshot is a read-only directory holding one layer's changes;
an *active* snapshot is a new upper (and work) dir over a chain of committed parents, which a container
writes to; a *view* is a read-only mount of a chain. Snapshots are named by key; an image's layers are
committed under their chain IDs, so images sharing a base share its snapshots and each layer is applied
once (``unpack``). ``mounts`` describes how to mount a snapshot (an overlay, or a bind mount when there is
nothing to stack); ``mount``/``unmount`` do it.

On disk, under ``root``: ``metadata.db`` (SQLite: key, kind, parent, labels, usage) and
``snapshots/<id>/{fs,work}``. A snapshot's directory is built under a temporary name and renamed to its
id inside the transaction that records it, and ids are never reused, so after a crash at any point a
directory that the database does not name is debris, removed when the snapshotter next opens.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, SystemFailure
from skiff.image.content import ContentStore, DigestMismatch
from skiff.image.layer import AppliedLayer, extract_layer, inherit_implied_dirs

ACTIVE, VIEW, COMMITTED = "active", "view", "committed"
# Labels Skiff itself sets or honours.
LABEL_DIFF_ID = "skiff.diff-id"       # on a committed layer snapshot: the diff_id it was applied from
LABEL_UNPACKING = "skiff.unpacking"   # on a snapshot a layer is being applied into: "<pid>" doing it
LABEL_GC_ROOT = "skiff.gc.root"       # garbage collection keeps a committed snapshot carrying it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: names the directory
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent TEXT,                           -- key of a committed snapshot
    labels TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,       -- usage, recorded at commit
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""
_COLUMNS = "id, key, kind, parent, labels, created, updated, size, inodes"
# Layers of one image extracted at once. Extraction is mostly zlib, sha256 and file writes, which release
# the GIL, so threads overlap well; a few more than the cores keep them busy while one waits.
_UNPACK_WORKERS = min(8, (os.cpu_count() or 1) + 1)


@dataclass(frozen=True)
class Mount:
    """One mount, as the OCI spec's ``mounts`` entries describe them (without a destination)."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"type": self.type, "source": self.source, "options": list(self.options)}


@dataclass(frozen=True)
class Info:
    """What ``stat`` says about a snapshot."""

    name: str
    kind: str
    parent: str | None
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Usage:
    size: int     # bytes of disk blocks
    inodes: int


class ImageLike(Protocol):
    """What ``unpack`` needs of an image (``skiff.image.store.Image`` is one)."""

    @property
    def layers(self) -> list[dict]: ...

    @property
    def diff_ids(self) -> list[str]: ...


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain ID of each layer prefix: chainID(1) = diffID(1), then
    chainID(n) = sha256(chainID(n-1) + " " + diffID(n)). A chain ID names a stack of layers, not a layer."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


def disk_usage(path: str) -> Usage:
    """Blocks and inodes under ``path``, each hard-linked inode counted once (as ``du`` does)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
    return Usage(size, len(seen))


class OverlaySnapshotter:
    """Snapshots under ``root`` (see the module docstring). Safe to share between threads; several
    processes may use one root too (each change is a SQLite ``BEGIN IMMEDIATE`` transaction)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if any(c in self.root for c in ",:\\"):
            raise InvalidArgument(f"snapshot root {self.root!r}: ',', ':' and '\\' cannot be named in overlay options")
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._chain_locks: dict[str, list] = {}  # chain ID -> [lock, users] (see _unpack_locks)
        self._db = sqlite3.connect(os.path.join(self.root, "metadata.db"), isolation_level=None,
                                   check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self.cleanup()

    # ---- metadata ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _row(self, key: str) -> tuple:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} not found")
        return row

    @staticmethod
    def _info(row: tuple) -> Info:
        return Info(row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])

    def _parent_ids(self, parent: str | None) -> list[int]:
        """Ids of ``parent`` and its ancestors, nearest first (overlay's lowerdir order)."""
        ids = []
        while parent:
            row = self._row(parent)
            ids.append(row[0])
            parent = row[3]
        return ids

    def _fs(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshots_dir, str(snapshot_id), "fs")

    def _work(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshots_dir, str(snapshot_id), "work")

    # ---- the snapshotter API -------------------------------------------------------------------

    def prepare(self, key: str, parent: str | None = None, labels: dict[str, str] | None = None) -> list[Mount]:
        """A new active (writable) snapshot over ``parent`` (a committed snapshot, or None)."""
        self._create(ACTIVE, key, parent, labels)
        return self.mounts(key)

    def view(self, key: str, parent: str | None = None, labels: dict[str, str] | None = None) -> list[Mount]:
        """A new read-only snapshot of ``parent``."""
        self._create(VIEW, key, parent, labels)
        return self.mounts(key)

    def _create(self, kind: str, key: str, parent: str | None, labels: dict[str, str] | None,
                parent_pending: bool = False) -> None:
        """``parent_pending``: the parent is a layer still being unpacked by ``unpack`` (which commits it,
        and copies the root's owner, before committing this one)."""
        if not isinstance(key, str) or not key:
            raise InvalidArgument("a snapshot key must be a non-empty string")
        with self._tx() as db:
            # The directory is built inside the transaction, so cleanup() (which takes the same lock)
            # never mistakes one being built by another process for debris.
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(f"snapshot {key!r} already exists")
            if parent and not parent_pending:
                self._check_parent(parent)
            temp = tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir)
            try:
                self._make_dirs(temp, kind, None if parent_pending else parent)
                now = time.time()
                cur = db.execute("INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
                                 " VALUES (?, ?, ?, ?, ?, ?)",
                                 (key, kind, parent or None, json.dumps(labels or {}), now, now))
                dest = os.path.join(self.snapshots_dir, str(cur.lastrowid))
                if os.path.lexists(dest):  # debris of a crash whose transaction (and id) was rolled back
                    shutil.rmtree(dest)
                os.rename(temp, dest)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise

    def _make_dirs(self, path: str, kind: str, parent: str | None) -> None:
        fs = os.path.join(path, "fs")
        os.mkdir(fs, 0o755)
        if kind == ACTIVE:
            os.mkdir(os.path.join(path, "work"), 0o711)
        if parent:
            self._inherit_root(fs, parent)

    def _inherit_root(self, fs: str, parent: str) -> None:
        """In overlay the upper dir's root attributes win: keep / as the image's layers made it."""
        st = os.stat(self._fs(self._row(parent)[0]))
        os.chown(fs, st.st_uid, st.st_gid)
        os.chmod(fs, st.st_mode & 0o7777)

    def _check_parent(self, parent: str) -> None:
        row = self._row(parent)
        if row[2] != COMMITTED:
            raise Conflict(f"parent {parent!r} is {row[2]}: only a committed snapshot can be a parent")

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name`` (unmount it first)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("a snapshot name must be a non-empty string")
        self._commit(name, key, labels, disk_usage(self._fs(self._row(key)[0])))  # walked outside the lock

    def _commit(self, name: str, key: str, labels: dict[str, str] | None, usage: Usage) -> None:
        with self._tx() as db:
            row = self._row(key)
            if row[2] != ACTIVE:
                raise Conflict(f"snapshot {key!r} is {row[2]}: only an active snapshot can be committed")
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name!r} already exists")
            merged = {**json.loads(row[4]), **(labels or {})}
            merged.pop(LABEL_UNPACKING, None)
            db.execute("UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated = ?, size = ?, inodes = ?"
                       " WHERE id = ?", (name, COMMITTED, json.dumps(merged), time.time(), usage.size,
                                         usage.inodes, row[0]))
        # A committed snapshot is only ever a lowerdir: overlay's work dir is no longer needed.
        shutil.rmtree(self._work(row[0]), ignore_errors=True)

    def remove(self, key: str) -> None:
        """Remove a snapshot and its directory (unmount it first); Conflict while it has children."""
        with self._tx() as db:
            row = self._row(key)
            children = [r[0] for r in db.execute("SELECT key FROM snapshots WHERE parent = ? ORDER BY key",
                                                 (key,))]
            if children:
                raise Conflict(f"cannot remove snapshot {key!r}: it is the parent of {', '.join(children)}")
            db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
        # Out of the database now: a crash from here on leaves debris that cleanup() removes.
        shutil.rmtree(os.path.join(self.snapshots_dir, str(row[0])), ignore_errors=True)

    def stat(self, key: str) -> Info:
        return self._info(self._row(key))

    def list(self) -> list[Info]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id").fetchall()
        return [self._info(r) for r in rows]

    def usage(self, key: str) -> Usage:
        """Disk used by the snapshot's own directory: recorded at commit, measured for active ones."""
        row = self._row(key)
        if row[2] == COMMITTED:
            return Usage(row[7], row[8])
        return disk_usage(self._fs(row[0]))

    def mounts(self, key: str) -> list[Mount]:
        """How to mount an active snapshot or a view (a committed one is mounted through a view)."""
        row = self._row(key)
        if row[2] == COMMITTED:
            raise Conflict(f"snapshot {key!r} is committed: mount it through a view or a child")
        lowers = [self._fs(i) for i in self._parent_ids(row[3])]
        if row[2] == ACTIVE:
            if not lowers:
                return [Mount("bind", self._fs(row[0]), ("rbind", "rw"))]
            return [Mount("overlay", "overlay", (*_overlay_defaults(), f"workdir={self._work(row[0])}",
                                                 f"upperdir={self._fs(row[0])}", f"lowerdir={':'.join(lowers)}"))]
        if len(lowers) <= 1:
            return [Mount("bind", lowers[0] if lowers else self._fs(row[0]), ("rbind", "ro"))]
        return [Mount("overlay", "overlay", ("ro", f"lowerdir={':'.join(lowers)}"))]

    def upper_dir(self, key: str) -> str:
        """The directory holding a snapshot's own changes (what ``make_layer`` turns into a layer)."""
        return self._fs(self._row(key)[0])

    def lower_dirs(self, key: str) -> list[str]:
        """The committed directories below ``key``, top first."""
        return [self._fs(i) for i in self._parent_ids(self._row(key)[3])]

    def cleanup(self) -> list[str]:
        """Remove snapshot directories the database does not know (debris of a crash); returns them.
        Done under the write lock, so a directory another process is building is never among them."""
        with self._tx() as db:
            ids = {str(r[0]) for r in db.execute("SELECT id FROM snapshots")}
            debris = [os.path.join(self.snapshots_dir, d) for d in os.listdir(self.snapshots_dir) if d not in ids]
            for path in debris:
                shutil.rmtree(path, ignore_errors=True)
        return debris

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- images ----------------------------------------------------------------------------------

    def unpack(self, image: ImageLike, content: ContentStore) -> str | None:
        """Apply the image's layers, each once, into committed snapshots named by chain ID; returns the
        top chain ID (None for an image without layers), the parent for a container's ``prepare``.

        A layer already unpacked (by this or any image sharing it) is skipped. The missing layers are
        extracted side by side, each into its own active snapshot (a layer's entries do not depend on
        the layers below), then committed bottom up: each one's diff_id is checked against the image
        config, and the directories it implied take their attributes from the committed layers below,
        before it is committed, so a snapshot named by a chain ID always holds exactly that chain. If one
        fails, none above it is committed and every uncommitted one is removed."""
        layers, diff_ids = image.layers, image.diff_ids
        if len(layers) != len(diff_ids):
            raise InvalidArgument(f"image has {len(layers)} layers but its config lists {len(diff_ids)} diff_ids")
        chains = chain_ids(diff_ids)
        if not chains:
            return None
        with self._unpack_locks(chains):
            missing = [i for i, chain in enumerate(chains) if not self._committed(chain)]
            if missing:
                self._unpack_layers([_LayerJob(layers[i], diff_ids[i], chains[i], chains[i - 1] if i else None)
                                     for i in missing], content)
        return chains[-1]

    def _committed(self, key: str) -> bool:
        try:
            return self.stat(key).kind == COMMITTED
        except NotFound:
            return False

    @contextlib.contextmanager
    def _unpack_locks(self, chains: Sequence[str]) -> Iterator[None]:
        """Unpacks in this process that share a layer take turns (the later one finds it committed), so no
        work is done twice; locks are taken in one global order, so overlapping unpacks cannot deadlock."""
        with self._lock:
            locks = []
            for chain in sorted(set(chains)):
                entry = self._chain_locks.setdefault(chain, [threading.Lock(), 0])
                entry[1] += 1
                locks.append((chain, entry))
        try:
            with contextlib.ExitStack() as stack:
                for _chain, entry in locks:
                    stack.enter_context(entry[0])
                yield
        finally:
            with self._lock:
                for chain, entry in locks:
                    entry[1] -= 1
                    if not entry[1]:
                        del self._chain_locks[chain]

    def _unpack_layers(self, jobs: list[_LayerJob], content: ContentStore) -> None:
        failed = threading.Event()  # stops the other extractions early once one layer has failed
        try:
            for job in jobs:  # bottom up, so snapshot ids follow the chain
                job.key = f"unpack-{uuid.uuid4().hex}-{job.chain}"
                self._create(ACTIVE, job.key, job.parent, {LABEL_UNPACKING: str(os.getpid())},
                             parent_pending=job.parent is not None and not self._committed(job.parent))
            with ThreadPoolExecutor(min(len(jobs), _UNPACK_WORKERS), thread_name_prefix="unpack") as pool:
                # The largest first: the longest extraction should not be the one that starts last.
                for job in sorted(jobs, key=lambda j: -j.size):
                    job.extracted = pool.submit(self._extract, job, content, failed)
                try:
                    for job in jobs:
                        self._commit_layer(job, job.extracted.result())  # type: ignore[union-attr]
                except BaseException:
                    failed.set()
                    for job in jobs:
                        job.extracted.cancel()  # type: ignore[union-attr]
                    raise  # (leaving the with block waits for the extractions that already run)
        except BaseException:
            for job in reversed(jobs):
                if job.key is not None:
                    with contextlib.suppress(NotFound):
                        self.remove(job.key)
            raise

    def _extract(self, job: _LayerJob, content: ContentStore, failed: threading.Event) -> tuple[AppliedLayer, Usage]:
        upper = self.upper_dir(job.key)  # type: ignore[arg-type]
        with content.open(job.desc["digest"]) as blob:
            applied = extract_layer(_Abortable(blob, failed), upper, job.desc.get("mediaType"))
        # Counted while extracting, unless entries replaced others; walked here, in parallel, if not.
        return applied, Usage(*applied.usage) if applied.usage else disk_usage(upper)

    def _commit_layer(self, job: _LayerJob, extracted: tuple[AppliedLayer, Usage]) -> None:
        """Commit one extracted layer, its parent (if any) committed by now."""
        applied, usage = extracted
        if applied.diff_id != job.diff_id:
            raise DigestMismatch(f"layer {job.desc['digest']} unpacks to diff_id {applied.diff_id}, "
                                 f"but the image config says {job.diff_id}")
        key = job.key
        assert key is not None
        upper = self.upper_dir(key)
        if job.parent is not None:
            inherit_implied_dirs(upper, applied.implied_dirs, self.lower_dirs(key))
            # The root's owner, as prepare() gives it; its mode stays the 0755 every applied layer has.
            parent_root = os.stat(self._fs(self._row(job.parent)[0]))
            os.chown(upper, parent_root.st_uid, parent_root.st_gid)
        try:
            self._commit(job.chain, key, {LABEL_DIFF_ID: job.diff_id}, usage)
        except AlreadyExists:
            self.remove(key)  # another unpack committed this chain first: use theirs
        job.key = None


class _Aborted(Exception):
    """An extraction stopped because another layer of its unpack failed (never seen outside)."""


class _Abortable:
    """A blob read for an extraction, which fails as soon as ``aborted`` is set."""

    def __init__(self, blob: BinaryIO, aborted: threading.Event) -> None:
        self.blob, self.aborted = blob, aborted

    def read(self, n: int = -1) -> bytes:
        if self.aborted.is_set():
            raise _Aborted("another layer of this unpack failed")
        return self.blob.read(n)


@dataclass
class _LayerJob:
    """One layer ``unpack`` applies: what it is, where it goes, and how far it got."""

    desc: dict
    diff_id: str
    chain: str
    parent: str | None
    key: str | None = None                # the active snapshot, until committed (or removed)
    extracted: Future | None = None

    @property
    def size(self) -> int:
        size = self.desc.get("size")
        return size if isinstance(size, int) else 0


# --------------------------------------------------------------------------------------------------
# Mounting
# --------------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 32, 4096, 16384
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8
_FLAGS = {"ro": _MS_RDONLY, "rw": 0, "bind": _MS_BIND, "rbind": _MS_BIND | _MS_REC}
# mount(2) copies at most one page of options, NUL included.
_MAX_OPTIONS = os.sysconf("SC_PAGE_SIZE") - 1
_DIR_OPTIONS = ("lowerdir", "upperdir", "workdir")
_overlay_options: tuple[str, ...] | None = None


def _overlay_defaults() -> tuple[str, ...]:
    """Options every writable overlay gets: index, redirect_dir and metacopy off where the kernel has them,
    so the upper dir holds whole copies a layer can be made from, and lowers may be shared by many mounts."""
    global _overlay_options
    if _overlay_options is None:
        params = "/sys/module/overlay/parameters"
        _overlay_options = tuple(f"{p}=off" for p in ("index", "redirect_dir", "metacopy")
                                 if os.path.exists(os.path.join(params, p)))
    return _overlay_options


def _sys_mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise SystemFailure(f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def _split(m: Mount) -> tuple[int, list[str]]:
    flags, data = 0, []
    for option in m.options:
        if option in _FLAGS:
            flags |= _FLAGS[option]
        else:
            data.append(option)
    return flags, data


def _mount_one(m: Mount, target: str) -> None:
    flags, data = _split(m)
    if m.type == "bind" or flags & _MS_BIND:
        _sys_mount(m.source, target, None, flags & ~_MS_RDONLY | _MS_BIND, None)
        if flags & _MS_RDONLY:  # a bind mount takes ro only on a remount
            try:
                _sys_mount("none", target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
            except SystemFailure:
                _umount_once(target)
                raise
        return
    options = ",".join(data)
    if len(options.encode()) <= _MAX_OPTIONS:
        _sys_mount(m.source, target, m.type, flags, options)
    else:
        _mount_relative(m, target, flags, data)


def _mount_relative(m: Mount, target: str, flags: int, data: list[str]) -> None:
    """Too many layers for one page of options: name the dirs relative to their common parent and mount
    from a child process working there (as containerd does). The child is ``mount(8)``: changing the
    cwd of a threaded daemon for one syscall is not safe, a child's is."""
    dirs = [p for o in data for k, _, v in (o.partition("="),) if k in _DIR_OPTIONS for p in v.split(":")]
    base = os.path.commonpath(dirs)
    relative = []
    for option in data:
        key, sep, value = option.partition("=")
        if key in _DIR_OPTIONS:
            value = ":".join(os.path.relpath(p, base) for p in value.split(":"))
        relative.append(f"{key}{sep}{value}")
    options = ",".join((["ro"] if flags & _MS_RDONLY else []) + relative)
    if len(options.encode()) > _MAX_OPTIONS:
        raise InvalidArgument(f"too many layers to mount on {target}: the options exceed a page even when relative")
    result = subprocess.run(["mount", "-t", m.type, "-o", options, m.source, os.path.abspath(target)],
                            cwd=base, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemFailure(f"mount {m.type} on {target}: {result.stderr.strip()}")


def mount(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> None:
    """Mount ``mounts`` (from ``prepare``, ``view`` or ``mounts``) on the existing directory ``target``."""
    target = os.fspath(target)
    done = 0
    try:
        for m in mounts:
            _mount_one(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            _umount_once(target)
        raise


def _umount_once(target: str) -> None:
    """Undo one mount of our own on ``target`` (not what was mounted there before)."""
    if _libc.umount2(target.encode(), _UMOUNT_NOFOLLOW) != 0:
        raise SystemFailure(f"unmount {target}: {os.strerror(ctypes.get_errno())}")


def unmount(target: str | os.PathLike[str], *, detach: bool = False, retries: int = 50) -> None:
    """Unmount everything mounted on ``target`` (nothing mounted is fine). A busy mount is retried for a
    moment (a process may be leaving it), then reported; ``detach`` unmounts lazily instead."""
    path = os.fspath(target).encode()
    flags = _UMOUNT_NOFOLLOW | (_MNT_DETACH if detach else 0)
    attempts = 0
    while True:
        if _libc.umount2(path, flags) == 0:
            continue  # stacked mounts: unmount the next one down
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # not (or no longer) a mount point
        if err == errno.EBUSY and attempts < retries:
            attempts += 1
            time.sleep(0.05)
            continue
        raise SystemFailure(f"unmount {target}: {os.strerror(err)}")
