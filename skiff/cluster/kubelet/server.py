"""The kubelet API the agent serves over HTTPS (kube's port 10250): container logs, exec and attach for the API
server to proxy, and ``/pods`` and ``/healthz``.

Only the API server may call it: clients present a certificate signed by the cluster CA, and only the API
server's kubelet-client identity (CN ``kube-apiserver-kubelet-client``) or a ``system:masters`` member is let in
(no certificate: 401; another identity, such as a node's own: 403). Errors are ``Status`` objects.

    GET  /containerLogs/{ns}/{pod}/{container}?follow&previous&tailLines&timestamps&sinceSeconds&sinceTime&limitBytes
    GET  /exec/{ns}/{pod}/{container}?command=..&command=..&stdin&stdout&stderr&tty   (WebSocket)
    GET  /attach/{ns}/{pod}/{container}?stdin&stdout&stderr&tty                       (WebSocket)

Streams use kube's WebSocket remote-command protocols ``v5.channel.k8s.io`` (and ``v4``): every binary message
starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final ``Status``, 4 a terminal resize
``{"Width","Height"}``); v5 adds ``[255, channel]``, the client's half-close of a channel (stdin's end). The
engine side is its own Engine API: logs from ``/containers/{id}/logs``, exec through ``exec_create`` and the
hijacked ``/exec/{id}/start`` stream (half-closed at stdin's end), the exit code from ``exec_inspect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skiff.atomicfile import write_atomically
from skiff.cluster.kubelet import naming, portforward, stats
from skiff.cluster.kubelet.runtime import EngineContainer, EngineRuntime
from skiff.errors import NotFound, SkiffError, SystemFailure

log = logging.getLogger(__name__)
DEFAULT_PORT = 10250
APISERVER_CLIENT = "kube-apiserver-kubelet-client"  # kubeadm's name for the API server's identity here
MASTERS = "system:masters"
STREAM_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PodLookup = Callable[[str, str], "dict[str, Any] | None"]


class KubeletApiError(Exception):
    """An error answered as a ``Status`` with ``code``."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}


def _bad_request(message: str) -> KubeletApiError:
    return KubeletApiError(400, "BadRequest", message)


@dataclass
class ServingOptions:
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    cert_file: Path | None = None  # None: a self-signed certificate in <data-dir>/pki (kube's default)
    key_file: Path | None = None
    client_ca_pem: bytes | None = None  # who may call: certificates this CA signed (None: nobody)


