"""``JobController``: runs a Job's pods until enough of them succeed, or it fails (kube's ``job`` controller, with
the ``ttl-after-finished`` controller's one job).

Each sync counts the Job's pods (its own, by controller reference): active ones, succeeded, failed. While it
runs it keeps ``min(parallelism, completions - succeeded)`` pods active (with no ``completions``: ``parallelism``
until one succeeds), creating pods from the template with ``generateName: <job>-`` and deleting the newest
extras; after a failure the next pod waits 10 s, doubling to 6 minutes, as kube's pod-failure back-off does.
It fails (``FailureTarget``, then ``Failed`` once its pods are gone) when the failures (and, under
``restartPolicy: OnFailure``, the restarts) pass ``backoffLimit`` or it has run ``activeDeadlineSeconds``; it
succeeds (``SuccessCriteriaMet``, then ``Complete`` with ``completionTime``) when ``completions`` pods have
succeeded. ``suspend`` deletes the active pods (``Suspended``) and resuming starts the clock again. A finished
Job with ``ttlSecondsAfterFinished`` is deleted that long after it finished, its pods with it.

Counts only grow: a finished pod someone deleted is not uncounted (kube keeps the count exact with a finalizer on
every pod; here finished pods stay until their Job goes). Only ``completionMode: NonIndexed`` is served.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time

from skiff.cluster.client import (
    JOBS,
    PODS,
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
    is_pod_active,
    is_pod_ready,
    now_rfc3339,
    owner_reference,
    parse_time,
    restart_count,
    write_status,
)
from skiff.cluster.controllers.ownedpods import delete_pods, watch_owned_pods

log = logging.getLogger(__name__)
BACKOFF_BASE, BACKOFF_MAX = 10.0, 360.0  # seconds before a failed pod is replaced: kube's DefaultJobPodFailureBackOff
BURST = 500  # pods created or deleted in one sync


class JobController(Controller):
    name = "job"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.jobs = informers.informer(JOBS)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.jobs, self.pods])
        index_owned(self.pods)
        self.expectations = Expectations()
        self.events = EventRecorder(client, "job-controller")
        self.failures_seen: dict[str, tuple[int, float]] = {}  # job key -> (failures, when the count last grew)
        self.jobs.on_add(lambda job: self.enqueue(object_key(job)))
        self.jobs.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.jobs.on_delete(self._job_deleted)
        watch_owned_pods(self.pods, "Job", self.expectations, self.enqueue)

    def _job_deleted(self, job: Obj) -> None:
        key = object_key(job)
        self.expectations.forget(key)
        self.failures_seen.pop(key, None)

    # --- sync -------------------------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        job = self.jobs.get(namespace, name)
        if job is None:
            self._job_deleted({"metadata": {"namespace": namespace, "name": name}})
            return
        if finished(job):
            await self._expire(key, job)
            return
        if not self.expectations.satisfied(key):
            return  # the pods it made or deleted are on their way to the cache: it syncs again when they land
        pods = self.pods.by_index(CONTROLLER_UID_INDEX, job["metadata"]["uid"])
        status = await self._reconcile(key, job, pods)
        await write_status(self.client, JOBS, job, status)

    async def _reconcile(self, key: str, job: Obj, pods: list[Obj]) -> Obj:
        spec, old = job["spec"], job.get("status") or {}
        status: Obj = copy.deepcopy(old)
        conditions: list[Obj] = status.setdefault("conditions", [])
        active = [p for p in pods if is_pod_active(p)]
        succeeded = max(int(old.get("succeeded") or 0), sum(1 for p in pods if _phase(p) == "Succeeded"))
        failed = max(int(old.get("failed") or 0), sum(1 for p in pods if _phase(p) == "Failed"))
        now = time.time()
        going = sum(1 for p in pods if is_deleting(p) and _phase(p) not in ("Succeeded", "Failed"))
        if _true(conditions, "FailureTarget") or (_true(conditions, "SuccessCriteriaMet") and
                                                  spec.get("completions") is not None):
            going += await self._delete_pods(key, job, active)  # decided: it only waits for its pods to go
            active = []
        elif spec.get("suspend"):
            going += await self._delete_pods(key, job, active)
            active = []
            status.pop("startTime", None)
            if _set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended"):
                self.events.normal(job, "Suspended", "Job suspended")
        else:
            if _set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed", only_if_present=True):
                self.events.normal(job, "Resumed", "Job resumed")
            status.setdefault("startTime", now_rfc3339())
            active, deleted = await self._run(key, job, status, conditions, active, succeeded, failed, now)
            going += deleted
        self._finish(job, status, conditions, active, going)
        status.update({"active": len(active), "ready": sum(1 for p in active if is_pod_ready(p)),
                       "succeeded": succeeded, "failed": failed, "terminating": going,
                       "uncountedTerminatedPods": {}})
        if not conditions:
            status.pop("conditions")
        return {k: v for k, v in status.items() if v or k in ("ready", "terminating", "uncountedTerminatedPods")}

    async def _run(self, key: str, job: Obj, status: Obj, conditions: list[Obj], active: list[Obj],
                   succeeded: int, failed: int, now: float) -> tuple[list[Obj], int]:
        """Keep the right number of pods active, or end the Job: (the pods active afterwards, how many it
        deleted)."""
        spec = job["spec"]
        failure = self._failure(job, status, active, failed, now)
        completions, parallelism = spec.get("completions"), int(spec.get("parallelism") or 0)
        if failure is not None:
            reason, message = failure
            if _set_condition(conditions, "FailureTarget", "True", reason, message):
                self.events.warning(job, reason, message)
            return [], await self._delete_pods(key, job, active)
        done = succeeded >= completions if completions is not None else succeeded > 0
        if done and completions is not None:
            _set_condition(conditions, "SuccessCriteriaMet", "True", "CompletionsReached",
                           "Reached expected number of succeeded pods")
            return [], await self._delete_pods(key, job, active)
        if done:  # no completions: the first success ends the work; the others finish on their own
            _set_condition(conditions, "SuccessCriteriaMet", "True", "CompletionsReached",
                           "Reached expected number of succeeded pods")
            return active, 0
        wanted = min(parallelism, completions - succeeded) if completions is not None else parallelism
        if len(active) > wanted:
            extras = sorted(active, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
            deleted = await self._delete_pods(key, job, extras[:len(active) - wanted])
            return extras[len(active) - wanted:], deleted
        if len(active) < wanted:
            wait = self._backoff_left(key, failed)
            if wait > 0:
                self.queue.add_after(key, wait)
            else:
                await self._create_pods(key, job, min(wanted - len(active), BURST))
        deadline = spec.get("activeDeadlineSeconds")
        started = parse_time(status.get("startTime"))
        if deadline and started is not None:
            self.queue.add_after(key, max(0.1, started + deadline - now))
        return active, 0

    def _failure(self, job: Obj, status: Obj, active: list[Obj], failed: int, now: float) -> tuple[str, str] | None:
        spec = job["spec"]
        restarts = 0
        if ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") == "OnFailure":
            restarts = sum(restart_count(p) for p in active)
        if failed + restarts > int(spec.get("backoffLimit", 6)):
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline, started = spec.get("activeDeadlineSeconds"), parse_time(status.get("startTime"))
        if deadline and started is not None and now - started >= deadline:
            return "DeadlineExceeded", "Job was active longer than specified deadline"
        return None

    def _backoff_left(self, key: str, failed: int) -> float:
        """Seconds before a pod may replace a failed one (0 with no failure, or once the back-off passed)."""
        seen, since = self.failures_seen.get(key, (0, 0.0))
        if failed > seen:
            self.failures_seen[key] = (failed, time.monotonic())
            seen, since = failed, time.monotonic()
        if failed == 0:
            return 0.0
        delay = min(BACKOFF_BASE * 2 ** (failed - 1), BACKOFF_MAX)
        return max(0.0, since + delay - time.monotonic())

    def _finish(self, job: Obj, status: Obj, conditions: list[Obj], active: list[Obj], terminating: int) -> None:
        """A Job whose outcome is decided finishes once none of its pods runs any more."""
        if active or terminating:
            return
        if _true(conditions, "FailureTarget"):
            target = next(c for c in conditions if c["type"] == "FailureTarget")
            _set_condition(conditions, "Failed", "True", target["reason"], target["message"])
        elif _true(conditions, "SuccessCriteriaMet"):
            _set_condition(conditions, "Complete", "True", "CompletionsReached",
                           "Reached expected number of succeeded pods")
            status["completionTime"] = now_rfc3339()
            self.events.normal(job, "Completed", "Job completed")

    # --- pods -------------------------------------------------------------------------------------------------

    async def _create_pods(self, key: str, job: Obj, count: int) -> None:
        body = pod_from_job(job)
        self.expectations.expect_creations(key, count)
        results = await asyncio.gather(*(self.client.create(PODS, body, job["metadata"]["namespace"])
                                         for _ in range(count)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for _ in errors:
            self.expectations.creation_observed(key)  # never coming
        for made in results:
            if isinstance(made, dict):
                self.events.normal(job, "SuccessfulCreate", f"Created pod: {made['metadata']['name']}")
        if errors:
            self.events.warning(job, "FailedCreate", f"Error creating: {errors[0]}")
            raise errors[0]

    async def _delete_pods(self, key: str, job: Obj, pods: list[Obj]) -> int:
        """Delete ``pods`` (gracefully: they terminate, then go); how many there were."""
        return await delete_pods(self.client, self.expectations, key, pods, lambda pod: self.events.normal(
            job, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}"))

    # --- status and expiry ------------------------------------------------------------------------------------

    async def _expire(self, key: str, job: Obj) -> None:
        """``ttlSecondsAfterFinished``: delete the finished Job (its pods go with it) once its time is up."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        ended = finish_time(job)
        left = (ended or time.time()) + int(ttl) - time.time()
        if left > 0:
            self.queue.add_after(key, left)
            return
        meta = job["metadata"]
        try:
            await self.client.delete(JOBS, meta["name"], meta["namespace"], propagation_policy="Background",
                                     preconditions={"uid": meta["uid"]})
            log.info("job %s: deleted %ss after it finished", key, ttl)
        except ApiStatusError as exc:
            if not (exc.not_found or exc.conflict):
                raise


