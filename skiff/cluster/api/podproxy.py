"""``pods/log``, ``pods/exec``, ``pods/attach`` and ``pods/portforward``: checked here, then served by the kubelet
of the pod's node.

The pod must exist and be bound, and the container must be one of its own (kube's messages: "a container name
must be specified for pod p, choose one of: [a b]", "container c is not valid for pod p"). The kubelet is
reached at the node's InternalIP and ``status.daemonEndpoints.kubeletEndpoint.Port`` over HTTPS: the API server
presents its kubelet-client certificate and verifies the kubelet's against the cluster CA (for logs,
``insecureSkipTLSVerifyBackend=true`` skips that check, as in kube).

Logs are streamed through as they come (``follow`` keeps the response open until either side ends it). An exec,
attach or port-forward WebSocket is first opened to the kubelet with the subprotocols the client offered; the client's
upgrade is then accepted with the one the kubelet chose, and messages are relayed unchanged both ways
(channel bytes, the v5 close signal, the final Status) until either side closes. aiohttp has no public way to
hijack a server connection, so the relay is per WebSocket message rather than per byte; to the protocol,
which is message-framed, the two are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from skiff.cluster.api.certs import ClusterPKI
from skiff.cluster.api.objects import Obj
from skiff.cluster.api.resources import BY_PATH
from skiff.cluster.api.rest import Registry
from skiff.cluster.api.status import ApiError, bad_request, internal, method_not_allowed

LOG_PARAMS = ("follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes")
STREAM_PARAMS = ("stdin", "stdout", "stderr", "tty")
PROXY_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
KUBELET_JSON_TIMEOUT = 10.0  # seconds for a kubelet's JSON answer (its stats sample over a second)


class PodProxy:
    def __init__(self, registry: Registry, pki: ClusterPKI) -> None:
        self.registry = registry
        self.pki = pki
        self._session: aiohttp.ClientSession | None = None
        self._verified: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request, pod: Obj, subresource: str) -> web.StreamResponse:
        if subresource == "log":
            if request.method not in ("GET", "HEAD"):
                raise method_not_allowed()
            return await self.log(request, pod)
        if request.method not in ("GET", "POST"):
            raise method_not_allowed()
        return await self.stream(request, pod, subresource)

    # --- logs -------------------------------------------------------------------------------------------------

    async def log(self, request: web.Request, pod: Obj) -> web.StreamResponse:
        container = _container(pod, request.query.get("container", ""))
        query = [(k, v) for k in LOG_PARAMS for v in request.query.getall(k, [])]
        skip_verify = request.query.get("insecureSkipTLSVerifyBackend", "").lower() == "true"
        url = await self._kubelet_url(pod, "containerLogs", container)
        upstream = await self._request(url, query, skip_verify)
        try:
            if upstream.status != 200:
                raise await _kubelet_error(upstream)
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            watchdog = asyncio.create_task(_close_when_gone(request, upstream))
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionError):
                return response  # the client went away (the watchdog closed the kubelet's stream)
            finally:
                watchdog.cancel()
            await response.write_eof()
            return response
        finally:
            upstream.close()

    async def _request(self, url: str, query: list[tuple[str, str]], skip_verify: bool) -> aiohttp.ClientResponse:
        try:
            return await self.session().get(url, params=query, ssl=self._tls(skip_verify))
        except aiohttp.ClientError as exc:
            raise internal(f"error dialing backend: {exc}") from None

    # --- exec and attach --------------------------------------------------------------------------------------

    async def stream(self, request: web.Request, pod: Obj, subresource: str) -> web.StreamResponse:
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise bad_request(f"cannot {subresource} into a container in a completed pod; current phase is {phase}")
        if subresource == "portforward":  # the pod's ports, not a container's: kube's kubelet path
            url = await self._kubelet_url(pod, "portForward", None)
            query = [("ports", v) for v in request.query.getall("ports", [])]
        else:
            container = _container(pod, request.query.get("container", ""))
            url = await self._kubelet_url(pod, subresource, container)
            query = [(k, v) for k in ("command", *STREAM_PARAMS) for v in request.query.getall(k, [])]
        if request.method == "POST" or request.headers.get("Upgrade", "").lower() != "websocket":
            # SPDY (kubectl's fallback after a refused WebSocket) or no upgrade: the kubelet's reason to refuse
            # (the container not running, say), else that it serves WebSocket only
            raise await self._refusal(url, query)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            backend = await self.session().ws_connect(url, params=query, protocols=offered, ssl=self._tls(False),
                                                      autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError:
            raise await self._refusal(url, query) from None
        except aiohttp.ClientError as exc:
            raise internal(f"error dialing backend: {exc}") from None
        try:
            client = web.WebSocketResponse(protocols=(backend.protocol,) if backend.protocol else (),
                                           max_msg_size=0, autoping=True)
            await client.prepare(request)
            await _relay(client, backend)
            return client
        finally:
            await backend.close()

    async def _refusal(self, url: str, query: list[tuple[str, str]]) -> ApiError:
        """Why the kubelet refused an upgrade: aiohttp's handshake error drops the answer's body, so the same
        request is made again without the upgrade, which the kubelet checks (and refuses) the same way."""
        upstream = await self._request(url, query, False)
        try:
            return await _kubelet_error(upstream)
        finally:
            upstream.close()

    # --- the kubelet ------------------------------------------------------------------------------------------

    async def _kubelet_url(self, pod: Obj, endpoint: str, container: str | None) -> str:
        meta = pod["metadata"]
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise bad_request(f"pod {meta['name']} does not have a host assigned")
        try:
            node = await self.registry.get(BY_PATH[("", "v1", "nodes")], None, node_name)
        except ApiError as exc:
            if exc.code == 404:
                raise bad_request(f"node {node_name} of pod {meta['name']} is not registered") from None
            raise
        parts = (meta.get("namespace") or "default", meta["name"], *([container] if container else []))
        path = "/".join(quote(part, safe="") for part in parts)
        return f"{_kubelet_base(node)}/{endpoint}/{path}"

    async def kubelet_json(self, node: Obj, path: str, timeout: float = KUBELET_JSON_TIMEOUT) -> Any:
        """A JSON document from the node's kubelet (``/stats/summary``, say); ApiError when it does not answer."""
        url = _kubelet_base(node) + path
        try:
            async with self.session().get(url, ssl=self._tls(False),
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as upstream:
                if upstream.status != 200:
                    raise await _kubelet_error(upstream)
                return await upstream.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise internal(f"error reading {url}: {exc or type(exc).__name__}") from None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no cap on connections: each followed log or exec holds one for as long as it lasts
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=PROXY_TIMEOUT,
                                                  auto_decompress=False)
        return self._session

    def _tls(self, skip_verify: bool) -> ssl.SSLContext:
        if self._verified is None or self._unverified is None:
            client = self.pki.kubelet_client_credentials()
            self._verified = ssl.create_default_context(cafile=str(self.pki.ca.cert_path))
            self._unverified = ssl.create_default_context()
            self._unverified.check_hostname = False
            self._unverified.verify_mode = ssl.CERT_NONE
            for context in (self._verified, self._unverified):
                context.load_cert_chain(client.cert_path, client.key_path)
        return self._unverified if skip_verify else self._verified


