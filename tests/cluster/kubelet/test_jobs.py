"""Jobs end to end: the real kubectl 1.32 (``create job``, ``wait``, ``logs job/…``), the server's scheduler and
job controller, a real agent running the pods to completion on a real engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api.conftest import KubectlRun, ServerProcess, kubectl, running_server  # noqa: F401 - a fixture
from tests.cluster.kubelet.conftest import IMAGE, NODE, AgentProcess
from tests.cluster.kubelet.test_logs_exec import agent  # noqa: F401 - a fixture (its own agent here)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The API server with its scheduler, and the job controller and garbage collector beside it."""
    with running_server(tmp_path_factory.mktemp("jobs-server"), "--disable-controllers",
                        controllers="namespace,serviceaccount,job,garbagecollector") as server:
        yield server


def get_json(kubectl: KubectlRun, *what: str) -> dict[str, Any]:  # noqa: F811
    return json.loads(kubectl("get", *what, "-o", "json").stdout)


def job(name: str, command: str, restart: str = "Never", **spec: Any) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {
        "template": {"spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "work", "image": IMAGE, "command": ["sh", "-c", command]}]}}, **spec}})


def test_kubectl_create_job_runs_to_completion_and_its_logs_are_there(agent: AgentProcess,  # noqa: F811
                                                                      kubectl: KubectlRun) -> None:  # noqa: F811
    kubectl("create", "job", "hello", f"--image={IMAGE}", "--", "sh", "-c", "echo hello from a job")
    kubectl("wait", "--for=condition=complete", "job/hello", "--timeout=60s", timeout=70)
    assert kubectl("logs", "job/hello").stdout == "hello from a job\n"
    [pod] = get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=hello")["items"]
    assert pod["spec"]["nodeName"] == NODE and pod["status"]["phase"] == "Succeeded"
    assert kubectl("get", "jobs").stdout.splitlines()[1].split()[:3] == ["hello", "Complete", "1/1"]
    kubectl("delete", "job", "hello", "--wait=true")
    assert not get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=hello")["items"]


def test_a_failing_container_fails_the_job_at_its_backoff_limit(agent: AgentProcess,  # noqa: F811
                                                                kubectl: KubectlRun) -> None:  # noqa: F811
    # Never: one failed pod is past a backoffLimit of 0
    kubectl("apply", "-f", "-", input=job("oops", "echo failing; exit 3", backoffLimit=0))
    kubectl("wait", "--for=condition=failed", "job/oops", "--timeout=60s", timeout=70)
    failed = next(c for c in get_json(kubectl, "job", "oops")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    [pod] = get_json(kubectl, "pods", "-l", "batch.kubernetes.io/job-name=oops")["items"]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    # OnFailure: the kubelet restarts the container in place; the restarts count against the limit
    kubectl("apply", "-f", "-", input=job("again", "exit 1", restart="OnFailure", backoffLimit=1))
    kubectl("wait", "--for=condition=failed", "job/again", "--timeout=90s", timeout=100)
    assert get_json(kubectl, "job", "again")["status"].get("active", 0) == 0
    for name in ("oops", "again"):
        kubectl("delete", "job", name, "--wait=true")
