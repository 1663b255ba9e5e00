"""The Engine API's volume routes: ``/volumes`` list, create, inspect, remove and prune.

The service (``skiff.engine.volumes``) keeps the volumes; this module reads requests and answers in Docker's
shapes. ``/system/df`` gets its volumes from the service's ``df()`` directly (see ``system``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from skiff import errors
from skiff.engine.api.common import client_version, json_response, parse_filters, query_bool, read_json
from skiff.engine.volumes import VolumeService

# From this version, prune removes only anonymous volumes unless asked ``all=true`` (Docker 23).
PRUNE_ANONYMOUS_ONLY_SINCE = (1, 42)


class VolumeRoutes:
    """Handlers bound to one engine's volume service."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def svc(self) -> VolumeService:
        service = getattr(self.engine, "volumes", None)
        if service is None:
            raise errors.Unsupported("volumes are not available in this engine")
        return service

    async def list(self, request: web.Request) -> web.Response:
        volumes = self.svc.list(parse_filters(request))
        return json_response({"Volumes": [v.doc() for v in volumes], "Warnings": None})

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        for key in ("DriverOpts", "Labels"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                raise errors.InvalidArgument(f"invalid JSON: {key} must be an object")
        volume = self.svc.create(body.get("Name") or None, body.get("Driver") or None, body.get("DriverOpts"),
                                 body.get("Labels"))
        return json_response(volume.doc(), status=201)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(self.svc.get(request.match_info["name"]).doc())

    async def remove(self, request: web.Request) -> web.Response:
        self.svc.remove(request.match_info["name"], force=query_bool(request, "force"))
        return web.Response(status=204)

    async def prune(self, request: web.Request) -> web.Response:
        anonymous_only = client_version(request) >= PRUNE_ANONYMOUS_ONLY_SINCE
        removed, reclaimed = self.svc.prune(parse_filters(request), anonymous_only=anonymous_only)
        return json_response({"VolumesDeleted": removed or None, "SpaceReclaimed": reclaimed})


def register(app: web.Application, engine: Any) -> None:
    routes = VolumeRoutes(engine)
    app.router.add_get("/volumes", routes.list)
    app.router.add_post("/volumes/create", routes.create)
    app.router.add_post("/volumes/prune", routes.prune)
    app.router.add_get("/volumes/{name}", routes.inspect)
    app.router.add_delete("/volumes/{name}", routes.remove)
