"""The image service: the one facade the engine uses for images, in the terms the Docker Engine API speaks.

It owns the image stores under one root (blobs in ``content/``, names in ``metadata/``, layer snapshots in
``snapshots/``) and the registry client, and turns them into Docker's notions: an image is one config
digest (its ID) with every name that points at it (``RepoTags``/``RepoDigests``); ``docker rmi`` untags and
deletes with Docker's conflict rules; inspect and history answer Docker's documents; a container's root
filesystem is an overlay snapshot over the image's unpacked layers.

Dangling images. The name store holds names only, but Docker keeps an image whose last tag moved to another
image (a pull of a newer ``latest``, a ``tag``, ``load``, ``import`` or ``commit`` over an existing name) and
lists it as ``<none>:<none>``. Such an image is recorded under the name ``moby-dangling@<manifest digest>``
(what Docker's containerd image store calls it), so garbage collection keeps it and listings show it
untagged; the name goes as soon as the image has a real one again, and it is never shown as a tag.

Garbage collection runs in the background after removals (``prune`` runs it at once, to report the space
it freed). Pulls, loads, imports, commits, saves, pushes and rootfs preparation *hold* the collector off:
they write or read blobs and snapshots no name points at yet (see ``skiff.image.gc``), so a collection
waits until none is in progress, and one that arrives during a collection waits for it to end. The blobs of
an image a container was created from stay while the container's snapshot does (``docker commit`` needs
them), even after ``rmi -f``.

Threads: the blocking methods (``prepare_rootfs``, ``commit_rootfs``, ``remove_rootfs``, ``collect_garbage``)
belong in worker threads; the quick ones (``resolve``, ``list``, ``tag``, ``remove``, ``inspect`` ...) may run
on the event loop. ``on_event`` is called in the thread of the method that changed something (the loop, for
the async methods and the quick ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from skiff.image import archive
from skiff.image import manifest as mf
from skiff.image.auth import Credentials
from skiff.image.changes import apply_changes, go_duration
from skiff.image.content import ContentStore
from skiff.image.distribution import ProgressCallback, RegistryClient
from skiff.image.gc import Collected, collect_garbage
from skiff.image.layer import write_layer
from skiff.image.reference import Reference
from skiff.image.reference import parse as parse_reference
from skiff.image.snapshot import COMMITTED, OverlaySnapshotter, chain_ids
from skiff.image.snapshot import mount as mount_snapshot
from skiff.image.snapshot import unmount as unmount_snapshot
from skiff.image.store import Image, ImageStore

log = logging.getLogger(__name__)

DANGLING_REPOSITORY = "docker.io/library/moby-dangling"
# Images the Dockerfile builder made for its steps (its layer cache) are kept under this repository: listed only
# with ``all`` (``docker images -a``), never pruned as dangling; ``prune_build_cache`` removes them.
BUILD_CACHE_REPOSITORY = "docker.io/library/moby-build-cache"
GRAPH_DRIVER = "overlay2"  # what Docker clients expect to read; the layout is the same idea
# On a container's snapshot: the image descriptor it was created from (docker commit builds on it).
LABEL_IMAGE = "skiff.image.target"
_LIST_FILTERS = frozenset({"dangling", "label", "reference", "before", "since", "until"})
_PRUNE_FILTERS = frozenset({"label", "label!", "until"})  # and "dangling", read first
_FULL_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")
_ID_PREFIX = re.compile(r"^(?:sha256:)?[0-9a-f]{1,64}$")
_MAX_MANIFEST = 4 << 20  # a blob larger than this is not a manifest (gc's sniffing limit)

EventCallback = Callable[[str, str, dict[str, str]], None]  # (action, actor id, attributes)
InUseCallback = Callable[[str], bool]  # image ID -> does a container use it?


def dangling_name(manifest_digest: str) -> str:
    """The name that keeps an untagged image (see the module docstring)."""
    return f"moby-dangling@{manifest_digest}"


def is_dangling(name: str) -> bool:
    return name.startswith(DANGLING_REPOSITORY + "@")


def build_cache_name(manifest_digest: str) -> str:
    """The name that keeps a build step's image (see ``BUILD_CACHE_REPOSITORY``)."""
    return f"moby-build-cache@{manifest_digest}"


def is_build_cache(name: str) -> bool:
    return name.startswith(BUILD_CACHE_REPOSITORY + "@")


def _is_internal(name: str) -> bool:
    return is_dangling(name) or is_build_cache(name)


def familiar(name: str) -> str:
    """``busybox:latest`` for ``docker.io/library/busybox:latest``: names as Docker prints them."""
    return parse_reference(name).familiar()


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def unix_time(rfc3339: object) -> int:
    """Seconds since the epoch of an image config's RFC 3339 time (0 when missing or unreadable)."""
    if not isinstance(rfc3339, str) or not rfc3339:
        return 0
    try:
        return int(datetime.fromisoformat(rfc3339).timestamp())
    except ValueError:
        return 0


def parse_timestamp(text: str, now: float | None = None) -> float:
    """A filter's point in time as Docker accepts it: Unix seconds, RFC 3339, or a Go duration before now."""
    now = time.time() if now is None else now
    with contextlib.suppress(ValueError):
        return float(text)
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(text)
        return when.timestamp() if when.tzinfo else when.astimezone().timestamp()
    try:
        return now - go_duration(text) / 1e9
    except InvalidArgument:
        raise InvalidArgument(f"invalid timestamp or duration {text!r}") from None


