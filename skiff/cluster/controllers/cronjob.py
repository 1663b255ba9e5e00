"""``CronJobController``: makes a CronJob's Jobs on its schedule (kube's ``cronjob`` controller, v2).

A sync finds the latest scheduled time since the CronJob last scheduled (or was created) up to now; if there
is one (and it is not older than ``startingDeadlineSeconds``), it makes the Job ``<cronjob>-<minutes since the
epoch>`` from ``jobTemplate``, owned by the CronJob and annotated with its scheduled time, unless
``concurrencyPolicy`` says otherwise: ``Forbid`` skips while a Job of it runs, ``Replace`` deletes the running
ones first. Missed times are not made up one by one: only the latest counts (kube's behaviour; more than 100
missed gives a ``TooManyMissedTimes`` warning). Then it sleeps until the next scheduled time. It keeps
``status.active``, ``lastScheduleTime`` and ``lastSuccessfulTime``, and deletes the oldest finished Jobs past
``successfulJobsHistoryLimit`` (3) and ``failedJobsHistoryLimit`` (1). ``suspend`` stops new Jobs.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from skiff.cluster import cron
from skiff.cluster.client import (
    CRONJOBS,
    JOBS,
    ApiClient,
    ApiStatusError,
    Controller,
    SharedInformers,
    object_key,
    split_key,
)
from skiff.cluster.controllers.claims import CONTROLLER_UID_INDEX, index_owned
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.job import finished
from skiff.cluster.controllers.objects import Obj, controller_ref, owner_reference, parse_time, write_status
from skiff.errors import InvalidArgument

log = logging.getLogger(__name__)
SCHEDULED_AT = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MISSED_LIMIT = 100


class CronJobController(Controller):
    name = "cronjob"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.cronjobs = informers.informer(CRONJOBS)
        self.jobs = informers.informer(JOBS)
        super().__init__(client, [self.cronjobs, self.jobs])
        index_owned(self.jobs)
        self.events = EventRecorder(client, "cronjob-controller")
        self.clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
        self.cronjobs.on_add(lambda cj: self.enqueue(object_key(cj)))
        self.cronjobs.on_update(lambda old, new: self.enqueue(object_key(new)))
        for register in (self.jobs.on_add, self.jobs.on_delete):
            register(self._job_changed)
        self.jobs.on_update(lambda old, new: self._job_changed(new))

    def _job_changed(self, job: Obj) -> None:
        ref = controller_ref(job)
        if ref is not None and ref.get("kind") == "CronJob":
            self.enqueue(f"{job['metadata'].get('namespace')}/{ref['name']}")

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        cronjob = self.cronjobs.get(namespace, name)
        if cronjob is None:
            return
        jobs = self.jobs.by_index(CONTROLLER_UID_INDEX, cronjob["metadata"]["uid"])
        status = dict(cronjob.get("status") or {})
        self._track(cronjob, jobs, status)
        await self._clean_up(cronjob, jobs)
        if not cronjob["spec"].get("suspend"):
            await self._schedule(key, cronjob, jobs, status)
        await write_status(self.client, CRONJOBS, cronjob, status)

    # --- the Jobs it has ------------------------------------------------------------------------------------

    def _track(self, cronjob: Obj, jobs: list[Obj], status: Obj) -> None:
        """``status.active`` from the Jobs still running; ``lastSuccessfulTime`` from the newest success."""
        running = [j for j in jobs if not finished(j) and not j["metadata"].get("deletionTimestamp")]
        active = [_reference(j) for j in sorted(running, key=lambda j: j["metadata"]["name"])]
        if active:
            status["active"] = active
        else:
            status.pop("active", None)
        for job in jobs:
            done = (job.get("status") or {}).get("completionTime")
            if done and (status.get("lastSuccessfulTime") or "") < done:
                status["lastSuccessfulTime"] = done
            was = [a for a in (cronjob.get("status") or {}).get("active") or ()
                   if a.get("uid") == job["metadata"]["uid"]]
            if was and finished(job):
                state = "Complete" if done else "Failed"
                self.events.normal(cronjob, "SawCompletedJob", f"Saw completed job: {job['metadata']['name']}, "
                                                               f"status: {state}")

    async def _clean_up(self, cronjob: Obj, jobs: list[Obj]) -> None:
        """Delete the oldest finished Jobs past the history limits."""
        spec = cronjob["spec"]
        done = [j for j in jobs if finished(j) and not j["metadata"].get("deletionTimestamp")]
        for succeeded, limit in ((True, spec.get("successfulJobsHistoryLimit", 3)),
                                 (False, spec.get("failedJobsHistoryLimit", 1))):
            kept = sorted((j for j in done if bool((j.get("status") or {}).get("completionTime")) == succeeded),
                          key=_start_order)
            for job in kept[:max(0, len(kept) - int(limit))]:
                await self._delete_job(cronjob, job)

    async def _delete_job(self, cronjob: Obj, job: Obj) -> None:
        meta = job["metadata"]
        try:
            await self.client.delete(JOBS, meta["name"], meta["namespace"], propagation_policy="Background",
                                     preconditions={"uid": meta["uid"]})
        except ApiStatusError as exc:
            if not (exc.not_found or exc.conflict):
                raise
            return
        self.events.normal(cronjob, "SuccessfulDelete", f"Deleted job {meta['name']}")

    # --- the schedule ---------------------------------------------------------------------------------------

    async def _schedule(self, key: str, cronjob: Obj, jobs: list[Obj], status: Obj) -> None:
        spec = cronjob["spec"]
        try:
            schedule = cron.parse(spec["schedule"], spec.get("timeZone"))
        except InvalidArgument as exc:  # the API checks schedules: only an old object can get here
            self.events.warning(cronjob, "UnparseableSchedule", f"unparseable schedule: {spec['schedule']}: {exc}")
            return
        now = self.clock()
        since = _time(status.get("lastScheduleTime")) or _time(cronjob["metadata"]["creationTimestamp"]) or now
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            since = max(since, now - datetime.timedelta(seconds=int(deadline)))
        scheduled, missed = schedule.last_between(since, now, MISSED_LIMIT)
        following = schedule.next_after(now)
        if following is not None:
            self.queue.add_after(key, max(0.1, (following - now).total_seconds() + 0.1))
        if scheduled is None:
            return
        if missed > MISSED_LIMIT:
            self.events.warning(cronjob, "TooManyMissedTimes", "too many missed start times. Set or decrease "
                                "startingDeadlineSeconds or check clock skew")
        running = [j for j in jobs if not finished(j) and not j["metadata"].get("deletionTimestamp")]
        policy = spec.get("concurrencyPolicy", "Allow")
        if running and policy == "Forbid":
            self.events.normal(cronjob, "JobAlreadyActive", "Not starting job because prior execution is running "
                                                            "and concurrency policy is Forbid")
            return
        if running and policy == "Replace":
            await asyncio.gather(*(self._delete_job(cronjob, j) for j in running))
        job = job_from_cronjob(cronjob, scheduled)
        try:
            made = await self.client.create(JOBS, job, cronjob["metadata"]["namespace"])
        except ApiStatusError as exc:
            if not exc.already_exists:
                self.events.warning(cronjob, "FailedCreate", f"Error creating job: {exc.message}")
                raise
            made = None  # made by an earlier sync that did not get to write the status
        if made is not None:
            self.events.normal(cronjob, "SuccessfulCreate", f"Created job {made['metadata']['name']}")
            status["active"] = [*status.get("active", []), _reference(made)]
        status["lastScheduleTime"] = scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_from_cronjob(cronjob: Obj, scheduled: datetime.datetime) -> Obj:
    """The Job a CronJob makes for ``scheduled``: named after the minute, so a second try cannot duplicate it."""
    template = cronjob["spec"].get("jobTemplate") or {}
    template_meta = template.get("metadata") or {}
    name = f"{cronjob['metadata']['name']}-{int(scheduled.timestamp() // 60)}"
    annotations = {**(template_meta.get("annotations") or {}),
                   SCHEDULED_AT: scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")}
    metadata: Obj = {"name": name, "annotations": annotations,
                     "ownerReferences": [owner_reference(cronjob, "CronJob", "batch/v1")]}
    if template_meta.get("labels"):
        metadata["labels"] = template_meta["labels"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template.get("spec") or {}}


def _start_order(job: Obj) -> tuple[str, str, str]:
    """Oldest first: by start time, then creation, then name (kube's byJobStartTime breaks ties by name)."""
    meta = job["metadata"]
    return ((job.get("status") or {}).get("startTime") or meta["creationTimestamp"], meta["creationTimestamp"],
            meta["name"])


def _reference(job: Obj) -> dict[str, Any]:
    meta = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "namespace": meta["namespace"],
            "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion", "")}


def _time(text: str | None) -> datetime.datetime | None:
    seconds = parse_time(text)
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.UTC)
