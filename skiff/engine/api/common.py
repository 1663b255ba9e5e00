"""The Engine API's HTTP toolbox: what every route module (system, containers, exec, images) builds on.

The docker CLI and docker-py are picky in a few places, and getting those right once here keeps every
handler simple:

- **Versioned paths.** Clients call ``/v1.45/containers/json`` as well as ``/containers/json``. Route
  modules register unversioned paths only; :func:`install` adds one resource that routes any
  ``/vX.Y/...`` path to the same handlers, and the middleware rejects versions outside
  [``MIN_API_VERSION``, ``API_VERSION``] with dockerd's 400 message. :func:`client_version` tells a
  handler which version the client asked for (ours when unversioned).
- **Errors.** Handlers raise ``skiff.errors`` types; the middleware maps each once (see
  ``ERROR_STATUS``) to ``{"message": ...}`` with ``Content-Type: application/json`` *exactly* (with a
  ``; charset=`` suffix the CLI prints the raw body instead of the message). aiohttp's own 404/405 and
  ``web.HTTPException`` errors raised by handlers get the same shape; 1xx-3xx ``HTTPException`` (e.g.
  ``raise web.HTTPNotModified()`` for a no-op stop) pass through untouched.
- **Headers.** Every response, streamed or not, carries ``Server``, ``Api-Version``,
  ``Docker-Experimental`` and ``Ostype`` (the CLI reads them from ``/_ping``; build and stats read
  ``Server``).
- **Streams.** :func:`json_stream` (pull, push, build, events, wait: one JSON document per line,
  flushed as it happens) and :func:`hijack` (attach, exec start: the raw connection, answering
  ``101 UPGRADED``). Both return ``web.StreamResponse`` subclasses: return them from the handler. A
  handler that started one and then returns ``None`` or raises still leaves cleanly: the middleware
  logs the error (a message in the middle of a raw stream would corrupt it) and closes the stream.
- **Client disconnects.** aiohttp does not cancel a handler when its client goes away, so a handler
  that waits for something (an event, a container exit, new log lines) must watch for it:
  :func:`unless_disconnected` and :func:`until_disconnected`.

Conventions for route modules: each exposes ``register(app: web.Application, engine) -> None`` and adds
unversioned routes with ``app.router.add_get/add_post/...``; path parameters that may contain slashes
(image names) use ``{name:.+}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import hdrs, http_parser, web, web_protocol
from aiohttp.abc import AbstractMatchInfo
from aiohttp.streams import StreamReader
from aiohttp.web_urldispatcher import AbstractResource
from yarl import URL

from skiff import errors

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The newest Engine API version we serve: Docker 26.1's. The docker CLI 28 uses min(1.50, ours);
# docker-py 7 defaults to 1.45 too. Clients older than 1.24 are refused, as dockerd does.
API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
# The Docker release whose API we serve, marked as ours ("Server: Docker/26.1.0-skiff (linux)").
ENGINE_VERSION = "26.1.0-skiff"
SERVER_HEADER = f"Docker/{ENGINE_VERSION} (linux)"
JSON = "application/json"
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
# Request bodies read whole (read_json) up to this size; streamed bodies (tar archives) are not limited.
CLIENT_MAX_SIZE = 16 << 20
# How often a waiting handler checks whether its client is still there.
DISCONNECT_POLL = 0.5
# How long closing a hijacked connection waits for unsent output to reach a client that stopped reading.
CLOSE_FLUSH_TIMEOUT = 10.0

# skiff.errors -> HTTP status, checked in order (subclasses before their bases). Unsupported is 501,
# as dockerd answers its errdefs.NotImplemented; the CLI shows the message either way.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.Conflict, 409),
    (errors.InvalidArgument, 400),
    (errors.Unsupported, 501),
)
_STREAM_KEY = web.RequestKey("skiff.stream", web.StreamResponse)  # the stream a handler started
_VERSION_KEY = web.RequestKey("skiff.api_version", str)
_VERSION_PREFIX = re.compile(r"^/v([0-9.]+)(/.*)$")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


# ---------------------------------------------------------------------------------------- app wiring

def install(app: web.Application) -> None:
    """Give ``app`` the Engine API's behaviour: versioned-path routing, the error and version middleware,
    and the common headers. Call once, before any route module registers its routes."""
    ensure_tcp_upgrades()
    app.middlewares.append(api_middleware)
    app.on_response_prepare.append(_common_headers)
    app.router.register_resource(_VersionedPaths(app.router))


_UPGRADE_PROBE = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\nX"


def _parser_upgrades_tcp(parser_class: type) -> bool:
    try:
        _, upgraded, tail = parser_class(object(), None, 1 << 16).feed_data(_UPGRADE_PROBE)
    except Exception:
        return False
    return bool(upgraded) and tail == b"X"


def ensure_tcp_upgrades() -> None:
    """Make aiohttp's server hand over the bytes that follow an ``Upgrade: tcp`` request.

    aiohttp's pure-Python request parser switches the connection to the upgraded protocol after such a
    request and keeps what follows (stdin, for attach and exec); its C parser (3.14) does this only for
    websockets and drops those bytes. So when the parser in use fails a one-request probe, servers made
    from now on in this process use the pure-Python one (aiohttp's own fallback when its C extensions are
    absent). Process-wide, and a no-op once aiohttp's C parser passes the probe.
    """
    if not _parser_upgrades_tcp(web_protocol.HttpRequestParser):
        log.debug("aiohttp's request parser drops Upgrade: tcp streams; using its pure-Python parser")
        web_protocol.HttpRequestParser = http_parser.HttpRequestParserPy  # type: ignore[misc]


class _VersionedPaths(AbstractResource):
    """Routes ``/vX.Y/rest`` to whatever ``/rest`` routes to.

    aiohttp resolves the route before any middleware runs, so stripping the prefix in a middleware
    would be too late. This resource is indexed under "/", which the router tries last; it resolves the
    unversioned path with the same router. The version itself is checked by the middleware, which sees
    the original path.
    """

    def __init__(self, router: web.UrlDispatcher) -> None:
        super().__init__()
        self._router = router

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        raise NotImplementedError("versioned paths have no URL of their own")

    async def resolve(self, request: web.Request) -> tuple[AbstractMatchInfo | None, set[str]]:
        m = _VERSION_PREFIX.match(request.rel_url.raw_path)
        if m is None:
            return None, set()
        stripped = request.clone(rel_url=URL.build(path=m.group(2), encoded=True))
        return await self._router.resolve(stripped), set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the Engine API is not mounted as a sub-application")

    def get_info(self) -> dict[str, Any]:
        return {"pattern": _VERSION_PREFIX}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_HEADER
    response.headers["Api-Version"] = API_VERSION
    response.headers["Docker-Experimental"] = "false"
    response.headers["Ostype"] = "linux"


def client_version(request: web.Request) -> tuple[int, ...]:
    """The API version the client asked for, e.g. ``(1, 41)``; ours when the path is unversioned."""
    return _version_tuple(request.get(_VERSION_KEY, API_VERSION))


def _check_version(request: web.Request) -> None:
    m = _VERSION_PREFIX.match(request.rel_url.raw_path)
    if m is None:
        return
    asked = m.group(1)
    if _version_tuple(asked) > _version_tuple(API_VERSION):
        raise errors.InvalidArgument(
            f"client version {asked} is too new. Maximum supported API version is {API_VERSION}")
    if _version_tuple(asked) < _version_tuple(MIN_API_VERSION):
        raise errors.InvalidArgument(
            f"client version {asked} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version")
    request[_VERSION_KEY] = asked


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks the path's API version and turns every failure into Docker's JSON error, once."""
    try:
        _check_version(request)
        response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return await _after_failure(request, e.status, _http_exception_message(request, e), None, e.headers)
    except Exception as e:
        if isinstance(e, (ConnectionError, asyncio.IncompleteReadError)) and client_gone(request):
            log.debug("%s %s: client went away: %s", request.method, request.path, e)
            return await _after_failure(request, 500, "client went away", None)
        return await _after_failure(request, _status_of(e), str(e) or type(e).__name__, e)
    if response is None and _STREAM_KEY in request:
        return request[_STREAM_KEY]
    return response