def path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``, which Docker's reference filter uses: ``*`` and ``?`` never match ``/``."""
    regex, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            regex.append("[^/]*")
        elif ch == "?":
            regex.append("[^/]")
        elif ch == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1:end]
            regex.append("[" + ("^" + body[1:] if body.startswith("^") else body).replace("\\", "\\\\") + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            regex.append(re.escape(pattern[i]))
        else:
            regex.append(re.escape(ch))
        i += 1
    try:
        return re.fullmatch("".join(regex), name) is not None
    except re.error:
        raise InvalidArgument(f"invalid reference filter {pattern!r}") from None


def _bool_filter(key: str, values: Iterable[str]) -> bool:
    found = {v.lower() for v in values}
    if found <= {"true", "1"} and found:
        return True
    if found <= {"false", "0"} and found:
        return False
    raise InvalidArgument(f"invalid filter '{key}={','.join(sorted(found))}'")


def _comment(config: dict) -> str:
    """What inspect calls the image's comment: the config's own, else its newest history entry's (an import's
    message lives there)."""
    history = config.get("history") or [{}]
    return str(config.get("comment") or history[-1].get("comment") or "")


def _parent_id(image: Image) -> str:
    """The image a built image was made on: its config's ``Image`` (Docker's builder records it), or ""."""
    with contextlib.suppress(NotFound, InvalidArgument, KeyError, TypeError):
        parent = (image.config.get("config") or {}).get("Image") or ""
        return parent if isinstance(parent, str) and _FULL_ID.match(parent) else ""
    return ""


def _scratch_config(platform: str | None) -> dict:
    """The image config a ``FROM scratch`` build starts from: the platform only (the host's by default)."""
    p = mf.Platform.parse(platform) if platform else mf.Platform.host()
    config: dict = {"architecture": p.architecture, "os": p.os}
    if p.variant:
        config["variant"] = p.variant
    return config


def _labels_match(labels: Mapping[str, str], wanted: Iterable[str]) -> bool:
    """Docker's label filter: every ``key`` must be present and every ``key=value`` equal."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


# ------------------------------------------------------------------------------- images, as Docker sees them

@dataclass
class ImageGroup:
    """One image as Docker counts them (one config digest) with every name pointing at it."""

    id: str
    names: list[Image]

    @property
    def references(self) -> list[Image]:
        """The real names (tags and digests); a dangling-only image has none."""
        return [n for n in self.names if not _is_internal(n.name)]

    @property
    def intermediate(self) -> bool:
        """Only a build step's image (Docker's intermediate images, hidden from ``docker images``)."""
        return all(is_build_cache(n.name) for n in self.names)

    @property
    def dangling(self) -> bool:
        return not self.references

    @property
    def image(self) -> Image:
        """The name to speak of this image by: a tag if there is one, else a digest name, else the dangling one."""
        return sorted(self.names, key=lambda n: (_is_internal(n.name), "@" in n.name, n.name))[0]

    @property
    def tags(self) -> list[str]:
        return sorted(familiar(n.name) for n in self.references if "@" not in n.name)

    @property
    def digests(self) -> list[str]:
        found = set()
        for n in self.references:
            ref = parse_reference(n.name)
            if ref.digest:
                found.add(ref.familiar())
            elif n.repo_digest:
                found.add(f"{Reference(ref.domain, ref.path).familiar()}@{n.repo_digest}")
        return sorted(found)

    @property
    def single_reference(self) -> bool:
        """Docker's rule for rmi: all names in one repository, with at most one tag among them."""
        refs = [parse_reference(n.name) for n in self.references]
        return len({r.repository for r in refs}) <= 1 and sum(1 for r in refs if not r.digest) <= 1

    @property
    def last_tagged(self) -> float:
        return max(n.created for n in self.names)


class _Names:
    """A frozen list of names, what garbage collection sees (see ``ImageService._collect``)."""

    def __init__(self, images: list[Image]) -> None:
        self._images = images

    def list(self) -> list[Image]:
        return list(self._images)


# ---------------------------------------------------------------------------------------------- the collector

