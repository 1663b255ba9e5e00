"""CronJobs: the schedule arithmetic, the API (the real kubectl 1.32's ``create cronjob``, ``create job --from``,
``get cronjobs``, kube's checks), and the controller against a real ``skiff server`` on a clock the test moves
(the controller runs in the test's process; the server's job controller and garbage collector run beside it)."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from skiff.cluster import cron
from skiff.cluster.client import CRONJOBS, JOBS, ApiClient, SharedInformers
from skiff.cluster.controllers.cronjob import SCHEDULED_AT, CronJobController
from skiff.errors import InvalidArgument
from tests.cluster.api.conftest import KubectlRun, ServerProcess, running_server
from tests.cluster.controllers.conftest import NO_SCHEDULER, eventually

UTC = datetime.UTC
Obj = dict[str, Any]


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the schedule --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "after", "expected"), [
    ("*/15 * * * *", "2026-11-23 23:50:30", "2026-11-24 00:00"),
    ("0 9 * * mon-fri", "2026-11-27 09:00", "2026-11-30 09:00"),  # Friday 09:00 -> Monday
    ("0 0 13 * 5", "2026-11-23 00:00", "2026-11-27 00:00"),  # both day fields restricted: either matches
    ("30 2 29 2 *", "2026-03-01 00:00", "2028-02-29 02:30"),
    ("@hourly", "2026-11-23 23:59", "2026-11-24 00:00"),
    ("0 0 * * 7", "2026-11-23 00:00", "2026-11-29 00:00"),  # 7 is Sunday too
    ("5-10/5 1,2 * jan *", "2026-11-23 00:00", "2027-01-01 01:05"),
])
def test_next_scheduled_times(spec: str, after: str, expected: str) -> None:
    assert cron.parse(spec).next_after(at(after)) == at(expected)


def test_time_zones_and_impossible_schedules() -> None:
    noon_in_paris = cron.parse("0 12 * * *", "Europe/Paris").next_after(at("2026-11-23 00:00"))
    assert noon_in_paris == at("2026-11-23 11:00")  # CET is UTC+1 in November
    assert cron.parse("0 0 30 2 *").next_after(at("2026-01-01 00:00")) is None
    latest, count = cron.parse("*/10 * * * *").last_between(at("2026-11-23 10:00"), at("2026-11-23 11:05"))
    assert (latest, count) == (at("2026-11-23 11:00"), 6)


@pytest.mark.parametrize(("spec", "zone", "message"), [
    ("* * * *", None, "expected exactly 5 fields, found 4"),
    ("61 * * * *", None, "'61' is out of range for the minute field (0-59)"),
    ("* * * foo *", None, "'foo' is not a valid value for the month field"),
    ("*/0 * * * *", None, "must be positive"),
    ("* * * * *", "Mars/Olympus", "unknown time zone Mars/Olympus"),
])
def test_bad_schedules_say_why(spec: str, zone: str | None, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        cron.parse(spec, zone)


# --- the API and the controller ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No CronJob controller in the server: the test runs one itself, on its own clock."""
    with running_server(tmp_path_factory.mktemp("cronjobs"), NO_SCHEDULER, "--disable-controllers",
                        controllers="namespace,serviceaccount,job,garbagecollector") as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest_asyncio.fixture
async def controller(client: ApiClient) -> AsyncIterator[CronJobController]:
    informers = SharedInformers(client)
    made = CronJobController(client, informers)
    made.clock = Clock()
    task = asyncio.create_task(made.run())
    try:
        yield made
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await informers.stop()


def cronjob(name: str, schedule: str = "*/5 * * * *", **spec: Any) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name}, "spec": {
        "schedule": schedule, "jobTemplate": {"metadata": {"labels": {"cron": name}}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "tick", "image": "busybox", "command": ["date"]}]}}}},
        **spec}})


