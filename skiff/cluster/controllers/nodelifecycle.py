"""The node lifecycle controller (kube's nodelifecycle.Controller): notices nodes that stopped heartbeating
and taints nodes by their conditions, so that the scheduler avoids them and the taint eviction controller
(``tainteviction.py``) moves their pods away.

*Health.* A node is heard from when its Lease in ``kube-node-lease`` is renewed or its Ready condition's
``lastHeartbeatTime`` changes; the time is this process's clock at that observation (as in kube, so clock
skew between machines does not matter, and a freshly started controller gives every node a full grace
period). Every ``node_monitor_period`` seconds the controller looks at every node: one not heard from for
``node_monitor_grace_period`` seconds (``node_startup_grace_period`` if it never posted a Ready condition)
gets Ready, MemoryPressure, DiskPressure and PIDPressure set to ``Unknown`` (reason ``NodeStatusUnknown``,
"Kubelet stopped posting node status.") through ``nodes/status``; kubectl then shows it NotReady. The
pods on it get their Ready condition set False (kube's MarkPodsNotReady) and the node a ``NodeNotReady``
event.

*Taints.* ``NoSchedule`` taints follow the conditions at once (kube's TaintNodesByCondition): Ready False
→ ``node.kubernetes.io/not-ready``, Ready Unknown → ``node.kubernetes.io/unreachable``, MemoryPressure /
DiskPressure / PIDPressure / NetworkUnavailable True → ``memory-pressure`` / ``disk-pressure`` /
``pid-pressure`` / ``network-unavailable``, ``spec.unschedulable`` → ``unschedulable``. ``NoExecute``
taints (not-ready or unreachable, the same rule for Ready) are what evicts pods, so adding them is rate
limited per zone (``topology.kubernetes.io/region``/``zone`` labels) as in kube: ``node_eviction_rate``
nodes a second (burst 1) while the zone is healthy or wholly down; when at least 3 and
``unhealthy_zone_threshold`` of its nodes are not Ready, ``secondary_node_eviction_rate`` if the zone has
more than ``large_cluster_size_threshold`` nodes, else none; when every zone is wholly down the controller
assumes it is cut off itself and removes NoExecute taints everywhere instead. Swapping not-ready for
unreachable and removing taints are never delayed. Taints owned by nobody else are left as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from skiff.cluster.client import LEASES, NODES, PODS, ApiClient, ApiStatusError, Controller, TokenBucket
from skiff.cluster.client.informer import SharedInformers
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.objects import Obj, now_rfc3339
from skiff.cluster.controllers.options import ControllerOptions
from skiff.cluster.controllers.tainteviction import NODE_INDEX, index_pods_by_node

log = logging.getLogger(__name__)
LEASE_NAMESPACE = "kube-node-lease"
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
# kube's nodeConditionToTaintKeyStatusMap: the NoSchedule taint a condition in a given status calls for
CONDITION_TAINTS = {
    ("Ready", "False"): NOT_READY,
    ("Ready", "Unknown"): UNREACHABLE,
    ("MemoryPressure", "True"): "node.kubernetes.io/memory-pressure",
    ("DiskPressure", "True"): "node.kubernetes.io/disk-pressure",
    ("PIDPressure", "True"): "node.kubernetes.io/pid-pressure",
    ("NetworkUnavailable", "True"): "node.kubernetes.io/network-unavailable",
}
NO_SCHEDULE_KEYS = frozenset([*CONDITION_TAINTS.values(), UNSCHEDULABLE])
NO_EXECUTE_KEYS = frozenset([NOT_READY, UNREACHABLE])
MONITORED_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


# --- decisions (pure) -------------------------------------------------------------------------------------------

def condition(node: Obj, kind: str) -> Obj | None:
    for c in (node.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return c
    return None


def ready_status(node: Obj) -> str | None:
    """"True", "False", "Unknown", or None when the node never posted a Ready condition."""
    ready = condition(node, "Ready")
    return None if ready is None else ready.get("status") or "Unknown"


def stale_conditions(node: Obj, now: str) -> list[Obj]:
    """The node's conditions once it is known to have stopped posting status (kube's tryUpdateNodeHealth):
    the monitored ones Unknown, their heartbeats kept; missing ones added as never updated."""
    conditions = [dict(c) for c in (node.get("status") or {}).get("conditions") or ()]
    created = node["metadata"].get("creationTimestamp") or now
    for kind in MONITORED_CONDITIONS:
        current = next((c for c in conditions if c.get("type") == kind), None)
        if current is None:
            conditions.append({"type": kind, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                               "message": "Kubelet never posted node status.", "lastHeartbeatTime": created,
                               "lastTransitionTime": now})
        elif current.get("status") != "Unknown":
            current.update(status="Unknown", reason="NodeStatusUnknown",
                           message="Kubelet stopped posting node status.", lastTransitionTime=now)
    return conditions


def no_schedule_taints(node: Obj) -> list[Obj]:
    """The NoSchedule taints the node's conditions and ``spec.unschedulable`` call for."""
    keys = {CONDITION_TAINTS[(c.get("type"), c.get("status"))]
            for c in (node.get("status") or {}).get("conditions") or ()
            if (c.get("type"), c.get("status")) in CONDITION_TAINTS}
    if (node.get("spec") or {}).get("unschedulable"):
        keys.add(UNSCHEDULABLE)
    return [{"key": key, "effect": "NoSchedule"} for key in sorted(keys)]


