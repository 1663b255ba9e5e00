"""The etcd backend: the ``Store`` contract on a real etcd v3 cluster, over its JSON gateway.

etcd serves its gRPC API as JSON over plain HTTP too (the gRPC gateway: ``POST /v3/kv/range`` and so
on), so aiohttp is all this needs: no gRPC stack. Keys and values travel base64-encoded, 64-bit
integers as decimal strings, and proto3 leaves out every field at its zero value (``count``,
``more``, ``succeeded``, an event's ``type`` when it is PUT), so every read of a field has a default.

How the contract maps onto etcd:

* create: a transaction "if create_revision(key) == 0 then put";
* update: "if mod_revision(key) == expected then put (keeping the lease) else range(key)", the range
  telling NotFound (no key) from Conflict (another revision);
* delete: the same shape with a delete that returns the previous value;
* watch: the streaming ``/v3/watch`` endpoint, one JSON message per line, with ``prev_kv``;
* lease_ttl: a lease granted per key (etcd revokes it and deletes the key, with a DELETE event).

etcd reports "required revision has been compacted" without saying which revision is the oldest one
left; it tells that only to a watch it cancels, so ``Compacted`` gets its revision from a throwaway
watch (only on that error path).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
from typing import Any

import aiohttp

from skiff.cluster.store.interface import (
    Compacted,
    Event,
    EventType,
    KeyValue,
    Store,
    Watch,
    check_key,
    check_limit,
    check_revision,
    check_ttl,
    check_value,
)
from skiff.cluster.store.keys import prefix_end
from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, SystemFailure

_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
_WATCH_RESUME_ATTEMPTS = 5


class GatewayError(Exception):
    """etcd answered a request with an error (``message`` is etcd's text)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kv(wire: dict[str, Any]) -> KeyValue:
    """A KeyValue from its gateway JSON (absent fields are zero)."""
    return KeyValue(
        key=base64.b64decode(wire["key"]).decode(errors="surrogateescape"),
        value=base64.b64decode(wire.get("value", "")),
        create_revision=int(wire.get("create_revision", 0)),
        mod_revision=int(wire.get("mod_revision", 0)),
        version=int(wire.get("version", 0)),
    )


def _event(wire: dict[str, Any]) -> Event:
    prev = wire.get("prev_kv")
    kind = EventType.DELETE if wire.get("type") == "DELETE" else EventType.PUT
    return Event(kind, _kv(wire["kv"]), _kv(prev) if prev else None)


def _revision(reply: dict[str, Any]) -> int:
    return int(reply["header"]["revision"])


def _range_keys(prefix: str, start_after: str | None = None) -> dict[str, str]:
    """The ``key``/``range_end`` pair for "keys under prefix (after start_after)".

    An empty key is invalid in etcd and ``range_end`` "\\0" means "no upper bound".
    """
    start = start_after + "\0" if start_after is not None and start_after >= prefix else prefix
    end = prefix_end(prefix)
    return {"key": _b64(start or "\0"), "range_end": _b64(end if end is not None else "\0")}


class _Gateway:
    """POSTs to the first etcd endpoint that accepts a connection, remembering which one did.

    Only connection failures move on to the next endpoint: a request that reached etcd is never sent
    twice, since a transaction must not apply twice.
    """

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self._current = 0
        self._session = aiohttp.ClientSession(timeout=_REQUEST_TIMEOUT, connector=aiohttp.TCPConnector(limit=64))
        self._streams = aiohttp.ClientSession(timeout=_STREAM_TIMEOUT, connector=aiohttp.TCPConnector(limit=0))

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One unary call; ``GatewayError`` if etcd refused it, ``SystemFailure`` if none answered."""
        response = await self._post(self._session, path, body)
        async with response:
            try:
                reply = await response.json(content_type=None)
            except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
                raise SystemFailure(f"etcd {path}: no readable answer (HTTP {response.status}): {exc}") from exc
        if response.status != 200 or "error" in reply:
            raise GatewayError(reply.get("message") or reply.get("error") or str(reply), int(reply.get("code", 0)))
        return reply

    async def stream(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """A streaming call (watch): the open response, for the caller to read and close."""
        response = await self._post(self._streams, path, body)
        if response.status != 200:
            async with response:
                raise GatewayError(await response.text(), response.status)
        return response

    async def _post(self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        failures = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            try:
                response = await session.post(f"{self.endpoints[index]}/v3/{path}", data=json.dumps(body))
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                failures.append(f"{self.endpoints[index]}: {exc}")  # never reached etcd: safe to try the next
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:  # may have reached etcd: not retried
                raise SystemFailure(f"etcd request {path} failed: {exc}") from exc
            self._current = index
            return response
        raise SystemFailure("no etcd endpoint reachable: " + "; ".join(failures))

    async def close(self) -> None:
        await self._session.close()
        await self._streams.close()


class EtcdStore(Store):
    """The ``Store`` contract on etcd. Open with ``await EtcdStore.open("etcd://HOST:PORT[,HOST:PORT]")``."""

    def __init__(self, endpoints: list[str]) -> None:
        self._gateway = _Gateway(endpoints)
        self._watches: set[EtcdWatch] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> EtcdStore:
        """Connect and check that etcd answers (``SystemFailure`` if no endpoint does)."""
        hosts = [h.strip() for h in url.removeprefix("etcd://").split(",") if h.strip()]
        if not hosts:
            raise InvalidArgument(f"no etcd endpoint in {url!r}")
        store = cls([f"http://{host}" for host in hosts])
        try:
            await store.current_revision()
        except BaseException:
            await store.close()
            raise
        return store

    async def get(self, key: str, revision: int | None = None) -> KeyValue | None:
        check_key(key)
        check_revision(revision)
        reply = await self._call("kv/range", {"key": _b64(key), "revision": revision or 0}, revision)
        kvs = reply.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def list(self, prefix: str, revision: int | None = None, limit: int | None = None,
                   start_after: str | None = None) -> tuple[list[KeyValue], int, bool]:
        check_revision(revision)
        check_limit(limit)
        body = {**_range_keys(prefix, start_after), "revision": revision or 0, "limit": limit or 0}
        reply = await self._call("kv/range", body, revision)
        return [_kv(kv) for kv in reply.get("kvs", [])], revision or _revision(reply), bool(reply.get("more"))

    async def count(self, prefix: str) -> int:
        reply = await self._call("kv/range", {**_range_keys(prefix), "count_only": True})
        return int(reply.get("count", 0))

    async def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> int:
        check_key(key)
        value = check_value(value)
        lease = await self._grant(check_ttl(lease_ttl))
        put = {"key": _b64(key), "value": _b64_bytes(value), "lease": lease}
        reply = await self._txn([{"key": _b64(key), "target": "CREATE", "create_revision": 0, "result": "EQUAL"}],
                                [{"request_put": put}], [], lease)
        if not reply.get("succeeded"):
            raise AlreadyExists(f"key {key!r} exists")
        return _revision(reply)

    async def update(self, key: str, value: bytes, expected_mod_revision: int,
                     lease_ttl: int | None = None) -> int:
        check_key(key)
        value = check_value(value)
        check_revision(expected_mod_revision)
        lease = await self._grant(check_ttl(lease_ttl))
        put: dict[str, Any] = {"key": _b64(key), "value": _b64_bytes(value)}
        put.update({"lease": lease} if lease else {"ignore_lease": True})
        reply = await self._txn(_same_mod_revision(key, expected_mod_revision), [{"request_put": put}],
                                [{"request_range": {"key": _b64(key)}}], lease)
        if not reply.get("succeeded"):
            _refuse(key, expected_mod_revision, reply)
        return _revision(reply)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]:
        check_key(key)
        check_revision(expected_mod_revision)
        if expected_mod_revision is None:
            compare = [{"key": _b64(key), "target": "CREATE", "create_revision": 0, "result": "GREATER"}]
        else:
            compare = _same_mod_revision(key, expected_mod_revision)
        reply = await self._txn(compare, [{"request_delete_range": {"key": _b64(key), "prev_kv": True}}],
                                [{"request_range": {"key": _b64(key)}}])
        if not reply.get("succeeded"):
            _refuse(key, expected_mod_revision, reply)
        prev = reply["responses"][0]["response_delete_range"]["prev_kvs"][0]
        return _revision(reply), _kv(prev)

    async def watch(self, prefix: str, start_revision: int) -> Watch:
        check_revision(start_revision)
        self._check_open()
        # Fail at once on a compacted start: etcd's own cancel would arrive only after its next sync.
        with contextlib.suppress(InvalidArgument):  # a start in the future is fine: the watch waits
            await self._call("kv/range", {"key": _b64("\0"), "count_only": True, "revision": start_revision},
                             start_revision)
        watch = EtcdWatch(self, prefix, start_revision)
        self._watches.add(watch)
        try:
            await watch.connect()
        except BaseException:
            await watch.close()
            raise
        return watch

    async def compact(self, revision: int) -> None:
        check_revision(revision)
        await self._call("kv/compaction", {"revision": revision}, revision)

    async def current_revision(self) -> int:
        return _revision(await self._call("kv/range", {"key": _b64("\0"), "count_only": True}))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            await watch.close()
        await self._gateway.close()

    async def open_watch_stream(self, prefix: str, start_revision: int) -> aiohttp.ClientResponse:
        """Start etcd's watch of ``prefix`` from ``start_revision``, with previous values (for EtcdWatch)."""
        create = {**_range_keys(prefix), "start_revision": start_revision, "prev_kv": True}
        try:
            return await self._gateway.stream("watch", {"create_request": create})
        except GatewayError as exc:
            raise SystemFailure(f"etcd watch failed: {exc.message}") from exc

    def forget(self, watch: EtcdWatch) -> None:
        self._watches.discard(watch)

    async def _call(self, path: str, body: dict[str, Any], revision: int | None = None) -> dict[str, Any]:
        """A gateway call with etcd's errors mapped to the contract's."""
        self._check_open()
        try:
            return await self._gateway.call(path, body)
        except GatewayError as exc:
            if _COMPACTED in exc.message:
                raise Compacted(await self._compact_revision(), revision) from None
            if _FUTURE in exc.message:
                raise InvalidArgument(f"revision {revision} is in the future") from None
            raise SystemFailure(f"etcd: {exc.message}") from None

    async def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                   failure: list[dict[str, Any]], lease: int = 0) -> dict[str, Any]:
        """A transaction. A lease granted for it is revoked if etcd answered that the compare failed;
        if the answer was lost the put may have happened, so the lease is left to expire by itself."""
        reply = await self._call("kv/txn", {"compare": compare, "success": success, "failure": failure})
        if lease and not reply.get("succeeded"):
            with contextlib.suppress(SystemFailure, GatewayError):
                await self._gateway.call("lease/revoke", {"ID": lease})
        return reply

    async def _grant(self, ttl: int | None) -> int:
        if ttl is None:
            return 0
        return int((await self._call("lease/grant", {"TTL": ttl}))["ID"])

    async def _compact_revision(self) -> int:
        """etcd's compact revision, learnt from the cancel of a watch from revision 1 (0 if it will not say)."""
        try:
            async with asyncio.timeout(2):
                response = await self._gateway.stream(
                    "watch", {"create_request": {"key": _b64("\0"), "start_revision": 1}})
                async with response:
                    lines = _MessageReader(response)
                    while (message := await lines.next()) is not None:
                        if message.get("canceled"):
                            return int(message.get("compact_revision", 0))
        except (TimeoutError, aiohttp.ClientError, GatewayError, SystemFailure):
            pass
        return 0

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("the store is closed")