def _kubelet_base(node: Obj) -> str:
    """``https://<InternalIP>:<kubelet port>`` of a Node (500 when it publishes none)."""
    status = node.get("status") or {}
    address = next((a.get("address") for a in status.get("addresses") or () if a.get("type") == "InternalIP"), None)
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    if not address or not port:
        raise internal(f"node {node['metadata']['name']} publishes no kubelet endpoint (InternalIP and kubelet port)")
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def _container(pod: Obj, wanted: str) -> str:
    """The container a request names (the only one when it names none), checked against the pod's spec."""
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    regular = [c["name"] for c in spec.get("containers") or ()]
    init = [c["name"] for c in spec.get("initContainers") or ()]
    ephemeral = [c["name"] for c in spec.get("ephemeralContainers") or ()]
    if not wanted:
        if len(regular) == 1 and not init:
            return regular[0]
        message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(regular)}]"
        if init:
            message += f" or one of the init containers: [{' '.join(init)}]"
        raise bad_request(message)
    if wanted not in (*regular, *init, *ephemeral):
        raise bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


async def _close_when_gone(request: web.Request, upstream: aiohttp.ClientResponse) -> None:
    """Close the kubelet's stream once the client is gone: a followed log of a quiet container would otherwise
    hold both connections until its next line."""
    while not (request.transport is None or request.transport.is_closing()):
        await asyncio.sleep(1.0)
    upstream.close()


async def _kubelet_error(upstream: aiohttp.ClientResponse) -> ApiError:
    """The kubelet's refusal as this API's error: its Status when it sent one."""
    try:
        body: Any = await upstream.json(content_type=None)
        return ApiError(int(body.get("code") or upstream.status), body.get("reason") or "InternalError",
                        body.get("message") or "")
    except (ValueError, AttributeError, aiohttp.ClientError):
        return internal(f"the kubelet answered {upstream.status}")


async def _relay(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse) -> None:
    """Messages both ways until either side closes; the other side is then closed with the same code."""
    async def pump(source: Any, sink: Any) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)

    down = asyncio.create_task(pump(backend, client))
    up = asyncio.create_task(pump(client, backend))
    try:
        await asyncio.wait((down, up), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (down, up):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        await client.close(code=backend.close_code or aiohttp.WSCloseCode.OK)
        await backend.close()
