"""The agent: registers its Node, heartbeats, watches the pods bound to it and syncs each one.

Pods are watched with ``fieldSelector=spec.nodeName=<node>``; each change queues the pod's key on a work
queue whose workers run ``PodSyncer.sync`` (a key is never synced by two workers at once). A pod is synced
again when one of its containers changes state (the engine's event stream), when a back-off ends or a probe
result flips (``requeue``), and every ``resync_interval`` seconds in any case. Housekeeping at the same
interval removes containers and volumes of pods the API no longer has (deleted while the agent was away).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import PODS, ApiClient, Informer, ShutDown, WorkQueue
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.kubelet import naming, pause
from skiff.cluster.kubelet.containers import api_lookup
from skiff.cluster.kubelet.node import NodeIdentity, NodeRegistration, default_address, runtime_version
from skiff.cluster.kubelet.podnetwork import PodNetwork
from skiff.cluster.kubelet.pods import PodSyncer, SyncOptions
from skiff.cluster.kubelet.probes import Prober
from skiff.cluster.kubelet.runtime import EngineRuntime
from skiff.cluster.kubelet.server import KubeletServer, ServingOptions
from skiff.cluster.kubelet.volumes import PodVolumes
from skiff.errors import SkiffError

log = logging.getLogger(__name__)
DEFAULT_PAUSE_IMAGE = pause.PAUSE_IMAGE  # made by the agent when missing: no registry needed
_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class KubeletOptions:
    node_name: str
    data_dir: Path
    engine: str = "unix:///run/skiff/engine.sock"
    node_ip: str | None = None
    pause_image: str = DEFAULT_PAUSE_IMAGE
    pause_command: list[str] | None = None
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    lease_interval: float = 10.0
    status_interval: float = 60.0
    resync_interval: float = 10.0
    workers: int = 16
    engine_wait: float = 30.0  # seconds start() waits for the engine to answer
    pod_cidr: str | None = None
    serving: ServingOptions | None = None  # the kubelet API (logs, exec); None serves none
    cluster_dns: str | None = None  # the pods' nameserver (dnsPolicy ClusterFirst); None: the node's resolv.conf
    cluster_domain: str = "cluster.local"
    housekeeping_interval: float = 10.0  # seconds between two readings of the containers' resource use


class Kubelet:
    def __init__(self, client: ApiClient, options: KubeletOptions) -> None:
        self.client = client
        self.options = options
        self.runtime = EngineRuntime(options.engine)
        self.identity = NodeIdentity(options.node_name, options.node_ip or default_address(),
                                     pod_cidr=options.pod_cidr)
        self.registration = NodeRegistration(client, self.identity)
        self.pods = Informer(client, PODS, field_selector=f"spec.nodeName={options.node_name}")
        self.work = WorkQueue(f"kubelet-{options.node_name}", base_delay=0.2, max_delay=30.0, qps=50, burst=200)
        self.events = EventRecorder(client, "kubelet")
        self.prober = Prober(self.runtime, self.work.add)
        self.volumes = PodVolumes(options.data_dir / "pods", {})
        self.syncer: PodSyncer | None = None
        self.pod_network = PodNetwork(client, self.runtime, options.node_name, options.pod_cidr)
        self.server: KubeletServer | None = None
        if options.serving is not None:
            self.server = KubeletServer(self.runtime, options.node_name, self.identity.address,
                                        lambda namespace, name: self.pods.get_by_key(f"{namespace}/{name}"),
                                        options.serving, options.data_dir, self.pods.list,
                                        options.housekeeping_interval)
        self._tasks: list[asyncio.Task[Any]] = []

    # --- life ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the node (the engine must answer), then run everything in the background."""
        options = self.options
        options.data_dir.mkdir(parents=True, exist_ok=True)
        await self.runtime.connect(options.engine_wait)
        self.identity.engine_version = runtime_version(await self.runtime.version())
        allocatable = self.identity.capacity()
        self.volumes.node_allocatable = allocatable
        self.syncer = PodSyncer(self.client, self.runtime, self.volumes, self.prober, self.events,
                                SyncOptions(options.node_name, self.identity.address, options.pause_image,
                                            options.pause_command, options.backoff_base, options.backoff_max,
                                            allocatable, network=lambda: self.pod_network.network,
                                            cluster_dns=options.cluster_dns, cluster_domain=options.cluster_domain),
                                partial(api_lookup, self.client), self._requeue)
        if self.server is not None:  # before registering: the Node publishes its port
            await self.server.start()
            self.identity.kubelet_port = self.server.port
        await self.registration.register(True, "kubelet is posting ready status")
        await self.pod_network.start()  # waits a moment for the pod CIDR the Node's creation asks IPAM for
        self.pods.on_add(lambda pod: self.work.add(_key(pod)))
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_deleted)
        self.pods.start()
        self.runtime.watch_events(asyncio.get_running_loop(), self._engine_event,
                                  {naming.NODE_NAME: options.node_name})
        self._tasks = [asyncio.create_task(self._heartbeat(), name="kubelet-heartbeat"),
                       asyncio.create_task(self._housekeeping(), name="kubelet-housekeeping")]
        self._tasks += [asyncio.create_task(self._worker(), name=f"kubelet-worker-{i}")
                        for i in range(options.workers)]
        await self.pods.wait_synced()

    async def stop(self) -> None:
        """Stop the agent; the pods' containers keep running (a restarted agent finds them)."""
        self.work.shutdown()
        self.prober.stop()
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self.server is not None:
            await self.server.stop()
        await self.pod_network.stop()
        await self.pods.stop()
        await asyncio.to_thread(self.runtime.close)

    # --- node ---------------------------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        last_status = loop.time()
        while True:
            await asyncio.sleep(self.options.lease_interval)
            try:
                await self.registration.renew_lease()
                ready = await self.runtime.ping()
                if ready != self.registration.ready or loop.time() - last_status >= self.options.status_interval:
                    message = "kubelet is posting ready status" if ready else \
                        "container runtime is down: the engine does not answer"
                    await self.registration.update_status(ready, message)
                    last_status = loop.time()
            except (SkiffError, *_TRANSIENT) as exc:
                log.warning("node %s: heartbeat failed: %s", self.options.node_name, exc)

    # --- pods ---------------------------------------------------------------------------------------------------

    def _requeue(self, key: str, delay: float) -> None:
        self.work.add_after(key, delay)

    def _pod_updated(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """A change of the pod's spec or metadata is work; a change of its status alone is (mostly) our own
        write coming back, and syncing on it would hide short-lived states such as ErrImagePull."""
        if old.get("spec") != new.get("spec") or _watched_metadata(old) != _watched_metadata(new):
            self.work.add(_key(new))

    def _pod_deleted(self, pod: dict[str, Any]) -> None:
        """The pod is gone from the API (its deletion confirmed, or forced): nothing of it may keep running."""
        task = asyncio.get_running_loop().create_task(self._remove_orphans(pod["metadata"]["uid"]))
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _remove_orphans(self, uid: str) -> None:
        assert self.syncer is not None
        try:
            await self.syncer.remove_orphans(uid)
        except (SkiffError, *_TRANSIENT) as exc:
            log.warning("removing the containers of deleted pod %s: %s", uid, exc)

    def _engine_event(self, event: dict[str, Any]) -> None:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        namespace, name = attributes.get(naming.POD_NAMESPACE), attributes.get(naming.POD_NAME)
        if namespace and name and event.get("status", event.get("Action")) in ("die", "oom", "start", "destroy"):
            self.work.add(f"{namespace}/{name}")

    async def _worker(self) -> None:
        assert self.syncer is not None
        while True:
            try:
                key = await self.work.get()
            except ShutDown:
                return
            try:
                pod = self.pods.get_by_key(key)
                if pod is not None:
                    await self.syncer.sync(pod)
                self.work.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one pod's failure must not stop the node's other pods
                log.log(logging.INFO if isinstance(exc, (SkiffError, *_TRANSIENT)) else logging.ERROR,
                        "pod %s: sync failed: %s", key, exc, exc_info=not isinstance(exc, (SkiffError, *_TRANSIENT)))
                self.work.add_rate_limited(key)
            finally:
                self.work.done(key)

    async def _housekeeping(self) -> None:
        assert self.syncer is not None
        while True:
            await asyncio.sleep(self.options.resync_interval)
            try:
                await self.housekeep()
            except (SkiffError, *_TRANSIENT) as exc:
                log.info("housekeeping: %s", exc)

    async def housekeep(self) -> None:
        """Resync every pod; remove what is left of pods the API no longer has."""
        assert self.syncer is not None
        await pause.provide(self.runtime, self.options.pause_image)  # again, should someone have removed it
        known = {pod["metadata"]["uid"] for pod in self.pods.list()}
        for key in self.pods.keys():  # noqa: SIM118 - an Informer is not a dict
            self.work.add(key)
        if not self.pods.has_synced:
            return
        ours = await self.runtime.containers({naming.NODE_NAME: self.options.node_name})
        for uid in {c.labels.get(naming.POD_UID, "") for c in ours} - known - {""}:
            await self.syncer.remove_orphans(uid)
        for uid in set(self.volumes.known_pods()) - known:
            self.volumes.cleanup(uid)


def _watched_metadata(pod: dict[str, Any]) -> tuple[Any, ...]:
    meta = pod["metadata"]
    return meta.get("deletionTimestamp"), meta.get("labels"), meta.get("annotations"), meta.get("uid")


def _key(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"
