"""Watch: the store's changes as Kubernetes watch events, one JSON object per chunked line.

``resourceVersion`` semantics are kube's: unset or "0" first sends the current objects as ADDED
(a synthetic list), then changes after it; N sends every change after revision N; a revision the
store has compacted away is answered (with 200, as kube does) by one ERROR event carrying a 410
``Expired`` Status. With selectors an object that starts or stops matching is ADDED or DELETED, as
kube's cacher does. BOOKMARK events go only to clients that asked (``allowWatchBookmarks``). The
stream ends cleanly after ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from skiff.cluster.api.objects import Obj, decode, dumps, with_revision
from skiff.cluster.api.resources import ResourceType
from skiff.cluster.api.rest import Registry, matches_stored, parse_revision
from skiff.cluster.api.selectors import Filter
from skiff.cluster.api.status import expired
from skiff.cluster.store import Compacted, Event, EventType

BOOKMARK_INTERVAL = 30.0  # seconds between bookmarks (kube: about a minute)
DISCONNECT_CHECK = 5.0  # how often an idle watch checks that its client is still there
DEFAULT_TIMEOUT = 1800.0
WRITE_CHUNK = 64 * 1024  # the initial events go out in writes of about this size
Write = Callable[[bytes], Awaitable[None]]
Render = Callable[[Obj, bool], Any]  # (object, first event?) -> what goes into "object"


@dataclass
class WatchRequest:
    t: ResourceType
    namespace: str | None
    flt: Filter
    resource_version: str | None
    timeout: float
    bookmarks: bool
    send_initial_events: bool | None = None


class EventCodec:
    """Decoded objects and encoded event lines, shared by every watch: one change goes to many watchers,
    and each would otherwise decode and encode it again. Objects handed out are shared: read-only."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._objects: dict[tuple[bytes, int], Obj] = {}
        self._lines: dict[tuple[str, bytes, int], bytes] = {}

    def object(self, value: bytes, revision: int) -> Obj:
        key = (value, revision)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = decode(value, revision)
            if len(self._objects) > self.size:
                del self._objects[next(iter(self._objects))]  # the oldest: dicts keep insertion order
        return obj

    def line(self, kind: str, value: bytes, revision: int) -> bytes:
        key = (kind, value, revision)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = b'{"type":"%s","object":%s}\n' % (kind.encode(), with_revision(value, revision))
            if len(self._lines) > self.size:
                del self._lines[next(iter(self._lines))]
        return line


CODEC = EventCodec()


def to_watch_event(event: Event, flt: Filter) -> tuple[str, bytes, int] | None:
    """Translate one store event to ``(type, stored bytes, revision)``; None if it is outside the selectors."""
    if event.type is EventType.DELETE:
        if event.prev_kv is None:
            return None
        if flt and not _matches(flt, event.prev_kv.value, event.revision):
            return None
        return "DELETED", event.prev_kv.value, event.revision
    if not flt:
        return ("ADDED" if event.created else "MODIFIED"), event.kv.value, event.revision
    matches_now = _matches(flt, event.kv.value, event.revision)
    matched_before = event.prev_kv is not None and _matches(flt, event.prev_kv.value, event.prev_kv.mod_revision)
    if matches_now:
        return ("MODIFIED" if matched_before else "ADDED"), event.kv.value, event.revision
    if matched_before:
        return "DELETED", event.kv.value, event.revision
    return None


def _matches(flt: Filter, value: bytes, revision: int) -> bool:
    quick = matches_stored(flt, value)
    return flt.matches(CODEC.object(value, revision)) if quick is None else quick


async def serve(registry: Registry, req: WatchRequest, write: Write, render: Render | None,
                client_gone: Callable[[], bool]) -> None:
    """Stream watch events for ``req`` through ``write`` until the timeout, the client leaves or the store
    closes. ``render`` makes the event's object (a Table row, metadata only); None sends objects as stored.

    The changes a commit made together reach the watch together, and go out in one write: one TLS record
    and one send(2) per burst rather than per event, which under load is most of a watch's cost."""
    deadline = time.monotonic() + req.timeout
    first = True

    async def send(kind: str, obj: Any) -> None:
        await write(dumps({"type": kind, "object": obj}) + b"\n")

    def line(kind: str, value: bytes, revision: int) -> bytes:
        nonlocal first
        if render is None:
            encoded = CODEC.line(kind, value, revision)
        else:
            encoded = dumps({"type": kind, "object": render(CODEC.object(value, revision), first)}) + b"\n"
        first = False
        return encoded

    wanted = parse_revision(req.resource_version)
    initial = req.send_initial_events if req.send_initial_events is not None else not wanted
    try:
        if initial:
            entries, snapshot, _ = await registry.list_entries(req.t, req.namespace, req.flt)
            chunk: list[bytes] = []
            size = 0
            for kv, _obj in entries:
                chunk.append(line("ADDED", kv.value, kv.mod_revision))
                size += len(chunk[-1])
                if size >= WRITE_CHUNK:
                    await write(b"".join(chunk))
                    chunk, size = [], 0
            if chunk:
                await write(b"".join(chunk))
            start = snapshot + 1
            if req.send_initial_events:
                await send("BOOKMARK", _bookmark(req.t, snapshot, initial_end=True))
        else:
            start = (wanted or 0) + 1
        watch = await registry.store.watch(req.t.prefix(req.namespace), start)
    except Compacted as exc:
        await send("ERROR", expired(f"too old resource version: {wanted} ({exc.compact_revision})").status())
        return
    last_revision = start - 1
    async with watch:
        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
        while True:
            now = time.monotonic()
            if now >= deadline or client_gone():
                return
            events = watch.ready()
            if not events:
                wait = min(deadline - now, DISCONNECT_CHECK, max(0.0, next_bookmark - now) if req.bookmarks else 1e9)
                try:
                    async with asyncio.timeout(wait):
                        events = [await watch.__anext__()]
                except TimeoutError:
                    if req.bookmarks and time.monotonic() >= next_bookmark:
                        await send("BOOKMARK", _bookmark(req.t, max(last_revision, 1)))
                        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
                    continue
                except StopAsyncIteration:
                    return
                except Compacted as exc:
                    await send("ERROR", expired(f"too old resource version: {last_revision} "
                                                f"({exc.compact_revision})").status())
                    return
                events += watch.ready()
            last_revision = events[-1].revision
            lines = [line(*translated) for translated in (to_watch_event(e, req.flt) for e in events)
                     if translated is not None]
            if lines:
                await write(b"".join(lines))


def _bookmark(t: ResourceType, revision: int, initial_end: bool = False) -> Obj:
    metadata: dict[str, Any] = {"resourceVersion": str(revision)}
    if initial_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": t.kind, "apiVersion": t.group_version, "metadata": metadata}


def timeout_of(query: Any) -> float:
    raw = query.get("timeoutSeconds")
    if raw is None:
        return DEFAULT_TIMEOUT
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    return DEFAULT_TIMEOUT
