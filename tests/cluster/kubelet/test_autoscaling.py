"""Horizontal pod autoscaling end to end: the real kubectl 1.32 (``kubectl autoscale``, ``get hpa``, ``describe
hpa``), the controller manager's autoscaler, the API server's metrics from a real agent's kubelet, real
containers. A Deployment's pods burn CPU for a while then idle: the autoscaler scales it up to its maximum while
they burn and back down to its minimum once they idle.

The controller manager looks every second (``--horizontal-pod-autoscaler-sync-period 1``) and scales down without
waiting (``--horizontal-pod-autoscaler-downscale-stabilization 0``), so the test takes seconds, not minutes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api.conftest import KubectlRun, ServerProcess, kubectl, running_server  # noqa: F401 - a fixture
from tests.cluster.kubelet.conftest import IMAGE, NODE, AgentProcess, Api, wait_for
from tests.cluster.kubelet.test_logs_exec import agent  # noqa: F401 - a fixture (its own agent here)

BURN_SECONDS = 20
# burn a CPU (capped at 200m by the limit: 400% of the 50m request) for a while, then idle
BURN = f"timeout {BURN_SECONDS} sh -c 'while :; do :; done'; exec sleep 3600"


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The API server with the workload controllers and the autoscaler beside it (no scheduler: the pods name
    their node)."""
    with running_server(tmp_path_factory.mktemp("hpa-server"), "--disable-controllers", "--disable-scheduler",
                        controllers="namespace,serviceaccount,deployment,replicaset,garbagecollector,"
                                    "horizontalpodautoscaling",
                        manager_flags=("--horizontal-pod-autoscaler-sync-period", "1",
                                       "--horizontal-pod-autoscaler-downscale-stabilization", "0")) as server:
        yield server


def deployment(name: str, command: str, cpu_request: str = "50m") -> dict[str, Any]:
    container = {"name": "burn", "image": IMAGE, "command": ["sh", "-c", command],
                 "resources": {"requests": {"cpu": cpu_request}, "limits": {"cpu": "200m"}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                                           "containers": [container]}}}}


def get_json(kubectl: KubectlRun, *what: str) -> dict[str, Any]:  # noqa: F811
    return json.loads(kubectl("get", *what, "-o", "json").stdout)


def replicas(kubectl: KubectlRun, name: str) -> int:  # noqa: F811
    return get_json(kubectl, "deployment", name)["spec"]["replicas"]


def conditions(hpa: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (hpa.get("status") or {}).get("conditions") or ()}


def test_burning_pods_scale_up_to_the_maximum_and_idle_ones_back_down(agent: AgentProcess, api: Api,  # noqa: F811
                                                                      kubectl: KubectlRun) -> None:  # noqa: F811
    kubectl("apply", "-f", "-", input=json.dumps(deployment("burn", BURN)))
    out = kubectl("autoscale", "deployment/burn", "--min=1", "--max=3", "--cpu-percent=50").stdout
    assert "horizontalpodautoscaler.autoscaling/burn autoscaled" in out

    wait_for(lambda: replicas(kubectl, "burn") == 3, timeout=90, interval=0.5)
    hpa = get_json(kubectl, "hpa", "burn")
    assert conditions(hpa)["ScalingActive"] == ("True", "ValidMetricFound")
    assert hpa["status"]["lastScaleTime"]
    events = kubectl("get", "events", "--field-selector", "involvedObject.name=burn,reason=SuccessfulRescale",
                     "-o", "jsonpath={.items[*].message}").stdout
    assert "New size: 3; reason: cpu resource utilization (percentage of request) above target" in events, events
    # the pods burn 400% of their request: the table shows it against the 50% target
    row = kubectl("get", "hpa", "burn").stdout.splitlines()[1]
    burning = re.search(r"cpu: (\d+)%/50%", row)
    assert burning and int(burning.group(1)) > 50, row

    # once they all idle, the autoscaler brings the deployment back to its minimum
    wait_for(lambda: replicas(kubectl, "burn") == 1, timeout=BURN_SECONDS + 90, interval=0.5)
    hpa = get_json(kubectl, "hpa", "burn")
    assert hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] < 50
    described = kubectl("describe", "hpa", "burn").stdout
    assert "All metrics below target" in described, described
    assert re.search(r"ScalingActive\s+True\s+ValidMetricFound", described), described
    assert re.search(r"Min replicas:\s+1", described) and re.search(r"Max replicas:\s+3", described), described
    kubectl("delete", "hpa", "burn")
    kubectl("delete", "deployment", "burn", "--wait=true")


def test_what_cannot_be_measured_or_found_is_reported_on_the_autoscaler(agent: AgentProcess,  # noqa: F811
                                                                        kubectl: KubectlRun) -> None:  # noqa: F811
    # no CPU request: utilization has nothing to be a percentage of
    unrequested = deployment("norequest", "exec sleep 3600")
    unrequested["spec"]["template"]["spec"]["containers"][0]["resources"] = {}
    kubectl("apply", "-f", "-", input=json.dumps(unrequested))
    kubectl("autoscale", "deployment/norequest", "--max=2", "--cpu-percent=50")
    hpa = wait_for(lambda: (h := get_json(kubectl, "hpa", "norequest")).get("status", {}).get("conditions") and h,
                   timeout=60, interval=0.5)
    assert conditions(hpa)["ScalingActive"] == ("False", "FailedGetResourceMetric")
    wait_for(lambda: "missing request for cpu in container burn of Pod norequest-" in kubectl(
        "describe", "hpa", "norequest").stdout, timeout=30, interval=0.5)
    assert replicas(kubectl, "norequest") == 1

    # a target that does not exist
    missing = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "ghost"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost"},
                        "maxReplicas": 2}}
    kubectl("apply", "-f", "-", input=json.dumps(missing))
    hpa = wait_for(lambda: (h := get_json(kubectl, "hpa", "ghost")).get("status", {}).get("conditions") and h,
                   timeout=30, interval=0.5)
    assert conditions(hpa)["AbleToScale"] == ("False", "FailedGetScale")
    for name in ("norequest", "ghost"):
        kubectl("delete", "hpa", name)
    kubectl("delete", "deployment", "norequest", "--wait=true")
    wait_for(lambda: not get_json(kubectl, "pods")["items"], timeout=60, interval=0.5)