async def jobs_of(client: ApiClient, name: str) -> list[Obj]:
    items = (await client.list(JOBS, "default", label_selector=f"cron={name}"))["items"]
    return sorted((j for j in items if not j["metadata"].get("deletionTimestamp")),
                  key=lambda j: j["metadata"]["name"])


async def n_jobs(client: ApiClient, name: str, n: int) -> list[Obj] | None:
    found = await jobs_of(client, name)
    return found if len(found) == n else None


async def seen(controller: CronJobController, name: str, field: str, value: Any) -> None:
    """Wait for the controller's cache to hold a change (else its next sync would act on the old spec)."""
    async def cached() -> bool:
        return (controller.cronjobs.get("default", name) or {}).get("spec", {}).get(field) == value
    await eventually(cached)


async def advance(controller: CronJobController, minutes: float, name: str) -> None:
    controller.clock.now += datetime.timedelta(minutes=minutes)  # type: ignore[attr-defined]
    controller.enqueue(f"default/{name}")


def test_kubectl_create_cronjob_and_a_job_from_it(kubectl: KubectlRun) -> None:
    out = kubectl("create", "cronjob", "nightly", "--image=busybox", "--schedule=0 3 * * *", "--", "date").stdout
    assert out.strip() == "cronjob.batch/nightly created"
    made = json.loads(kubectl("get", "cronjob", "nightly", "-o", "json").stdout)
    spec = made["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"], spec["suspend"]) == ("0 3 * * *", "Allow", False)
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 1)
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["date"]
    table = kubectl("get", "cronjobs").stdout.splitlines()
    assert table[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"]
    assert table[1].split()[:6] == ["nightly", "0", "3", "*", "*", "*"]
    out = kubectl("create", "job", "by-hand", "--from=cronjob/nightly").stdout
    assert out.strip() == "job.batch/by-hand created"
    job = json.loads(kubectl("get", "job", "by-hand", "-o", "json").stdout)
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["date"]
    kubectl("delete", "cronjob", "nightly")


def test_invalid_cronjobs_are_refused(kubectl: KubectlRun) -> None:
    cases = [(cronjob("bad", "99 * * * *"), 'spec.schedule: Invalid value: "99 * * * *": \'99\' is out of range'),
             (cronjob("bad", timeZone="Mars/Olympus"), 'spec.timeZone: Invalid value: "Mars/Olympus": unknown time '
                                                       'zone Mars/Olympus'),
             (cronjob("bad", concurrencyPolicy="Sometimes"), 'spec.concurrencyPolicy: Unsupported value: '
                                                             '"Sometimes"'),
             (cronjob("x" * 53), "metadata.name: Invalid value: \"" + "x" * 53 + "\": must be no more than 52 "
                                 "characters")]
    for manifest, message in cases:
        result = kubectl("create", "-f", "-", input=manifest, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.asyncio
async def test_jobs_are_made_on_schedule_with_each_concurrency_policy(client: ApiClient, kubectl: KubectlRun,
                                                                      controller: CronJobController) -> None:
    kubectl("apply", "-f", "-", input=cronjob("ticker", "*/5 * * * *"))
    await asyncio.sleep(0.5)
    assert await jobs_of(client, "ticker") == []  # nothing is due yet (or at most one time, below)
    await advance(controller, 11, "ticker")  # two scheduled times passed: only the latest makes a Job
    [first] = await eventually(lambda: n_jobs(client, "ticker", 1))
    scheduled = first["metadata"]["annotations"][SCHEDULED_AT]
    assert first["metadata"]["name"] == f"ticker-{int(at(scheduled[:-1]).timestamp() // 60)}"
    assert first["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    status = (await client.get(CRONJOBS, "ticker", "default"))["status"]
    assert status["lastScheduleTime"] == scheduled
    assert [a["name"] for a in status["active"]] == [first["metadata"]["name"]]

    controller.enqueue("default/ticker")  # the same time again: nothing new
    await asyncio.sleep(0.5)
    assert len(await jobs_of(client, "ticker")) == 1
    await advance(controller, 5, "ticker")  # Allow: a second one runs beside the first
    await eventually(lambda: n_jobs(client, "ticker", 2))

    kubectl("patch", "cronjob", "ticker", "--type=merge", "-p", '{"spec": {"concurrencyPolicy": "Forbid"}}')
    await seen(controller, "ticker", "concurrencyPolicy", "Forbid")
    await advance(controller, 5, "ticker")
    await eventually(lambda: _event(kubectl, "ticker", "JobAlreadyActive"))
    assert len(await jobs_of(client, "ticker")) == 2

    kubectl("patch", "cronjob", "ticker", "--type=merge", "-p", '{"spec": {"concurrencyPolicy": "Replace"}}')
    await seen(controller, "ticker", "concurrencyPolicy", "Replace")
    before = {j["metadata"]["name"] for j in await jobs_of(client, "ticker")}
    # (the time Forbid held back is still due: with Replace it may already have replaced both)
    await advance(controller, 5, "ticker")
    [replacement] = await eventually(lambda: _replaced(client, "ticker", before))

    kubectl("patch", "cronjob", "ticker", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    await seen(controller, "ticker", "suspend", True)
    await advance(controller, 30, "ticker")
    await asyncio.sleep(0.5)
    assert [j["metadata"]["name"] for j in await jobs_of(client, "ticker")] == [replacement["metadata"]["name"]]
    kubectl("delete", "cronjob", "ticker")


@pytest.mark.asyncio
async def test_finished_jobs_past_the_history_limit_are_deleted(client: ApiClient, kubectl: KubectlRun,
                                                                controller: CronJobController) -> None:
    kubectl("apply", "-f", "-", input=cronjob("kept", "* * * * *", successfulJobsHistoryLimit=1))
    finished: list[str] = []
    for _ in range(3):  # a Job a minute, each finished before the next
        await advance(controller, 1, "kept")
        [fresh] = await eventually(lambda: _unfinished(client, "kept"))
        await _complete(client, fresh)
        finished.append(fresh["metadata"]["name"])
    [left] = await eventually(lambda: _finished_left(client, "kept", 1))
    assert left["metadata"]["name"] == finished[-1]  # the older ones went, the newest is kept
    status = await eventually(lambda: _status_with(client, "kept", "lastSuccessfulTime"))
    assert status["lastSuccessfulTime"] == left["status"]["completionTime"]
    assert "active" not in status
    kubectl("delete", "cronjob", "kept")


async def _replaced(client: ApiClient, name: str, before: set[str]) -> list[Obj] | None:
    found = await jobs_of(client, name)
    return found if len(found) == 1 and found[0]["metadata"]["name"] not in before else None


async def _unfinished(client: ApiClient, name: str) -> list[Obj] | None:
    found = [j for j in await jobs_of(client, name) if not (j.get("status") or {}).get("completionTime")]
    return found if len(found) == 1 else None


async def _status_with(client: ApiClient, name: str, field: str) -> Obj | None:
    status = (await client.get(CRONJOBS, name, "default")).get("status") or {}
    return status if status.get(field) and "active" not in status else None


async def _complete(client: ApiClient, job: Obj) -> None:
    now = datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": "Complete", "status": "True", "lastTransitionTime": now}
    await client.patch(JOBS, job["metadata"]["name"], {"status": {
        "startTime": now, "completionTime": now, "succeeded": 1, "conditions": [condition]}},
        namespace="default", subresource="status")


async def _finished_left(client: ApiClient, name: str, n: int) -> list[Obj] | None:
    done = [j for j in await jobs_of(client, name) if (j.get("status") or {}).get("completionTime")]
    return done if len(done) == n and len(await jobs_of(client, name)) == n else None


async def _event(kubectl: KubectlRun, name: str, reason: str) -> bool:
    selector = f"involvedObject.name={name},reason={reason}"
    out = await asyncio.to_thread(kubectl, "get", "events", "--field-selector", selector, "-o", "name")
    return bool(out.stdout.strip())