def no_execute_key(ready: str | None) -> str | None:
    """The NoExecute taint a Ready condition in this status calls for."""
    return {"False": NOT_READY, "Unknown": UNREACHABLE}.get(ready or "")


def owned(taint: Obj) -> bool:
    """Whether this controller manages ``taint`` (it never touches anyone else's)."""
    effect, key = taint.get("effect"), taint.get("key")
    return (effect == "NoSchedule" and key in NO_SCHEDULE_KEYS) or (effect == "NoExecute" and key in NO_EXECUTE_KEYS)


def merge_taints(current: Iterable[Obj], no_schedule: Iterable[Obj], no_execute: str | None, now: str) -> list[Obj]:
    """``current`` with this controller's taints replaced by ``no_schedule`` and the ``no_execute`` key (taints
    already there are kept as they are, ``timeAdded`` included)."""
    current = list(current)
    mine = {(t.get("key"), t.get("effect")): t for t in current if owned(t)}
    taints = [t for t in current if not owned(t)]
    taints += [mine.get((t["key"], "NoSchedule"), t) for t in no_schedule]
    if no_execute is not None:
        taints.append(mine.get((no_execute, "NoExecute")) or {"key": no_execute, "effect": "NoExecute",
                                                             "timeAdded": now})
    return taints


def same_taints(a: Iterable[Obj], b: Iterable[Obj]) -> bool:
    def key(t: Obj) -> tuple[str, str, str]:
        return t.get("key") or "", t.get("value") or "", t.get("effect") or ""
    return sorted(map(key, a)) == sorted(map(key, b))


class ZoneState(enum.Enum):
    NORMAL = "Normal"
    PARTIAL_DISRUPTION = "PartialDisruption"
    FULL_DISRUPTION = "FullDisruption"


def zone_of(node: Obj) -> str:
    labels = node["metadata"].get("labels") or {}
    region = labels.get("topology.kubernetes.io/region") or labels.get("failure-domain.beta.kubernetes.io/region")
    zone = labels.get("topology.kubernetes.io/zone") or labels.get("failure-domain.beta.kubernetes.io/zone")
    return f"{region or ''}/{zone or ''}" if region or zone else ""


def zone_state(ready: int, not_ready: int, unhealthy_threshold: float) -> ZoneState:
    """kube's ComputeZoneState."""
    if ready == 0 and not_ready > 0:
        return ZoneState.FULL_DISRUPTION
    if not_ready > 2 and not_ready / (ready + not_ready) >= unhealthy_threshold:
        return ZoneState.PARTIAL_DISRUPTION
    return ZoneState.NORMAL


def tainting_rate(state: ZoneState, zone_size: int, options: ControllerOptions) -> float:
    """Nodes a second that may get NoExecute taints in a zone in ``state`` (kube's setLimiterInZone)."""
    if state is ZoneState.PARTIAL_DISRUPTION:
        return options.secondary_node_eviction_rate if zone_size > options.large_cluster_size_threshold else 0.0
    return options.node_eviction_rate


# --- the controller -------------------------------------------------------------------------------------------

@dataclass
class Probe:
    """When a node was last heard from (loop time), and the heartbeats that showed it."""

    at: float
    heartbeat: str | None = None  # the Ready condition's lastHeartbeatTime
    renewed: str | None = None  # the Lease's renewTime


