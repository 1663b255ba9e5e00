"""One pod's sync against the engine: what dockershim's kuberuntime did for each pod, one step at a time.

``PodSyncer.sync(pod)`` reads the pod's containers from the engine (by the pod uid label) and moves them one
step towards the spec, then computes the status:

1. a pod being deleted: preStop hooks, SIGTERM, up to the grace period, SIGKILL; containers removed; volumes
   removed; the pod object deleted with grace 0 (the kubelet's confirmation);
2. the sandbox (``k8s_POD_...``): the pause container that holds the pod's network and IPC namespaces; if it
   died, every container of the pod is stopped and the pod starts over with a new sandbox;
3. init containers in order, each to successful completion (restarted with back-off unless the policy is Never);
4. the containers: started when missing; restarted per restartPolicy when they exited or failed liveness,
   with kube's CrashLoopBackOff (immediate first restart, then ``backoff_base`` doubling to ``backoff_max``).

Back-off timers, image-pull failures and probe results live in memory; everything else is re-read from the
engine on every sync, so an agent restarted under running pods finds and keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.client import PODS, ApiClient, ApiStatusError
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.kubelet import naming
from skiff.cluster.kubelet.containers import (
    ContainerConfigError,
    Lookup,
    dns_host_config,
    engine_config,
    environment,
)
from skiff.cluster.kubelet.probes import Prober
from skiff.cluster.kubelet.runtime import EngineContainer, EngineRuntime, ImagePullError, RuntimeError_, normalize_image
from skiff.cluster.kubelet.status import ContainerView, PodView, Waiting, differs, pod_status
from skiff.cluster.kubelet.volumes import PodVolumes, binds
from skiff.errors import NotFound

log = logging.getLogger(__name__)
Obj = dict[str, Any]
DEFAULT_GRACE = 30


@dataclass
class SyncOptions:
    node_name: str
    host_ip: str
    pause_image: str
    pause_command: list[str] | None = None
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    node_allocatable: dict[str, str] = field(default_factory=dict)
    network: Callable[[], str | None] | None = None  # the engine network new sandboxes join (the pod network)
    cluster_dns: str | None = None  # dnsPolicy ClusterFirst's nameserver (containers.dns_host_config)
    cluster_domain: str = "cluster.local"


@dataclass
class Backoff:
    """A container's restart (or image pull) back-off: ``delay`` applies from the moment it was last seen
    failing (``since``)."""

    delay: float
    since: float = 0.0

    def remaining(self) -> float:
        return self.since + self.delay - time.monotonic()


@dataclass
class PodMemory:
    """What the agent remembers of a pod between syncs (lost on restart, which only shortens back-offs)."""

    restarts: dict[str, Backoff] = field(default_factory=dict)  # container name -> restart back-off
    pulls: dict[str, Backoff] = field(default_factory=dict)  # container name -> image pull back-off
    waiting: dict[str, Waiting] = field(default_factory=dict)  # container name -> why it is not running
    exits_seen: dict[str, float] = field(default_factory=dict)  # container id -> when the sync saw it exited
    wake_at: float | None = None


class PodSyncer:
    def __init__(self, client: ApiClient, runtime: EngineRuntime, volumes: PodVolumes, prober: Prober,
                 events: EventRecorder, options: SyncOptions, lookup: Lookup,
                 requeue: Callable[[str, float], None]) -> None:
        self.client = client
        self.runtime = runtime
        self.volumes = volumes
        self.prober = prober
        self.events = events
        self.options = options
        self.lookup = lookup
        self.requeue = requeue
        self.memory: dict[str, PodMemory] = {}  # pod uid -> memory

    # --- entry points -------------------------------------------------------------------------------------------

    async def sync(self, pod: Obj) -> None:
        ref = naming.PodRef.of(pod)
        found = await self.runtime.containers({naming.POD_UID: ref.uid})
        if pod["metadata"].get("deletionTimestamp"):
            await self.terminate(pod, found)
            await self._confirm_deletion(pod)
            return
        memory = self.memory.setdefault(ref.uid, PodMemory())
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            await self._stop_all(pod, found, reason=None)  # a finished pod keeps nothing running
            self.prober.forget_pod(ref.uid)
            return
        view = await self._sync_containers(pod, ref, found, memory)
        status = pod_status(view)
        if status["phase"] in ("Succeeded", "Failed"):
            await self._stop_all(pod, await self.runtime.containers({naming.POD_UID: ref.uid}), reason=None)
        await self._write_status(pod, status)

    async def terminate(self, pod: Obj, found: list[EngineContainer] | None = None) -> None:
        """Stop and remove every container of ``pod`` (preStop hooks and its grace period first)."""
        uid = pod["metadata"]["uid"]
        if found is None:
            found = await self.runtime.containers({naming.POD_UID: uid})
        await self._stop_all(pod, found, reason="Killing")
        for container in found:
            await self.runtime.remove(container.id)
        self.prober.forget_pod(uid)
        self.volumes.cleanup(uid)
        self.memory.pop(uid, None)

    async def remove_orphans(self, uid: str) -> None:
        """Containers of a pod the API no longer has: stopped at once and removed."""
        for container in await self.runtime.containers({naming.POD_UID: uid}):
            await self.runtime.stop(container.id, 0)
            await self.runtime.remove(container.id)
        self.prober.forget_pod(uid)
        self.volumes.cleanup(uid)
        self.memory.pop(uid, None)

    # --- deletion -------------------------------------------------------------------------------------------

    def _grace(self, pod: Obj) -> float:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        return float(grace if grace is not None else DEFAULT_GRACE)

    async def _stop_all(self, pod: Obj, found: list[EngineContainer], reason: str | None) -> None:
        """Stop the pod's containers together (each within the grace period), then the sandbox."""
        grace = self._grace(pod)
        specs = {c.get("name"): c for c in _all_containers(pod)}
        workers = [c for c in found if c.running and not c.is_sandbox]
        await asyncio.gather(*(self._stop_one(pod, specs.get(c.container_name) or {}, c, grace, reason)
                               for c in workers))
        for sandbox in (c for c in found if c.running and c.is_sandbox):
            await self.runtime.stop(sandbox.id, 0)

    async def _stop_one(self, pod: Obj, spec: Obj, container: EngineContainer, grace: float,
                        reason: str | None, message: str = "") -> None:
        if reason:
            self.events.normal(pod, reason, message or f"Stopping container {container.container_name}")
        started = time.monotonic()
        hook = ((spec.get("lifecycle") or {}).get("preStop") or {})
        if hook.get("exec") and grace > 0:
            command = [str(word) for word in hook["exec"].get("command") or ()]
            with contextlib.suppress(Exception):
                await self.runtime.exec(container.id, command, grace)
        elif hook.get("sleep") and grace > 0:
            await asyncio.sleep(min(float(hook["sleep"].get("seconds") or 0), grace))
        remaining = max(grace - (time.monotonic() - started), 0.0)
        await self.runtime.stop(container.id, remaining, _stop_signal(container))

    async def _confirm_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(PODS, meta["name"], meta.get("namespace"), grace_period_seconds=0,
                                     preconditions={"uid": meta["uid"]})
        except ApiStatusError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    # --- the sandbox ----------------------------------------------------------------------------------------

    async def _ensure_sandbox(self, pod: Obj, ref: naming.PodRef, found: list[EngineContainer]) -> EngineContainer:
        sandboxes = sorted((c for c in found if c.is_sandbox), key=lambda c: c.attempt)
        latest = sandboxes[-1] if sandboxes else None
        if latest is not None and latest.running:
            return latest
        attempt = 0
        if latest is not None:
            # the pod's namespaces are gone with it: everything starts over in a new sandbox
            self.events.normal(pod, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.")
            await self._stop_all(pod, found, reason=None)
            for old in sandboxes:
                await self.runtime.remove(old.id)
            attempt = latest.attempt + 1
        image = self.options.pause_image
        if await self.runtime.image_id(image) is None:
            await self.runtime.pull(image)
        spec = pod.get("spec") or {}
        host: Obj = {"RestartPolicy": {"Name": "no"}, "IpcMode": "shareable", "LogConfig": {"Type": "json-file",
                                                                                            "Config": {}}}
        if spec.get("hostNetwork"):
            host["NetworkMode"] = "host"
        elif self.options.network is not None and (network := self.options.network()):
            host["NetworkMode"] = network
        host.update(dns_host_config(pod, self.options.cluster_dns, self.options.cluster_domain))
        config: Obj = {"Image": normalize_image(image), "Hostname": _hostname(pod),
                       "Labels": naming.labels(ref, self.options.node_name, naming.SANDBOX, attempt, kind="sandbox"),
                       "HostConfig": host}
        if self.options.pause_command:
            config["Entrypoint"] = self.options.pause_command
            config["Cmd"] = None
        name = naming.container_name(ref, naming.SANDBOX, attempt)
        sandbox_id = await self.runtime.create(name, config)
        await self.runtime.start(sandbox_id)
        return await self.runtime.inspect(sandbox_id)

    # --- containers -----------------------------------------------------------------------------------------

    async def _sync_containers(self, pod: Obj, ref: naming.PodRef, found: list[EngineContainer],
                               memory: PodMemory) -> PodView:
        spec = pod.get("spec") or {}
        view = PodView(pod, self.options.host_ip)
        instances = _by_name(found)
        view.init = [_container_view(c, instances) for c in spec.get("initContainers") or ()]
        view.containers = [_container_view(c, instances) for c in spec.get("containers") or ()]
        try:
            sandbox = await self._ensure_sandbox(pod, ref, found)
        except (RuntimeError_, ImagePullError, NotFound) as exc:
            for v in view.containers:
                v.waiting = Waiting("ContainerCreating", f"failed to create pod sandbox: {exc}")
            self.events.warning(pod, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            self._wake(ref, memory, self.options.backoff_base)
            return view
        if sandbox.attempt and any(c.is_sandbox and c.id != sandbox.id for c in found):
            return await self._sync_containers(pod, ref, await self.runtime.containers({naming.POD_UID: ref.uid}),
                                               memory)
        host_network = bool((pod.get("spec") or {}).get("hostNetwork"))
        view.sandbox_running = True
        view.pod_ip = self.options.host_ip if host_network else sandbox.ip_address
        pod_with_ip = _with_ip(pod, view.pod_ip, self.options.host_ip)
        try:
            volumes = await self.volumes.prepare(pod_with_ip, self.lookup)
        except ContainerConfigError as exc:
            self.events.warning(pod, "FailedMount", str(exc))
            for v in view.init + view.containers:
                if v.latest is None:
                    v.waiting = Waiting("ContainerCreating", str(exc))
            self._wake(ref, memory, self.options.backoff_base)
            return view
        for v in view.init:
            if v.succeeded:
                continue
            await self._step(pod_with_ip, ref, v, sandbox, volumes, memory, init=True)
            break
        if view.initialized:
            await asyncio.gather(*(self._step(pod_with_ip, ref, v, sandbox, volumes, memory, init=False)
                                   for v in view.containers))
        else:
            for v in view.containers:
                v.waiting = Waiting("PodInitializing")
        await self._prune(found, view)
        return view

    async def _step(self, pod: Obj, ref: naming.PodRef, view: ContainerView, sandbox: EngineContainer,
                    volumes: dict[str, str], memory: PodMemory, *, init: bool) -> None:
        """Move one container one step: leave it running, restart it (after back-off), or start it."""
        name, latest = view.name, view.latest
        policy = (pod.get("spec") or {}).get("restartPolicy") or "Always"
        if latest is not None and latest.running:
            if init:
                return  # an init container runs to completion
            probes = self.prober.start(ref.key, ref.uid, view.spec, latest.id, _pod_ip(pod))
            if probes.live:
                view.ready, view.started = probes.ready and probes.started, probes.started
                memory.waiting.pop(name, None)
                return
            message = f"Container {name} {probes.failure}, will be restarted"
            self.events.warning(pod, "Unhealthy", probes.failure)
            await self._stop_one(pod, view.spec, latest, self._probe_grace(pod, view.spec), "Killing", message)
            self.prober.forget_container(ref.uid, name)
            latest = await self.runtime.inspect(latest.id)
            view.previous, view.latest = view.latest, latest
        if latest is not None:
            # it ran and stopped (or never started): restart it if the policy says so, after its back-off
            self.prober.forget_container(ref.uid, name)
            failed = latest.exit_code != 0 or latest.state == "created"
            if policy == "Never" or (policy == "OnFailure" and not failed) or (init and not failed):
                return
            seen = memory.exits_seen.setdefault(latest.id, time.monotonic())
            backoff = memory.restarts.get(name)
            if backoff is not None:
                backoff.since = max(backoff.since, seen)
                wait = backoff.remaining()
                if wait > 0:
                    view.waiting = Waiting("CrashLoopBackOff", f"back-off {backoff.delay:g}s restarting failed "
                                           f"container={name} pod={ref.name}_{ref.namespace}({ref.uid})")
                    memory.waiting[name] = view.waiting
                    self.events.warning(pod, "BackOff", "Back-off restarting failed container "
                                        f"{name} in pod {ref.name}_{ref.namespace}({ref.uid})")
                    self._wake(ref, memory, wait)
                    return
                backoff.delay = min(backoff.delay * 2, self.options.backoff_max)
            else:
                memory.restarts[name] = Backoff(self.options.backoff_base)
        attempt = latest.attempt + 1 if latest is not None else 0
        started = await self._start(pod, ref, view, sandbox, volumes, memory, attempt, init)
        if started is not None:
            view.previous, view.latest, view.waiting = latest, started, None
            memory.waiting.pop(name, None)

    def _probe_grace(self, pod: Obj, spec: Obj) -> float:
        probe = spec.get("livenessProbe") or spec.get("startupProbe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        return float(grace) if grace is not None else self._grace(pod)

    async def _start(self, pod: Obj, ref: naming.PodRef, view: ContainerView, sandbox: EngineContainer,
                     volumes: dict[str, str], memory: PodMemory, attempt: int, init: bool) -> EngineContainer | None:
        """Pull (per policy), create and start one container; None (and ``view.waiting``) when it cannot."""
        spec, name = view.spec, view.name
        image = await self._ensure_image(pod, ref, view, memory)
        if image is None:
            return None
        try:
            env = await environment(pod, spec, self.lookup, self.options.node_allocatable)
            mounts = binds(spec, volumes)
        except ContainerConfigError as exc:
            view.waiting = Waiting("CreateContainerConfigError", str(exc))
            self.events.warning(pod, "Failed", f"Error: {exc}")
            self._wake(ref, memory, self.options.backoff_base)
            return None
        labels = naming.labels(ref, self.options.node_name, name, attempt, kind="init" if init else "regular")
        labels[naming.TERMINATION_GRACE] = str(int(self._grace(pod)))
        config = engine_config(pod, spec, image=image, sandbox_id=sandbox.id, env=env, labels=labels, binds=mounts)
        try:
            container_id = await self.runtime.create(naming.container_name(ref, name, attempt), config)
        except (RuntimeError_, NotFound) as exc:
            view.waiting = Waiting("CreateContainerError", str(exc))
            self.events.warning(pod, "Failed", f"Error: {exc}")
            self._wake(ref, memory, self.options.backoff_base)
            return None
        self.events.normal(pod, "Created", f"Created container {name}")
        try:
            await self.runtime.start(container_id)
        except (RuntimeError_, NotFound) as exc:
            self.events.warning(pod, "Failed", f"Error: {exc}")
            memory.restarts.setdefault(name, Backoff(self.options.backoff_base))
            self._wake(ref, memory, 0.5)
            return await self.runtime.inspect(container_id)
        self.events.normal(pod, "Started", f"Started container {name}")
        self._wake(ref, memory, 0.5)  # look again soon: a container that fails at once is reported quickly
        return await self.runtime.inspect(container_id)

    async def _ensure_image(self, pod: Obj, ref: naming.PodRef, view: ContainerView, memory: PodMemory) -> str | None:
        spec, name = view.spec, view.name
        image = spec.get("image") or ""
        reference = normalize_image(image)
        policy = spec.get("imagePullPolicy") or ("Always" if reference.endswith(":latest") else "IfNotPresent")
        present = await self.runtime.image_id(reference)
        if policy == "Never":
            if present is None:
                view.waiting = Waiting("ErrImageNeverPull", f'Container image "{image}" is not present with pull '
                                                            "policy of Never")
                self.events.warning(pod, "ErrImageNeverPull", view.waiting.message)
                self._wake(ref, memory, self.options.backoff_base)
                return None
            return reference
        if present is not None and policy == "IfNotPresent":
            return reference
        backoff = memory.pulls.get(name)
        if backoff is not None and backoff.remaining() > 0:
            view.waiting = Waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')
            self.events.normal(pod, "BackOff", view.waiting.message)
            self._wake(ref, memory, backoff.remaining())
            return None
        self.events.normal(pod, "Pulling", f'Pulling image "{image}"')
        started = time.monotonic()
        try:
            await self.runtime.pull(reference)
        except ImagePullError as exc:
            if present is not None:
                return reference  # Always, and the registry is unreachable: the local copy will do (kube fails)
            delay = self.options.backoff_base if backoff is None else min(backoff.delay * 2, self.options.backoff_max)
            memory.pulls[name] = Backoff(delay, time.monotonic())
            message = f'Failed to pull image "{image}": {exc}'
            view.waiting = Waiting("ErrImagePull", message)
            self.events.warning(pod, "Failed", message)
            self.events.warning(pod, "Failed", "Error: ErrImagePull")
            self._wake(ref, memory, delay)
            return None
        memory.pulls.pop(name, None)
        self.events.normal(pod, "Pulled", f'Successfully pulled image "{image}" in {time.monotonic() - started:.3f}s')
        return reference

    async def _prune(self, found: list[EngineContainer], view: PodView) -> None:
        """Keep the latest two instances of each container (``lastState`` and ``logs --previous`` read the
        older one); remove the rest."""
        keep = {c.id for v in view.init + view.containers for c in (v.latest, v.previous) if c is not None}
        for container in found:
            if not container.is_sandbox and container.id not in keep and not container.running:
                await self.runtime.remove(container.id)

    def _wake(self, ref: naming.PodRef, memory: PodMemory, delay: float) -> None:
        self.requeue(ref.key, max(delay, 0.05))

    # --- status ---------------------------------------------------------------------------------------------

    async def _write_status(self, pod: Obj, status: Obj) -> None:
        current = pod.get("status") or {}
        if not differs(current, status):
            return
        meta = pod["metadata"]
        try:
            await self.client.patch(PODS, meta["name"], {"status": status}, namespace=meta.get("namespace"),
                                    subresource="status")
        except ApiStatusError as exc:
            if not exc.not_found:
                raise


def _all_containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or ()) + list(spec.get("containers") or ())


def _by_name(found: list[EngineContainer]) -> dict[str, list[EngineContainer]]:
    result: dict[str, list[EngineContainer]] = {}
    for container in found:
        if not container.is_sandbox:
            result.setdefault(container.container_name, []).append(container)
    for instances in result.values():
        instances.sort(key=lambda c: c.attempt)
    return result


def _container_view(spec: Obj, instances: dict[str, list[EngineContainer]]) -> ContainerView:
    mine = instances.get(spec.get("name") or "", [])
    return ContainerView(spec, latest=mine[-1] if mine else None, previous=mine[-2] if len(mine) > 1 else None)


def _with_ip(pod: Obj, pod_ip: str, host_ip: str) -> Obj:
    """The pod as fieldRefs see it once it has an address (status.podIP is set before containers start)."""
    status = dict(pod.get("status") or {})
    if pod_ip:
        status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
    status["hostIP"], status["hostIPs"] = host_ip, [{"ip": host_ip}]
    return {**pod, "status": status}


def _pod_ip(pod: Obj) -> str:
    return (pod.get("status") or {}).get("podIP") or ""


def _hostname(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return (spec.get("hostname") or pod["metadata"]["name"])[:63]


def _stop_signal(container: EngineContainer) -> str:
    return ((container.raw.get("Config") or {}).get("StopSignal")) or "SIGTERM"
