"""The Deployment controller: ReplicaSets per pod template, rolled from old to new (kube's deployment controller).

One sync of a Deployment (``_Sync``), as kube's ``syncDeployment``:

1. Claim its ReplicaSets (``claims.py``); split them into the *new* one (whose template, ignoring the
   ``pod-template-hash`` label, is the Deployment's) and the old ones; bring the new one's annotations
   (revision = highest old revision + 1, the Deployment's own annotations) and the Deployment's revision
   annotation up to date.
2. Being deleted: only status. Paused: only scaling (and history cleanup); the Progressing condition says
   DeploymentPaused / DeploymentResumed. A changed ``spec.replicas``: proportional scaling of every active
   ReplicaSet (kube's ``scale``), no rollout step.
3. Otherwise one step of the strategy. RollingUpdate: create the new ReplicaSet if missing
   (``<deployment>-<hash>``), scale it up within ``replicas + maxSurge``, else scale old ones down, unhealthy
   replicas first, keeping ``replicas - maxUnavailable`` available. Recreate: scale every old ReplicaSet to
   0, wait until their pods are gone, then create/scale up the new one.
4. Status, as ``kubectl rollout status`` reads it: observedGeneration, replicas, updatedReplicas,
   readyReplicas, availableReplicas, unavailableReplicas, the Available condition
   (MinimumReplicasAvailable/Unavailable) and Progressing (NewReplicaSetCreated, FoundNewReplicaSet,
   ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded after progressDeadlineSeconds
   without progress; the sync is requeued for that deadline).
5. Once a rollout completes, old ReplicaSets with no replicas beyond ``revisionHistoryLimit`` are deleted.

Every write names the resourceVersion it read (PUT), so a decision made on a stale cache fails with a
conflict and the sync is retried on fresh state; the ReplicaSet names are deterministic, so a sync repeated
after a crash finds the ReplicaSet it made instead of making another. ``rollout undo`` needs nothing here:
kubectl 1.32 copies the old ReplicaSet's template into the Deployment, which makes that ReplicaSet new again.
"""

from __future__ import annotations

import copy
import logging
import time

from skiff.cluster.client import (
    DEPLOYMENTS,
    PODS,
    REPLICASETS,
    ApiClient,
    ApiStatusError,
    Controller,
    object_key,
)
from skiff.cluster.client.informer import SharedInformers, split_key
from skiff.cluster.client.selectors import matcher
from skiff.cluster.controllers import rollout as r
from skiff.cluster.controllers.claims import CONTROLLER_UID_INDEX, claim, index_owned
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.objects import (
    Obj,
    controller_ref,
    is_deleting,
    labels_of,
    owner_reference,
    parse_time,
)

log = logging.getLogger(__name__)


