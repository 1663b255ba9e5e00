"""The Engine API's build routes: ``POST /build`` (Docker's legacy builder protocol), ``POST /build/prune`` and
``POST /commit``.

``POST /build`` reads the context archive from the request body (plain or compressed tar, chunked or not)
into a directory under the data root, hands it to ``skiff.build.builder`` and writes what the builder says
as Docker's JSON lines: ``{"stream": "Step 1/4 : FROM busybox"}``, ``{"stream": " ---> 1a2b3c4d5e6f\\n"}``,
RUN output, ``{"aux": {"ID": "sha256:..."}}``, ``Successfully built <12 hex>``, ``Successfully tagged ...``.

As with dockerd, nothing is written before the builder has something to say, so a bad request, a missing
Dockerfile or a parse error is an HTTP error (``{"message"}``, 400), while a step that fails later is the
stream's last line: ``{"errorDetail": {"code": N, "message": ...}, "error": ...}``. With ``q`` the steps are
held back and only the image ID is written; if the build fails, what was held is written before the error.
A client that goes away cancels the build.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from typing import Any

from aiohttp import web

from skiff.build.builder import Builder, BuildFailed, BuildOptions
from skiff.build.context import receive
from skiff.errors import InvalidArgument, SkiffError, Unsupported
from skiff.image.auth import Credentials, config_key

from .common import (
    BlockingBodyReader,
    JsonStream,
    json_response,
    json_stream,
    query_bool,
    read_json,
    wait_disconnected,
)

log = logging.getLogger(__name__)
BUILDER_DIR = "build"


def register(app: web.Application, engine: Any) -> None:
    builder = Builder(engine.images, engine.containers, os.path.join(str(engine.config.data_root), BUILDER_DIR))
    builder.start()
    engine.builder = builder
    routes = _BuildRoutes(engine, builder)
    app.router.add_post("/build", routes.build)
    app.router.add_post("/build/prune", routes.prune)
    app.router.add_post("/commit", routes.commit)

    async def close(_app: web.Application) -> None:
        builder.close()

    app.on_cleanup.append(close)


# ---------------------------------------------------------------------------------------------- parameters

def _json_param(request: web.Request, name: str, kind: type) -> Any:
    text = request.query.get(name, "")
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"invalid {name} parameter: not JSON") from None
    if not isinstance(value, kind):
        raise InvalidArgument(f"invalid {name} parameter: want a JSON {kind.__name__}")
    return value


def _registry_config(request: web.Request) -> dict[str, Credentials]:
    """``X-Registry-Config``: base64url JSON of registry -> auth config, as the CLI and docker-py send it."""
    header = request.headers.get("X-Registry-Config", "")
    if not header:
        return {}
    try:
        doc = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidArgument("invalid X-Registry-Config header: not base64url JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid X-Registry-Config header: not a JSON object")
    found = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            continue
        creds = Credentials(str(entry.get("username") or ""), str(entry.get("password") or ""),
                            str(entry.get("identitytoken") or ""), str(entry.get("registrytoken") or ""))
        host = str(key).split("://", 1)[-1].split("/", 1)[0]
        found[config_key(host)] = creds
    return found


def build_options(request: web.Request) -> BuildOptions:
    """``POST /build``'s query, checked before anything is read or written."""
    query = request.query
    if query.get("remote"):
        raise Unsupported("building from a remote context (git or URL) is not supported: send the context as "
                          "the request body")
    build_args = _json_param(request, "buildargs", dict)
    labels = _json_param(request, "labels", dict)
    cache_from = _json_param(request, "cachefrom", list)
    auth = _registry_config(request)
    return BuildOptions(
        dockerfile=query.get("dockerfile") or "Dockerfile",
        tags=[t for t in query.getall("t", []) if t],
        build_args={str(k): (None if v is None else str(v)) for k, v in build_args.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        target=query.get("target", ""),
        nocache=query_bool(request, "nocache"),
        pull=query_bool(request, "pull"),
        rm=query_bool(request, "rm", True),
        forcerm=query_bool(request, "forcerm"),
        platform=query.get("platform", ""),
        network_mode=query.get("networkmode", ""),
        cache_from=[str(c) for c in cache_from],
        credentials=lambda host: auth.get(config_key(host)),
    )


# ---------------------------------------------------------------------------------------------- output

class _BuildOutput:
    """The response, started at the first line (see the module docstring); with ``quiet`` the lines are held."""

    def __init__(self, request: web.Request, quiet: bool) -> None:
        self.request, self.quiet = request, quiet
        self.stream: JsonStream | None = None
        self.held: list[dict] = []

    async def _send(self, record: dict) -> None:
        if self.stream is None:
            self.stream = await json_stream(self.request)
        await self.stream.send(record)

    async def text(self, text: str) -> None:
        record = {"stream": text}
        if self.quiet:
            self.held.append(record)
        else:
            await self._send(record)

    async def aux(self, record: dict) -> None:
        wrapped = {"aux": record} if set(record) == {"ID"} else record  # pull progress goes as it is
        if self.quiet:
            self.held.append(wrapped)
        else:
            await self._send(wrapped)

    async def result(self, lines: list[str]) -> web.StreamResponse:
        for line in lines:
            await self._send({"stream": line})
        assert self.stream is not None
        await self.stream.close()
        return self.stream

    async def failed(self, error: SkiffError) -> web.StreamResponse:
        """The failure as the stream's last line, or as an HTTP error if nothing was written yet."""
        if self.quiet and self.held:
            for record in self.held:
                await self._send(record)
        if self.stream is None:
            raise error
        await self.stream.error(str(error), getattr(error, "code", None) if isinstance(error, BuildFailed) else 1)
        await self.stream.close()
        return self.stream



# ---------------------------------------------------------------------------------------------- routes

class _BuildRoutes:
    def __init__(self, engine: Any, builder: Builder) -> None:
        self.engine, self.builder = engine, builder

    async def build(self, request: web.Request) -> web.StreamResponse:
        options = build_options(request)
        output = _BuildOutput(request, query_bool(request, "q"))
        reader = BlockingBodyReader(request.content, asyncio.get_running_loop())
        context = await asyncio.to_thread(receive, reader, self.builder.contexts_dir)
        try:
            image = await self._run(request, context, options, output)
            tags = self.engine.images.name_built(image, options.tags)
        except SkiffError as e:
            failure: SkiffError | None = e
        else:
            failure = None
        finally:  # before the last line: a client that sees the end sees nothing of the build left
            context.close(self.builder.trash_dir)
        if failure is not None:
            return await output.failed(failure)
        if output.quiet:
            return await output.result([image.config_digest + "\n"])
        short = image.config_digest.removeprefix("sha256:")[:12]
        return await output.result([f"Successfully built {short}\n", *(f"Successfully tagged {t}\n" for t in tags)])

    async def _run(self, request: web.Request, context: Any, options: BuildOptions, output: _BuildOutput) -> Any:
        """The build, cancelled if the client goes away (as dockerd cancels its build context)."""
        work = asyncio.ensure_future(self.builder.build(context, options, output.text, output.aux))
        gone = asyncio.ensure_future(wait_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                raise ConnectionResetError("client went away: build cancelled")
            return work.result()
        finally:
            gone.cancel()

    async def prune(self, request: web.Request) -> web.Response:
        reclaimed = await self.engine.images.prune_build_cache()
        images = self.engine.images
        await asyncio.to_thread(self.builder.cache.forget_missing, lambda digest: images.step_image(digest) is not None)
        return json_response({"CachesDeleted": None, "SpaceReclaimed": reclaimed})

    async def commit(self, request: web.Request) -> web.Response:
        """``docker commit``: the container's changes as an image (paused meanwhile, unless ``pause=0``)."""
        containers = self.engine.containers
        c = containers.get(request.query.get("container", ""))
        body = await read_json(request) if request.can_read_body else {}
        repo, tag = request.query.get("repo", ""), request.query.get("tag", "")
        reference = (f"{repo}:{tag}" if tag else repo) if repo else None
        pause = query_bool(request, "pause", True) and c.state.status == "running"
        if pause:
            await containers.pause(c.id)
        try:
            image = await asyncio.to_thread(
                self.engine.images.commit_rootfs, c.id, request.query.getall("changes", []),
                request.query.get("author", ""), request.query.get("comment", ""), reference,
                config=body or c.config)
        finally:
            if pause:
                await containers.unpause(c.id)
        containers.event(c, "commit", comment=request.query.get("comment", ""))
        return json_response({"Id": image.config_digest}, status=201)