class NodeLifecycleController(Controller):
    name = "nodelifecycle"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers, options: ControllerOptions | None = None) -> None:
        self.options = options or ControllerOptions()
        self.nodes = informers.informer(NODES)
        self.leases = informers.informer(LEASES, LEASE_NAMESPACE)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.nodes, self.leases, self.pods])
        index_pods_by_node(self.pods)
        self.events = EventRecorder(client, "node-controller")
        self._probes: dict[str, Probe] = {}
        self._zone_states: dict[str, ZoneState] = {}
        self._zone_sizes: dict[str, int] = {}
        self._all_disrupted = False
        self._buckets: dict[str, TokenBucket] = {}  # zone -> its NoExecute tainting rate limiter
        self._taint_at: dict[str, float] = {}  # node -> the loop time its reserved tainting turn comes
        self._mark_pods: set[str] = set()  # nodes whose pods still have to be marked not Ready
        self.nodes.on_add(self._node_seen)
        self.nodes.on_update(lambda _old, new: self._node_seen(new))
        self.nodes.on_delete(self._node_deleted)
        self.leases.on_add(self._lease_seen)
        self.leases.on_update(lambda _old, new: self._lease_seen(new))

    # --- hearing from nodes --------------------------------------------------------------------------------

    def _heard(self, name: str, heartbeat: str | None = None, renewed: str | None = None) -> None:
        now = asyncio.get_running_loop().time()
        probe = self._probes.get(name)
        if probe is None:
            self._probes[name] = Probe(now, heartbeat, renewed)
            return
        if heartbeat is not None and heartbeat != probe.heartbeat:
            probe.heartbeat, probe.at = heartbeat, now
        if renewed is not None and renewed != probe.renewed:
            probe.renewed, probe.at = renewed, now

    def _node_seen(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        self._heard(name, heartbeat=(condition(node, "Ready") or {}).get("lastHeartbeatTime"))
        self.enqueue(name)

    def _lease_seen(self, lease: Obj) -> None:
        self._heard(lease["metadata"]["name"], renewed=(lease.get("spec") or {}).get("renewTime"))

    def _node_deleted(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        self._probes.pop(name, None)
        self._taint_at.pop(name, None)
        self._mark_pods.discard(name)

    def _is_stale(self, node: Obj, now: float) -> bool:
        name = node["metadata"]["name"]
        probe = self._probes.setdefault(name, Probe(now))
        grace = (self.options.node_monitor_grace_period if condition(node, "Ready") is not None
                 else self.options.node_startup_grace_period)
        return now > probe.at + grace

    # --- the monitor: every node, every node_monitor_period ---------------------------------------------------

    async def run(self) -> None:
        monitor = asyncio.create_task(self._monitor_forever(), name="nodelifecycle-monitor")
        try:
            await super().run()
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _monitor_forever(self) -> None:
        await asyncio.gather(*(informer.wait_synced() for informer in self.informers))
        while True:
            await asyncio.sleep(self.options.node_monitor_period)
            try:
                self.monitor()
            except Exception:  # a bug here must not stop the monitoring for good
                log.exception("nodelifecycle: monitoring nodes failed")

    def monitor(self) -> None:
        """Queue the nodes whose health changed, and recompute the zones' states from it (as kube's
        monitorNodeHealth does before any tainting, so a zone going down is known before its nodes are)."""
        now = asyncio.get_running_loop().time()
        counts: dict[str, list[int]] = {}
        not_ready: dict[str, list[str]] = {}
        for node in self.nodes.list():
            name, zone = node["metadata"]["name"], zone_of(node)
            stale = self._is_stale(node, now)
            ready = not stale and ready_status(node) == "True"
            counts.setdefault(zone, [0, 0])[0 if ready else 1] += 1
            if not ready:
                not_ready.setdefault(zone, []).append(name)
            if (stale and _needs_unknown(node)) or name in self._mark_pods:
                self.enqueue(name)
        states = {zone: zone_state(ready, down, self.options.unhealthy_zone_threshold)
                  for zone, (ready, down) in counts.items()}
        all_disrupted = bool(states) and all(s is ZoneState.FULL_DISRUPTION for s in states.values())
        changed = [zone for zone, state in states.items() if self._zone_states.get(zone) is not state]
        if all_disrupted != self._all_disrupted:
            log.warning("nodelifecycle: %s", "every zone is down: no NoExecute taints until one recovers"
                        if all_disrupted else "a zone is up again: NoExecute tainting resumes")
            changed = list(states)
            self._buckets.clear()
        for zone in changed:
            log.info("nodelifecycle: zone %r is %s", zone, states[zone].value)
            self._buckets.pop(zone, None)  # its rate may differ now
        self._zone_states, self._all_disrupted = states, all_disrupted
        self._zone_sizes = {zone: ready + down for zone, (ready, down) in counts.items()}
        for zone in changed:
            for name in not_ready.get(zone, ()):
                self.enqueue(name)

    # --- one node ------------------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        node = self.nodes.get(None, key)
        if node is None:
            return
        loop = asyncio.get_running_loop()
        if self._is_stale(node, loop.time()):
            node = await self._mark_unknown(node)
        await self._update_taints(node)  # first: the taints are what protects the pods
        if key in self._mark_pods:
            if ready_status(node) != "True":
                await self._mark_pods_not_ready(key)
            self._mark_pods.discard(key)

    async def _mark_unknown(self, node: Obj) -> Obj:
        name = node["metadata"]["name"]
        if not _needs_unknown(node):
            return node
        conditions = stale_conditions(node, now_rfc3339())
        was_ready = ready_status(node) == "True"
        log.info("nodelifecycle: node %s stopped posting status: marking it Unknown", name)
        node = await self.client.patch(NODES, name, {"metadata": {"resourceVersion": node["metadata"]
                                                                  ["resourceVersion"]},
                                                     "status": {"conditions": conditions}}, subresource="status")
        if was_ready:
            self.events.normal(node, "NodeNotReady", f"Node {name} status is now: NodeNotReady")
            self._mark_pods.add(name)
        return node

    async def _mark_pods_not_ready(self, name: str) -> None:
        """Every pod on the node: Ready False (kube's MarkPodsNotReady), so Services stop sending them traffic."""
        await asyncio.gather(*(self._mark_pod_not_ready(pod) for pod in self.pods.by_index(NODE_INDEX, name)))

    async def _mark_pod_not_ready(self, pod: Obj) -> None:
        conditions = (pod.get("status") or {}).get("conditions") or ()
        if not any(c.get("type") == "Ready" and c.get("status") != "False" for c in conditions):
            return
        now = now_rfc3339()
        conditions = [{**c, "status": "False", "lastTransitionTime": now} if c.get("type") == "Ready" else c
                      for c in conditions]
        meta = pod["metadata"]
        try:
            # the resourceVersion makes it a compare-and-swap: a status the kubelet wrote meanwhile wins
            await self.client.patch(PODS, meta["name"], {"metadata": {"resourceVersion": meta["resourceVersion"]},
                                                         "status": {"conditions": conditions}},
                                    namespace=meta.get("namespace"), subresource="status")
        except ApiStatusError as exc:
            if exc.not_found:
                return
            raise
        self.events.warning(pod, "NodeNotReady", "Node is not ready")

    async def _update_taints(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        current = (node.get("spec") or {}).get("taints") or []
        wanted = no_execute_key(ready_status(node))
        have = {t.get("key") for t in current if t.get("effect") == "NoExecute" and t.get("key") in NO_EXECUTE_KEYS}
        if wanted is None or self._all_disrupted:
            self._taint_at.pop(name, None)
            wanted = None
        elif wanted not in have and not have and not self._may_taint_now(node):
            wanted = None  # its turn comes later (the sync is queued for it); a swap of the two keys never waits
        taints = merge_taints(current, no_schedule_taints(node), wanted, now_rfc3339())
        if same_taints(taints, current):
            return
        log.info("nodelifecycle: node %s taints: %s", name,
                 ", ".join(f"{t['key']}:{t['effect']}" for t in taints if owned(t)) or "none of ours")
        await self.client.patch(NODES, name, {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                                              "spec": {"taints": taints}})

    def _may_taint_now(self, node: Obj) -> bool:
        """Whether the node's zone lets one more node be given a NoExecute taint now; if not, its sync is
        queued for when it may (a reserved turn is kept across syncs)."""
        name, zone = node["metadata"]["name"], zone_of(node)
        now = asyncio.get_running_loop().time()
        turn = self._taint_at.get(name)
        if turn is None:
            rate = tainting_rate(self._zone_states.get(zone, ZoneState.NORMAL), self._zone_sizes.get(zone, 1),
                                 self.options)
            if rate <= 0:
                self.queue.add_after(name, self.options.node_monitor_period)
                return False
            bucket = self._buckets.get(zone)
            if bucket is None or bucket.qps != rate:
                bucket = self._buckets[zone] = TokenBucket(rate, 1)
            turn = self._taint_at[name] = now + bucket.reserve()
        if turn > now:
            self.queue.add_after(name, turn - now)
            return False
        del self._taint_at[name]
        return True


def _needs_unknown(node: Obj) -> bool:
    """Whether marking the node as silent would change its conditions (it has not been marked yet)."""
    return any((c := condition(node, kind)) is None or c.get("status") != "Unknown" for kind in MONITORED_CONDITIONS)