class DeploymentController(Controller):
    name = "deployment"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.deployments = informers.informer(DEPLOYMENTS)
        self.replicasets = informers.informer(REPLICASETS)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.deployments, self.replicasets, self.pods])
        index_owned(self.replicasets)
        index_owned(self.pods)
        self.events = EventRecorder(client, "deployment-controller")
        self.deployments.on_add(lambda d: self.enqueue(object_key(d)))
        self.deployments.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.deployments.on_delete(lambda d: self.enqueue(object_key(d)))
        self.replicasets.on_add(self._replicaset_added)
        self.replicasets.on_update(self._replicaset_updated)
        self.replicasets.on_delete(self._replicaset_deleted)
        self.pods.on_delete(self._pod_deleted)

    # --- event handlers ---------------------------------------------------------------------------------------

    def _owner_of(self, obj: Obj, ref: Obj | None = None) -> Obj | None:
        ref = ref if ref is not None else controller_ref(obj)
        if ref is None or ref.get("kind") != "Deployment":
            return None
        deployment = self.deployments.get(obj["metadata"].get("namespace"), ref.get("name", ""))
        return deployment if deployment is not None and deployment["metadata"]["uid"] == ref.get("uid") else None

    def _enqueue_matching(self, rs: Obj) -> None:
        labels = labels_of(rs)
        for deployment in self.deployments.list(rs["metadata"].get("namespace") or ""):
            if matcher(deployment["spec"].get("selector"), empty_matches_all=False)(labels):
                self.enqueue(object_key(deployment))

    def _replicaset_added(self, rs: Obj) -> None:
        if (ref := controller_ref(rs)) is not None:
            if (deployment := self._owner_of(rs, ref)) is not None:
                self.enqueue(object_key(deployment))
            return
        self._enqueue_matching(rs)

    def _replicaset_updated(self, old: Obj, new: Obj) -> None:
        if old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion"):
            return
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref != new_ref and old_ref is not None and (d := self._owner_of(old, old_ref)) is not None:
            self.enqueue(object_key(d))
        if new_ref is not None:
            if (d := self._owner_of(new, new_ref)) is not None:
                self.enqueue(object_key(d))
        elif labels_of(old) != labels_of(new) or old_ref != new_ref:
            self._enqueue_matching(new)

    def _replicaset_deleted(self, rs: Obj) -> None:
        if (deployment := self._owner_of(rs)) is not None:
            self.enqueue(object_key(deployment))

    def _pod_deleted(self, pod: Obj) -> None:
        """A Recreate rollout waits for the old pods to be gone: their deletions wake it."""
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get(pod["metadata"].get("namespace"), ref.get("name", ""))
        if rs is None or (deployment := self._owner_of(rs)) is None:
            return
        if not r.is_rolling(deployment):
            self.enqueue(object_key(deployment))

    # --- the sync ---------------------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        cached = self.deployments.get(namespace, name)
        if cached is None:
            return
        await _Sync(self, copy.deepcopy(cached)).run()


