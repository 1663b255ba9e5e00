"""``StatefulSetController``: pods with stable identities, made and removed in order (kube's ``statefulset``
controller).

Pod *i* of StatefulSet ``web`` is ``web-i``, with ``hostname: web-i`` and ``subdomain: <serviceName>``, so a
headless Service of that name gives it the DNS name ``web-i.<service>.<namespace>.svc`` (the Endpoints
controller and the cluster DNS do that part). With ``podManagementPolicy: OrderedReady`` (the default) pod
*i* is made only once pods 0..i-1 are Running and Ready, and scaling down removes the highest ordinal first,
one at a time, each only once the rest are Ready; ``Parallel`` makes and removes them all at once. A failed
pod, or one deleted by hand, is made again under the same name.

Revisions are named ``<sts>-<hash of the template>`` and carried by each pod's ``controller-revision-hash``
label. ``RollingUpdate`` replaces pods from the highest ordinal down to ``partition``, one at a time, each once
every other pod is Ready; ``OnDelete`` waits for someone to delete them. Status has kube's counts and
``currentRevision``/``updateRevision``, which ``kubectl rollout status sts/…`` reads. No ControllerRevision
objects are kept (so no ``rollout history|undo`` for StatefulSets) and volumeClaimTemplates are refused by the
API: there are no PersistentVolumes here yet.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time

from skiff.cluster.client import (
    PODS,
    STATEFULSETS,
    ApiClient,
    ApiStatusError,
    Controller,
    SharedInformers,
    object_key,
    split_key,
)
from skiff.cluster.controllers.claims import CONTROLLER_UID_INDEX, index_owned
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.expectations import Expectations
from skiff.cluster.controllers.objects import (
    Obj,
    is_deleting,
    is_pod_available,
    is_pod_ready,
    owner_reference,
    write_status,
)
from skiff.cluster.controllers.ownedpods import delete_pods, watch_owned_pods

log = logging.getLogger(__name__)
HASH_LABEL = "controller-revision-hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


class StatefulSetController(Controller):
    name = "statefulset"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.statefulsets = informers.informer(STATEFULSETS)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.statefulsets, self.pods])
        index_owned(self.pods)
        self.expectations = Expectations()
        self.events = EventRecorder(client, "statefulset-controller")
        self.statefulsets.on_add(lambda sts: self.enqueue(object_key(sts)))
        self.statefulsets.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.statefulsets.on_delete(lambda sts: self.expectations.forget(object_key(sts)))
        watch_owned_pods(self.pods, "StatefulSet", self.expectations, self.enqueue)

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        sts = self.statefulsets.get(namespace, name)
        if sts is None or is_deleting(sts):
            return
        pods = self.pods.by_index(CONTROLLER_UID_INDEX, sts["metadata"]["uid"])
        if self.expectations.satisfied(key):
            await self._step(key, sts, pods)
        await write_status(self.client, STATEFULSETS, sts, self._status(sts, pods))

    # --- one step towards the wanted pods -------------------------------------------------------------------

    async def _step(self, key: str, sts: Obj, pods: list[Obj]) -> None:
        spec = sts["spec"]
        replicas = int(spec.get("replicas", 1))
        parallel = spec.get("podManagementPolicy") == "Parallel"
        revision = revision_name(sts)
        by_ordinal = {ordinal: pod for pod in pods if (ordinal := ordinal_of(sts, pod)) is not None}
        going = [p for p in pods if is_deleting(p)]
        # failed pods are deleted to be made again under the same name
        failed = [p for p in pods if not is_deleting(p) and (p.get("status") or {}).get("phase") == "Failed"]
        if failed:
            await self._delete(key, sts, failed)
            return
        # make the missing ordinals below replicas: all at once, or the first missing one once those before are ready
        for ordinal in range(replicas):
            pod = by_ordinal.get(ordinal)
            if pod is None:
                await self._create(key, sts, ordinal, revision)
                if not parallel:
                    return
            elif not parallel and (is_deleting(pod) or not _running_and_ready(pod)):
                return  # OrderedReady: wait for this one before going on
        # scale down from the highest ordinal
        surplus = sorted((o for o in by_ordinal if o >= replicas and not is_deleting(by_ordinal[o])), reverse=True)
        if surplus:
            if parallel:
                await self._delete(key, sts, [by_ordinal[o] for o in surplus])
            elif not going and all(_running_and_ready(by_ordinal[o]) for o in range(replicas) if o in by_ordinal):
                await self._delete(key, sts, [by_ordinal[surplus[0]]])
            return
        await self._update(key, sts, by_ordinal, replicas, revision, going)

    async def _update(self, key: str, sts: Obj, by_ordinal: dict[int, Obj], replicas: int, revision: str,
                      going: list[Obj]) -> None:
        """RollingUpdate: the highest old pod at or above the partition goes, once every other pod is Ready."""
        strategy = sts["spec"].get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate" or going:
            return
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        if not all(_running_and_ready(by_ordinal[o]) for o in range(replicas) if o in by_ordinal):
            return
        for ordinal in range(replicas - 1, partition - 1, -1):
            pod = by_ordinal.get(ordinal)
            if pod is not None and _labels(pod).get(HASH_LABEL) != revision:
                await self._delete(key, sts, [pod])
                return

    async def _create(self, key: str, sts: Obj, ordinal: int, revision: str) -> None:
        self.expectations.expect_creations(key, 1)
        body = pod_for_ordinal(sts, ordinal, revision)
        try:
            await self.client.create(PODS, body, sts["metadata"]["namespace"])
        except BaseException as exc:
            self.expectations.creation_observed(key)
            if isinstance(exc, ApiStatusError):
                self.events.warning(sts, "FailedCreate", f"create Pod {body['metadata']['name']} in StatefulSet "
                                                         f"{sts['metadata']['name']} failed error: {exc.message}")
                if exc.already_exists:
                    return  # an old pod of that name still going away: the next sync sees it
            raise
        self.events.normal(sts, "SuccessfulCreate", f"create Pod {body['metadata']['name']} in StatefulSet "
                                                    f"{sts['metadata']['name']} successful")

    async def _delete(self, key: str, sts: Obj, pods: list[Obj]) -> None:
        await delete_pods(self.client, self.expectations, key, pods, lambda pod: self.events.normal(
            sts, "SuccessfulDelete", f"delete Pod {pod['metadata']['name']} in StatefulSet "
                                     f"{sts['metadata']['name']} successful"))

    # --- status ---------------------------------------------------------------------------------------------

    def _status(self, sts: Obj, pods: list[Obj]) -> Obj:
        revision = revision_name(sts)
        live = [p for p in pods if not is_deleting(p) and ordinal_of(sts, p) is not None]
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        now = time.time()
        updated = [p for p in live if _labels(p).get(HASH_LABEL) == revision]
        old = (sts.get("status") or {}).get("currentRevision") or revision
        # the current revision becomes the update revision once every pod runs it
        current = revision if len(updated) == len(live) == int(sts["spec"].get("replicas", 1)) else old
        status: Obj = {
            "observedGeneration": sts["metadata"].get("generation", 0),
            "replicas": len(live),
            "readyReplicas": sum(1 for p in live if is_pod_ready(p)),
            "currentReplicas": sum(1 for p in live if _labels(p).get(HASH_LABEL) == current),
            "updatedReplicas": len(updated),
            "availableReplicas": sum(1 for p in live if is_pod_available(p, min_ready, now)),
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        return {k: v for k, v in status.items() if v or k in ("replicas", "availableReplicas")}


def revision_name(sts: Obj) -> str:
    encoded = json.dumps(sts["spec"].get("template") or {}, sort_keys=True, separators=(",", ":")).encode()
    return f"{sts['metadata']['name']}-{hashlib.sha256(encoded).hexdigest()[:10]}"


def ordinal_of(sts: Obj, pod: Obj) -> int | None:
    match = re.fullmatch(re.escape(sts["metadata"]["name"]) + r"-(\d+)", pod["metadata"]["name"])
    return int(match.group(1)) if match else None


def pod_for_ordinal(sts: Obj, ordinal: int, revision: str) -> Obj:
    """Pod ``<sts>-<ordinal>``: the template, owned by the StatefulSet, with its stable hostname and subdomain."""
    template = copy.deepcopy(sts["spec"].get("template") or {})
    template_meta = template.get("metadata") or {}
    name = f"{sts['metadata']['name']}-{ordinal}"
    spec = template.get("spec") or {}
    spec["hostname"] = name
    if sts["spec"].get("serviceName"):
        spec["subdomain"] = sts["spec"]["serviceName"]
    labels = {**(template_meta.get("labels") or {}), HASH_LABEL: revision, POD_NAME_LABEL: name,
              POD_INDEX_LABEL: str(ordinal)}
    metadata: Obj = {"name": name, "labels": labels,
                     "ownerReferences": [owner_reference(sts, "StatefulSet", "apps/v1")]}
    if template_meta.get("annotations"):
        metadata["annotations"] = template_meta["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _running_and_ready(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and is_pod_ready(pod)


def _labels(pod: Obj) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}
