"""The Engine API's image routes: list, inspect, history, pull, push, tag, remove, save, load, import, prune.

Handlers translate HTTP to ``engine.images`` (``skiff.image.service.ImageService``) and back. Two things are
particular to images:

- **Names contain slashes** (``127.0.0.1:5000/test/busybox``), so the routes with a name in the middle use
  ``{name:.+}`` and the fixed paths (``/images/json``, ``/images/get``, ``/images/load`` ...) never collide with
  them: none of those ends in a name-route's suffix.
- **When a stream starts decides how an error looks.** dockerd writes nothing before it has resolved what
  to do, so a missing image, tag or registry is an HTTP error (404, 500) with ``{"message"}``, and only
  failures after the first progress line are ``{"errorDetail"}`` lines. Pull progress is therefore held
  back until the registry has answered for the manifest (distribution announces "Pulling from" before
  asking), push progress starts with the first line, a save's tar with its first byte; loads and imports
  answer once they are done.

Image events (pull, push, tag, untag, delete, import, load, save) are published by the service itself:
``register`` points its ``on_event`` at the engine's event bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from skiff.errors import InvalidArgument, Unsupported
from skiff.image.auth import Credentials
from skiff.image.reference import is_digest
from skiff.image.service import familiar

from .common import (
    BlockingBodyReader,
    JsonStream,
    json_response,
    json_stream,
    parse_filters,
    query_bool,
    wait_disconnected,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
TAR = "application/x-tar"
_CHUNK = 1 << 20


def register(app: web.Application, engine: Any) -> None:
    """Add the image routes; fixed paths first, then the ones with a name (which may hold slashes)."""
    routes = _ImageRoutes(engine)
    engine.images.on_event = lambda action, actor, attributes: engine.events.publish("image", action, actor,
                                                                                     attributes)
    app.router.add_get("/images/json", routes.list)
    app.router.add_get("/images/get", routes.save_many)
    app.router.add_post("/images/create", routes.create)
    app.router.add_post("/images/load", routes.load)
    app.router.add_post("/images/prune", routes.prune)
    app.router.add_get("/images/{name:.+}/json", routes.inspect)
    app.router.add_get("/images/{name:.+}/history", routes.history)
    app.router.add_get("/images/{name:.+}/get", routes.save_one)
    app.router.add_post("/images/{name:.+}/push", routes.push)
    app.router.add_post("/images/{name:.+}/tag", routes.tag)
    app.router.add_delete("/images/{name:.+}", routes.remove)


def with_tag(name: str, tag: str) -> str:
    """``name`` with the ``tag`` query parameter applied, which dockerd also accepts as a digest."""
    if not tag:
        return name
    return f"{name}@{tag}" if is_digest(tag) else f"{name}:{tag}"


def registry_auth(request: web.Request) -> Credentials | None:
    """The credentials in ``X-Registry-Auth`` (``e30=``, the empty object, is none)."""
    return Credentials.from_x_registry_auth(request.headers.get("X-Registry-Auth", ""))


class _ImageRoutes:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def images(self) -> Any:
        return self.engine.images

    # ------------------------------------------------------------------------------------------ reading

    async def list(self, request: web.Request) -> web.Response:
        filters = parse_filters(request)
        return json_response(self.images.summaries(all=query_bool(request, "all"), filters=filters))

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(self.images.inspect(request.match_info["name"]))

    async def history(self, request: web.Request) -> web.Response:
        return json_response(self.images.history(request.match_info["name"]))

    # ------------------------------------------------------------------------------------------ names

    async def tag(self, request: web.Request) -> web.Response:
        repo = request.query.get("repo", "")
        if not repo:
            raise InvalidArgument("repository name must have at least one component")
        self.images.tag(request.match_info["name"], with_tag(repo, request.query.get("tag", "")))
        return web.Response(status=201)

    async def remove(self, request: web.Request) -> web.Response:
        records = self.images.remove(request.match_info["name"], force=query_bool(request, "force"),
                                     prune=not query_bool(request, "noprune"))
        return json_response(records)

    async def prune(self, request: web.Request) -> web.Response:
        # Without a dangling filter only dangling images go, as with dockerd (the CLI's -a sends dangling=false).
        return json_response(await self.images.prune(filters=parse_filters(request)))

    # ------------------------------------------------------------------------------------------ registries

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``docker pull`` (``fromImage``) or ``docker import`` (``fromSrc=-``: the body is the rootfs tar)."""
        if "fromSrc" in request.query:
            return await self._import(request)
        name = request.query.get("fromImage", "")
        if not name:
            raise InvalidArgument("fromImage or fromSrc must be given")
        reference = with_tag(name, request.query.get("tag", ""))  # no tag: latest (pulling every tag is not offered)
        progress = _Progress(request, hold=lambda record: str(record.get("status", "")).startswith("Pulling from"))
        pull = self.images.pull(reference, request.query.get("platform") or None, progress, registry_auth(request))
        await progress.run(pull)
        return await progress.finish()

    async def push(self, request: web.Request) -> web.StreamResponse:
        reference = with_tag(request.match_info["name"], request.query.get("tag", ""))
        progress = _Progress(request)
        await progress.run(self.images.push(reference, progress, registry_auth(request)))
        return await progress.finish()

    # ------------------------------------------------------------------------------------------ archives

    async def save_many(self, request: web.Request) -> web.StreamResponse:
        return await self._save(request, request.query.getall("names", []))

    async def save_one(self, request: web.Request) -> web.StreamResponse:
        return await self._save(request, [request.match_info["name"]])

    async def _save(self, request: web.Request, names: list[str]) -> web.StreamResponse:
        if not names:
            raise InvalidArgument("no images to save: give one or more names")
        out = _ResponseWriter(request, asyncio.get_running_loop())
        try:
            await self.images.save(names, out)
        except Exception:
            if not out.response.prepared:
                raise  # nothing sent yet: an HTTP error
            log.exception("saving %s failed after the archive started; cutting the connection", names)
            out.abort()
            raise ConnectionResetError("save failed midway") from None
        return await out.finish()

    async def load(self, request: web.Request) -> web.StreamResponse:
        body = BlockingBodyReader(request.content, asyncio.get_running_loop())
        loaded = await self.images.load(body)
        stream = await json_stream(request)
        for name in loaded:
            text = f"Loaded image ID: {name}" if name.startswith("sha256:") else f"Loaded image: {familiar(name)}"
            await stream.send({"stream": text + "\n"})
        await stream.close()
        return stream

    async def _import(self, request: web.Request) -> web.StreamResponse:
        source = request.query.get("fromSrc", "")
        if source != "-":
            raise Unsupported("importing from a URL is not supported: send the archive as the body (fromSrc=-)")
        repo = request.query.get("repo", "")
        reference = with_tag(repo, request.query.get("tag", "")) if repo else None
        message = request.query.get("message") or f"Imported from {source}"
        body = BlockingBodyReader(request.content, asyncio.get_running_loop())
        image = await self.images.import_(body, reference, request.query.getall("changes", []), message,
                                          request.query.get("platform") or None)
        stream = await json_stream(request)
        await stream.send({"status": image.config_digest})
        await stream.close()
        return stream


