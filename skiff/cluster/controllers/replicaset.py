"""The ReplicaSet controller: keeps ``spec.replicas`` pods matching each ReplicaSet's selector alive.

kube's replica_set.go, step for step. A sync of one ReplicaSet:

1. *Claims* its pods (``claims.py``): those whose controller reference names it; matching orphans in its
   namespace are adopted, owned pods that no longer match are released.
2. If its *expectations* are met (every pod it created or deleted earlier has been seen in the cache), it
   creates the missing pods, in slow-start batches of 1, 2, 4, ... (a failing batch stops the rest), at most
   ``BURST_REPLICAS`` per sync, or deletes the surplus, worst pods first: unscheduled, then pending, not
   ready, on crowded nodes, ready for less time, restarted more, newest.
3. Writes its status (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas,
   observedGeneration, the ReplicaFailure condition) when it changed.

Pods are named ``<replicaset>-<5 random characters>`` by the server (``generateName``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from skiff.cluster.client import PODS, REPLICASETS, ApiClient, ApiStatusError, Controller, object_key
from skiff.cluster.client.informer import SharedInformers, split_key
from skiff.cluster.client.selectors import matcher
from skiff.cluster.controllers.claims import claim, index_owned
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.expectations import Expectations
from skiff.cluster.controllers.objects import (
    Obj,
    controller_ref,
    is_deleting,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    labels_of,
    now_rfc3339,
    owner_reference,
    parse_time,
    restart_count,
)

log = logging.getLogger(__name__)
BURST_REPLICAS = 500  # kube's burstReplicas: at most this many creations or deletions per sync
STATUS_COALESCE = 0.5  # seconds: status refreshes while a batch of creations or deletions is being observed
_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class ReplicaSetController(Controller):
    name = "replicaset"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.replicasets = informers.informer(REPLICASETS)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.replicasets, self.pods])
        index_owned(self.pods)
        self.expectations = Expectations()
        self.events = EventRecorder(client, "replicaset-controller")
        self._matchers: dict[str, Any] = {}  # rs uid -> its selector's matcher (selectors are immutable)
        self.replicasets.on_add(lambda rs: self.enqueue(object_key(rs)))
        self.replicasets.on_update(self._replicaset_updated)
        self.replicasets.on_delete(self._replicaset_deleted)
        self.pods.on_add(self._pod_added)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_deleted)

    # --- event handlers: note which ReplicaSets need a sync ----------------------------------------------------

    def _replicaset_updated(self, old: Obj, new: Obj) -> None:
        self.enqueue(object_key(new))

    def _replicaset_deleted(self, rs: Obj) -> None:
        key = object_key(rs)
        self.expectations.forget(key)
        self._matchers.pop(rs["metadata"]["uid"], None)
        self.enqueue(key)

    def _owner_of(self, pod: Obj, ref: Obj | None = None) -> Obj | None:
        """The ReplicaSet a controller reference names, if it is in the cache (same uid)."""
        ref = ref if ref is not None else controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return None
        rs = self.replicasets.get(pod["metadata"].get("namespace"), ref.get("name", ""))
        return rs if rs is not None and rs["metadata"]["uid"] == ref.get("uid") else None

    def _matching_replicasets(self, pod: Obj) -> list[Obj]:
        labels = labels_of(pod)
        return [rs for rs in self.replicasets.list(pod["metadata"].get("namespace") or "")
                if self._matcher(rs)(labels)]

    def _pod_added(self, pod: Obj) -> None:
        if is_deleting(pod):
            self._pod_deleted(pod)  # a pod restored on restart may already be going
            return
        if (ref := controller_ref(pod)) is not None:
            rs = self._owner_of(pod, ref)
            if rs is not None:
                key = object_key(rs)
                self.expectations.creation_observed(key)
                self._enqueue_observed(key)
            return
        for rs in self._matching_replicasets(pod):
            self.enqueue(object_key(rs))

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion"):
            return
        labels_changed = labels_of(old) != labels_of(new)
        if is_deleting(new) and not is_deleting(old):
            self._pod_deleted(new)  # counts as deleted as soon as it starts going (graceful deletion)
            if labels_changed:
                self._pod_deleted(old)
            return
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref != new_ref and old_ref is not None and (rs := self._owner_of(old, old_ref)) is not None:
            self.enqueue(object_key(rs))
        if new_ref is not None:
            rs = self._owner_of(new, new_ref)
            if rs is not None:
                key = object_key(rs)
                self.enqueue(key)
                min_ready = int(rs["spec"].get("minReadySeconds") or 0)
                if min_ready > 0 and is_pod_ready(new) and not is_pod_ready(old):
                    self.queue.add_after(key, min_ready + 0.5)  # when it becomes available
            return
        if labels_changed or old_ref != new_ref:
            for rs in self._matching_replicasets(new):
                self.enqueue(object_key(rs))

    def _pod_deleted(self, pod: Obj) -> None:
        rs = self._owner_of(pod)
        if rs is not None:
            key = object_key(rs)
            self.expectations.deletion_observed(key, object_key(pod))
            self._enqueue_observed(key)

    def _enqueue_observed(self, key: str) -> None:
        """A pod this ReplicaSet created or deleted has been seen. The one that completes its expectations
        starts the next sync at once; those before it only change its status, so they are coalesced into
        one sync per ``STATUS_COALESCE`` seconds instead of one status write per pod of a batch of 500."""
        if self.expectations.satisfied(key):
            self.enqueue(key)
        else:
            self.queue.add_after(key, STATUS_COALESCE)

    def _matcher(self, rs: Obj) -> Any:
        uid = rs["metadata"]["uid"]
        found = self._matchers.get(uid)
        if found is None:
            # an empty selector selects nothing here (kube: a ReplicaSet must not adopt every pod)
            found = self._matchers[uid] = matcher(rs["spec"].get("selector"), empty_matches_all=False)
        return found

    # --- the sync ---------------------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        rs = self.replicasets.get(namespace, name)
        if rs is None:
            self.expectations.forget(key)
            return
        needs_sync = self.expectations.satisfied(key)
        started = time.perf_counter()
        pods = await claim(self.client, rs, REPLICASETS, self.pods, PODS, self._matcher(rs), is_pod_active)
        cost = time.perf_counter() - started
        manage_error: Exception | None = None
        if needs_sync and not is_deleting(rs):
            try:
                await self._manage_replicas(key, rs, pods)
            except ApiStatusError as exc:
                manage_error = exc
        started = time.perf_counter()
        status = self._status(rs, pods, manage_error)
        self.report_cost(key, cost + time.perf_counter() - started)
        updated = await self._update_status(rs, status)
        min_ready = int(rs["spec"].get("minReadySeconds") or 0)
        status = updated["status"]
        if (manage_error is None and min_ready > 0 and status.get("readyReplicas", 0) == _replicas(rs)
                and status.get("availableReplicas", 0) != _replicas(rs)):
            self.queue.add_after(key, min_ready)
        if manage_error is not None:
            raise manage_error

    async def _manage_replicas(self, key: str, rs: Obj, pods: list[Obj]) -> None:
        diff = len(pods) - _replicas(rs)
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            self.expectations.expect_creations(key, count)
            created, error = await self._create_pods(rs, count)
            for _ in range(count - created):  # never coming: stop waiting for them
                self.expectations.creation_observed(key)
            if created:
                self.events.normal(rs, "SuccessfulCreate", f"Created {created} pod(s)")
            if error is not None:
                self.events.warning(rs, "FailedCreate", f"Error creating: {error}")
                raise error
        elif diff > 0:
            doomed = pods_to_delete(pods, min(diff, BURST_REPLICAS))
            self.expectations.expect_deletions(key, [object_key(p) for p in doomed])
            results = await asyncio.gather(*(self._delete_pod(key, p) for p in doomed), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            deleted = len(doomed) - len(errors)
            if deleted:
                self.events.normal(rs, "SuccessfulDelete", f"Deleted {deleted} pod(s)")
            if errors:
                raise errors[0]

    async def _create_pods(self, rs: Obj, count: int) -> tuple[int, Exception | None]:
        """Slow start: batches of 1, 2, 4, ...; the first failing batch ends it. ``(created, error)``."""
        body = pod_from_template(rs)
        namespace = rs["metadata"].get("namespace")
        created, batch = 0, 1
        while created < count:
            size = min(batch, count - created)
            results = await asyncio.gather(*(self._create_pod(body, namespace) for _ in range(size)),
                                           return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            created += size - len(failures)
            if failures:
                error = failures[0]
                if isinstance(error, asyncio.CancelledError):
                    raise error
                if isinstance(error, ApiStatusError) and error.forbidden and "being terminated" in error.message:
                    return created, None  # the namespace is going: nothing to create into
                # Any other failure (a timeout too) ends the slow start; the caller stops expecting the rest.
                return created, error if isinstance(error, Exception) else RuntimeError(str(error))
            batch *= 2
        return created, None

    async def _create_pod(self, body: Obj, namespace: str | None) -> Obj:
        return await self.client.create(PODS, body, namespace)  # a taken generated name: the server draws again

    async def _delete_pod(self, key: str, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(PODS, meta["name"], meta.get("namespace"),
                                     preconditions={"uid": meta["uid"]})
        except ApiStatusError as exc:
            self.expectations.deletion_observed(key, object_key(pod))  # no event will come for it
            if not (exc.not_found or exc.conflict):  # gone already (or replaced): as good as deleted
                raise
        except BaseException:
            # A timeout or a lost connection: the delete may or may not have happened. Stop waiting for it
            # (as kube does on any error), or this ReplicaSet would not be synced again until the TTL.
            self.expectations.deletion_observed(key, object_key(pod))
            raise

    # --- status -----------------------------------------------------------------------------------------------

    def _status(self, rs: Obj, pods: list[Obj], error: Exception | None) -> Obj:
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(rs["spec"].get("minReadySeconds") or 0)
        now = time.time()
        ready = [p for p in pods if is_pod_ready(p)]
        status: Obj = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if template_labels.items() <= labels_of(p).items()),
            "readyReplicas": len(ready),
            "availableReplicas": sum(1 for p in ready if is_pod_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 0),
        }
        conditions = [c for c in (rs.get("status") or {}).get("conditions") or () if c.get("type") != "ReplicaFailure"]
        if error is not None:
            failure = next((c for c in (rs.get("status") or {}).get("conditions") or ()
                            if c.get("type") == "ReplicaFailure"), None)
            reason = "FailedCreate" if len(pods) < _replicas(rs) else "FailedDelete"
            message = str(error)
            if failure is None or failure.get("message") != message:
                failure = {"type": "ReplicaFailure", "status": "True", "lastTransitionTime": now_rfc3339(),
                           "reason": reason, "message": message}
            conditions.append(failure)
        if conditions:
            status["conditions"] = conditions
        return {k: v for k, v in status.items() if v or k == "replicas"}  # Go's omitempty

    async def _update_status(self, rs: Obj, status: Obj) -> Obj:
        if (rs.get("status") or {}) == status:
            return rs
        body = copy.copy(rs)
        body["status"] = status
        for attempt in range(2):  # kube's statusUpdateRetries: one retry on a fresh copy
            try:
                return await self.client.replace_status(REPLICASETS, body)
            except ApiStatusError as exc:
                if exc.not_found:
                    return body
                if attempt == 1 or not exc.conflict:
                    raise
                meta = rs["metadata"]
                body = await self.client.get(REPLICASETS, meta["name"], meta.get("namespace"))
                if body["metadata"]["uid"] != meta["uid"]:
                    return body
                body["status"] = status
        return body


def _replicas(rs: Obj) -> int:
    value = rs["spec"].get("replicas")
    return 1 if value is None else int(value)


def pod_from_template(rs: Obj) -> Obj:
    """The pod a ReplicaSet creates: its template, owned by it, named ``<rs>-<random>``."""
    template = rs["spec"].get("template") or {}
    template_meta = template.get("metadata") or {}
    metadata: Obj = {"generateName": f"{rs['metadata']['name']}-",
                     "ownerReferences": [owner_reference(rs, "ReplicaSet", "apps/v1")]}
    for field in ("labels", "annotations", "finalizers"):
        if template_meta.get(field):
            metadata[field] = template_meta[field]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec") or {}}


def pods_to_delete(pods: list[Obj], count: int, related: list[Obj] | None = None) -> list[Obj]:
    """The ``count`` pods to delete first, by kube's ActivePodsWithRanks order; a pod's rank is how many of
    ``related`` (default: ``pods``) share its node, so crowded nodes are thinned first."""
    per_node: dict[str, int] = {}
    for pod in related if related is not None else pods:
        node = pod["spec"].get("nodeName") or ""
        if node and is_pod_active(pod):
            per_node[node] = per_node.get(node, 0) + 1
    return sorted(pods, key=lambda p: _deletion_order(p, per_node))[:count]


def _deletion_order(pod: Obj, per_node: dict[str, int]) -> tuple[Any, ...]:
    node = pod["spec"].get("nodeName") or ""
    status = pod.get("status") or {}
    ready = is_pod_ready(pod)
    try:
        cost = int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, 0))
    except ValueError:
        cost = 0
    ready_since = parse_time(next((c.get("lastTransitionTime") for c in status.get("conditions") or ()
                                   if c.get("type") == "Ready"), None)) if ready else None
    created = parse_time(pod["metadata"].get("creationTimestamp"))
    return (
        bool(node),  # unscheduled first
        _PHASE_ORDER.get(status.get("phase") or "Pending", 1),  # then pending, unknown, running
        ready,  # then not ready
        cost,  # then the cheapest to lose
        -per_node.get(node, 0) if node else 0,  # then those on the most crowded nodes
        (0, 0.0) if ready_since is None else (1, -ready_since),  # then ready for the shortest time
        -restart_count(pod),  # then restarted most
        (0, 0.0) if created is None else (1, -created),  # then the newest
    )
