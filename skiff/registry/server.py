"""The registry's HTTP server: routing, authentication, errors, and running it.

Routing is done here rather than with aiohttp's router because repository names contain slashes:
like distribution, each route is a regular expression over the whole path whose ``name`` part is
greedy and anchored by the fixed suffix (``/blobs/uploads/``, ``/manifests/<ref>``, ...), so ``a/b/c``
and even a repository called ``manifests`` route correctly. The name is validated after the match,
so a bad name is NAME_INVALID (400), a known path with the wrong method UNSUPPORTED (405).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from skiff.aiotasks import cancel_and_wait
from skiff.registry.errors import DistributionError
from skiff.registry.handlers import RegistryAPI
from skiff.registry.names import check_name
from skiff.registry.storage import Storage

log = logging.getLogger(__name__)
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
PURGE_INTERVAL = 600.0  # seconds between sweeps for idle upload sessions
Handler = Callable[..., Awaitable[web.StreamResponse]]


class Authenticator(Protocol):
    def check(self, header: str | None) -> str | None: ...


@dataclass
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


def routes(api: RegistryAPI) -> list[Route]:
    """The Distribution API's endpoints, most specific first. HEAD goes wherever GET goes."""
    table = [
        (r"/v2/", {"GET": api.base}),
        (r"/v2", {"GET": api.base_redirect}),
        (r"/v2/_catalog", {"GET": api.catalog}),
        (r"/v2/(?P<name>.+)/tags/list", {"GET": api.tags}),
        (r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)",
         {"GET": api.get_manifest, "PUT": api.put_manifest, "DELETE": api.delete_manifest}),
        (r"/v2/(?P<name>.+)/blobs/uploads/", {"POST": api.start_upload}),
        (r"/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)",
         {"GET": api.upload_status, "PATCH": api.patch_upload, "PUT": api.finish_upload,
          "DELETE": api.cancel_upload}),
        (r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)", {"GET": api.get_blob, "DELETE": api.delete_blob}),
    ]
    result = []
    for pattern, methods in table:
        if "GET" in methods:
            methods["HEAD"] = methods["GET"]
        result.append(Route(re.compile(f"^{pattern}$"), methods))
    return result


def make_app(storage: Storage, auth: Authenticator | None = None, realm: str = "skiff-registry") -> web.Application:
    """The aiohttp application serving ``storage``; with ``auth`` every request needs valid credentials."""
    api = RegistryAPI(storage)
    table = routes(api)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        for route in table:
            m = route.pattern.match(request.path)
            if m is None:
                continue
            handler = route.methods.get(request.method)
            if handler is None:
                raise DistributionError("UNSUPPORTED", detail={"method": request.method})
            params = m.groupdict()
            if "name" in params:
                check_name(params["name"])
            return await handler(request, **params)
        raise DistributionError("NOT_FOUND", detail={"path": request.path})

    middlewares = [_errors] + ([_authentication(auth, realm)] if auth is not None else [])
    app = web.Application(middlewares=middlewares)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.on_response_prepare.append(_api_version_header)
    app.cleanup_ctx.append(_upload_sweeper(storage, api))
    return app


async def _api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[API_VERSION[0]] = API_VERSION[1]


def error_response(error: DistributionError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as the distribution JSON error body, with its status."""
    try:
        return await handler(request)
    except DistributionError as e:
        return error_response(e)
    except web.HTTPException:
        raise
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        log.info("%s %s: client went away: %s", request.method, request.path, e)
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(DistributionError("UNKNOWN", detail=str(e)))


def _authentication(auth: Authenticator, realm: str) -> Middleware:
    challenge = {"WWW-Authenticate": f'Basic realm="{realm}"'}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        user = await asyncio.to_thread(auth.check, request.headers.get("Authorization"))
        if user is None:
            raise DistributionError("UNAUTHORIZED", headers=challenge)
        return await handler(request)

    return middleware


def _upload_sweeper(storage: Storage, api: RegistryAPI) -> Callable[[web.Application], AsyncIterator[None]]:
    """Periodically removes upload sessions idle past the TTL (clients that gave up)."""

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            removed = await asyncio.to_thread(storage.uploads.purge_stale, api.busy_uploads())
            if removed:
                log.info("removed %d idle upload sessions", removed)

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep_forever())
        yield
        await cancel_and_wait(task)

    return context


async def serve(app: web.Application, host: str, port: int, announce: Callable[[str], None],
                access_log: bool = False, tls: ssl.SSLContext | None = None) -> None:
    """Serve (HTTPS with ``tls``) until SIGTERM or SIGINT, then close connections and return."""
    runner = web.AppRunner(app, access_log=logging.getLogger("skiff.registry.access") if access_log else None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    announce(f"{'https' if tls else 'http'}://{shown}:{bound[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