class _Collector:
    """Garbage collection kept apart from the operations that hold content (see the module docstring).

    ``hold`` marks such an operation; ``run`` collects now (waiting for holders to finish); ``request``
    asks for a collection in a background thread, requests made meanwhile coalescing into one more run.
    """

    def __init__(self, collect: Callable[[], Collected]) -> None:
        self._collect = collect
        self._cond = threading.Condition()
        self._holders = 0
        self._collecting = False
        self._requested = False
        self._closed = False
        self._worker: threading.Thread | None = None

    def _try_enter(self) -> bool:
        with self._cond:
            if self._collecting:
                return False
            self._holders += 1
            return True

    def _leave(self) -> None:
        with self._cond:
            self._holders -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """For blocking code: waits while a collection runs."""
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting)
            self._holders += 1
        try:
            yield
        finally:
            self._leave()

    @contextlib.asynccontextmanager
    async def hold_async(self) -> AsyncIterator[None]:
        """For the event loop: polls rather than blocking it while a collection runs."""
        while not self._try_enter():
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            self._leave()

    def run(self) -> Collected:
        with self._cond:
            self._cond.wait_for(lambda: not self._holders and not self._collecting)
            self._collecting = True
        try:
            return self._collect()
        finally:
            with self._cond:
                self._collecting = False
                self._cond.notify_all()

    def request(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._requested = True
            if self._worker is None:
                self._worker = threading.Thread(target=self._background, name="skiff-image-gc", daemon=True)
                self._worker.start()

    def _background(self) -> None:
        while True:
            with self._cond:
                if not self._requested or self._closed:
                    self._worker = None
                    self._cond.notify_all()
                    return
                self._requested = False
            try:
                self.run()
            except Exception:
                log.exception("image garbage collection failed")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background collection is pending or running."""
        with self._cond:
            return self._cond.wait_for(lambda: self._worker is None, timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
        self.wait_idle(timeout)


# ---------------------------------------------------------------------------------------------- the service

class ImageService:
    """Docker's image verbs over the image package (see the module docstring).

    ``in_use`` (image ID -> bool) and ``on_event`` ((action, actor id, attributes)) are set by the engine:
    the containers know which images they use, and the event bus wants every image event.
    """

    def __init__(self, root: str | os.PathLike[str], *, config_path: str | None = None,
                 insecure_registries: Iterable[str] = (), mirrors: Iterable[str] = ()) -> None:
        self.root = os.path.abspath(root)
        self.content = ContentStore(os.path.join(self.root, "content"))
        self.images = ImageStore(os.path.join(self.root, "metadata"), self.content)
        self.snapshots = OverlaySnapshotter(os.path.join(self.root, "snapshots"))
        self.registry = RegistryClient(self.content, self.images, config_path=config_path,
                                       insecure_registries=insecure_registries, mirrors=mirrors)
        self.in_use: InUseCallback = lambda _image_id: False
        self.on_event: EventCallback = lambda _action, _actor, _attributes: None
        self._lock = threading.RLock()  # name changes that must look atomic (move a name + keep the orphan)
        self._configs: dict[str, str] = {}  # manifest digest -> config digest (manifests never change)
        self._collector = _Collector(self._collect)

    async def start(self) -> None:
        """Clear what a crash left (unnamed blobs of an interrupted pull, half-unpacked layers) in the background."""
        self._collector.request()

    async def stop(self) -> None:
        await asyncio.to_thread(self._collector.close)
        await self.registry.close()
        self.snapshots.close()
        self.images.db.close()

    # ------------------------------------------------------------------------------------------ names and IDs

    def _config_digest(self, image: Image) -> str | None:
        digest = image.target["digest"]
        if digest not in self._configs:
            try:
                self._configs[digest] = image.config_digest
            except (NotFound, InvalidArgument, KeyError):
                return None  # its manifest is gone or unreadable: not an image anyone can use
        return self._configs[digest]

    def groups(self) -> dict[str, ImageGroup]:
        """Every image by ID, with its names."""
        found: dict[str, ImageGroup] = {}
        for image in self.images.list():
            config = self._config_digest(image)
            if config is not None:
                found.setdefault(config, ImageGroup(config, [])).names.append(image)
        return found

    def group(self, image_id: str) -> ImageGroup:
        found = self.groups().get(image_id)
        if found is None:
            raise NotFound(f"No such image: {image_id}")
        return found

    def resolve(self, name_or_id: str) -> Image:
        """The image a name, a digest reference or a (short) ID means, in Docker's order: full ID, name, ID prefix."""
        text = name_or_id
        if _FULL_ID.match(text):
            return self._by_id(text)
        try:
            ref = parse_reference(text)
        except InvalidArgument:
            ref = None
        if ref is not None:
            found = self._by_name(ref)
            if found is not None:
                return found
        if _ID_PREFIX.match(text):
            with contextlib.suppress(NotFound):
                return self._by_id(text)
        raise NotFound(f"No such image: {ref.familiar() if ref is not None else text}")

    def _by_id(self, prefix: str) -> Image:
        wanted = "sha256:" + prefix.removeprefix("sha256:")
        matches = [g for image_id, g in self.groups().items() if image_id.startswith(wanted)]
        if len(matches) > 1:
            raise InvalidArgument(f"image ID prefix {prefix!r} is ambiguous")
        if not matches:
            raise NotFound(f"No such image: {prefix}")
        return matches[0].image

    def _by_name(self, ref: Reference) -> Image | None:
        if ref.repository in (DANGLING_REPOSITORY, BUILD_CACHE_REPOSITORY):
            return None
        with contextlib.suppress(NotFound):
            return self.images.get(str(ref))
        if ref.digest:  # repo@digest also names a tag pulled by that digest, or by its manifest's digest
            for image in self.images.list():
                same_repo = parse_reference(image.name).repository == ref.repository
                if same_repo and ref.digest in (image.repo_digest, image.target["digest"]):
                    return image
        return None

    def _targets(self) -> dict[str, Image]:
        return {image.name: image for image in self.images.list()}

    def _reconcile(self, before: Mapping[str, Image]) -> None:
        """Keep as dangling each image whose name moved away since ``before`` and which has no other name;
        drop the dangling name of every image that has a real name again."""
        with self._lock:
            now = self._targets()
            named = {self._config_digest(i) for n, i in now.items() if not _is_internal(n)}
            for name, old in before.items():
                moved = name in now and now[name].target["digest"] != old.target["digest"]
                if moved and self._config_digest(old) not in named:
                    self.images.set(dangling_name(old.target["digest"]), old.target)
            for name, image in now.items():
                if is_dangling(name) and self._config_digest(image) in named:
                    self.images.delete(name)

    def _name(self, name: str, target: dict, repo_digest: str | None = None) -> Image:
        """Point ``name`` at ``target``, keeping what it pointed at before as dangling if nothing else names it."""
        with self._lock:
            before = self._targets()
            image = self.images.set(name, target, repo_digest)
            self._reconcile(before)
        return image

    def _emit(self, action: str, actor: str, name: str, image: Image | None = None) -> None:
        """An image event as dockerd logs it: ``name`` and the image's labels as attributes."""
        attributes = {"name": name}
        if image is not None:
            with contextlib.suppress(NotFound, InvalidArgument):
                attributes = {**((image.config.get("config") or {}).get("Labels") or {}), **attributes}
        try:
            self.on_event(action, actor, attributes)
        except Exception:
            log.exception("publishing the image event %s %s failed", action, actor)

    # ------------------------------------------------------------------------------------------ listing

    def list(self, *, all: bool = False, filters: Mapping[str, Iterable[str]] | None = None) -> list[Image]:
        """One Image per image ID, newest first. ``all`` is Docker's ``-a``, which adds the builder's step images
        (dangling images are always shown, as Docker does)."""
        return [g.image for g in self._select(filters or {}, _LIST_FILTERS, intermediate=all)]

    def summaries(self, *, all: bool = False, filters: Mapping[str, Iterable[str]] | None = None) -> list[dict]:
        """``GET /images/json``: Docker's ImageSummary for each image ``list`` would return. With a ``reference``
        filter an image shows only the names that match it, as dockerd does (``docker images busybox`` lists
        busybox's tags, not every tag of the same image)."""
        groups = self._select(filters or {}, _LIST_FILTERS, intermediate=all)
        patterns = list((filters or {}).get("reference") or [])
        if patterns:
            groups = [ImageGroup(g.id, [n for n in g.references
                                        if any(self._reference_matches(p, n.name) for p in patterns)])
                      for g in groups]
        return [self._summary(g) for g in groups]

    def _select(self, filters: Mapping[str, Iterable[str]], allowed: frozenset[str], *,
                intermediate: bool = False) -> list[ImageGroup]:
        unknown = set(filters) - allowed
        if unknown:
            raise InvalidArgument(f"invalid filter '{sorted(unknown)[0]}'")
        groups = [g for g in self.groups().values() if intermediate or not g.intermediate]
        matches = [self._matcher(key, list(values)) for key, values in filters.items() if values]
        chosen = [g for g in groups if all(m(g) for m in matches)]
        return sorted(chosen, key=lambda g: (-self._created(g.image), g.id))

    def _matcher(self, key: str, values: list[str]) -> Callable[[ImageGroup], bool]:
        if key == "dangling":
            wanted = _bool_filter(key, values)
            return lambda g: g.dangling == wanted
        if key == "label":
            return lambda g: _labels_match(self._labels(g.image), values)
        if key == "label!":
            return lambda g: not any(_labels_match(self._labels(g.image), [v]) for v in values)
        if key == "reference":
            return lambda g: any(self._reference_matches(p, n.name) for p in values for n in g.references)
        if key in ("before", "since"):
            pivot = min(self._created(self.resolve(v)) for v in values)
            return (lambda g: self._created(g.image) < pivot) if key == "before" else (
                lambda g: self._created(g.image) > pivot)
        until = min(parse_timestamp(v) for v in values)
        return lambda g: self._created(g.image) < until

    @staticmethod
    def _reference_matches(pattern: str, name: str) -> bool:
        """Docker's FamiliarMatch: the pattern against ``repo:tag``, then against the repository alone."""
        ref = parse_reference(name)
        return path_match(pattern, ref.familiar()) or path_match(pattern, Reference(ref.domain, ref.path).familiar())

    @staticmethod
    def _created(image: Image) -> int:
        with contextlib.suppress(NotFound, InvalidArgument):
            return unix_time(image.config.get("created"))
        return 0

    @staticmethod
    def _labels(image: Image) -> dict[str, str]:
        return dict((image.config.get("config") or {}).get("Labels") or {})

    def _summary(self, group: ImageGroup, containers: int = -1, shared: int = -1) -> dict:
        image = group.image
        size = self._size(image)
        return {"Containers": containers, "Created": self._created(image), "Id": group.id,
                "Labels": self._labels(image), "ParentId": "", "RepoDigests": group.digests,
                "RepoTags": group.tags, "SharedSize": shared, "Size": size, "VirtualSize": size}

    def _layer_sizes(self, image: Image) -> list[int]:
        """Each layer's unpacked size when unpacked (what Docker reports), else its compressed size."""
        sizes = []
        for chain, layer in zip(chain_ids(image.diff_ids), image.layers, strict=False):
            try:
                sizes.append(self.snapshots.usage(chain).size)
            except NotFound:
                sizes.append(layer["size"])
        return sizes

    def _size(self, image: Image) -> int:
        with contextlib.suppress(NotFound, InvalidArgument):
            return sum(self._layer_sizes(image))
        return 0

    def df(self) -> list[dict]:
        """The images part of ``/system/df``: summaries with SharedSize (bytes of layers other images use too) and
        Containers (1 when a container uses the image: the engine's ``in_use`` does not count them)."""
        groups = self._select({}, _LIST_FILTERS)
        users: dict[str, int] = {}
        for g in groups:
            for chain in set(self._chains(g.image)):
                users[chain] = users.get(chain, 0) + 1
        result = []
        for g in groups:
            chains = self._chains(g.image)
            sizes = self._layer_sizes(g.image) if chains else []
            shared = sum(s for c, s in zip(chains, sizes, strict=False) if users[c] > 1)
            result.append(self._summary(g, containers=int(self.in_use(g.id)), shared=shared))
        return result

    def layers_size(self) -> int:
        """``/system/df``'s LayersSize: the bytes of every image's layers, each layer counted once."""
        sizes: dict[str, int] = {}
        for group in self.groups().values():
            chains = self._chains(group.image)
            if chains:
                sizes.update(zip(chains, self._layer_sizes(group.image), strict=False))
        return sum(sizes.values())

    @staticmethod
    def _chains(image: Image) -> list[str]:
        with contextlib.suppress(NotFound, InvalidArgument):
            return chain_ids(image.diff_ids)
        return []

    # ------------------------------------------------------------------------------------------ inspect, history

    def inspect(self, name_or_id: str) -> dict:
        """``GET /images/{name}/json`` in Docker's shape."""
        image = self.resolve(name_or_id)
        group = self.group(self._config_digest(image) or "")
        config = image.config
        doc = {
            "Id": group.id, "RepoTags": group.tags, "RepoDigests": group.digests, "Parent": self._local_parent(image),
            "Comment": _comment(config),
            "Created": config.get("created") or "0001-01-01T00:00:00Z",
            "DockerVersion": config.get("docker_version", ""), "Author": config.get("author", ""),
            "Config": config.get("config") or {}, "Architecture": config.get("architecture", ""),
            "Os": config.get("os", ""), "Size": self._size(image), "GraphDriver": self._graph_driver(image),
            "RootFS": {"Type": config["rootfs"].get("type", "layers"), "Layers": list(image.diff_ids)},
            "Metadata": {"LastTagTime": archive.rfc3339(datetime.fromtimestamp(group.last_tagged))},
        }
        if config.get("variant"):
            doc["Variant"] = config["variant"]
        return doc

    def _graph_driver(self, image: Image) -> dict:
        """Where the layers are unpacked, as Docker's overlay2 reports it (empty until unpacked)."""
        chains = chain_ids(image.diff_ids)
        data: dict[str, str] = {}
        with contextlib.suppress(NotFound):
            if chains:
                data["UpperDir"] = self.snapshots.upper_dir(chains[-1])
                lowers = self.snapshots.lower_dirs(chains[-1])
                if lowers:
                    data["LowerDir"] = ":".join(lowers)
        return {"Name": GRAPH_DRIVER, "Data": data}

    def history(self, name_or_id: str) -> list[dict]:
        """``GET /images/{name}/history``: newest first; only the newest entry carries the ID and tags, as Docker's
        do for images that were not built here."""
        image = self.resolve(name_or_id)
        group = self.group(self._config_digest(image) or "")
        config = image.config
        # An image without history (some tools write none) gets one entry per layer, or one for itself.
        entries = config.get("history") or [{"created": config.get("created")} for _ in image.diff_ids or [None]]
        sizes = iter(self._layer_sizes(image))
        result = []
        for entry in entries:
            size = 0 if entry.get("empty_layer") else next(sizes, 0)
            result.append({"Id": "<missing>", "Created": unix_time(entry.get("created")),
                           "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                           "Comment": entry.get("comment", "")})
        result.reverse()
        result[0].update(Id=group.id, Tags=group.tags or None)
        return result

    # ------------------------------------------------------------------------------------------ tag and remove

    def tag(self, source: str, target: str) -> None:
        image = self.resolve(source)
        ref = parse_reference(target)
        if ref.digest:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        if ref.repository in (DANGLING_REPOSITORY, BUILD_CACHE_REPOSITORY):
            raise InvalidArgument(f"{ref.repository} is reserved for untagged images")
        self._name(str(ref), image.target)
        self._emit("tag", image.config_digest, ref.familiar(), image)

    def remove(self, name_or_id: str, *, force: bool = False, prune: bool = True) -> list[dict]:
        """``docker rmi``: Docker's records (``[{"Untagged": "busybox:latest"}, {"Deleted": "sha256:..."}]``) and its
        rules. A name is untagged, and the image deleted with its last name (409 while a container uses it, unless
        forced). An ID deletes the image with all its names, if they are in one repository with at most one tag or
        if forced. A forced removal deletes an image a container uses: the container keeps its own snapshot.
        ``prune`` is Docker's (``noprune`` negated): a deleted image built here takes along the builder's step
        images it was made from that nothing else uses (Docker's untagged parents)."""
        with self._lock:
            image = self.resolve(name_or_id)
            group = self.group(self._config_digest(image) or "")
            if self._means_id(name_or_id, group.id):
                records = self._remove_by_id(group, force)
            else:
                records = self._remove_reference(name_or_id, image, group, force)
            if prune and any("Deleted" in r for r in records):
                records += self._prune_step_parents(image)
        if any("Deleted" in r for r in records):
            self._collector.request()
        return records

    def _local_parent(self, image: Image) -> str:
        """Docker's ``Parent`` of an image built here: the step image it was made on, while that exists."""
        parent = _parent_id(image)
        return parent if parent and parent in self.groups() else ""

    def _prune_step_parents(self, image: Image) -> list[dict]:
        """Delete the chain of build-step images below a deleted image, up to the first one that has a name,
        another child or a container (a built image's ``config.Image`` is its parent step, as Docker's)."""
        records: list[dict] = []
        parent = _parent_id(image)
        while parent:
            groups = self.groups()
            group = groups.get(parent)
            if group is None or not group.intermediate or self.in_use(parent):
                break
            if any(_parent_id(g.image) == parent for g in groups.values() if g.id != parent):
                break
            parent = _parent_id(group.image)
            records += self._delete(group)
        return records

    @staticmethod
    def _means_id(text: str, image_id: str) -> bool:
        return bool(_ID_PREFIX.match(text)) and image_id.startswith("sha256:" + text.removeprefix("sha256:"))

    def _remove_reference(self, text: str, image: Image, group: ImageGroup, force: bool) -> list[dict]:
        if not force and group.single_reference and self.in_use(group.id):
            raise Conflict(f'conflict: unable to remove repository reference "{text}" (must force) - '
                           f"a container is using its referenced image {short_id(group.id)}")
        ref = parse_reference(text)
        if ref.digest and ref.digest != parse_reference(image.name).digest:
            records = self._forget_repo_digest(ref, group)  # a tag pulled by that digest keeps its tag
        else:
            records = self._untag(image, group)
        remaining = self.groups().get(group.id)
        if remaining is not None and remaining.references:
            return records
        return records + self._delete(group)

    def _remove_by_id(self, group: ImageGroup, force: bool) -> list[dict]:
        if not force and not group.single_reference:
            raise Conflict(f"conflict: unable to delete {short_id(group.id)} (must be forced) - image is referenced "
                           "in multiple repositories")
        if not force and self.in_use(group.id):
            raise Conflict(f"conflict: unable to delete {short_id(group.id)} (must be forced) - image is being used "
                           "by a container")
        return self._untag_all(group) + self._delete(group)

    def _untag_all(self, group: ImageGroup) -> list[dict]:
        records: list[dict] = []
        for image in sorted(group.references, key=lambda i: ("@" in i.name, i.name)):
            current = self.groups().get(group.id)
            if current is not None and image.name in {n.name for n in current.references}:
                records += self._untag(image, current)  # (an earlier untag may have taken it along)
        return records

    def _untag(self, image: Image, group: ImageGroup) -> list[dict]:
        """Remove one name. As Docker does, the digest references of its repository go with its repository's last
        tag (the digest it was pulled by, and names pulled by digest), each reported as untagged."""
        self.images.delete(image.name)
        records = [{"Untagged": familiar(image.name)}]
        self._emit("untag", group.id, group.id, image)
        ref = parse_reference(image.name)
        others = [n for n in group.references if n.name != image.name and parse_reference(n.name).repository ==
                  ref.repository]
        if ref.digest or any("@" not in n.name for n in others):
            return records
        repo = Reference(ref.domain, ref.path)
        if image.repo_digest and not any(image.repo_digest in n.name for n in others):
            records.append({"Untagged": f"{repo.familiar()}@{image.repo_digest}"})
        for other in others:  # names pulled by digest
            self.images.delete(other.name)
            records.append({"Untagged": familiar(other.name)})
            self._emit("untag", group.id, group.id, other)
        return records

    def _forget_repo_digest(self, ref: Reference, group: ImageGroup) -> list[dict]:
        for image in group.references:
            if parse_reference(image.name).repository == ref.repository and image.repo_digest == ref.digest:
                self.images.set(image.name, image.target, None)
        self._emit("untag", group.id, group.id)
        return [{"Untagged": ref.familiar()}]

    def _delete(self, group: ImageGroup) -> list[dict]:
        """Drop whatever names of ``group`` are left (its dangling one) and report the image deleted."""
        for image in group.names:
            with contextlib.suppress(NotFound):
                self.images.delete(image.name)
        self._emit("delete", group.id, group.id, group.image)
        return [{"Deleted": group.id}]

    # ------------------------------------------------------------------------------------------ registries

    async def pull(self, reference: str, platform: str | None = None, progress: ProgressCallback | None = None,
                   credentials: Credentials | None = None) -> Image:
        """Pull and unpack (in a thread), so that the first container starts without applying layers."""
        ref = parse_reference(reference)
        async with self._collector.hold_async():
            before = self._targets()
            image = await self.registry.pull(ref, platform, progress, credentials)
            self._reconcile(before)
        await asyncio.to_thread(self._unpack, image)
        self._emit("pull", ref.familiar(), Reference(ref.domain, ref.path).familiar(), image)
        return image

    async def push(self, reference: str, progress: ProgressCallback | None = None,
                   credentials: Credentials | None = None) -> str:
        """Push a tag, or every tag of a repository when none is given (as dockerd does); returns the last digest.
        The pushed digest becomes the name's repo digest, as after a pull."""
        ref = parse_reference(reference, default_tag=False)
        names = [ref] if ref.tag or ref.digest else self._repository_tags(ref)
        if not names:
            raise NotFound(f"An image does not exist locally with the tag: {ref.familiar()}")
        digest = ""
        async with self._collector.hold_async():
            for name in names:
                try:
                    image = self.images.get(str(name))
                except NotFound:
                    raise NotFound(f"An image does not exist locally with the tag: {name.familiar()}") from None
                digest = await self.registry.push(name, progress, credentials)
                if not name.digest:
                    self.images.set(str(name), image.target, digest)
                self._emit("push", name.familiar(), Reference(name.domain, name.path).familiar(), image)
        return digest

    def _repository_tags(self, repo: Reference) -> list[Reference]:
        refs = [parse_reference(i.name) for i in self.images.list()]
        return [r for r in refs if r.repository == repo.repository and r.tag]

    async def login(self, server: str, username: str, password: str) -> dict:
        """``POST /auth``: ``{"Status": "Login Succeeded", "IdentityToken": ...}``; nothing is stored."""
        return await self.registry.login(server, username, password)

    # ------------------------------------------------------------------------------------------ archives

    async def save(self, names: list[str], out: BinaryIO) -> None:
        """``docker save`` to ``out`` (written from a worker thread): nothing is written when a name is unknown."""
        async with self._collector.hold_async():
            await asyncio.to_thread(archive.save, names, out, self.content, self.images)
        for text in names:
            with contextlib.suppress(NotFound, InvalidArgument):
                image = self.resolve(text)
                self._emit("save", image.config_digest, image.config_digest, image)

    async def load(self, stream: BinaryIO) -> list[str]:
        """``docker load`` from ``stream`` (read from a worker thread); returns the names loaded (normalised), or
        ``sha256:<id>`` for an image that came without one (kept as dangling)."""
        loaded = await asyncio.to_thread(self._load, stream)
        for text in loaded:
            with contextlib.suppress(NotFound, InvalidArgument):
                image = self.resolve(text)
                self._emit("load", image.config_digest, image.config_digest, image)
        return loaded

    def _load(self, stream: BinaryIO) -> list[str]:
        with self._collector.hold():
            before = self._targets()
            loaded = archive.load(stream, self.content, self.images)
            for text in loaded:
                if text.startswith("sha256:"):
                    self._keep_untagged(text)
            self._reconcile(before)
            for text in loaded:
                self._unpack(self.resolve(text))
        return loaded

    def _keep_untagged(self, config_digest: str) -> None:
        """Record a loaded image that came without a name. ``archive.load`` reports it by config digest only, so
        its manifest is found among the stored documents (newest first); this is the rare case of
        ``docker save <id>``, and only small blobs starting with ``{`` are read."""
        if config_digest in self.groups():
            return
        candidates = sorted(self.content.digests(), key=lambda d: -os.stat(self.content.path(d)).st_mtime)
        for digest in candidates:
            size = self.content.size(digest)
            if size > _MAX_MANIFEST:
                continue
            with self.content.open(digest) as f:
                if f.read(1) != b"{":
                    continue
            with contextlib.suppress(InvalidArgument):
                media_type, doc = mf.parse(self.content.read(digest))
                if media_type in mf.MANIFESTS and doc["config"]["digest"] == config_digest:
                    self.images.set(dangling_name(digest), mf.descriptor(media_type, digest, size))
                    return
        log.warning("loaded image %s has no manifest in the store; it is not recorded", config_digest)

    async def import_(self, stream: BinaryIO, reference: str | None = None, changes: Iterable[str] = (),
                      message: str | None = None, platform: str | None = None) -> Image:
        """``docker import``: a rootfs tar (read from a worker thread) as a one-layer image; dangling without a name."""
        image = await asyncio.to_thread(self._import, stream, reference, list(changes), message, platform)
        self._emit("import", image.config_digest, image.config_digest, image)
        return image

    def _import(self, stream: BinaryIO, reference: str | None, changes: list[str], message: str | None,
                platform: str | None) -> Image:
        with self._collector.hold():
            before = self._targets()
            image = archive.import_rootfs(stream, self.content, self.images, reference, changes, message, platform)
            if not image.name:
                image = self.images.set(dangling_name(image.target["digest"]), image.target)
            self._reconcile(before)
        return image

    # ------------------------------------------------------------------------------------------ containers' rootfs

    def _unpack(self, image: Image) -> str | None:
        """Apply the image's layers into snapshots (each layer once, shared by every image that has it); returns
        the top chain ID, the parent of a container's snapshot."""
        return self.snapshots.unpack(image, self.content)

    def prepare_rootfs(self, container_id: str, image: Image) -> list[dict]:
        """A writable snapshot named ``container_id`` over the image's layers (unpacked first if needed); returns
        its OCI mounts. Blocking: call it in a thread."""
        with self._collector.hold():
            parent = self._unpack(image)
            mounts = self.snapshots.prepare(container_id, parent, labels={LABEL_IMAGE: json.dumps(image.target)})
        return [m.to_dict() for m in mounts]

    def mount_rootfs(self, container_id: str, target: str) -> None:
        """Mount the container's snapshot on the existing directory ``target``."""
        mount_snapshot(self.snapshots.mounts(container_id), target)

    def unmount_rootfs(self, target: str) -> None:
        """Unmount ``target`` (nothing mounted is fine)."""
        unmount_snapshot(target)

    def upper_dir(self, container_id: str) -> str:
        """The directory holding what the container wrote (its size is ``docker ps -s``'s); NotFound if none."""
        return self.snapshots.upper_dir(container_id)

    def remove_rootfs(self, container_id: str) -> None:
        """Remove the container's snapshot (unmount it first); a missing one is fine, so this may be repeated."""
        with contextlib.suppress(NotFound):
            self.snapshots.remove(container_id)
            self._collector.request()

    def commit_rootfs(self, container_id: str, config_changes: Iterable[str] = (), author: str = "",
                      message: str = "", reference: str | None = None, *, config: dict | None = None) -> Image:
        """``docker commit``: the container's changes as a new layer on its image. ``config`` is the container
        config to record (default: the image's), ``config_changes`` are ``--change`` lines applied on top. The
        container must not change meanwhile (paused or stopped). Without ``reference`` the image is dangling.
        Blocking: call it in a thread."""
        base = self._container_image(container_id)
        container_config = apply_changes(config_changes, config if config is not None else
                                         base.config.get("config"))
        with self._collector.hold():
            layer = write_layer(self.snapshots.upper_dir(container_id), self.content)
            target = self._commit_image(base, container_config, layer, {"author": author, "comment": message},
                                        author=author)
            name = str(parse_reference(reference)) if reference else dangling_name(target["digest"])
            return self._name(name, target)

    def commit_step(self, base: Image | None, container_config: dict, *, snapshot: str | None = None,
                    created_by: str = "", extra: Mapping[str, object] | None = None,
                    platform: str | None = None, keep_snapshot: bool = False) -> Image:
        """A Dockerfile step's image on ``base`` (None: ``FROM scratch``), kept under a build-cache name.

        The changes in the active, unmounted snapshot ``snapshot`` become its layer (none if it changed nothing:
        then the history entry is an ``empty_layer``, as Docker's builder writes); the snapshot is then committed
        as that layer's chain, so the next step starts without unpacking it, or removed (with ``keep_snapshot``
        it stays as it is: a container kept after its step keeps its filesystem). ``container_config`` is
        the image's ``config``; ``extra`` adds top-level fields (Docker's ``container_config``). Blocking."""
        with self._collector.hold():
            layer = None
            if snapshot is not None and os.listdir(self.snapshots.upper_dir(snapshot)):
                layer = write_layer(self.snapshots.upper_dir(snapshot), self.content)
            history: dict[str, object] = {"created_by": created_by}
            if layer is None:
                history["empty_layer"] = True
            target = self._commit_image(base, container_config, layer, history, extra=extra, platform=platform)
            if snapshot is not None and not keep_snapshot:
                self._keep_step_snapshot(snapshot, base, layer)
            return self._name(build_cache_name(target["digest"]), target)

    def _keep_step_snapshot(self, snapshot: str, base: Image | None, layer: Any) -> None:
        """Commit a build step's snapshot under its new chain ID (it holds exactly that layer), or drop it."""
        if layer is not None:
            chain = chain_ids([*(base.diff_ids if base is not None else []), layer.diff_id])[-1]
            try:
                self.snapshots.commit(chain, snapshot)
                return
            except (AlreadyExists, Conflict):
                pass  # the same layer was unpacked or built before: keep that one
        with contextlib.suppress(NotFound):
            self.snapshots.remove(snapshot)

    def _commit_image(self, base: Image | None, container_config: dict, layer: Any, history: dict, *,
                      author: str = "", extra: Mapping[str, object] | None = None,
                      platform: str | None = None) -> dict:
        """Store the config and manifest of ``base`` plus ``layer`` (or none) and one history entry; returns the
        manifest's descriptor. Docker's media types unless ``base`` is an OCI image."""
        base_config = base.config if base is not None else _scratch_config(platform)
        docker = base is None or base.target.get("mediaType") == mf.DOCKER_MANIFEST
        when = archive.rfc3339()
        entry = {"created": when, **{k: v for k, v in history.items() if v}}
        diff_ids = [*(base.diff_ids if base is not None else []), *([layer.diff_id] if layer is not None else [])]
        new_config = {**base_config, **(extra or {}), "created": when, "config": container_config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids},
                      "history": [*(base_config.get("history") or []), entry]}
        if author:
            new_config["author"] = author
        layers = list(base.layers) if base is not None else []
        if layer is not None:
            layers.append({**layer.descriptor(), **({"mediaType": mf.DOCKER_LAYER_GZIP} if docker else {})})
        config_desc = self._put_json(mf.DOCKER_CONFIG if docker else mf.OCI_CONFIG, new_config)
        manifest = {"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST if docker else mf.OCI_MANIFEST,
                    "config": config_desc, "layers": layers}
        return self._put_json(manifest["mediaType"], manifest)

    def restore_step(self, parent: Image | None, source: Image, index: int, container_config: dict) -> Image:
        """Docker's ``--cache-from`` restore: the image ``parent`` plus step ``index`` of ``source`` (its history
        entry and, unless that entry is an empty layer, its layer), with ``container_config``, kept under a
        build-cache name. Deterministic: restoring the same step twice gives the same image. Blocking."""
        history = list(source.config.get("history") or [])
        entry = history[index]
        layer_index = sum(1 for h in history[:index] if not h.get("empty_layer"))
        base_config = parent.config if parent is not None else {}
        diff_ids = list(parent.diff_ids) if parent is not None else []
        layers = list(parent.layers) if parent is not None else []
        if not entry.get("empty_layer"):
            diff_ids.append(source.diff_ids[layer_index])
            layers.append(source.layers[layer_index])
        config = {k: v for k, v in source.config.items() if k in ("architecture", "os", "variant", "author")}
        config.update(config=container_config, created=entry.get("created", ""),
                      rootfs={"type": "layers", "diff_ids": diff_ids},
                      history=[*(base_config.get("history") or []), entry])
        docker = source.target.get("mediaType") == mf.DOCKER_MANIFEST
        with self._collector.hold():
            config_desc = self._put_json(mf.DOCKER_CONFIG if docker else mf.OCI_CONFIG, config)
            manifest = {"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST if docker else mf.OCI_MANIFEST,
                        "config": config_desc, "layers": layers}
            target = self._put_json(manifest["mediaType"], manifest)
            return self._name(build_cache_name(target["digest"]), target)

    def step_image(self, manifest_digest: str) -> Image | None:
        """A build step's image by its manifest digest (what the builder's cache index remembers), if it is
        still kept under its build-cache name or any other; None once removed. Quick: no listing."""
        with contextlib.suppress(NotFound, InvalidArgument):
            return self.images.get(build_cache_name(manifest_digest))
        with contextlib.suppress(NotFound, InvalidArgument):
            return self.images.get(dangling_name(manifest_digest))
        return None

    def name_built(self, image: Image, references: Iterable[str]) -> list[str]:
        """Tag a build's result with each of ``references`` (familiar forms returned); with none, keep it as a
        dangling image, as Docker shows an untagged build's result."""
        tagged = []
        for text in references:
            self.tag(image.config_digest, text)
            tagged.append(parse_reference(text).familiar())
        if not tagged and self.group(image.config_digest).intermediate:
            self._name(dangling_name(image.target["digest"]), image.target)
        return tagged

    def prepare_step(self, key: str, base: Image | None) -> None:
        """An active snapshot ``key`` over ``base``'s layers (unpacked if needed; empty for scratch) for a build
        step that writes files without a container. Blocking."""
        with self._collector.hold():
            parent = self._unpack(base) if base is not None else None
            labels = {LABEL_IMAGE: json.dumps(base.target)} if base is not None else {}
            self.snapshots.prepare(key, parent, labels=labels)

    async def prune_build_cache(self) -> int:
        """``POST /build/prune``: remove the builder's step images no container uses; the bytes freed."""
        with self._lock:
            for group in self.groups().values():
                if group.intermediate and not self.in_use(group.id):
                    self._delete(group)
        collected = await asyncio.to_thread(self._collector.run)
        return collected.bytes_freed

    def _container_image(self, container_id: str) -> Image:
        labels = self.snapshots.stat(container_id).labels
        if LABEL_IMAGE not in labels:
            raise NotFound(f"container {container_id} has no image recorded on its snapshot")
        return Image("", json.loads(labels[LABEL_IMAGE]), None, 0.0, self.content)

    def _put_json(self, media_type: str, doc: dict) -> dict:
        data = archive.go_json(doc)
        return mf.descriptor(media_type, self.content.put(data), len(data))

    # ------------------------------------------------------------------------------------------ garbage

    def _collect(self) -> Collected:
        """One collection over the names as they are now, plus the images containers were created from."""
        with self._lock:
            names = self.images.list()
        for info in self.snapshots.list():
            if LABEL_IMAGE in info.labels and info.kind != COMMITTED:  # (a committed build step's keeps it)
                with contextlib.suppress(ValueError, KeyError):
                    names.append(Image(f"container:{info.name}", json.loads(info.labels[LABEL_IMAGE]), None, 0.0,
                                       self.content))
        return collect_garbage(self.content, _Names(names), self.snapshots)

    def collect_garbage(self) -> Collected:
        """Collect now (blocking; waits for pulls and other holders to finish)."""
        return self._collector.run()

    def wait_for_collection(self, timeout: float | None = None) -> bool:
        """Wait for background collections (tests, shutdown)."""
        return self._collector.wait_idle(timeout)

    async def prune(self, dangling_only: bool = True, filters: Mapping[str, Iterable[str]] | None = None) -> dict:
        """``docker image prune``: dangling images (or, with ``dangling_only`` false, every image no container uses)
        matching ``until``/``label``/``label!``; a ``dangling`` filter, as the API sends it, decides instead of
        ``dangling_only``. Returns ``{"ImagesDeleted": [...] or None, "SpaceReclaimed": bytes}``."""
        filters = {k: list(v) for k, v in (filters or {}).items()}
        if "dangling" in filters:
            dangling_only = _bool_filter("dangling", filters.pop("dangling"))
        groups = self._select(filters, _PRUNE_FILTERS, intermediate=not dangling_only)
        records: list[dict] = []
        with self._lock:
            for group in groups:
                if any(r.get("Deleted") == group.id for r in records):
                    continue  # a step parent of an image pruned before it
                if (group.dangling or not dangling_only) and not self.in_use(group.id):
                    records += self._untag_all(group) + self._delete(group) + self._prune_step_parents(group.image)
        collected = await asyncio.to_thread(self._collector.run)
        return {"ImagesDeleted": records or None, "SpaceReclaimed": collected.bytes_freed}
