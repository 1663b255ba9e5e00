"""The engine's event bus: what ``GET /events`` (``docker events``) streams.

Services publish what happened (``engine.events.publish("container", "start", id, {"name": ..., "image": ...})``);
the bus stamps it in Docker's event shape, keeps the last ``HISTORY`` events so that ``since`` can replay
them, and hands it to every live subscription whose filters it passes. Filters follow dockerd's
``daemon/events/filter.go``: keys combine with AND, values of one key with OR; ``container``, ``network``
and ``volume`` match the actor's ID or name by prefix; ``image`` matches exactly, with or without the tag.

Everything runs on the daemon's event loop; ``publish`` never blocks or awaits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from skiff.errors import InvalidArgument

log = logging.getLogger(__name__)

HISTORY = 1000  # events kept for ``since`` (dockerd keeps 256)
QUEUE_LIMIT = 4096  # events a slow subscriber may lag behind before its subscription is ended
# The filter keys GET /events accepts (others are refused with 400, as dockerd does).
FILTERS = frozenset({"type", "event", "container", "image", "label", "network", "volume", "scope", "daemon"})
# Events that carry a detail after a colon ("exec_start: sh -c ...") match their bare name too.
_PREFIXED_ACTIONS = ("exec_create", "exec_start", "health_status")

Event = dict[str, Any]


def make_event(type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None,
               time_ns: int | None = None) -> Event:
    """One event in Docker's shape. Containers and images also get the legacy ``status``/``id`` (and, for
    containers, ``from``: the image) that older clients read."""
    now = time.time_ns() if time_ns is None else time_ns
    attrs = {str(k): str(v) for k, v in (attributes or {}).items()}
    event: Event = {}
    if type in ("container", "image"):
        event.update({"status": action, "id": actor_id})
        if type == "container" and "image" in attrs:
            event["from"] = attrs["image"]
    event.update({
        "Type": type, "Action": action, "Actor": {"ID": actor_id, "Attributes": attrs}, "scope": "local",
        "time": now // 1_000_000_000, "timeNano": now,
    })
    return event


class EventFilter:
    """dockerd's event filter semantics over ``{key: [values]}`` (see the module docstring)."""

    def __init__(self, filters: Mapping[str, list[str]] | None = None) -> None:
        self.filters = {k: list(v) for k, v in (filters or {}).items() if v}
        unknown = set(self.filters) - FILTERS
        if unknown:
            raise InvalidArgument(f"invalid filter '{sorted(unknown)[0]}'")

    def __call__(self, event: Event) -> bool:
        actor, attrs = event["Actor"]["ID"], event["Actor"]["Attributes"]
        return (self._action(event["Action"])
                and self._exact("type", event["Type"])
                and self._exact("scope", event["scope"])
                and self._daemon(event)
                and self._name("container", actor, attrs)
                and self._name("network", actor, attrs)
                and self._name("volume", actor, attrs)
                and self._image(event["Type"], actor, attrs)
                and self._labels(attrs))

    def _exact(self, key: str, *candidates: str) -> bool:
        wanted = self.filters.get(key)
        return wanted is None or any(c in wanted for c in candidates)

    def _fuzzy(self, key: str, *candidates: str) -> bool:
        wanted = self.filters.get(key)
        return wanted is None or any(c.startswith(w) for w in wanted for c in candidates)

    def _action(self, action: str) -> bool:
        wanted = self.filters.get("event")
        if wanted is None:
            return True
        if any(w in _PREFIXED_ACTIONS for w in wanted):
            return self._fuzzy("event", action)
        return action in wanted

    def _daemon(self, event: Event) -> bool:
        return self._exact("daemon", event["Actor"]["ID"], event["Actor"]["Attributes"].get("name", ""))

    def _name(self, key: str, actor: str, attrs: Mapping[str, str]) -> bool:
        # As dockerd: applied to every event type (a container filter also passes events whose actor
        # merely shares the ID or name prefix), with the ID or the "name" attribute.
        return self._fuzzy(key, actor, attrs.get("name", ""))

    def _image(self, type: str, actor: str, attrs: Mapping[str, str]) -> bool:
        name = attrs.get("name" if type == "image" else "image", "")
        return self._exact("image", actor, name, _strip_tag(actor), _strip_tag(name))

    def _labels(self, attrs: Mapping[str, str]) -> bool:
        for wanted in self.filters.get("label", []):
            key, sep, value = wanted.partition("=")
            if key not in attrs or (sep and attrs[key] != value):
                return False
        return True


def _strip_tag(name: str) -> str:
    """``busybox:1`` -> ``busybox`` (a registry port is not a tag: ``host:5000/x`` stays)."""
    if "@" in name:
        return name.split("@", 1)[0]
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail else name


