"""The Engine API's network routes (``/networks``) and Docker's JSON shape of a network.

The service (``skiff.engine.network.service``) owns networks and endpoints; this module reads requests,
applies list filters and writes Docker's documents. dockerd answers 403 for what its policy forbids
(removing a predefined network or one in use, overlapping pools, connecting twice): the ``Forbidden``
error maps to that here, every other error through the common middleware.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from skiff import errors
from skiff.engine.api.common import error_response, json_response, parse_filters, read_json, rfc3339_nano
from skiff.engine.filters import labels_match, pattern_match
from skiff.engine.network import Forbidden
from skiff.engine.network.service import Network, NetworkService

LIST_FILTERS = ("driver", "id", "label", "name", "scope", "type", "dangling")
PRUNE_FILTERS = ("until", "label", "label!")


def network_doc(svc: NetworkService, net: Network, with_containers: bool = True) -> dict:
    """``GET /networks/{id}`` (and, without the Containers map, an entry of ``GET /networks``)."""
    containers: dict[str, dict] = {}
    if with_containers:
        for cid, ep in svc.endpoints_of(net):
            c = svc.container_of(cid)
            containers[cid] = {"Name": c.short_name if c else cid[:12], "EndpointID": ep.endpoint_id,
                               "MacAddress": ep.mac, "IPv4Address": f"{ep.address}/{ep.prefixlen}",
                               "IPv6Address": ""}
    return {
        "Name": net.name, "Id": net.id, "Created": rfc3339_nano(net.created), "Scope": "local",
        "Driver": net.driver, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": net.ipam_options or None, "Config": list(net.pools)},
        "Internal": net.internal, "Attachable": net.attachable, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
        "Options": dict(net.options), "Labels": dict(net.labels),
    }


def list_filter(svc: NetworkService, filters: dict[str, list[str]]) -> Callable[[Network], bool]:
    """dockerd's network filters: keys AND, values of one key OR."""
    for kind in filters.get("type", []):
        if kind not in ("custom", "builtin"):
            raise errors.InvalidArgument(f"invalid filter: 'type'='{kind}'")
    dangling = [v.lower() for v in filters.get("dangling", [])]
    for value in dangling:
        if value not in ("true", "false", "1", "0"):
            raise errors.InvalidArgument(f"invalid filter 'dangling={value}'")

    def match(net: Network) -> bool:
        in_use = bool(svc.endpoints_of(net)) or net.predefined
        return (pattern_match(filters.get("name"), net.name) and pattern_match(filters.get("id"), net.id)
                and (not filters.get("driver") or net.driver in filters["driver"])
                and (not filters.get("scope") or "local" in filters["scope"])
                and (not filters.get("type") or ("builtin" if net.predefined else "custom") in filters["type"])
                and labels_match(net.labels, filters.get("label", []))
                and (not dangling or any((v in ("true", "1")) != in_use for v in dangling)))

    return match


def _forbidden_is_403(handler: Callable[[Any, web.Request], Awaitable[web.StreamResponse]]
                      ) -> Callable[[Any, web.Request], Awaitable[web.StreamResponse]]:
    @functools.wraps(handler)
    async def wrapped(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except Forbidden as e:
            return error_response(403, str(e))

    return wrapped


class NetworkRoutes:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def svc(self) -> NetworkService:
        if getattr(self.engine, "networks", None) is None:
            raise errors.Unsupported("networks are not available in this engine")
        return self.engine.networks

    async def list(self, request: web.Request) -> web.Response:
        match = list_filter(self.svc, parse_filters(request, LIST_FILTERS))
        return json_response([network_doc(self.svc, n, with_containers=False) for n in self.svc.all() if match(n)])

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(network_doc(self.svc, self.svc.get(request.match_info["id"])))

    @_forbidden_is_403
    async def create(self, request: web.Request) -> web.Response:
        net = await self.svc.create(await read_json(request))
        return json_response({"Id": net.id, "Warning": ""}, status=201)

    @_forbidden_is_403
    async def remove(self, request: web.Request) -> web.Response:
        await self.svc.remove(request.match_info["id"])
        return web.Response(status=204)

    @_forbidden_is_403
    async def connect(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not body.get("Container"):
            raise errors.InvalidArgument("no container specified")
        await self.svc.connect(request.match_info["id"], body["Container"], body.get("EndpointConfig") or {})
        return web.Response(status=200)

    @_forbidden_is_403
    async def disconnect(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not body.get("Container"):
            raise errors.InvalidArgument("no container specified")
        await self.svc.disconnect(request.match_info["id"], body["Container"], bool(body.get("Force")))
        return web.Response(status=200)

    async def prune(self, request: web.Request) -> web.Response:
        from skiff.engine.api.containers import point_in_time

        filters = parse_filters(request, PRUNE_FILTERS)
        until = [point_in_time(v) for v in filters.get("until", [])]

        def keep(net: Network) -> bool:
            return (any(net.created >= t for t in until) or not labels_match(net.labels, filters.get("label", []))
                    or any(labels_match(net.labels, [v]) for v in filters.get("label!", [])))

        removed = await self.svc.prune(keep)
        return json_response({"NetworksDeleted": removed or None})


def register(app: web.Application, engine: Any) -> None:
    r = NetworkRoutes(engine)
    add = app.router
    add.add_get("/networks", r.list)
    add.add_get("/networks/", r.list)
    add.add_post("/networks/create", r.create)
    add.add_post("/networks/prune", r.prune)
    add.add_get("/networks/{id}", r.inspect)
    add.add_delete("/networks/{id}", r.remove)
    add.add_post("/networks/{id}/connect", r.connect)
    add.add_post("/networks/{id}/disconnect", r.disconnect)