class KubeletServer:
    def __init__(self, runtime: EngineRuntime, node_name: str, node_ip: str, pods: PodLookup,
                 options: ServingOptions, data_dir: Path, list_pods: Callable[[], list[dict[str, Any]]],
                 housekeeping_interval: float = stats.HOUSEKEEPING_INTERVAL) -> None:
        self.runtime = runtime
        self.node_name = node_name
        self.node_ip = node_ip
        self.pods = pods
        self.list_pods = list_pods
        self.options = options
        self.data_dir = data_dir
        self.engine = EngineStreams(runtime.base_url)
        self.sampler = stats.StatsSampler(runtime, node_name, housekeeping_interval)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/pods", self._pods)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        for verb in ("exec", "attach"):
            app.router.add_route("*", f"/{verb}/{{namespace}}/{{pod}}/{{container}}", self._stream)
        app.router.add_route("*", "/portForward/{namespace}/{pod}", self._port_forward)
        app.router.add_get("/stats/summary", self._stats_summary)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.address, self.options.port, ssl_context=self._tls_context())
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SystemFailure(f"cannot serve the kubelet API on {self.options.address}:{self.options.port}: "
                                f"{exc.strerror or exc}") from None
        self.port = self._runner.addresses[0][1]
        log.info("kubelet API on https://%s:%d", self.options.address, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.sampler.stop()
        await self.engine.close()

    def _tls_context(self) -> ssl.SSLContext:
        cert, key = self.options.cert_file, self.options.key_file
        if cert is None or key is None:
            cert, key = self_signed_certificate(self.data_dir / "pki", self.node_name, self.node_ip)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        if self.options.client_ca_pem:
            context.load_verify_locations(cadata=self.options.client_ca_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # no certificate is answered 401, not a failed handshake
        context.set_alpn_protocols(["http/1.1"])
        return context

    # --- who may call --------------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
            user, groups = _subject(peercert)
            if user is None:
                raise KubeletApiError(401, "Unauthorized", "Unauthorized")
            if user != APISERVER_CLIENT and MASTERS not in groups:
                raise KubeletApiError(403, "Forbidden", f"Forbidden (user={user}, verb={request.method.lower()}, "
                                      f"resource=nodes, subresource=proxy)")
            return await handler(request)
        except KubeletApiError as exc:
            return _status_response(exc)
        except NotFound as exc:
            return _status_response(KubeletApiError(404, "NotFound", str(exc)))
        except SkiffError as exc:
            return _status_response(KubeletApiError(500, "InternalError", str(exc)))

    # --- endpoints ------------------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _pods(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.list_pods()})

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod, name = (request.match_info[k] for k in ("namespace", "pod", "container"))
        options = LogOptions.parse(request.query)
        container = await self._container(namespace, pod, name, previous=options.previous)
        upstream = await self.engine.logs(container.id, options)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        tty = bool((container.raw.get("Config") or {}).get("Tty"))
        remaining = options.limit_bytes
        watchdog = asyncio.create_task(_close_when_gone(request, upstream))
        try:
            async for chunk in _log_payload(upstream, tty):
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= len(chunk)
                await response.write(chunk)
                if remaining == 0:
                    break
        except (aiohttp.ClientError, ConnectionError):
            return response  # the caller went away (the watchdog closed the engine's stream)
        finally:
            watchdog.cancel()
            upstream.close()
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        verb = request.path.split("/", 2)[1]
        namespace, pod, name = (request.match_info[k] for k in ("namespace", "pod", "container"))
        query = request.query
        flags = {f: query.get(f, "").lower() in ("1", "true") for f in ("stdin", "stdout", "stderr", "tty")}
        if not (flags["stdin"] or flags["stdout"] or flags["stderr"]):
            raise _bad_request("you must specify at least 1 of stdin, stdout, stderr")
        command = query.getall("command", [])
        if verb == "exec" and not command:
            raise _bad_request("you must specify at least one command for the container")
        container = await self._container(namespace, pod, name, previous=False)
        if not container.running:
            raise _bad_request(f"container {name} is not running in pod {pod}")
        ws = web.WebSocketResponse(protocols=STREAM_PROTOCOLS, max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            raise _bad_request("a WebSocket upgrade with subprotocol v5.channel.k8s.io or v4.channel.k8s.io is "
                               "required (SPDY is not served)")
        if ws.can_prepare(request).protocol not in STREAM_PROTOCOLS:
            raise _bad_request(f"none of the offered subprotocols is served; use one of {list(STREAM_PROTOCOLS)}")
        if verb == "exec":
            session: StreamSession = ExecSession(self.runtime, self.engine, container.id, command, **flags)
        else:
            session = AttachSession(self.runtime, self.engine, container.id, **flags)
        await ws.prepare(request)
        await session.run(ws)
        return ws

    async def _stats_summary(self, _request: web.Request) -> web.Response:
        return web.json_response(await self.sampler.summary())

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        namespace, pod_name = request.match_info["namespace"], request.match_info["pod"]
        pod = self._pod(namespace, pod_name)
        labels = {naming.POD_UID: pod["metadata"]["uid"], naming.CONTAINER_TYPE: naming.TYPE_SANDBOX,
                  naming.NODE_NAME: self.node_name}
        sandbox = next((c for c in await self.runtime.containers(labels) if c.running and c.pid), None)
        if sandbox is None:
            raise _bad_request(f'pod "{pod_name}" has no running sandbox to forward ports into')
        ws = web.WebSocketResponse(protocols=portforward.PROTOCOLS, max_msg_size=0, autoping=True)
        ready = ws.can_prepare(request)
        protocol = ready.protocol if ready.ok else None
        if protocol not in portforward.PROTOCOLS:
            raise _bad_request(f"a WebSocket upgrade with one of the subprotocols {list(portforward.PROTOCOLS)} is "
                               "required (SPDY is served only inside a WebSocket)")
        if protocol == portforward.SPDY_PROTOCOL:
            await ws.prepare(request)
            await portforward.SpdyForwarder(sandbox.pid).serve(ws)
            return ws
        try:
            ports = [portforward.parse_port(p) for value in request.query.getall("ports", [])
                     for p in value.split(",")]
        except portforward.PortForwardError as exc:
            raise _bad_request(str(exc)) from None
        if not ports:
            raise _bad_request("at least one port is required (?ports=N)")
        await ws.prepare(request)
        await portforward.serve_channels(ws, sandbox.pid, ports)
        return ws

    def _pod(self, namespace: str, pod_name: str) -> dict[str, Any]:
        pod = self.pods(namespace, pod_name)
        if pod is None:
            raise KubeletApiError(404, "NotFound", f'pod "{pod_name}" in namespace "{namespace}" not found on '
                                  f'node "{self.node_name}"')
        return pod

    async def _container(self, namespace: str, pod_name: str, name: str, *, previous: bool) -> EngineContainer:
        """The engine's container for ``name`` in the pod (the latest attempt, or with ``previous`` the one
        before it: the agent keeps two)."""
        pod = self._pod(namespace, pod_name)
        labels = {naming.POD_UID: pod["metadata"]["uid"], naming.CONTAINER_NAME: name,
                  naming.NODE_NAME: self.node_name}
        attempts = sorted((c for c in await self.runtime.containers(labels) if not c.is_sandbox),
                          key=lambda c: c.attempt, reverse=True)
        wanted = attempts[1:2] if previous else attempts[:1]
        if not wanted:
            if previous:
                raise _bad_request(f'previous terminated container "{name}" in pod "{pod_name}" not found')
            raise _bad_request(f'container "{name}" in pod "{pod_name}" is waiting to start: ContainerCreating')
        return wanted[0]


def _status_response(error: KubeletApiError) -> web.Response:
    return web.json_response(error.status(), status=error.code)


def _subject(peercert: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    cn, orgs = None, []
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return cn, orgs


# --- logs ---------------------------------------------------------------------------------------------------

@dataclass
class LogOptions:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: float | None = None  # a Unix time
    limit_bytes: int | None = None

    @classmethod
    def parse(cls, query: Any) -> LogOptions:
        def flag(name: str) -> bool:
            return query.get(name, "").lower() in ("1", "true")

        options = cls(follow=flag("follow"), previous=flag("previous"), timestamps=flag("timestamps"),
                      tail_lines=_non_negative(query, "tailLines"), limit_bytes=_non_negative(query, "limitBytes"))
        if options.limit_bytes == 0:
            raise _bad_request("limitBytes: Invalid value: 0: must be greater than 0")
        seconds = _non_negative(query, "sinceSeconds")
        if seconds is not None:
            options.since = datetime.datetime.now(datetime.UTC).timestamp() - seconds
        elif query.get("sinceTime"):
            try:
                stamp = datetime.datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
            except ValueError:
                raise _bad_request(f"sinceTime: Invalid value: {query['sinceTime']!r}: not an RFC 3339 time") \
                    from None
            options.since = stamp.timestamp()
        return options


def _non_negative(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name}: Invalid value: {raw!r}: must be an integer") from None
    if value < 0:
        raise _bad_request(f"{name}: Invalid value: {value}: must be greater than or equal to 0")
    return value


async def _close_when_gone(request: web.Request, upstream: aiohttp.ClientResponse) -> None:
    """Close the engine's stream once the caller is gone: a followed log of a quiet container would otherwise
    keep both connections until its next line."""
    while not (request.transport is None or request.transport.is_closing()):
        await asyncio.sleep(1.0)
    upstream.close()


async def _log_payload(upstream: aiohttp.ClientResponse, tty: bool) -> AsyncIterator[bytes]:
    """The engine's log stream as plain bytes: a tty's as it is, else stdout and stderr frames merged."""
    if tty:
        async for chunk in upstream.content.iter_any():
            yield chunk
        return
    async for _, payload in _frames(upstream.content.iter_any()):
        yield payload


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """A hijacked engine stream's bytes until its end. The engine closing with stdin we sent still unread (the
    process exited without reading it all) resets the connection: that too is the end of the output."""
    try:
        while chunk := await reader.read(1 << 16):
            yield chunk
    except ConnectionError:
        return


async def _frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """The Engine API's multiplexed stream (8-byte headers: stream, 0, 0, 0, big-endian size; then the data) as
    (stream, data). Frames are taken from whatever arrived together, and consecutive ones of one stream come
    out as one: a log is a frame per line, and a write per line would cost more than the line."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        batch: list[tuple[int, bytearray]] = []
        offset = 0
        while len(buffer) - offset >= 8:
            stream, size = buffer[offset], struct.unpack_from(">I", buffer, offset + 4)[0]
            if len(buffer) - offset - 8 < size:
                break
            payload = buffer[offset + 8:offset + 8 + size]
            if batch and batch[-1][0] == stream:
                batch[-1][1].extend(payload)
            else:
                batch.append((stream, payload))
            offset += 8 + size
        del buffer[:offset]
        for stream, payload in batch:
            yield stream, bytes(payload)
    if len(buffer) > 8:  # the stream ended inside a frame: what there is of it
        yield buffer[0], bytes(buffer[8:])


# --- exec and attach ------------------------------------------------------------------------------------------

def exit_status(code: int) -> dict[str, Any]:
    """The final message on the error channel: kube's Success, or NonZeroExitCode with the code as a cause."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


class StreamSession:
    """One remote-command WebSocket bound to one hijacked engine stream."""

    def __init__(self, runtime: EngineRuntime, engine: EngineStreams, *, stdin: bool, stdout: bool, stderr: bool,
                 tty: bool) -> None:
        self.runtime, self.engine = runtime, engine
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty
        self._resizing: asyncio.Task[None] | None = None
        self.size: tuple[int, int] | None = None  # the client's terminal (width, height) when the stream opened

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    async def resize(self, width: int, height: int) -> None:
        raise NotImplementedError

    async def final_status(self) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, ws: web.WebSocketResponse) -> None:
        early: list[aiohttp.WSMessage] = []
        if self.tty:
            self.size = await _first_size(ws, early)
        try:
            reader, writer = await self.open()
        except (SkiffError, OSError, KubeletApiError) as exc:
            await _send(ws, ERROR, json.dumps(_failure(str(exc))).encode())
            await ws.close()
            return
        inbound = asyncio.create_task(self._client_to_engine(ws, writer, early))
        outbound = asyncio.create_task(self._engine_to_client(reader, ws))
        try:
            await asyncio.wait((inbound, outbound), return_when=asyncio.FIRST_COMPLETED)
            if outbound.done():  # the process's output ended: it exited (a client gone first ends it all)
                outbound.result()
                await _send(ws, ERROR, json.dumps(await self.final_status()).encode())
        except (SkiffError, OSError) as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await _send(ws, ERROR, json.dumps(_failure(str(exc))).encode())
        finally:
            for task in (inbound, outbound, *([self._resizing] if self._resizing else [])):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            writer.close()
            await ws.close()

    async def _engine_to_client(self, reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
        if self.tty:
            async for chunk in _chunks(reader):
                await _send(ws, STDOUT, chunk)
            return
        async for stream, payload in _frames(_chunks(reader)):
            await _send(ws, STDERR if stream == 2 else STDOUT, payload)

    async def _resize(self, data: bytes) -> None:
        """Apply a resize message; the first one comes as the command starts, before the engine may take it
        (a process not running yet), so it is retried for a while, as the docker CLI does."""
        try:
            size = json.loads(data)
            width, height = int(size["Width"]), int(size["Height"])
        except (ValueError, TypeError, KeyError):
            return
        for attempt in range(10):
            try:
                await self.resize(width, height)
                return
            except SkiffError as exc:
                log.debug("resize to %dx%d: %s", width, height, exc)
                await asyncio.sleep(0.02 * 2 ** attempt)

    async def _client_to_engine(self, ws: web.WebSocketResponse, writer: asyncio.StreamWriter,
                                early: list[aiohttp.WSMessage]) -> None:
        v5 = ws.ws_protocol == STREAM_PROTOCOLS[0]
        # stdin goes out on a duplicate of the stream's socket: a write that fails (the process exited without
        # reading it all) must not abort the transport that still reads the process's last output
        stdin = writer.get_extra_info("socket").dup() if self.stdin else None
        if stdin is not None:
            stdin.setblocking(False)
        try:
            await self._forward(ws, early, stdin, v5)
        finally:
            if stdin is not None:
                stdin.close()

    async def _forward(self, ws: web.WebSocketResponse, early: list[aiohttp.WSMessage], stdin: socket.socket | None,
                       v5: bool) -> None:
        loop = asyncio.get_running_loop()
        stdin_open = stdin is not None
        async for message in _messages(early, ws):
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            if channel == STDIN and stdin_open and stdin is not None:
                try:
                    await loop.sock_sendall(stdin, data)
                except OSError:  # the process is gone: its output and exit status are still to come
                    stdin_open = False
            elif channel == RESIZE:
                if self._resizing is not None:
                    self._resizing.cancel()  # a newer size wins
                self._resizing = asyncio.create_task(self._resize(data))
            elif v5 and channel == CLOSE and data[:1] == bytes([STDIN]) and stdin_open and stdin is not None:
                stdin_open = False
                with contextlib.suppress(OSError):
                    stdin.shutdown(socket.SHUT_WR)  # stdin's end reaches the process as EOF


class ExecSession(StreamSession):
    def __init__(self, runtime: EngineRuntime, engine: EngineStreams, container_id: str, command: list[str],
                 **flags: bool) -> None:
        super().__init__(runtime, engine, **flags)
        self.container_id, self.command = container_id, command
        self.exec_id = ""

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        config: dict[str, Any] = {"Cmd": self.command, "AttachStdin": self.stdin, "AttachStdout": self.stdout,
                                  "AttachStderr": self.stderr and not self.tty, "Tty": self.tty}
        if self.size is not None:
            config["ConsoleSize"] = [self.size[1], self.size[0]]  # height, width
        self.exec_id = await self.engine.create_exec(self.container_id, config)
        return await self.engine.hijack(f"/exec/{self.exec_id}/start", {"Detach": False, "Tty": self.tty})

    async def resize(self, width: int, height: int) -> None:
        await self.runtime.call(self.runtime.api.exec_resize, self.exec_id, height=height, width=width)

    async def final_status(self) -> dict[str, Any]:
        for _ in range(100):  # the stream can end a moment before the engine records the exit
            inspected = await self.runtime.call(self.runtime.api.exec_inspect, self.exec_id)
            if not inspected.get("Running") and inspected.get("ExitCode") is not None:
                return exit_status(int(inspected["ExitCode"]))
            await asyncio.sleep(0.02)
        return _failure("the engine did not report the command's exit code")


class AttachSession(StreamSession):
    def __init__(self, runtime: EngineRuntime, engine: EngineStreams, container_id: str, **flags: bool) -> None:
        super().__init__(runtime, engine, **flags)
        self.container_id = container_id

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inspected = await self.runtime.call(self.runtime.api.inspect_container, self.container_id)
        self.tty = bool((inspected.get("Config") or {}).get("Tty"))  # the container's terminal decides the framing
        query = "&".join(f"{name}={int(value)}" for name, value in
                         (("stream", True), ("stdin", self.stdin), ("stdout", self.stdout), ("stderr", self.stderr)))
        return await self.engine.hijack(f"/containers/{self.container_id}/attach?{query}", None)

    async def resize(self, width: int, height: int) -> None:
        await self.runtime.call(self.runtime.api.resize, self.container_id, height=height, width=width)

    async def final_status(self) -> dict[str, Any]:
        return exit_status(0)


async def _first_size(ws: web.WebSocketResponse, early: list[aiohttp.WSMessage]) -> tuple[int, int] | None:
    """The terminal size a tty client sends first, so the process starts with it rather than being resized
    just after it began (when a shell may already have printed its prompt); other messages read meanwhile are
    kept in ``early``. None when no size comes within a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while (left := deadline - loop.time()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            return None
        early.append(message)
        if message.type != aiohttp.WSMsgType.BINARY:
            return None
        if message.data[:1] == bytes([RESIZE]):
            try:
                size = json.loads(message.data[1:])
                return int(size["Width"]), int(size["Height"])
            except (ValueError, TypeError, KeyError):
                return None
    return None


async def _messages(early: list[aiohttp.WSMessage], ws: web.WebSocketResponse) -> AsyncIterator[aiohttp.WSMessage]:
    for message in early:
        yield message
    async for message in ws:
        yield message


def _failure(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "reason": "InternalError", "message": message,
            "details": {"causes": [{"message": message}]}}


async def _send(ws: web.WebSocketResponse, channel: int, data: bytes) -> None:
    await ws.send_bytes(bytes([channel]) + data)


# --- the engine's streams -------------------------------------------------------------------------------------

class EngineStreams:
    """The Engine API's streaming endpoints, asynchronously: the log stream through aiohttp, and hijacked
    exec/attach connections (``Upgrade: tcp``) on a socket of their own, so the bytes that follow the answer's
    headers are never lost in an HTTP client's buffer and stdin can be half-closed."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.unix_path = parts.path if parts.scheme in ("unix", "http+unix") else None
        self.host, self.port = parts.hostname or "localhost", parts.port or 2375
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no cap on connections: each followed log holds one for as long as it lasts
            connector = aiohttp.UnixConnector(path=self.unix_path, limit=0) if self.unix_path \
                else aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def logs(self, container_id: str, options: LogOptions) -> aiohttp.ClientResponse:
        params = {"stdout": "1", "stderr": "1", "follow": str(int(options.follow)),
                  "timestamps": str(int(options.timestamps)),
                  "tail": "all" if options.tail_lines is None else str(options.tail_lines)}
        if options.since is not None:
            params["since"] = f"{options.since:.9f}"
        response = await self.session().get(f"http://{self.host}:{self.port}/containers/{quote(container_id)}/logs",
                                            params=params)
        if response.status != 200:
            text = await response.text()
            response.close()
            raise KubeletApiError(500 if response.status >= 500 else 400, "InternalError",
                                  _engine_message(text, response.status))
        return response

    async def create_exec(self, container_id: str, config: dict[str, Any]) -> str:
        """``POST /containers/{id}/exec`` (docker-py's exec_create has no ConsoleSize); the exec's id."""
        async with self.session().post(f"http://{self.host}:{self.port}/containers/{quote(container_id)}/exec",
                                       json=config) as response:
            if response.status != 201:
                message = _engine_message(await response.text(), response.status)
                if response.status == 404:
                    raise NotFound(message)
                raise KubeletApiError(500 if response.status >= 500 else 400, "InternalError", message)
            return str((await response.json())["Id"])

    async def hijack(self, path: str, body: dict[str, Any] | None) -> tuple[asyncio.StreamReader,
                                                                              asyncio.StreamWriter]:
        if self.unix_path:
            reader, writer = await asyncio.open_unix_connection(self.unix_path, limit=1 << 20)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        payload = json.dumps(body).encode() if body is not None else b""
        writer.write(f"POST {path} HTTP/1.1\r\nHost: engine\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status not in (101, 200):
            headers = head.decode(errors="replace").lower()
            length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0]) \
                if "content-length:" in headers else 0
            text = (await reader.readexactly(length)).decode(errors="replace") if length else ""
            writer.close()
            raise KubeletApiError(400 if status < 500 else 500, "InternalError", _engine_message(text, status))
        return reader, writer


def _engine_message(text: str, status: int) -> str:
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or f"the engine answered {status}"


# --- the serving certificate's fallback -------------------------------------------------------------------------

def self_signed_certificate(directory: Path, node_name: str, node_ip: str) -> tuple[Path, Path]:
    """``kubelet.crt``/``kubelet.key`` in ``directory``, made once (kube's default without --tls-cert-file). The
    API server, which verifies the kubelet against the cluster CA, only talks to such a kubelet when told to
    skip that check (``insecureSkipTLSVerifyBackend``)."""
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@kubelet")])
    names: list[x509.GeneralName] = [x509.DNSName(node_name)]
    with contextlib.suppress(ValueError):
        names.append(x509.IPAddress(ipaddress.ip_address(node_ip)))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