class Subscription:
    """A live view of the bus: first the replayed history (``since``), then new events as they are published,
    ending at ``until`` (wall clock) or when the bus closes. Iterate it with ``async for``; ``close()`` it
    (or use ``with``) when done so the bus stops queueing for it."""

    def __init__(self, bus: EventBus, history: list[Event], since_ns: int | None, until_ns: int | None,
                 accept: EventFilter) -> None:
        self._bus = bus
        self._since_ns, self._until_ns, self._accept = since_ns, until_ns, accept
        self._queue: deque[Event] = deque(history)
        self._wakeup = asyncio.Event()
        self._ended = False
        self.overflowed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._ended or self._past_until():
                self.close()
                raise StopAsyncIteration
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._until_timeout())
            except TimeoutError:
                pass
        return self._queue.popleft()

    def _past_until(self) -> bool:
        return self._until_ns is not None and time.time_ns() >= self._until_ns

    def _until_timeout(self) -> float | None:
        return None if self._until_ns is None else max(0.0, (self._until_ns - time.time_ns()) / 1e9)

    def _offer(self, event: Event) -> None:
        """Called by the bus for each new event."""
        if self._ended or not self._accept(event):
            return
        if self._since_ns is not None and event["timeNano"] < self._since_ns:
            return
        if len(self._queue) >= QUEUE_LIMIT:
            log.warning("an event subscriber fell %d events behind; ending its subscription", QUEUE_LIMIT)
            self.overflowed = True
            self.close()
            return
        self._queue.append(event)
        self._wakeup.set()

    def _end(self) -> None:
        self._ended = True
        self._wakeup.set()

    def close(self) -> None:
        """Stop receiving events (what is queued can still be read)."""
        self._end()
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publishes engine events to subscribers and keeps the recent ones (see the module docstring)."""

    def __init__(self, history: int = HISTORY) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._closed = False

    def publish(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> Event:
        """Record and broadcast one event; returns it. ``type`` is container, image, network, volume, daemon,
        ...; ``attributes`` are the actor's (for containers: name, image, labels, exitCode, ...)."""
        event = make_event(type, action, actor_id, attributes)
        self._history.append(event)
        for subscriber in list(self._subscribers):
            subscriber._offer(event)
        return event

    def threadsafe_publisher(self, type: str) -> Callable[[str, str, Mapping[str, str] | None], None]:
        """A ``(action, actor_id, attributes)`` callback publishing ``type`` events from any thread (a service's
        worker threads included): off the loop's thread it hands the event to the loop. Call it on the loop."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def publish(action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> None:
            if threading.get_ident() == loop_thread:
                self.publish(type, action, actor_id, attributes)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(self.publish, type, action, actor_id, attributes)

        return publish

    @property
    def subscriber_count(self) -> int:
        """Live subscriptions (``docker info``'s NEventsListener)."""
        return len(self._subscribers)

    def history(self) -> list[Event]:
        """The recent events, oldest first."""
        return list(self._history)

    def subscribe(self, since: float | None = None, until: float | None = None,
                  filters: Mapping[str, list[str]] | None = None) -> Subscription:
        """Events passing ``filters`` (dockerd's keys: type, event, container, image, label, network, volume,
        scope, daemon): first those recorded at or after ``since`` (seconds since the epoch), then live ones
        until ``until``. With neither, only live events. As dockerd: ``until`` alone replays the whole
        history up to it; an ``until`` in the past ends after the replay. Registers at once, so nothing
        published after this call is missed."""
        accept = EventFilter(filters)
        since_ns = None if since is None else int(since * 1_000_000_000)
        until_ns = None if until is None else int(until * 1_000_000_000)
        if since_ns is not None and until_ns is not None and until_ns < since_ns:
            raise InvalidArgument("`since` time cannot be after `until` time")
        replay = []
        if since_ns is not None or until_ns is not None:
            replay = [e for e in self._history if e["timeNano"] >= (since_ns or 0)
                      and (until_ns is None or e["timeNano"] <= until_ns) and accept(e)]
        subscription = Subscription(self, replay, since_ns, until_ns, accept)
        if self._closed:
            subscription._end()
        else:
            self._subscribers.add(subscription)
        return subscription

    async def stream(self, since: float | None = None, until: float | None = None,
                     filters: Mapping[str, list[str]] | None = None) -> AsyncIterator[Event]:
        """``subscribe`` as an async generator that closes its subscription when abandoned."""
        with self.subscribe(since, until, filters) as subscription:
            async for event in subscription:
                yield event

    def close(self) -> None:
        """End every subscription (the daemon is stopping); later subscriptions end at once."""
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.close()

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