def _same_mod_revision(key: str, revision: int) -> list[dict[str, Any]]:
    return [{"key": _b64(key), "target": "MOD", "mod_revision": revision, "result": "EQUAL"}]


def _refuse(key: str, expected: int | None, reply: dict[str, Any]) -> None:
    """Raise why a compare failed, from the failure branch's range of the key."""
    kvs = reply["responses"][0]["response_range"].get("kvs", [])
    if not kvs:
        raise NotFound(f"key {key!r} not found")
    raise Conflict(f"key {key!r} was modified at revision {kvs[0]['mod_revision']}, not {expected}")


class _MessageReader:
    """The newline-delimited JSON messages of a gateway stream, each unwrapped from ``{"result": ...}``."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._buffer = b""

    async def next(self) -> dict[str, Any] | None:
        """The next message; None at the end of the stream."""
        while b"\n" not in self._buffer:
            chunk = await self._response.content.readany()
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if "error" in message:
            raise GatewayError(message["error"].get("message", str(message)), int(message["error"].get("code", 0)))
        return message.get("result", message)


class EtcdWatch(Watch):
    """An etcd watch stream; resumes from the next revision on another endpoint if the stream breaks."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start_revision
        self._pending: collections.deque[Event] = collections.deque()
        self._response: aiohttp.ClientResponse | None = None
        self._reader: _MessageReader | None = None
        self._closed = False

    async def connect(self) -> None:
        """Open the stream from the next revision due and wait for etcd to confirm the watch."""
        self._response = await self._store.open_watch_stream(self._prefix, self._next)
        self._reader = _MessageReader(self._response)
        created = await self._reader.next()
        if created is None or not created.get("created"):
            raise SystemFailure(f"etcd did not create the watch: {created}")

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            message = await self._receive()
            if message is None:
                if self._closed:
                    raise StopAsyncIteration
                await self._resume()
                continue
            if message.get("canceled"):
                raise Compacted(int(message.get("compact_revision", 0)), self._next)
            self._pending.extend(_event(e) for e in message.get("events", []))
        event = self._pending.popleft()
        self._next = event.revision + 1
        return event

    async def _receive(self) -> dict[str, Any] | None:
        """The next message, or None if the stream ended or broke."""
        assert self._reader is not None
        try:
            return await self._reader.next()
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _resume(self) -> None:
        """The stream broke (etcd restarted, an endpoint went away): reopen it from the next revision."""
        self._drop_stream()
        for attempt in range(_WATCH_RESUME_ATTEMPTS):
            try:
                await self.connect()
                return
            except (SystemFailure, GatewayError, aiohttp.ClientError, ConnectionError, ValueError):
                self._drop_stream()
                await asyncio.sleep(0.2 * 2**attempt)
        raise SystemFailure(f"etcd watch of {self._prefix!r} lost at revision {self._next}")

    def _drop_stream(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response = self._reader = None

    async def close(self) -> None:
        self._closed = True
        self._drop_stream()
        self._store.forget(self)
