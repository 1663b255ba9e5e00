"""The Job controller in a real ``skiff server``, driven by the real kubectl 1.32 (``create job``, ``wait``,
``get jobs``) and the API. The test plays the node: a ``PodOutcomes`` task runs each new pod of a Job and then
ends it Succeeded or Failed as the test says, and removes pods being deleted (the kubelet's last word)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from skiff.cluster.client import JOBS, PODS, ApiClient, ApiStatusError
from tests.cluster.api.conftest import KubectlRun
from tests.cluster.controllers.conftest import FakeKubelet, eventually, run_pod

pytestmark = pytest.mark.asyncio
Obj = dict[str, Any]


class PodOutcomes(FakeKubelet):
    """Runs the pods of one Job, then finishes each as ``outcome(pod's index in creation order)`` says
    ("Succeeded", "Failed", or None to leave it running)."""

    def __init__(self, client: ApiClient, job: str, outcome: Callable[[int], str | None]) -> None:
        super().__init__(client, f"batch.kubernetes.io/job-name={job}")
        self.outcome = outcome
        self.seen: list[str] = []

    async def __aenter__(self) -> PodOutcomes:
        await super().__aenter__()
        return self

    async def round(self) -> None:
        items = (await self.client.list(PODS, "default", label_selector=self.selector))
        for pod in sorted(items["items"], key=lambda p: p["metadata"]["creationTimestamp"]):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                await self.client.delete(PODS, meta["name"], "default", grace_period_seconds=0)
                continue
            if meta["name"] not in self.seen:
                self.seen.append(meta["name"])
                await run_pod(self.client, pod)
                continue
            phase = (pod.get("status") or {}).get("phase")
            wanted = self.outcome(self.seen.index(meta["name"]))
            if wanted and phase == "Running":
                await self.client.patch(PODS, meta["name"], {"status": {"phase": wanted, "conditions": [
                    {"type": "Ready", "status": "False"}]}}, namespace="default", subresource="status")


def job(name: str, **spec: Any) -> Obj:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "work", "image": "busybox", "command": ["true"]}]}}, **spec}}


async def condition(client: ApiClient, name: str, kind: str) -> Obj | None:
    status = (await client.get(JOBS, name, "default")).get("status") or {}
    return next((c for c in status.get("conditions") or () if c["type"] == kind and c["status"] == "True"), None)


async def test_kubectl_create_job_runs_one_pod_to_completion(client: ApiClient, kubectl: KubectlRun) -> None:
    async with PodOutcomes(client, "hello", lambda i: "Succeeded"):
        out = kubectl("create", "job", "hello", "--image=busybox", "--", "echo", "hi").stdout
        assert out.strip() == "job.batch/hello created"
        await asyncio.to_thread(kubectl, "wait", "--for=condition=complete", "job/hello", "--timeout=30s",
                                timeout=40)
    made = json.loads(kubectl("get", "job", "hello", "-o", "json").stdout)
    uid = made["metadata"]["uid"]
    # the selector is made for it, and its pods carry it
    assert made["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert made["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "hello"
    assert (made["spec"]["completions"], made["spec"]["parallelism"], made["spec"]["backoffLimit"]) == (1, 1, 6)
    status = made["status"]
    assert (status["succeeded"], status.get("active", 0), status.get("failed", 0)) == (1, 0, 0)
    assert status["startTime"] and status["completionTime"]
    assert {c["type"] for c in status["conditions"]} == {"SuccessCriteriaMet", "Complete"}
    row = kubectl("get", "jobs", "hello").stdout.splitlines()
    assert row[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert row[1].split()[:3] == ["hello", "Complete", "1/1"]
    [pod] = (await client.list(PODS, "default", label_selector=f"batch.kubernetes.io/controller-uid={uid}"))["items"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["spec"]["containers"][0]["command"] == ["echo", "hi"]
    events = kubectl("get", "events", "--field-selector", "involvedObject.name=hello", "-o",
                     "jsonpath={.items[*].reason}").stdout.split()
    assert "SuccessfulCreate" in events and "Completed" in events
    kubectl("delete", "job", "hello")  # its pods go with it (background propagation)
    await eventually(lambda: _none_left(client, uid))


async def _none_left(client: ApiClient, uid: str) -> bool:
    items = (await client.list(PODS, "default", label_selector=f"batch.kubernetes.io/controller-uid={uid}"))["items"]
    return not items


async def test_parallel_completions_keep_parallelism_pods_active(client: ApiClient, kubectl: KubectlRun) -> None:
    outcomes = PodOutcomes(client, "batch", lambda i: None)
    async with outcomes:
        kubectl("apply", "-f", "-", input=json.dumps(job("batch", completions=5, parallelism=2)))
        await eventually(lambda: _count(client, "batch", "active", 2))
        outcomes.outcome = lambda i: "Succeeded"  # the pods finish one after another
        await eventually(lambda: condition(client, "batch", "Complete"), timeout=30)
    status = (await client.get(JOBS, "batch", "default"))["status"]
    assert status["succeeded"] == 5 and len(outcomes.seen) == 5
    assert kubectl("get", "jobs", "batch").stdout.splitlines()[1].split()[2] == "5/5"
    kubectl("delete", "job", "batch")


async def _count(client: ApiClient, name: str, field: str, wanted: int) -> bool:
    return ((await client.get(JOBS, name, "default")).get("status") or {}).get(field, 0) == wanted  # 0: omitted


async def test_failures_past_the_backoff_limit_fail_the_job(client: ApiClient, kubectl: KubectlRun) -> None:
    async with PodOutcomes(client, "flaky", lambda i: "Failed") as outcomes:
        kubectl("apply", "-f", "-", input=json.dumps(job("flaky", backoffLimit=0)))
        failed = await eventually(lambda: condition(client, "flaky", "Failed"), timeout=30)
    assert len(outcomes.seen) == 1  # no second try
    assert (failed["reason"], failed["message"]) == ("BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")
    status = (await client.get(JOBS, "flaky", "default"))["status"]
    assert status["failed"] == 1 and not status.get("succeeded") and "completionTime" not in status
    assert kubectl("get", "jobs", "flaky").stdout.splitlines()[1].split()[1] == "Failed"
    result = kubectl("wait", "--for=condition=complete", "job/flaky", "--timeout=1s", check=False)
    assert result.returncode != 0
    kubectl("delete", "job", "flaky")


async def test_the_deadline_ends_a_running_job_and_deletes_its_pods(client: ApiClient, kubectl: KubectlRun) -> None:
    async with PodOutcomes(client, "slow", lambda i: None):
        kubectl("apply", "-f", "-", input=json.dumps(job("slow", activeDeadlineSeconds=2)))
        failed = await eventually(lambda: condition(client, "slow", "Failed"), timeout=30)
        assert failed["reason"] == "DeadlineExceeded"
        uid = (await client.get(JOBS, "slow", "default"))["metadata"]["uid"]
        await eventually(lambda: _none_left(client, uid))
    kubectl("delete", "job", "slow")


async def test_suspend_deletes_the_pods_and_resume_starts_again(client: ApiClient, kubectl: KubectlRun) -> None:
    async with PodOutcomes(client, "paused", lambda i: None) as outcomes:
        kubectl("apply", "-f", "-", input=json.dumps(job("paused", parallelism=2, completions=2)))
        await eventually(lambda: _count(client, "paused", "active", 2))
        kubectl("patch", "job", "paused", "--type=merge", "-p", '{"spec": {"suspend": true}}')
        await eventually(lambda: condition(client, "paused", "Suspended"))
        await eventually(lambda: _count(client, "paused", "active", 0))
        assert "startTime" not in (await client.get(JOBS, "paused", "default"))["status"]
        kubectl("patch", "job", "paused", "--type=merge", "-p", '{"spec": {"suspend": false}}')
        await eventually(lambda: _count(client, "paused", "active", 2))
        outcomes.outcome = lambda i: "Succeeded"
        await eventually(lambda: condition(client, "paused", "Complete"), timeout=30)
    kubectl("delete", "job", "paused")


async def test_a_finished_job_with_a_ttl_is_deleted(client: ApiClient, kubectl: KubectlRun) -> None:
    async with PodOutcomes(client, "brief", lambda i: "Succeeded"):
        kubectl("apply", "-f", "-", input=json.dumps(job("brief", ttlSecondsAfterFinished=1)))
        await eventually(lambda: _gone(client, "brief"), timeout=30)


async def _gone(client: ApiClient, name: str) -> bool:
    try:
        await client.get(JOBS, name, "default")
    except ApiStatusError as exc:
        return exc.not_found
    return False


async def test_invalid_jobs_are_refused_with_kubes_messages(kubectl: KubectlRun) -> None:
    always = job("bad")
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    result = kubectl("create", "-f", "-", input=json.dumps(always), check=False)
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"' \
        in result.stderr, result.stderr
    negative = kubectl("create", "-f", "-", input=json.dumps(job("bad", backoffLimit=-1)), check=False)
    assert "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0" in negative.stderr
    chosen = job("bad", selector={"matchLabels": {"app": "x"}})
    chosen["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    result = kubectl("create", "-f", "-", input=json.dumps(chosen), check=False)
    assert "`selector` not auto-generated" in result.stderr, result.stderr
    kubectl("create", "-f", "-", input=json.dumps(job("fixed", suspend=True)))
    result = kubectl("patch", "job", "fixed", "--type=merge", "-p", '{"spec": {"completions": 3}}', check=False)
    assert "spec.completions: Invalid value: 3: field is immutable" in result.stderr, result.stderr
    kubectl("delete", "job", "fixed")