def pod_from_job(job: Obj) -> Obj:
    template = job["spec"].get("template") or {}
    template_meta = template.get("metadata") or {}
    metadata: Obj = {"generateName": f"{job['metadata']['name']}-",
                     "ownerReferences": [owner_reference(job, "Job", "batch/v1")]}
    for field in ("labels", "annotations", "finalizers"):
        if template_meta.get(field):
            metadata[field] = template_meta[field]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec") or {}}


def finished(job: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or ())


def finish_time(job: Obj) -> float | None:
    status = job.get("status") or {}
    if status.get("completionTime"):
        return parse_time(status["completionTime"])
    failed = next((c for c in status.get("conditions") or () if c.get("type") == "Failed"), None)
    return parse_time((failed or {}).get("lastTransitionTime"))


def _phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or ""


def _true(conditions: list[Obj], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def _set_condition(conditions: list[Obj], kind: str, state: str, reason: str, message: str,
                   only_if_present: bool = False) -> bool:
    """Set a condition as kube's job controller does; True when it changed (and so deserves an event)."""
    found = next((c for c in conditions if c.get("type") == kind), None)
    if found is None:
        if only_if_present:
            return False
        conditions.append({"type": kind, "status": state, "lastProbeTime": now_rfc3339(),
                           "lastTransitionTime": now_rfc3339(), "reason": reason, "message": message})
        return True
    if found.get("status") == state and found.get("reason") == reason:
        return False
    if found.get("status") != state:
        found["lastTransitionTime"] = now_rfc3339()
    found.update({"status": state, "lastProbeTime": now_rfc3339(), "reason": reason, "message": message})
    return True

