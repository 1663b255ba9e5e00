"""Garbage collection of image content and layer snapshots.

What is needed is decided by reachability from image names, not by age or guesswork: a blob stays if a
stored document reachable from a name refers to it (name -> index -> manifests -> config and layers; an
index's other platforms stay while they are present), and a committed snapshot stays if it is an
image's layer chain, is below an active snapshot or view, or carries the ``skiff.gc.root`` label.

Writers in progress are never raced. Blobs being written are ingest files, not blobs yet. A writer that
commits blobs before a name points at them (a pull, a load, a build) holds a ``Lease`` on them, which
also keeps snapshots named by a leased digest (chain IDs); leases of processes that died are dropped.
Candidates are listed *before* what is needed is worked out, so anything committed meanwhile is not even
considered. Snapshots a layer is being applied into are active, so they and their parents stay; those
of dead processes are removed. (Name an image before unpacking it, as containerd does, and its new
snapshots are safe without a lease.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from skiff.errors import Conflict, InvalidArgument, NotFound
from skiff.image import manifest as mf
from skiff.image.content import ContentStore, check_digest
from skiff.image.snapshot import ACTIVE, COMMITTED, LABEL_GC_ROOT, LABEL_UNPACKING, OverlaySnapshotter, chain_ids
from skiff.image.store import ImageStore

# A document without a media type is sniffed only if it is small enough to be a manifest or an index.
_MAX_SNIFF = 4 << 20


@dataclass
class Collected:
    """What one collection removed (or would remove, in a dry run) and the bytes that frees."""

    blobs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    bytes_freed: int = 0


# ---- leases ----------------------------------------------------------------------------------------

class Lease:
    """Protects digests (and everything they reach) from collection while a writer links them up.

    A lease is a small JSON file in ``<content root>/leases/`` naming the owning pid, so a lease left by
    a killed process stops protecting anything. Use it as a context manager, and ``add`` each digest
    *before* its blob is committed (a collection that already listed the leases would miss it otherwise).
    """

    def __init__(self, content: ContentStore, digests: Iterable[str] = ()) -> None:
        self.dir = _lease_dir(content)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, f"{uuid.uuid4().hex}.json")
        self.digests: list[str] = []
        self.add(*digests)

    def add(self, *digests: str) -> None:
        self.digests.extend(d for d in digests if d not in self.digests)
        fd, temp = tempfile.mkstemp(prefix=".lease-", dir=self.dir)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "digests": self.digests}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lease_dir(content: ContentStore) -> str:
    return os.path.join(content.root, "leases")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_digest(value: object) -> bool:
    try:
        check_digest(value)  # type: ignore[arg-type]
    except InvalidArgument:
        return False
    return True


def leased_digests(content: ContentStore) -> set[str]:
    """Digests held by live leases; leases of dead processes (or unreadable ones) are removed."""
    held: set[str] = set()
    directory = _lease_dir(content)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if not name.endswith(".json"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    lease = json.load(f)
                pid, digests = int(lease["pid"]), list(lease["digests"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced right now, or foreign: leave it alone
            if _alive(pid):
                held.update(d for d in digests if _is_digest(d))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    return held


# ---- blobs -----------------------------------------------------------------------------------------

def _children(content: ContentStore, digest: str, media_type: str | None) -> list[tuple[str, str | None]]:
    """The descriptors a stored document refers to: none for layers and configs."""
    if media_type in mf.CONFIGS or media_type in mf.LAYERS:
        return []
    declared = media_type in mf.MANIFESTS or media_type in mf.INDEXES
    if not declared and content.size(digest) > _MAX_SNIFF:
        return []
    try:
        kind, doc = mf.parse(content.read(digest), media_type if declared else None)
    except InvalidArgument as e:
        if declared:  # its blobs cannot be known: collecting now could remove what it needs
            raise InvalidArgument(f"cannot collect garbage: {digest} ({media_type}) is unreadable: {e}") from None
        return []  # a blob that only looked like it might be a document
    refs = [doc["config"], *doc["layers"]] if kind in mf.MANIFESTS else list(doc["manifests"])
    with contextlib.suppress(InvalidArgument):  # an artifact's subject (OCI 1.1 referrers), if well-formed
        refs.append(mf.check_descriptor(doc.get("subject"), "subject"))
    return [(r["digest"], r.get("mediaType")) for r in refs]


def reachable_blobs(content: ContentStore, images: ImageStore, extra: Iterable[str] = ()) -> set[str]:
    """Every digest reachable from an image name (its manifest and the digest it was pulled by) or from
    ``extra``, through the documents present in the store. Absent documents are simply not followed."""
    roots: list[tuple[str, str | None]] = [(d, None) for d in extra]
    for image in images.list():
        roots.append((image.target["digest"], image.target.get("mediaType")))
        if image.repo_digest:
            roots.append((image.repo_digest, None))
    seen: set[str] = set()
    while roots:
        digest, media_type = roots.pop()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            roots.extend(_children(content, digest, media_type))
        except NotFound:
            continue  # not stored (a platform never pulled, a blob being fetched): nothing below it here
    return seen


def _collect_blobs(content: ContentStore, images: ImageStore, result: Collected, dry_run: bool,
                   grace: float) -> None:
    candidates = set(content.digests())
    keep = reachable_blobs(content, images, leased_digests(content))
    cutoff = time.time() - grace
    for digest in sorted(candidates - keep):
        try:
            st = os.stat(content.path(digest))
            if st.st_mtime > cutoff:
                continue
            if not dry_run:
                content.delete(digest)
        except (FileNotFoundError, NotFound):
            continue  # removed by someone else meanwhile
        result.blobs.append(digest)
        result.bytes_freed += st.st_size


# ---- snapshots -------------------------------------------------------------------------------------

def image_chains(content: ContentStore, images: ImageStore) -> set[str]:
    """The chain IDs of every named image's layer stacks (all prefixes). An image whose manifest or
    config is not stored has no layers here to keep; one that is stored but unreadable stops collection."""
    chains: set[str] = set()
    for image in images.list():
        try:
            chains.update(chain_ids(image.diff_ids))
        except (NotFound, KeyError):
            continue  # not stored, or a name on an index rather than a platform's manifest: nothing unpacked
        except InvalidArgument as e:
            raise InvalidArgument(f"cannot collect garbage: image {image.name} is unreadable: {e}") from None
    return chains


def _stale_unpack(labels: dict[str, str]) -> bool:
    pid = labels.get(LABEL_UNPACKING)
    return pid is not None and pid.isdigit() and not _alive(int(pid))


def unused_snapshots(content: ContentStore, images: ImageStore, snapshotter: OverlaySnapshotter) -> list[str]:
    """Snapshots collection removes, children before parents: committed ones no image chain, live
    snapshot or gc root needs, and the active leftovers of unpacks whose process died."""
    infos = {i.name: i for i in snapshotter.list()}  # listed first: later commits are not candidates
    stale = {n for n, i in infos.items() if i.kind == ACTIVE and _stale_unpack(i.labels)}
    roots = image_chains(content, images) | leased_digests(content)
    roots |= {n for n, i in infos.items() if (i.kind != COMMITTED and n not in stale) or LABEL_GC_ROOT in i.labels}
    kept: set[str] = set()
    for name in roots:
        while name in infos and name not in kept:  # a kept snapshot keeps everything below it
            kept.add(name)
            name = infos[name].parent
    return sorted((n for n in infos if n not in kept), key=lambda n: (-_depth(infos, n), n))


def _depth(infos: dict, name: str) -> int:
    depth = 0
    while (parent := infos[name].parent) and parent in infos:
        depth, name = depth + 1, parent
    return depth


def _collect_snapshots(content: ContentStore, images: ImageStore, snapshotter: OverlaySnapshotter,
                       result: Collected, dry_run: bool) -> None:
    for name in unused_snapshots(content, images, snapshotter):
        try:
            size = snapshotter.usage(name).size
            if not dry_run:
                snapshotter.remove(name)
        except (NotFound, Conflict):
            continue  # gone already, or something started using it meanwhile
        result.snapshots.append(name)
        result.bytes_freed += size


def collect_garbage(content: ContentStore, images: ImageStore, snapshotter: OverlaySnapshotter | None = None, *,
                    dry_run: bool = False, grace: float = 0.0) -> Collected:
    """Remove unreachable blobs and unused snapshots (see the module docstring); returns what went.

    ``grace`` spares blobs committed in the last that many seconds: a second line of defence for writers
    that do not take a lease. ``dry_run`` reports without removing anything.
    """
    result = Collected()
    if snapshotter is not None:
        _collect_snapshots(content, images, snapshotter, result, dry_run)
    _collect_blobs(content, images, result, dry_run, grace)
    return result
