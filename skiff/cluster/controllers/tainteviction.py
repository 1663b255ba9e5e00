"""The taint eviction controller (kube's TaintEvictionController, once the node lifecycle's "taint manager"):
pods on a node with ``NoExecute`` taints they do not tolerate are deleted.

For each pod on a node, the node's NoExecute taints are matched against the pod's tolerations as kube's
``GetMatchingTolerations`` does (each taint takes the first toleration that tolerates it):

* a taint no toleration tolerates: the pod is deleted at once;
* all tolerated, some of the tolerations used carry ``tolerationSeconds``: the pod is deleted when the
  smallest of them has passed since this controller first saw it tolerating them (a timer per pod: the
  work queue's ``add_after``); the timer is dropped when the taints go away (a node that recovers keeps
  its pods);
* all tolerated forever: nothing.

Before deleting, the pod gets the ``DisruptionTarget`` condition (reason ``DeletionByTaintManager``) and a
``TaintManagerEviction`` event, as in kube. The deletion uses the pod's own grace period; on a dead node the
pod then stays Terminating until its kubelet comes back and confirms it (or the Node is deleted), which is
kube's behaviour too; its ReplicaSet counts it as gone and replaces it at once.

Times are measured on this process's monotonic clock from when it first saw the taint, as kube does: a
restarted controller starts the timers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from skiff.cluster.client import NODES, PODS, ApiClient, ApiStatusError, Controller, Informer, object_key
from skiff.cluster.client.informer import SharedInformers
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.objects import Obj, is_deleting, now_rfc3339

log = logging.getLogger(__name__)
NODE_INDEX = "spec.nodeName"


# --- decisions (pure) -------------------------------------------------------------------------------------------

def tolerates(toleration: Obj, taint: Obj) -> bool:
    """kube's Toleration.ToleratesTaint: an empty effect or key matches any; Exists ignores the value."""
    effect, key = toleration.get("effect") or "", toleration.get("key") or ""
    if effect and effect != (taint.get("effect") or ""):
        return False
    if key and key != (taint.get("key") or ""):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def no_execute_taints(node: Obj | None) -> list[Obj]:
    if node is None:
        return []
    return [t for t in (node.get("spec") or {}).get("taints") or () if t.get("effect") == "NoExecute"]


def eviction_delay(taints: Iterable[Obj], tolerations: Iterable[Obj]) -> float | None:
    """Seconds after which a pod with ``tolerations`` must leave a node with ``taints`` (only the NoExecute
    ones count): 0 for at once, None for never."""
    tolerations = list(tolerations)
    used: list[Obj] = []
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        match = next((t for t in tolerations if tolerates(t, taint)), None)
        if match is None:
            return 0.0
        used.append(match)
    seconds = [t["tolerationSeconds"] for t in used if t.get("tolerationSeconds") is not None]
    if not seconds:
        return None  # no NoExecute taint, or every one tolerated forever
    return max(0.0, float(min(seconds)))


def index_pods_by_node(pods: Informer) -> None:
    """``by_index(NODE_INDEX, node)``: the pods bound to a node (shared by the controllers that need it)."""
    if not pods.has_index(NODE_INDEX):
        pods.add_index(NODE_INDEX, lambda pod: [name] if (name := (pod.get("spec") or {}).get("nodeName")) else [])


def _taint_set(taints: Iterable[Obj]) -> set[tuple[str, str, str]]:
    return {(t.get("key") or "", t.get("value") or "", t.get("effect") or "") for t in taints}


# --- the controller -------------------------------------------------------------------------------------------

class TaintEvictionController(Controller):
    name = "taint-eviction-controller"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.nodes = informers.informer(NODES)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.nodes, self.pods])
        index_pods_by_node(self.pods)
        self.events = EventRecorder(client, "taint-eviction-controller")
        self._since: dict[str, float] = {}  # pod key -> when it was first seen tolerating its node's taints
        self.nodes.on_add(lambda node: self._node_taints_changed(node) if no_execute_taints(node) else None)
        self.nodes.on_update(self._node_updated)
        self.nodes.on_delete(self._node_taints_changed)
        self.pods.on_add(self._pod_added)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(lambda pod: self._since.pop(object_key(pod), None))

    def _node_updated(self, old: Obj, new: Obj) -> None:
        if _taint_set(no_execute_taints(old)) != _taint_set(no_execute_taints(new)):
            self._node_taints_changed(new)

    def _node_taints_changed(self, node: Obj) -> None:
        for pod in self.pods.by_index(NODE_INDEX, node["metadata"]["name"]):
            self.enqueue(object_key(pod))

    def _pod_added(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName"):
            self.enqueue(object_key(pod))

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        if (old_spec.get("nodeName") != new_spec.get("nodeName")
                or old_spec.get("tolerations") != new_spec.get("tolerations")
                or is_deleting(old) != is_deleting(new)):
            self.enqueue(object_key(new))

    async def sync(self, key: str) -> None:
        pod = self.pods.get_by_key(key)
        if pod is None or is_deleting(pod):
            self._since.pop(key, None)
            return
        node_name = (pod.get("spec") or {}).get("nodeName")
        node = self.nodes.get(None, node_name) if node_name else None
        delay = eviction_delay(no_execute_taints(node), (pod.get("spec") or {}).get("tolerations") or ())
        if delay is None:
            self._since.pop(key, None)  # the taints went away (or are tolerated forever): the timer is cancelled
            return
        now = asyncio.get_running_loop().time()
        remaining = self._since.setdefault(key, now) + delay - now
        if remaining > 0:
            self.queue.add_after(key, remaining)
            return
        await self._evict(pod)
        self._since.pop(key, None)

    async def _evict(self, pod: Obj) -> None:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        log.info("taint eviction: deleting pod %s/%s from node %s", namespace, name, pod["spec"].get("nodeName"))
        self.events.normal(pod, "TaintManagerEviction", f"Marking for deletion Pod {namespace}/{name}")
        conditions = [c for c in (pod.get("status") or {}).get("conditions") or ()
                      if c.get("type") != "DisruptionTarget"]
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                           "message": "Taint manager: deleting due to NoExecute taint",
                           "lastTransitionTime": now_rfc3339()})
        try:
            # the resourceVersion makes it a compare-and-swap: a status written meanwhile is not clobbered
            await self.client.patch(PODS, name, {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                                 "status": {"conditions": conditions}},
                                    namespace=namespace, subresource="status")
            await self.client.delete(PODS, name, namespace, preconditions={"uid": meta["uid"]})
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