class _Sync:
    """One sync of one Deployment; ``d`` is always the latest version this sync has read or written."""

    def __init__(self, controller: DeploymentController, deployment: Obj) -> None:
        self.controller = controller
        self.client = controller.client
        self.events = controller.events
        self.d = deployment
        self.rss: list[Obj] = []
        self.new_rs: Obj | None = None
        self.old_rss: list[Obj] = []

    @property
    def name(self) -> str:
        return self.d["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.d["metadata"].get("namespace") or "default"

    async def run(self) -> None:
        d = self.d
        selects = matcher(d["spec"].get("selector"), empty_matches_all=False)
        self.rss = await claim(self.client, d, DEPLOYMENTS, self.controller.replicasets, REPLICASETS, selects)
        if is_deleting(d):
            await self.find_new_and_old(create=False)
            await self.sync_status()
            return
        await self.check_paused_conditions()
        await self.find_new_and_old(create=False)
        if d["spec"].get("paused") or self.is_scaling_event():
            await self.scale()
            if d["spec"].get("paused"):
                await self.cleanup()
            await self.sync_status()
        elif r.is_rolling(d):
            await self.rollout_rolling()
        else:
            await self.rollout_recreate()

    # --- the new ReplicaSet and the old ones ------------------------------------------------------------------

    async def find_new_and_old(self, create: bool) -> None:
        """kube's getAllReplicaSetsAndSyncRevision: ``new_rs`` (made if ``create``), ``old_rss``."""
        existing = r.find_new(self.d, self.rss)
        old = [rs for rs in self.rss if rs is not existing]
        self.new_rs = await self._new_replicaset(existing, old, create)
        new_uid = self.new_rs["metadata"]["uid"] if self.new_rs is not None else None
        self.old_rss = [rs for rs in self.rss if rs["metadata"]["uid"] != new_uid]

    async def _new_replicaset(self, existing: Obj | None, old: list[Obj], create: bool) -> Obj | None:
        new_revision = r.max_revision(old) + 1
        if existing is not None:
            rs = copy.deepcopy(existing)
            annotations_changed = r.set_new_rs_annotations(self.d, rs, new_revision, exists=True)
            min_ready = int(self.d["spec"].get("minReadySeconds") or 0)
            if annotations_changed or int(rs["spec"].get("minReadySeconds") or 0) != min_ready:
                rs["spec"]["minReadySeconds"] = min_ready
                rs = await self._write_replicaset(rs)
            await self._set_revision(rs)
            status = copy.deepcopy(self.d.get("status") or {})
            if r.condition(status, r.PROGRESSING) is None:
                r.set_condition(status, r.new_condition(r.PROGRESSING, "True", r.FOUND_NEW_RS,
                                                        f'Found new replica set "{rs["metadata"]["name"]}"'))
                await self._write_status(status)
            return rs
        if not create:
            return None
        return await self._create_new_replicaset(old, new_revision)

    async def _create_new_replicaset(self, old: list[Obj], new_revision: int) -> Obj:
        d = self.d
        status = copy.deepcopy(d.get("status") or {})
        template_hash = r.template_hash(d["spec"]["template"], status.get("collisionCount"))
        template = copy.deepcopy(d["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[r.HASH_LABEL] = template_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[r.HASH_LABEL] = template_hash
        name = f"{self.name}-{template_hash}"
        rs: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": self.namespace, "labels": template["metadata"]["labels"],
                         "ownerReferences": [owner_reference(d, "Deployment", "apps/v1")]},
            "spec": {"replicas": 0, "minReadySeconds": int(d["spec"].get("minReadySeconds") or 0),
                     "selector": selector, "template": template},
        }
        rs["spec"]["replicas"] = r.new_rs_new_replicas(d, [*old, rs], rs)
        r.set_new_rs_annotations(d, rs, new_revision, exists=False)
        already_there = False
        try:
            made = await self.client.create(REPLICASETS, rs, self.namespace)
        except ApiStatusError as exc:
            if not exc.already_exists:
                r.set_condition(status, r.new_condition(r.PROGRESSING, "False", r.FAILED_RS_CREATE,
                                                        f'Failed to create new replica set "{name}": {exc.message}'))
                await self._write_status(status)
                raise
            made = await self.client.get(REPLICASETS, name, self.namespace)
            ref = controller_ref(made)
            if not (ref and ref.get("uid") == d["metadata"]["uid"]
                    and r.equal_ignoring_hash(made["spec"]["template"], d["spec"]["template"])):
                # another template hashed to this name: count the collision, the next hash differs
                status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
                await self._write_status(status)
                raise
            already_there = True  # made by an earlier sync that the cache has not caught up with
        self.rss.append(made)
        if not already_there and r.replicas(made) > 0:
            self.events.normal(d, "ScalingReplicaSet",
                               f"Scaled up replica set {name} from 0 to {r.replicas(made)}")
        await self._set_revision(made)
        if not already_there:
            r.set_condition(status, r.new_condition(r.PROGRESSING, "True", r.NEW_RS_CREATED,
                                                    f'Created new replica set "{name}"'))
            await self._write_status(status)
        return made

    # --- writes -------------------------------------------------------------------------------------------------

    async def _set_revision(self, rs: Obj) -> None:
        """The Deployment carries its new ReplicaSet's revision (as ``kubectl rollout history`` expects)."""
        wanted = (rs["metadata"].get("annotations") or {}).get(r.REVISION)
        if wanted is None or (self.d["metadata"].get("annotations") or {}).get(r.REVISION) == wanted:
            return
        # kube writes it with its status update; here status writes keep metadata, so patch just this key
        self.d = await self.client.patch(DEPLOYMENTS, self.name, {"metadata": {"annotations": {r.REVISION: wanted}}},
                                         namespace=self.namespace)

    async def _write_status(self, status: Obj) -> None:
        status = r.omit_empty(status)
        if (self.d.get("status") or {}) == status:
            return
        body = copy.copy(self.d)
        body["status"] = status
        self.d = await self.client.replace_status(DEPLOYMENTS, body)

    async def _write_replicaset(self, rs: Obj) -> Obj:
        updated = await self.client.replace(REPLICASETS, rs)
        uid = updated["metadata"]["uid"]
        self.rss = [updated if x["metadata"]["uid"] == uid else x for x in self.rss]
        self.old_rss = [updated if x["metadata"]["uid"] == uid else x for x in self.old_rss]
        if self.new_rs is not None and self.new_rs["metadata"]["uid"] == uid:
            self.new_rs = updated
        return updated

    async def scale_replicaset(self, rs: Obj, size: int, operation: str = "") -> tuple[Obj, bool]:
        """Set ``rs``'s replicas (and its desired/max annotations); ``(rs, whether its size changed)``."""
        d = self.d
        body = copy.deepcopy(rs)
        annotations_changed = r.set_replicas_annotations(body, r.replicas(d), r.replicas(d) + r.max_surge(d))
        before = r.replicas(rs)
        if before == size and not annotations_changed:
            return rs, False
        body["spec"]["replicas"] = size
        updated = await self._write_replicaset(body)
        if before != size:
            operation = operation or ("up" if before < size else "down")
            self.events.normal(d, "ScalingReplicaSet",
                               f"Scaled {operation} replica set {rs['metadata']['name']} from {before} to {size}")
        return updated, before != size

    async def scale_if_needed(self, rs: Obj, size: int) -> bool:
        if r.replicas(rs) == size:
            return False
        return (await self.scale_replicaset(rs, size))[1]

    # --- scaling (a changed spec.replicas, or a paused Deployment) -------------------------------------------

    def is_scaling_event(self) -> bool:
        desired = str(r.replicas(self.d))
        for rs in r.active([*self.old_rss, self.new_rs]):
            annotated = (rs["metadata"].get("annotations") or {}).get(r.DESIRED_REPLICAS)
            if annotated is not None and annotated != desired:
                return True
        return False

    async def scale(self) -> None:
        """kube's ``scale``: one active ReplicaSet takes all; else proportionally, leftovers to the largest."""
        d = self.d
        only = r.find_active_or_latest(self.new_rs, self.old_rss)
        if only is not None:
            await self.scale_if_needed(only, r.replicas(d))
            return
        if r.is_saturated(d, self.new_rs):
            for old in r.active(self.old_rss):
                await self.scale_if_needed(old, 0)
            return
        if not r.is_rolling(d):
            return
        live = r.active([*self.old_rss, self.new_rs])
        allowed = r.replicas(d) + r.max_surge(d) if r.replicas(d) > 0 else 0
        to_add = allowed - r.total_replicas(live)
        operation = ""
        if to_add > 0:  # largest first; among equals the newest
            live.sort(key=lambda rs: (-r.replicas(rs), -r.created(rs)[0]))
            operation = "up"
        elif to_add < 0:  # largest first; among equals the oldest
            live.sort(key=lambda rs: (-r.replicas(rs), r.created(rs)))
            operation = "down"
        sizes: dict[str, int] = {}
        added = 0
        for rs in live:
            share = r.proportion(rs, d, to_add, added) if to_add else 0
            sizes[rs["metadata"]["uid"]] = r.replicas(rs) + share
            added += share
        for i, rs in enumerate(live):
            size = sizes[rs["metadata"]["uid"]]
            if i == 0 and to_add:
                size = max(size + to_add - added, 0)
            await self.scale_replicaset(rs, size, operation)

    # --- RollingUpdate ------------------------------------------------------------------------------------------

    async def rollout_rolling(self) -> None:
        if self.new_rs is None:
            await self.find_new_and_old(create=True)
        if await self.reconcile_new() or await self.reconcile_old():
            await self.sync_rollout_status()
            return
        if r.is_complete(self.d, self.d.get("status") or {}):
            await self.cleanup()
        await self.sync_rollout_status()

    async def reconcile_new(self) -> bool:
        new_rs, d = self.new_rs, self.d
        assert new_rs is not None
        if r.replicas(new_rs) == r.replicas(d):
            return False
        if r.replicas(new_rs) > r.replicas(d):
            return await self.scale_if_needed(new_rs, r.replicas(d))
        size = r.new_rs_new_replicas(d, [*self.old_rss, new_rs], new_rs)
        return await self.scale_if_needed(new_rs, size)

    async def reconcile_old(self) -> bool:
        """Scale old ReplicaSets down as far as availability allows: unhealthy replicas first."""
        d, new_rs = self.d, self.new_rs
        assert new_rs is not None
        old_active = r.active(self.old_rss)
        if r.total_replicas(old_active) == 0:
            return False
        min_available = r.replicas(d) - r.max_unavailable(d)
        new_unavailable = r.replicas(new_rs) - r.surely_available([new_rs])
        max_scaled_down = r.total_replicas([*self.old_rss, new_rs]) - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        cleaned = await self._scale_down_unhealthy(old_active, max_scaled_down)
        scaled = await self._scale_down_available(r.active(self.old_rss))
        return cleaned + scaled > 0

    async def _scale_down_unhealthy(self, old_rss: list[Obj], limit: int) -> int:
        total = 0
        for rs in sorted(old_rss, key=r.created):
            if total >= limit:
                break
            unhealthy = r.replicas(rs) - r.surely_available([rs])
            if r.replicas(rs) == 0 or unhealthy <= 0:
                continue
            count = min(limit - total, unhealthy)
            await self.scale_if_needed(rs, r.replicas(rs) - count)
            total += count
        return total

    async def _scale_down_available(self, old_rss: list[Obj]) -> int:
        d = self.d
        min_available = r.replicas(d) - r.max_unavailable(d)
        available = r.surely_available([*self.old_rss, self.new_rs])
        if available <= min_available:
            return 0
        budget, total = available - min_available, 0
        for rs in sorted(old_rss, key=r.created):
            if total >= budget:
                break
            if r.replicas(rs) == 0:
                continue
            count = min(r.replicas(rs), budget - total)
            await self.scale_if_needed(rs, r.replicas(rs) - count)
            total += count
        return total

    # --- Recreate -----------------------------------------------------------------------------------------------

    async def rollout_recreate(self) -> None:
        scaled_down = False
        for rs in r.active(self.old_rss):
            scaled_down = await self.scale_if_needed(rs, 0) or scaled_down
        if scaled_down or self.old_pods_running():
            await self.sync_rollout_status()
            return
        if self.new_rs is None:
            await self.find_new_and_old(create=True)
        assert self.new_rs is not None
        await self.scale_if_needed(self.new_rs, r.replicas(self.d))
        if r.is_complete(self.d, self.d.get("status") or {}):
            await self.cleanup()
        await self.sync_rollout_status()

    def old_pods_running(self) -> bool:
        if r.total_status(self.old_rss, "replicas") > 0:
            return True
        pods = self.controller.pods
        for rs in self.old_rss:
            for pod in pods.by_index(CONTROLLER_UID_INDEX, rs["metadata"]["uid"]):
                if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return True  # running, pending, unknown or still terminating
        return False

    # --- history --------------------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Delete the oldest scaled-down ReplicaSets beyond ``revisionHistoryLimit``."""
        limit = self.d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in self.old_rss if not is_deleting(rs)]
        surplus = len(alive) - int(limit)
        if surplus <= 0:
            return
        for rs in sorted(alive, key=lambda x: (r.revision(x), r.created(x)))[:surplus]:
            meta = rs["metadata"]
            if (r.status_of(rs, "replicas") or r.replicas(rs) or meta.get("generation", 0)
                    > r.status_of(rs, "observedGeneration")):
                continue
            try:
                await self.client.delete(REPLICASETS, meta["name"], self.namespace, preconditions={"uid": meta["uid"]})
            except ApiStatusError as exc:
                if not (exc.not_found or exc.conflict):
                    raise

    # --- conditions and status ------------------------------------------------------------------------------

    async def check_paused_conditions(self) -> None:
        d = self.d
        if not r.has_progress_deadline(d):
            return
        status = copy.deepcopy(d.get("status") or {})
        cond = r.condition(status, r.PROGRESSING)
        if cond is not None and cond.get("reason") == r.TIMED_OUT:
            return  # a missed deadline is not overwritten by a pause
        paused_noted = cond is not None and cond.get("reason") == r.PAUSED
        if d["spec"].get("paused") and not paused_noted:
            r.set_condition(status, r.new_condition(r.PROGRESSING, "Unknown", r.PAUSED, "Deployment is paused"))
        elif not d["spec"].get("paused") and paused_noted:
            r.set_condition(status, r.new_condition(r.PROGRESSING, "Unknown", r.RESUMED, "Deployment is resumed"))
        else:
            return
        await self._write_status(status)

    async def sync_status(self) -> None:
        await self._write_status(r.calculate_status(self.d, [*self.old_rss, self.new_rs], self.new_rs))

    async def sync_rollout_status(self) -> None:
        d, new_rs = self.d, self.new_rs
        status = r.calculate_status(d, [*self.old_rss, new_rs], new_rs)
        if not r.has_progress_deadline(d):
            r.remove_condition(status, r.PROGRESSING)
        current = r.condition(d.get("status") or {}, r.PROGRESSING)
        complete_before = (status["replicas"] == status["updatedReplicas"] and current is not None
                           and current.get("reason") == r.NEW_RS_AVAILABLE)
        subject = f'ReplicaSet "{new_rs["metadata"]["name"]}"' if new_rs is not None else f'Deployment "{self.name}"'
        if r.has_progress_deadline(d) and not complete_before:
            if r.is_complete(d, status):
                r.set_condition(status, r.new_condition(r.PROGRESSING, "True", r.NEW_RS_AVAILABLE,
                                                        f"{subject} has successfully progressed."))
            elif r.is_progressing(d, status):
                cond = r.new_condition(r.PROGRESSING, "True", r.RS_UPDATED, f"{subject} is progressing.")
                if current is not None:
                    if current.get("status") == "True":
                        cond["lastTransitionTime"] = current.get("lastTransitionTime")
                    r.remove_condition(status, r.PROGRESSING)
                r.set_condition(status, cond)
            elif r.timed_out(d, status, time.time()):
                r.set_condition(status, r.new_condition(r.PROGRESSING, "False", r.TIMED_OUT,
                                                        f"{subject} has timed out progressing."))
        failure = self._replica_failure()
        if failure is not None:
            r.set_condition(status, failure)
        else:
            r.remove_condition(status, r.REPLICA_FAILURE)
        await self._write_status(status)
        self._requeue_if_stuck()

    def _replica_failure(self) -> Obj | None:
        """A ReplicaSet's ReplicaFailure condition, surfaced on the Deployment (the new one's first)."""
        for rs in [self.new_rs, *self.old_rss]:
            if rs is None:
                continue
            cond = r.condition(rs.get("status") or {}, r.REPLICA_FAILURE)
            if cond is not None:
                return r.new_condition(r.REPLICA_FAILURE, cond.get("status", "True"), cond.get("reason", ""),
                                       cond.get("message", ""))
        return None

    def _requeue_if_stuck(self) -> None:
        """Check again when the progress deadline would pass, so ProgressDeadlineExceeded is reported on time."""
        d = self.d
        status = d.get("status") or {}
        cond = r.condition(status, r.PROGRESSING)
        if not r.has_progress_deadline(d) or cond is None or r.is_complete(d, status):
            return
        if cond.get("reason") == r.TIMED_OUT:
            return
        since = parse_time(cond.get("lastUpdateTime"))
        if since is None:
            return
        after = since + int(d["spec"]["progressDeadlineSeconds"]) - time.time()
        self.controller.queue.add_after(object_key(d), max(after, 0.0) + 0.5)
