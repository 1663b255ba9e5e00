"""The API server: HTTPS with aiohttp, authentication and RBAC on every request, then the non-resource
endpoints (version, health, discovery, OpenAPI) or the resource handler; errors become ``Status``.

``ApiServer.start()`` makes the PKI, opens the store, creates what a fresh cluster has (the four
namespaces, the RBAC bootstrap policy, the ``kubernetes`` Service), and writes the admin kubeconfig.
Everything runs on one event loop with the store in the same process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from skiff.atomicfile import write_atomically
from skiff.cluster.api import discovery, openapi
from skiff.cluster.api.allocators import ServiceAllocator
from skiff.cluster.api.auth import (
    AUTHENTICATED,
    CONTROLLER_MANAGER_USER,
    PUBLIC_PATHS,
    RBAC_PREFIXES,
    Attributes,
    Authenticator,
    RBACAuthorizer,
    User,
    bootstrap_policy,
    component_token,
    forbidden_error,
    reconcile_bootstrap,
)
from skiff.cluster.api.cache import WatchCache
from skiff.cluster.api.certs import ClusterPKI, serving_hosts, write_kubeconfig
from skiff.cluster.api.handlers import ResourceHandler, json_response
from skiff.cluster.api.metrics import MetricsApi
from skiff.cluster.api.mirror import StoreMirror
from skiff.cluster.api.podproxy import PodProxy
from skiff.cluster.api.resources import BY_PATH
from skiff.cluster.api.rest import Registry
from skiff.cluster.api.routing import RequestInfo, request_info
from skiff.cluster.api.status import ApiError, from_skiff_error, internal, unauthorized
from skiff.cluster.api.tokens import ServiceAccountTokens
from skiff.cluster.store import Compacted, Store, open_store
from skiff.errors import InvalidArgument, SkiffError

log = logging.getLogger(__name__)
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request size limit
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+skiff", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"}
NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource")
OPENID_CONFIGURATION, OPENID_JWKS = [".well-known", "openid-configuration"], ["openid", "v1", "jwks"]


@dataclass
class ServerConfig:
    data_dir: Path
    listen: str = "127.0.0.1:6443"
    datastore: str = "sqlite"
    cluster_cidr: str = "10.42.0.0/16"
    service_cidr: str = "10.43.0.0/16"
    write_kubeconfig: Path | None = None
    token_file: Path | None = None
    disable_agent: bool = False
    compact_interval: float = 300.0  # seconds between compactions (kube-apiserver's default: 5 minutes)
    compact_retain: int = 1000  # revisions of history kept, as kine keeps them
    disable_controllers: bool = False  # the controller manager runs beside the server unless this is set
    disable_scheduler: bool = False  # the scheduler runs beside the server unless this is set
    # this host's node agent, run beside the server unless disable_agent is set (skiff/cluster/kubelet/agent.py)
    node_name: str | None = None  # default: the host name
    engine: str = "unix:///run/skiff/engine.sock"
    node_ip: str | None = None  # default: the host's outgoing address
    pause_image: str | None = None  # default: the agent's own skiff/pause:3.10, made when missing
    kubelet_port: int = 10250  # the agent's kubelet API; 0: a free port (tests run many servers)
    disable_proxy: bool = False  # the agent runs no Service proxy or cluster DNS
    # the DefaultTolerationSeconds admission: tolerationSeconds pods get for the not-ready/unreachable taints
    default_not_ready_toleration_seconds: int = 300
    default_unreachable_toleration_seconds: int = 300
    controller_flags: tuple[str, ...] = ()  # passed on to `skiff controller-manager` (its --node-monitor-... flags)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"--listen must be ADDR:PORT, not {self.listen!r}")
        return host.strip("[]"), int(port)

    def check(self) -> None:
        """Refuse a configuration that cannot work, before anything is made."""
        self.host_port  # noqa: B018 - parses --listen
        for flag, cidr in (("--cluster-cidr", self.cluster_cidr), ("--service-cidr", self.service_cidr)):
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise InvalidArgument(f"{flag} {cidr!r} is not a CIDR") from None
            if network.num_addresses < 16:
                raise InvalidArgument(f"{flag} {cidr} is too small")

    def store_url(self) -> str:
        if self.datastore in ("", "sqlite"):
            return str(self.data_dir / "db" / "state.db")
        return self.datastore


class ApiServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.pki = ClusterPKI(config.data_dir / "tls")
        self.authenticator = Authenticator(config.token_file)
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.mirror: StoreMirror | None = None
        self.cache: WatchCache | None = None
        self.rbac: RBACAuthorizer | None = None
        self.resources: ResourceHandler | None = None
        self._runner: web.AppRunner | None = None
        self._compactor: asyncio.Task[None] | None = None
        self.port = 0
        self.tokens: ServiceAccountTokens | None = None

    @property
    def url(self) -> str:
        host, _ = self.config.host_port
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        return f"https://{host}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.config.data_dir / "cred" / "admin.kubeconfig"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        """The controllers' credentials: a bearer token for user system:kube-controller-manager."""
        return self.config.data_dir / "cred" / "controller-manager.kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        """The credentials of this host's node agent (user system:node:<hostname>, group system:nodes)."""
        return self.config.data_dir / "cred" / "node.kubeconfig"

    async def start(self) -> None:
        self.config.check()
        host, port = self.config.host_port
        allocator_cidr = self.config.service_cidr
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure(serving_hosts(host, _first_ip(allocator_cidr)))
        controllers_token = component_token(self.pki.dir / "controller-manager.token")
        self.authenticator.tokens[controllers_token] = User(CONTROLLER_MANAGER_USER, (AUTHENTICATED,))
        if self.config.datastore in ("", "sqlite"):
            (self.config.data_dir / "db").mkdir(exist_ok=True, mode=0o700)
        self.store = await open_store(self.config.store_url())
        self.mirror = StoreMirror(self.store, (*RBAC_PREFIXES.values(), "/registry/namespaces/"))
        await self.mirror.start()
        self.rbac = RBACAuthorizer(self.mirror)
        if self.config.datastore in ("", "sqlite"):  # the store is ours alone: every revision reaches the cache
            self.cache = WatchCache(self.store)
            await self.cache.start()
        self.registry = Registry(self.store, ServiceAllocator(self.store, allocator_cidr), self.mirror, self.cache,
                                 toleration_seconds=(self.config.default_not_ready_toleration_seconds,
                                                     self.config.default_unreachable_toleration_seconds))
        self.resources = ResourceHandler(self.registry, self.rbac)
        self.resources.pod_proxy = PodProxy(self.registry, self.pki)
        self.resources.metrics = MetricsApi(self.registry, self.resources.pod_proxy)
        self.tokens = ServiceAccountTokens(self.pki.dir / "service-account.key", self.registry)
        self.resources.tokens = self.tokens
        await self._bootstrap()
        self._compactor = asyncio.create_task(self._compact_periodically())
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._tls_context(), backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        await self._bootstrap_endpoints()
        write_kubeconfig(self.admin_kubeconfig, self.url, self.pki)
        write_kubeconfig(self.node_kubeconfig, self.url, self.pki, node=socket.gethostname())
        write_atomically(self.controller_manager_kubeconfig,
                         _token_kubeconfig(self.url, self.pki.ca.cert_pem(), CONTROLLER_MANAGER_USER,
                                           controllers_token), mode=0o600)
        if self.config.write_kubeconfig is not None:
            write_kubeconfig(self.config.write_kubeconfig, self.url, self.pki)
        log.info("skiff API server listening on %s", self.url)

    async def stop(self) -> None:
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
        if self.resources is not None:
            self.resources.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.resources is not None and self.resources.pod_proxy is not None:
            await self.resources.pod_proxy.close()
        if self.mirror is not None:
            await self.mirror.stop()
        if self.cache is not None:
            await self.cache.stop()
        if self.registry is not None:
            await self.registry.close()
        if self.store is not None:
            await self.store.close()

    async def _compact_periodically(self) -> None:
        """Discard history older than the last ``compact_retain`` revisions, now and then: watches and
        continue tokens older than that get 410 Expired, as with kube-apiserver's compaction."""
        assert self.store is not None
        compacted = 0
        while True:
            await asyncio.sleep(self.config.compact_interval)
            target = await self.store.current_revision() - self.config.compact_retain
            if target <= compacted:
                continue
            try:
                await self.store.compact(target)
                compacted = target
            except Compacted as exc:
                compacted = exc.compact_revision
            except SkiffError:
                log.exception("compaction to revision %d failed", target)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca.cert_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pki.serving.cert_path, self.pki.serving.key_path)
        context.verify_mode = ssl.CERT_OPTIONAL  # client certificates authenticate; tokens work without one
        context.set_alpn_protocols(["http/1.1"])
        return context

    # Bootstrap ---------------------------------------------------------------------------------------------

    async def _bootstrap(self) -> None:
        assert self.registry is not None
        for name in DEFAULT_NAMESPACES:
            await self._ensure(("", "v1", "namespaces"), None, {"metadata": {"name": name}})
        for plural, obj in bootstrap_policy():
            await self._ensure(("rbac.authorization.k8s.io", "v1", plural), None, obj, reconcile_bootstrap)
        await self._ensure(("", "v1", "services"), "default", {
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": _first_ip(self.config.service_cidr),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}})
        # The cluster DNS's Service (k3s's address: the range's tenth). No selector and no endpoints: each node's
        # agent answers it itself, its proxy leading the ClusterIP to the node-local server (docs/cluster.md).
        await self._ensure(("", "v1", "services"), "kube-system", {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                                                        "kubernetes.io/cluster-service": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": nth_address(self.config.service_cidr, 10),
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}})

    async def _bootstrap_endpoints(self) -> None:
        """The ``kubernetes`` Service's endpoints: this server's address (kube's endpoint reconciler)."""
        assert self.registry is not None
        host, _ = self.config.host_port
        address = "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host
        subsets = [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": self.port,
                                                               "protocol": "TCP"}]}]
        t = BY_PATH[("", "v1", "endpoints")]

        def point(live: dict[str, Any]) -> dict[str, Any]:
            live["subsets"] = subsets
            live["metadata"].pop("resourceVersion", None)
            return live

        async def create() -> dict[str, Any]:
            return await self.registry.create(t, "default", {"metadata": {"name": "kubernetes"},  # type: ignore
                                                             "subsets": subsets})
        await self.registry.update(t, "default", "kubernetes", point, create_missing=create)

    async def _ensure(self, path: tuple[str, str, str], namespace: str | None, obj: dict[str, Any],
                      reconcile: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None] | None = None
                      ) -> None:
        """Create ``obj`` unless it is there already (a restart): then keep what is there, or what ``reconcile``
        (live, default) makes of it."""
        assert self.registry is not None
        t = BY_PATH[path]
        try:
            await self.registry.create(t, namespace, copy.deepcopy(obj))
            return
        except ApiError:
            if reconcile is None:
                return
        live = await self.registry.get(t, namespace, obj["metadata"]["name"])
        updated = reconcile(live, obj)
        if updated is not None:
            await self.registry.update(t, namespace, obj["metadata"]["name"], lambda _live: updated)
            log.info("bootstrap: %s %s gained what this version adds", path[2], obj["metadata"]["name"])

    # Requests ----------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except ApiError as exc:
            return json_response(exc.status(), exc.code)
        except SkiffError as exc:
            error = from_skiff_error(exc)
            return json_response(error.status(), error.code)
        except web.HTTPRequestEntityTooLarge:
            return json_response(ApiError(413, "RequestEntityTooLarge", "the request body is too large").status(),
                                 413)
        except (ConnectionResetError, ConnectionError):
            raise
        except Exception as exc:
            log.exception("request %s %s failed", request.method, request.path)
            error = internal(f"{type(exc).__name__}: {exc}")
            return json_response(error.status(), 500)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return self._public(path)
        info = request_info(request.method, path, request.query.get("watch") in ("true", "1"))
        user = self._authenticate(request) or await self._authenticate_service_account(request)
        self._authorize(request, info, user)
        if info.is_resource:
            assert self.resources is not None
            return await self.resources.handle(request, info)
        return self._non_resource(request, path)

    def _authenticate(self, request: web.Request) -> User | None:
        """A client certificate or a static token (no I/O: every request comes this way)."""
        peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
        return self.authenticator.authenticate(request.headers.get("Authorization"), peercert)

    async def _authenticate_service_account(self, request: web.Request) -> User:
        """A bearer token that is no static one: a service account's token (tokens.py), or 401."""
        header = request.headers.get("Authorization") or ""
        user = None
        if header[:7].lower() == "bearer " and self.tokens is not None:
            user = await self.tokens.authenticate(header[7:].strip())
        if user is None:
            raise unauthorized()
        return user

    def _authorize(self, request: web.Request, info: RequestInfo, user: User) -> None:
        request["user"] = user
        attrs = Attributes(info.verb, info.path, info.plural if info.is_resource else "", info.group,
                           info.subresource, info.namespace, info.name)
        assert self.rbac is not None
        if not self.rbac.allows(user, attrs):
            raise forbidden_error(user, attrs)

    def _public(self, path: str) -> web.Response:
        if path.startswith("/version"):
            return json_response(VERSION)
        return web.Response(text="ok", content_type="text/plain")

    def _non_resource(self, request: web.Request, path: str) -> web.Response:
        accept = request.headers.get("Accept", "")
        parts = [p for p in path.split("/") if p]
        aggregated = discovery.wants_aggregated(accept)
        if parts == ["api"]:
            if aggregated:
                return _aggregated(discovery.aggregated(True, aggregated), aggregated)
            return json_response(discovery.api_versions(f"{request.host}"))
        if parts in (OPENID_CONFIGURATION, OPENID_JWKS) and self.tokens is not None:
            return json_response(self.tokens.openid_configuration() if parts == OPENID_CONFIGURATION
                                 else self.tokens.jwks())
        if parts == ["apis"]:
            if aggregated:
                return _aggregated(discovery.aggregated(False, aggregated), aggregated)
            return json_response(discovery.api_group_list())
        body: bytes | None = None
        if len(parts) == 2 and parts[0] == "api":
            body = discovery.resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            body = discovery.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            body = discovery.resource_list(parts[1], parts[2])
        elif parts[:2] == ["openapi", "v3"]:
            body = self._openapi_v3(parts[2:])
        elif parts == ["openapi", "v2"]:
            if "protobuf" in accept and "json" not in accept:
                return web.Response(body=openapi.v2_protobuf(), content_type="application/octet-stream")
            body = openapi.v2()
        if body is None:
            raise NOT_FOUND
        return json_response(body)

    @staticmethod
    def _openapi_v3(rest: list[str]) -> bytes | None:
        if not rest:
            return openapi.v3_root()
        if rest[0] == "api" and len(rest) == 2:
            return openapi.v3_group_version("", rest[1])
        if rest[0] == "apis" and len(rest) == 3:
            return openapi.v3_group_version(rest[1], rest[2])
        return None


def _aggregated(body: bytes, version: str) -> web.Response:
    content_type = discovery.AGGREGATED_CONTENT_TYPE if version == "v2" else discovery.AGGREGATED_V2BETA1_CONTENT_TYPE
    return web.Response(body=body, headers={"Content-Type": content_type, "Vary": "Accept"})


def _token_kubeconfig(server_url: str, ca_pem: bytes, user: str, token: str) -> bytes:
    """A kubeconfig that authenticates with a bearer token (an in-process component's credentials)."""
    cluster = {"server": server_url, "certificate-authority-data": base64.b64encode(ca_pem).decode()}
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "skiff",
           "clusters": [{"name": "skiff", "cluster": cluster}],
           "users": [{"name": user, "user": {"token": token}}],
           "contexts": [{"name": "skiff", "context": {"cluster": "skiff", "user": user}}]}
    return yaml.safe_dump(doc, sort_keys=False).encode()


def _first_ip(cidr: str) -> str:
    return nth_address(cidr, 1)


def nth_address(cidr: str, n: int) -> str:
    return str(ipaddress.ip_network(cidr, strict=False).network_address + n)