# ---------------------------------------------------------------------------------------------- streams

class _Progress:
    """Progress records from a pull or push (a synchronous callback), written as they come.

    The response starts with the first record ``hold`` does not hold back; records held are sent in front of
    it, or dropped if the work fails first (then the failure is an HTTP error, as with dockerd).
    """

    def __init__(self, request: web.Request, hold: Callable[[dict], bool] = lambda _record: False) -> None:
        self.request, self.hold = request, hold
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.held: list[dict] = []
        self.stream: JsonStream | None = None

    def __call__(self, record: dict) -> None:
        self.queue.put_nowait(record)

    async def run(self, work: Awaitable[T]) -> T:
        """Await ``work`` while writing its progress; a client that goes away cancels it (as dockerd does)."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(wait_disconnected(self.request))
        try:
            while not task.done():
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({task, getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self._write(getter.result())
                else:
                    getter.cancel()
                if gone in done:
                    raise ConnectionResetError("client went away")
            while not self.queue.empty():
                await self._write(self.queue.get_nowait())
            return task.result()
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _write(self, record: dict) -> None:
        if self.stream is None and self.hold(record):
            self.held.append(record)
            return
        if self.stream is None:
            self.stream = await json_stream(self.request)
        for item in [*self.held, record]:
            await self.stream.send(item)
        self.held.clear()

    async def finish(self) -> JsonStream:
        """End the response (starting it, with whatever was held, if nothing was sent yet)."""
        if self.stream is None:
            self.stream = await json_stream(self.request)
        for item in self.held:
            await self.stream.send(item)
        await self.stream.close()
        return self.stream



class _ResponseWriter:
    """A blocking ``write`` for ``docker save`` in a worker thread, sending an ``application/x-tar`` response on
    the loop. The response starts at the first write, so a failure before any byte is still an HTTP error.
    Writes are gathered into chunks (tarfile writes 10 KiB at a time; each hand-over to the loop costs)."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self.request, self.loop = request, loop
        self.response = web.StreamResponse(headers={"Content-Type": TAR})
        self.response.enable_chunked_encoding()
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= _CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            asyncio.run_coroutine_threadsafe(self._write(data), self.loop).result()

    async def _write(self, data: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(data)

    async def finish(self) -> web.StreamResponse:
        """Send what is left and end the response (called on the loop, after the writing thread is done)."""
        data, self.buffer = bytes(self.buffer), bytearray()
        await self._write(data)
        await self.response.write_eof()
        return self.response

    def abort(self) -> None:
        """Cut the connection, so the client sees a broken transfer rather than a short tar that looks whole."""
        if self.request.transport is not None:
            self.request.transport.abort()