def _status_of(error: Exception) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def _http_exception_message(request: web.Request, e: web.HTTPException) -> str:
    if request.match_info.http_exception is e:  # the router's own answer, in dockerd's words
        return {404: "page not found", 405: "method not allowed"}.get(e.status, e.reason)
    default = f"{e.status}: {e.reason}"
    return e.reason if not e.text or e.text == default else e.text


async def _after_failure(request: web.Request, status: int, message: str, error: Exception | None,
                         headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """The response for a failed handler: the JSON error; or, once a stream has started (its status is
    sent), the stream itself, ended with Docker's in-stream error line if it is a JSON stream."""
    if status >= 500 and error is not None:
        log.error("%s %s failed", request.method, request.path, exc_info=error)
    stream = request.get(_STREAM_KEY)
    if stream is None:
        response = error_response(status, message)
        if headers and hdrs.ALLOW in headers:
            response.headers[hdrs.ALLOW] = headers[hdrs.ALLOW]
        return response
    if isinstance(stream, JsonStream) and error is not None and not client_gone(request):
        try:
            await stream.error(message)
        except ConnectionError:
            pass
    elif error is not None and status < 500:
        log.warning("%s %s failed after its stream started: %s", request.method, request.path, message)
    return stream


# ---------------------------------------------------------------------------------------- responses

def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as JSON with ``Content-Type: application/json`` exactly (no charset)."""
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type=JSON)


def error_response(status: int, message: str) -> web.Response:
    """Docker's error body, ``{"message": ...}``, with ``status``."""
    return json_response({"message": message}, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: ``{}`` when empty; 400 (InvalidArgument) when malformed or not an
    object. Chunked bodies are fine. Read it before :func:`hijack` (exec start sends its JSON and then
    stdin on the same connection). The Content-Type is not checked: clients label JSON loosely."""
    body = await request.read()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise errors.InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise errors.InvalidArgument(f"invalid JSON: expected an object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- query parameters

_FALSE = frozenset({"", "0", "no", "false", "none"})


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter as dockerd reads them: absent -> ``default``; ``""``, 0, no, false, none
    (any case) -> False; anything else (1, true, True, yes, ...) -> True."""
    value = request.query.get(name)
    if value is None:
        return default
    return value.strip().lower() not in _FALSE


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter: absent or empty -> ``default``; not an integer -> 400."""
    value = request.query.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise errors.InvalidArgument(f"invalid value for {name}: {value!r} is not an integer") from None


def parse_filters(request: web.Request, accepted: Iterable[str] | None = None,
                  param: str = "filters") -> dict[str, list[str]]:
    """The ``filters`` query parameter as ``{name: [values]}``.

    Accepts the CLI's map form ``{"name": {"x": true}}`` and docker-py's list form ``{"name": ["x"]}``;
    absent or empty -> ``{}``. Malformed JSON, or (with ``accepted``) an unknown filter name -> 400 with
    dockerd's message (``invalid filter 'foo'``).
    """
    raw = request.query.get(param, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise errors.InvalidArgument(f"invalid filter: {e}") from None
    if not isinstance(data, dict):
        raise errors.InvalidArgument("invalid filter: expected a JSON object")
    result = {str(name): _filter_values(name, values) for name, values in data.items()}
    if accepted is not None:
        allowed = set(accepted)
        for name in result:
            if name not in allowed:
                raise errors.InvalidArgument(f"invalid filter '{name}'")
    return result


def _filter_values(name: str, values: Any) -> list[str]:
    if isinstance(values, dict):
        return [str(v) for v in values]
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        return list(values)
    raise errors.InvalidArgument(f"invalid filter: values of '{name}' must be a map or a list of strings")


# ---------------------------------------------------------------------------------------- time

_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339_nano(ts: float | datetime | None = None, *, ns: int | None = None) -> str:
    """A timestamp as Go's ``time.RFC3339Nano`` in UTC, as inspect and logs show them:
    ``2024-05-01T12:00:00.123456789Z`` (trailing zeros of the fraction dropped). ``ts`` is seconds since
    the epoch or an aware datetime; ``ns`` nanoseconds since the epoch (exact). ``None``/0 give Go's zero
    time ``0001-01-01T00:00:00Z`` (dockerd's "never", e.g. FinishedAt of a container never stopped)."""
    if ns is None:
        if not ts:
            return _GO_ZERO_TIME
        if isinstance(ts, datetime):
            ts = ts.timestamp()
        ns = round(ts * 1_000_000_000)
    if ns == 0:
        return _GO_ZERO_TIME
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def unix_time(ts: float | datetime | str | None) -> int:
    """Whole seconds since the epoch (lists' ``Created``), from seconds, a datetime or an RFC 3339 string."""
    if ts is None or ts == "":
        return 0
    if isinstance(ts, str):
        ts = parse_timestamp(ts)
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    return int(ts)


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$")


def parse_timestamp(text: str) -> float:
    """A point in time as the API's ``since``/``until`` parameters give it: ``SECONDS[.NANOS]`` (what the
    CLI sends, having resolved durations like ``10m`` itself) or RFC 3339. Malformed -> 400."""
    text = text.strip()
    try:
        if re.fullmatch(r"-?\d+(\.\d{1,9})?", text):
            whole, _, fraction = text.partition(".")
            return int(whole) + (int(fraction.ljust(9, "0")) / 1e9 if fraction else 0.0)
        m = _RFC3339.match(text)
        if m:
            date, clock, fraction, zone = m.groups()
            zone = "+00:00" if zone in (None, "Z", "z") else zone
            parsed = datetime.fromisoformat(f"{date}T{clock}{zone}")
            return parsed.timestamp() + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)
    except ValueError:
        pass
    raise errors.InvalidArgument(f"invalid timestamp {text!r}: want seconds since the epoch or RFC 3339")


# ---------------------------------------------------------------------------------------- disconnects

def client_gone(request: web.Request) -> bool:
    """True once the client's connection is closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait_disconnected(request: web.Request, interval: float = DISCONNECT_POLL) -> None:
    """Return once the client has gone. aiohttp gives no disconnect callback, so this polls."""
    while not client_gone(request):
        await asyncio.sleep(interval)


async def unless_disconnected(request: web.Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client goes away first; then cancel it and raise
    ``ConnectionResetError`` (which the middleware treats as a quiet end of the request)."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work in done:
        return work.result()
    raise ConnectionResetError("client went away")


async def until_disconnected(request: web.Request, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, until they end or the client goes away (then it just stops)."""
    while True:
        try:
            yield await unless_disconnected(request, anext(items))
        except (StopAsyncIteration, ConnectionResetError):
            return


# ---------------------------------------------------------------------------------------- JSON streams

class JsonStream(web.StreamResponse):
    """A ``200`` chunked ``application/json`` response of one JSON document per line, each written (and so
    seen by the client) at once: pull/push progress, build output, events, wait. Made by
    :func:`json_stream`; return it from the handler.

    Errors after the stream started cannot change the status any more; Docker clients expect them as a
    last line, written with :meth:`error`. A client that went away makes :meth:`send` raise
    ``ConnectionResetError``.
    """

    def __init__(self) -> None:
        super().__init__(status=200, headers={hdrs.CONTENT_TYPE: JSON})
        self.enable_chunked_encoding()

    async def send(self, obj: Any) -> None:
        """Write ``obj`` as one compact JSON line (as Go's json.Encoder does)."""
        await self.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def error(self, message: str, code: int | None = None) -> None:
        """Write Docker's in-stream error: ``{"errorDetail":{"message":m},"error":m}`` (``code`` for builds)."""
        detail: dict[str, Any] = {"message": message}
        if code is not None:
            detail = {"code": code, "message": message}
        await self.send({"errorDetail": detail, "error": message})

    async def close(self) -> None:
        """End the response (the final empty chunk). Safe to call twice, or after the client left."""
        try:
            await self.write_eof()
        except ConnectionError:
            pass


async def json_stream(request: web.Request) -> JsonStream:
    """Start a :class:`JsonStream` on ``request``: the status and headers go out now, so a client blocked
    on them (``docker run`` waits for the headers of ``/wait`` before it starts the container) proceeds."""
    stream = JsonStream()
    await stream.prepare(request)
    request[_STREAM_KEY] = stream
    return stream


# ---------------------------------------------------------------------------------------- hijacked connections

STDIN, STDOUT, STDERR = 0, 1, 2


def frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream (non-TTY attach, exec, logs): an 8-byte header
    ``[stream, 0, 0, 0, uint32 big-endian length]`` then ``data``. ``stream`` is 1 (stdout) or 2 (stderr)."""
    return struct.pack(">BxxxI", stream, len(data)) + data


class _Passthrough:
    """Handed to aiohttp's ``set_parser``: aiohttp feeds it the bytes it buffered after the upgrade
    request (stdin the client sent right behind the headers or body) and would feed it later data;
    everything goes to the hijacked connection's reader."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        if not self._reader.at_eof():
            self._reader.feed_eof()


class _HijackedProtocol(asyncio.Protocol):
    """Takes the connection's transport over from aiohttp after a ``101``.

    aiohttp's protocol would close the connection at the client's write half-close (its
    ``eof_received`` returns None), but a half-close is how ``echo x | docker run -i`` says "end of
    stdin" while still reading the output. This protocol keeps the connection open then, implements
    write flow control for :class:`RawStream`, and hands ``connection_lost`` back to aiohttp's protocol
    so the server still tracks (and at shutdown closes) the connection.
    """

    def __init__(self, reader: asyncio.StreamReader, previous: asyncio.BaseProtocol) -> None:
        self.reader = reader
        self.previous = previous
        self.lost = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def eof_received(self) -> bool:
        if not self.reader.at_eof():
            self.reader.feed_eof()
        return True  # keep the write half open

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reader.at_eof():
            self.reader.feed_eof()
        if not self.lost.done():
            self.lost.set_result(None)
        self._writable.set()
        self.previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class RawStream(web.StreamResponse):
    """A hijacked connection (attach, exec start): read the client's stdin, write output; made by
    :func:`hijack`. Return it from the handler; the connection closes when the handler returns (or at
    :meth:`close`), which is how Docker clients learn the output ended.

    With ``Upgrade: tcp`` (the docker CLI and docker-py always send it) the answer is ``101 UPGRADED`` and
    the connection becomes a raw byte stream both ways; :meth:`read` returns ``b""`` once the client
    half-closes (stdin EOF) while :meth:`write` keeps working. Without it the answer is a ``200`` whose
    chunked body is the output, and stdin is the request's body.
    """

    def __init__(self, upgrade: bool, content_type: str) -> None:
        headers = {hdrs.CONTENT_TYPE: content_type}
        if upgrade:
            headers.update({hdrs.CONNECTION: "Upgrade", hdrs.UPGRADE: "tcp"})
        super().__init__(status=101 if upgrade else 200, reason="UPGRADED" if upgrade else None, headers=headers)
        self.upgraded = upgrade
        self.force_close()  # one stream per connection; no keep-alive afterwards
        self._request: web.Request | None = None
        self._protocol: _HijackedProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = False

    async def _take_over(self, request: web.Request) -> None:
        """Send the response head, then move the transport to our own protocol (see _HijackedProtocol)."""
        self._request = request
        if not self.upgraded:  # plain HTTP: the request's body is stdin, the response's body the output
            await self.prepare(request)
            return
        await request.read()  # any body first: the upgrade takes effect only once it has been consumed
        await self.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.set_transport(transport)
        request.protocol.set_parser(_Passthrough(reader))  # type: ignore[arg-type]  # hands over buffered bytes
        self._protocol = _HijackedProtocol(reader, transport.get_protocol())
        self._transport = transport
        transport.set_protocol(self._protocol)
        if not transport.is_reading():  # aiohttp may have paused it while stdin piled up
            transport.resume_reading()

    @property
    def closed(self) -> bool:
        """True once the connection is closed by either side."""
        if self._closed:
            return True
        if self._protocol is not None:
            return self._protocol.lost.done()
        return self._request is None or client_gone(self._request)

    async def read(self, n: int = 1 << 16) -> bytes:
        """Up to ``n`` bytes of the client's stdin as they arrive; ``b""`` at its end (half-close or close)."""
        if self._protocol is not None:
            return await self._protocol.reader.read(n)
        if self._request is None or self._closed:
            return b""
        return await self._request.content.read(n)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (use :func:`frame` for non-TTY streams); waits while the client is slow.
        Raises ``ConnectionResetError`` once the connection is gone."""
        if self._protocol is None:
            await super().write(data)
            return
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._transport.write(data)
        await self._protocol.drain()

    async def close(self) -> None:
        """Close the connection, after what was written has been sent."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None and self._protocol is not None:
            self._transport.close()
            try:  # close() flushes first; a client that stops reading must not hold us forever
                await asyncio.wait_for(asyncio.shield(self._protocol.lost), CLOSE_FLUSH_TIMEOUT)
            except TimeoutError:
                self._transport.abort()
        else:
            try:
                await super().write_eof()
            except ConnectionError:
                pass

    async def wait_closed(self) -> None:
        """Return when the connection is gone. A client's close looks like its half-close (stdin EOF) until
        a write to it fails, so, as with dockerd, a silent stream learns of it at its next write."""
        if self._protocol is not None:
            await asyncio.shield(self._protocol.lost)
        elif self._request is not None:
            await wait_disconnected(self._request)

    async def write_eof(self, data: bytes = b"") -> None:
        """Called by aiohttp after the handler returns: closes the connection."""
        if data:
            await self.write(data)
        if self._protocol is None and not self._closed:
            self._closed = True
            await super().write_eof()
            return
        await self.close()


async def hijack(request: web.Request, *, content_type: str = RAW_STREAM) -> RawStream:
    """Answer ``request`` with a raw stream and return it (see :class:`RawStream`).

    Bytes the client sent right behind the request (``echo x | docker run -i`` sends stdin before the
    container even starts) are kept and come first from :meth:`RawStream.read`. Read the request's JSON
    body (exec start) before calling this. ``content_type`` is ``application/vnd.docker.raw-stream``
    (dockerd uses it for TTY and multiplexed streams alike); pass ``MULTIPLEXED_STREAM`` only if a
    client asked for it.
    """
    connection = {token.strip().lower() for token in request.headers.get(hdrs.CONNECTION, "").split(",")}
    upgrade = "upgrade" in connection and request.headers.get(hdrs.UPGRADE, "").strip().lower() == "tcp"
    stream = RawStream(upgrade, content_type)
    await stream._take_over(request)
    request[_STREAM_KEY] = stream
    return stream


class BlockingBodyReader:
    """A request body as a blocking ``read`` for code that runs in a worker thread (archive and context
    readers): each read is a coroutine run on the loop."""

    def __init__(self, content: StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        self.content, self.loop = content, loop

    def read(self, n: int = -1) -> bytes:
        coroutine = self.content.read(n if n is not None and n >= 0 else -1)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
