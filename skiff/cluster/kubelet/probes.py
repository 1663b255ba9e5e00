"""Liveness, readiness and startup probes: one asyncio task per probe of a running container.

A worker waits ``initialDelaySeconds``, then probes every ``periodSeconds`` (each probe bounded by
``timeoutSeconds``) and flips its result after ``failureThreshold`` consecutive failures or
``successThreshold`` consecutive successes. Liveness and readiness wait until the startup probe (if any) has
succeeded. A changed result wakes the pod's sync, which restarts a container whose liveness (or startup) probe
failed and reports readiness. Probes reach the pod the way kube's do: exec through the engine's exec API,
httpGet and tcpSocket to the pod's IP on the engine's bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.kubelet.runtime import EngineRuntime
from skiff.errors import SkiffError

log = logging.getLogger(__name__)
Obj = dict[str, Any]
KINDS = ("startupProbe", "livenessProbe", "readinessProbe")


@dataclass
class ProbeState:
    """The results of one container's probes (by container id: a restarted container starts afresh)."""

    container_id: str
    started: bool  # the startup probe succeeded (True when there is none)
    ready: bool  # readiness (True when there is no readiness probe, once started)
    live: bool = True  # False once liveness (or startup) failed: the container is to be restarted
    failure: str = ""  # what the failing probe said, for the Killing/Unhealthy events
    has_readiness: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def resolve_port(port: Any, container: Obj) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or ():
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of the container")


async def http_probe(host: str, port: int, path: str, headers: list[Obj], timeout: float) -> tuple[bool, str]:
    """GET ``path``: success for an answer 200-399 (a minimal HTTP/1.1 client, as kube's prober)."""
    async def get() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            extra = "".join(f"{h.get('name')}: {h.get('value')}\r\n" for h in headers)
            request = (f"GET {path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\n"
                       f"Accept: */*\r\nConnection: close\r\n{extra}\r\n")
            writer.write(request.encode())
            await writer.drain()
            line = (await reader.readline()).decode(errors="replace").split()
            code = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(get(), timeout)
    except TimeoutError:
        return False, f'Get "http://{host}:{port}{path}": context deadline exceeded'
    except OSError as exc:
        return False, f'Get "http://{host}:{port}{path}": {exc.strerror or exc}'


async def tcp_probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


class Prober:
    """Runs the probes of every running container of this node; ``changed(pod_key)`` when a result flips."""

    def __init__(self, runtime: EngineRuntime, changed: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.changed = changed
        self._states: dict[tuple[str, str], ProbeState] = {}  # (pod uid, container name) -> state

    def state(self, pod_uid: str, container: Obj, container_id: str) -> ProbeState:
        """The probe state of a running container (its workers started on first call)."""
        key = (pod_uid, container.get("name") or "")
        current = self._states.get(key)
        if current is not None and current.container_id == container_id:
            return current
        if current is not None:
            self._cancel(current)
        has_startup = bool(container.get("startupProbe"))
        has_readiness = bool(container.get("readinessProbe"))
        state = ProbeState(container_id, started=not has_startup, ready=not has_readiness and not has_startup,
                           has_readiness=has_readiness)
        self._states[key] = state
        return state

    def start(self, pod_key: str, pod_uid: str, container: Obj, container_id: str, pod_ip: str) -> ProbeState:
        state = self.state(pod_uid, container, container_id)
        if not state.tasks:
            for kind in KINDS:
                probe = container.get(kind)
                if probe:
                    state.tasks.append(asyncio.create_task(
                        self._run(pod_key, kind, probe, container, state, pod_ip),
                        name=f"probe-{pod_key}-{container.get('name')}-{kind}"))
            if not state.tasks:
                state.tasks.append(asyncio.create_task(asyncio.sleep(0)))  # marks "started, nothing to run"
        return state

    def forget_container(self, pod_uid: str, name: str) -> None:
        state = self._states.pop((pod_uid, name), None)
        if state is not None:
            self._cancel(state)

    def forget_pod(self, pod_uid: str) -> None:
        for key in [k for k in self._states if k[0] == pod_uid]:
            self._cancel(self._states.pop(key))

    def stop(self) -> None:
        for state in self._states.values():
            self._cancel(state)
        self._states.clear()

    @staticmethod
    def _cancel(state: ProbeState) -> None:
        for task in state.tasks:
            task.cancel()

    async def _run(self, pod_key: str, kind: str, probe: Obj, container: Obj, state: ProbeState, pod_ip: str) -> None:
        period = max(float(probe.get("periodSeconds") or 10), 0.1)
        timeout = max(float(probe.get("timeoutSeconds") or 1), 0.1)
        failures_needed = max(int(probe.get("failureThreshold") or 3), 1)
        successes_needed = max(int(probe.get("successThreshold") or 1), 1)
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        failures = successes = 0
        while True:
            if kind == "startupProbe" and state.started:
                return
            if kind != "startupProbe" and not state.started:
                await asyncio.sleep(min(period, 0.5))
                continue
            ok, message = await self.probe_once(probe, container, state.container_id, pod_ip, timeout)
            if ok:
                successes, failures = successes + 1, 0
            else:
                failures, successes = failures + 1, 0
            if self._record(kind, state, ok, message, failures >= failures_needed, successes >= successes_needed):
                self.changed(pod_key)
            if kind != "readinessProbe" and not state.live:
                return  # the container is being restarted; its successor gets new workers
            await asyncio.sleep(period)

    @staticmethod
    def _record(kind: str, state: ProbeState, ok: bool, message: str, failed: bool, succeeded: bool) -> bool:
        """Apply one result; whether the container's state changed."""
        if kind == "readinessProbe":
            if succeeded and not state.ready:
                state.ready = True
                return True
            if failed and state.ready:
                state.ready = False
                return True
            return False
        if kind == "startupProbe" and succeeded:
            state.started = True
            state.ready = not state.has_readiness
            return True
        if failed and state.live:
            state.live, state.failure = False, f"{_label(kind)} probe failed: {message}".strip()
            return True
        return False

    async def probe_once(self, probe: Obj, container: Obj, container_id: str, pod_ip: str,
                         timeout: float) -> tuple[bool, str]:
        try:
            if probe.get("exec"):
                command = [str(word) for word in (probe["exec"] or {}).get("command") or ()]
                try:
                    code, output = await self.runtime.exec(container_id, command, timeout)
                except TimeoutError:
                    return False, f"command {command!r} timed out"
                return code == 0, output.decode(errors="replace").strip()
            if probe.get("httpGet"):
                spec = probe["httpGet"]
                return await http_probe(spec.get("host") or pod_ip, resolve_port(spec.get("port"), container),
                                        spec.get("path") or "/", spec.get("httpHeaders") or [], timeout)
            if probe.get("tcpSocket"):
                spec = probe["tcpSocket"]
                return await tcp_probe(spec.get("host") or pod_ip, resolve_port(spec.get("port"), container), timeout)
        except (SkiffError, ValueError, OSError) as exc:
            return False, str(exc)
        return False, "probe has no handler (exec, httpGet or tcpSocket)"


def _label(kind: str) -> str:
    return {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}[kind]
