"""The pod status a sync reports: phase, conditions, containerStatuses, podIP, hostIP, qosClass, startTime.

Computed from what the engine says about the pod's containers (the latest instance of each, and the one
before it for ``lastState``), the reasons the sync noted for containers that wait (ErrImagePull,
CrashLoopBackOff, ...) and the probes' results. A condition whose status did not change keeps its
lastTransitionTime, so rewriting the status changes nothing a watcher would notice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.kubelet.node import now
from skiff.cluster.kubelet.runtime import EngineContainer, normalize_image

Obj = dict[str, Any]
CONTAINER_ID_PREFIX = "skiff://"


@dataclass
class Waiting:
    reason: str
    message: str = ""


@dataclass
class ContainerView:
    """One spec container as the sync sees it: its latest engine instance, the previous one, and why it waits."""

    spec: Obj
    latest: EngineContainer | None = None
    previous: EngineContainer | None = None
    waiting: Waiting | None = None
    ready: bool = False
    started: bool = False

    @property
    def name(self) -> str:
        return self.spec.get("name") or ""

    @property
    def succeeded(self) -> bool:
        return self.latest is not None and not self.latest.running and self.latest.state != "created" \
            and self.latest.exit_code == 0

    @property
    def terminated(self) -> bool:
        return self.latest is not None and not self.latest.running


@dataclass
class PodView:
    pod: Obj
    host_ip: str
    pod_ip: str = ""
    sandbox_running: bool = False
    init: list[ContainerView] = field(default_factory=list)
    containers: list[ContainerView] = field(default_factory=list)

    @property
    def restart_policy(self) -> str:
        return (self.pod.get("spec") or {}).get("restartPolicy") or "Always"

    @property
    def initialized(self) -> bool:
        return all(view.succeeded for view in self.init)

    @property
    def init_failed(self) -> bool:
        return self.restart_policy == "Never" and any(v.terminated and not v.succeeded for v in self.init)


def terminated_state(container: EngineContainer) -> Obj:
    if container.oom_killed:
        reason = "OOMKilled"
    elif container.state == "created":
        reason = "StartError"
    else:
        reason = "Completed" if container.exit_code == 0 else "Error"
    state: Obj = {"exitCode": container.exit_code, "reason": reason,
                  "containerID": CONTAINER_ID_PREFIX + container.id}
    if container.error:
        state["message"] = container.error
    state["startedAt"] = container.started_at or None
    state["finishedAt"] = container.finished_at or None
    return state


def container_status(view: ContainerView) -> Obj:
    latest = view.latest
    status: Obj = {"name": view.name, "image": view.spec.get("image") or "", "imageID": "",
                   "ready": False, "started": False, "restartCount": latest.attempt if latest else 0,
                   "lastState": {}}
    if latest is not None:
        status["containerID"] = CONTAINER_ID_PREFIX + latest.id
        status["imageID"] = latest.image_id
        status["image"] = normalize_image(view.spec.get("image") or latest.image)
    if view.previous is not None and not view.previous.running:
        status["lastState"] = {"terminated": terminated_state(view.previous)}
    if latest is not None and latest.running:
        status["state"] = {"running": {"startedAt": latest.started_at or now()}}
        status["ready"] = view.ready
        status["started"] = view.started
    elif view.waiting is not None:
        waiting: Obj = {"reason": view.waiting.reason}
        if view.waiting.message:
            waiting["message"] = view.waiting.message
        status["state"] = {"waiting": waiting}
        if latest is not None:
            status["lastState"] = {"terminated": terminated_state(latest)}
    elif latest is not None:
        status["state"] = {"terminated": terminated_state(latest)}
    else:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return status


def phase(view: PodView) -> str:
    """kube's getPhase, for the pod's regular containers (init containers keep it Pending)."""
    policy = view.restart_policy
    if view.init_failed:
        return "Failed"
    if not view.initialized:
        return "Pending"
    running = stopped = succeeded = waiting = 0
    for c in view.containers:
        if c.latest is not None and c.latest.running:
            running += 1
        elif c.latest is not None:  # exited, or "created" and never started (the agent starts what it creates)
            stopped += 1
            succeeded += c.succeeded
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if policy == "Always":
        return "Running"  # every container is being restarted
    if succeeded == stopped:
        return "Succeeded"
    return "Failed" if policy == "Never" else "Running"


def qos_class(pod: Obj) -> str:
    """kube's QoS class: BestEffort without requests or limits; Guaranteed when every container's CPU and memory
    limits are set and its requests (if any) equal them; Burstable otherwise."""
    spec = pod.get("spec") or {}
    resources = [c.get("resources") or {} for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        requests, limits = r.get("requests") or {}, r.get("limits") or {}
        for name in ("cpu", "memory"):
            if limits.get(name) is None or requests.get(name, limits[name]) != limits[name]:
                return "Burstable"
    return "Guaranteed"


def _condition(kind: str, ok: bool, previous: dict[str, Obj], reason: str = "") -> Obj:
    status = "True" if ok else "False"
    old = previous.get(kind) or {}
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    condition: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since or now()}
    if not ok and reason:
        condition["reason"] = reason
    return condition


def pod_status(view: PodView) -> Obj:
    """The whole status the kubelet owns (merge-patched over what the API server holds)."""
    pod = view.pod
    current = pod.get("status") or {}
    previous = {c.get("type"): c for c in current.get("conditions") or ()}
    current_phase = phase(view)
    terminal = current_phase in ("Succeeded", "Failed")
    init_statuses = [container_status(v) for v in view.init]
    statuses = [container_status(v) for v in view.containers]
    containers_ready = all(s["ready"] for s in statuses) and not terminal
    not_ready = [s["name"] for s in statuses if not s["ready"]]
    not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", view.sandbox_running, previous),
        _condition("Initialized", view.initialized, previous,
                   "PodCompleted" if terminal else "ContainersNotInitialized"),
        _condition("Ready", containers_ready, previous, not_ready_reason),
        _condition("ContainersReady", containers_ready, previous, not_ready_reason),
        {**(previous.get("PodScheduled") or {"lastProbeTime": None, "lastTransitionTime": now()}),
         "type": "PodScheduled", "status": "True"},
    ]
    for condition in conditions:
        if condition["type"] in ("Ready", "ContainersReady") and condition["status"] == "False" and not terminal:
            condition["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
    pod_ip = view.pod_ip or current.get("podIP") or ""
    status: Obj = {"phase": current_phase, "conditions": conditions, "hostIP": view.host_ip,
                   "hostIPs": [{"ip": view.host_ip}], "startTime": current.get("startTime") or now(),
                   "containerStatuses": statuses, "qosClass": qos_class(pod)}
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if pod_ip:
        status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
    return status


def differs(current: Obj, wanted: Obj) -> bool:
    """Whether writing ``wanted`` would change ``current`` (heartbeat-like fields are not compared)."""
    return any(current.get(key) != value for key, value in wanted.items())
