"""The Engine API's exec routes: ``docker exec`` as create, start (a hijacked stream), resize and inspect.

The order the CLI relies on: the stream of ``POST /exec/{id}/start`` ends only after the exit code is
recorded, because the next thing the CLI does is ``GET /exec/{id}/json`` and exits with its ExitCode.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from skiff import errors
from skiff.engine.api.common import frame, hijack, json_response, query_int, read_json
from skiff.engine.api.containers import ServiceRoutes, parse_detach_keys, pump
from skiff.engine.containers import Exec


def exec_doc(e: Exec) -> dict:
    """``GET /exec/{id}/json``."""
    cmd = list(e.config.get("Cmd") or [])
    return {
        "CanRemove": False, "ContainerID": e.container.id, "DetachKeys": e.config.get("DetachKeys") or "",
        "ExitCode": e.exit_code, "ID": e.id, "OpenStderr": bool(e.config.get("AttachStderr")),
        "OpenStdin": bool(e.config.get("AttachStdin")), "OpenStdout": bool(e.config.get("AttachStdout")),
        "ProcessConfig": {"arguments": cmd[1:], "entrypoint": cmd[0] if cmd else "",
                          "privileged": bool(e.config.get("Privileged")), "tty": bool(e.config.get("Tty")),
                          "user": e.config.get("User") or ""},
        "Running": e.running, "Pid": e.pid,
    }


class ExecRoutes(ServiceRoutes):
    """The exec handlers."""

    async def create(self, request: web.Request) -> web.Response:
        e = self.svc.create_exec(request.match_info["id"], await read_json(request))
        return json_response({"Id": e.id}, status=201)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(exec_doc(self.svc.get_exec(request.match_info["id"])))

    async def resize(self, request: web.Request) -> web.Response:
        await self.svc.resize_exec(request.match_info["id"], query_int(request, "h", 0) or 0,
                                   query_int(request, "w", 0) or 0)
        return web.Response(status=200)

    async def start(self, request: web.Request) -> web.StreamResponse:
        e = self.svc.get_exec(request.match_info["id"])
        body = await read_json(request)
        tty = bool(body["Tty"]) if body.get("Tty") is not None else bool(e.config.get("Tty"))
        self._check_startable(e)
        if body.get("Detach"):
            await self._start_detached(e, tty)
            return web.Response(status=200)
        raw = await hijack(request)
        try:
            session = await self.svc.start_exec(e, tty)
        except errors.SkiffError as error:
            # The stream has begun: dockerd writes the error into it, where the CLI shows it.
            message = f"{error}\r\n".encode()
            with contextlib.suppress(ConnectionError):
                await raw.write(message if tty else frame(1, message))
            await raw.close()
            return raw
        try:
            await pump(raw, session, tty=tty, stdin=bool(e.config.get("AttachStdin")),
                       wanted={0: True, 1: bool(e.config.get("AttachStdout")),
                               2: bool(e.config.get("AttachStderr"))}.get,
                       detach_keys=parse_detach_keys(e.config.get("DetachKeys"))
                       if tty and e.config.get("AttachStdin") else None)
            await self.svc.finish_exec(e)
        finally:
            await session.close()
        await raw.close()
        return raw

    def _check_startable(self, e: Exec) -> None:
        """Refusals that must still be JSON errors, before the connection is hijacked."""
        if e.started:
            raise errors.Conflict(f"Error: Exec command {e.id} is already running" if e.running
                                  else f"Error: Exec command {e.id} has already run")
        c = e.container
        if c.state.status == "paused":
            raise errors.Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if c.state.status != "running":
            raise errors.Conflict(f"Container {c.id} is not running")

    async def _start_detached(self, e: Exec, tty: bool) -> None:
        session = await self.svc.start_exec(e, tty, detached=True)
        self.svc.track(self._reap(e, session))

    async def _reap(self, e: Exec, session: Any) -> None:
        try:
            await self.svc.finish_exec(e)
        finally:
            await session.close()


def register(app: web.Application, engine: Any) -> None:
    r = ExecRoutes(engine)
    app.router.add_post("/containers/{id}/exec", r.create)
    app.router.add_post("/exec/{id}/start", r.start)
    app.router.add_post("/exec/{id}/resize", r.resize)
    app.router.add_get("/exec/{id}/json", r.inspect)
