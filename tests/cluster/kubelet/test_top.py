"""``kubectl top``: the API server's ``metrics.k8s.io`` from the kubelet's ``/stats/summary``, with the real kubectl
1.32 against a real agent and engine. A pod spinning a CPU shows most of a core; a sleeping one next to nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.api.conftest import REPO, KubectlRun, ServerProcess, kubectl  # noqa: F401 - a fixture
from tests.cluster.kubelet.conftest import NODE, AgentProcess, Api, pod_manifest, wait_for, wait_pod
from tests.cluster.kubelet.test_logs_exec import agent, create  # noqa: F401 - a fixture (its own agent here)
from tests.cluster.kubelet.test_logs_exec import running as ready

SPIN = "while :; do :; done"


@pytest.fixture(scope="module")
def pods(agent: AgentProcess, api: Api) -> list[str]:  # noqa: F811
    create(api, pod_manifest("spin", [{"name": "spin", "command": ["sh", "-c", SPIN]}]))
    create(api, pod_manifest("idle", [{"name": "idle", "command": ["sleep", "3600"]}]))
    for name in ("spin", "idle"):
        wait_pod(api, name, ready, agent=agent)
    return ["spin", "idle"]


def millicores(text: str) -> float:
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def test_top_pod_shows_the_spinning_pods_core(pods: list[str], kubectl: KubectlRun) -> None:  # noqa: F811
    out = kubectl("top", "pod").stdout.splitlines()
    assert re.split(r"\s{2,}", out[0].strip()) == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:]}
    assert set(pods) <= set(rows)
    assert millicores(rows["spin"][0]) > 300, rows  # most of a core on a shared machine
    assert millicores(rows["idle"][0]) < 50, rows
    assert rows["idle"][1].endswith("Mi") or rows["idle"][1].endswith("Ki")


def test_top_pod_with_containers_and_a_selector(pods: list[str], kubectl: KubectlRun) -> None:  # noqa: F811
    out = kubectl("top", "pod", "spin", "--containers").stdout.splitlines()
    assert out[0].split() == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert out[1].split()[:2] == ["spin", "spin"]
    missing = kubectl("top", "pod", "nosuch", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_top_node_shows_the_node_with_percentages(pods: list[str], kubectl: KubectlRun, api: Api) -> None:  # noqa: F811
    out = kubectl("top", "node").stdout.splitlines()
    assert out[0].split() == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    row = next(line.split() for line in out[1:] if line.split()[0] == NODE)
    assert millicores(row[1]) > 300 and row[2].endswith("%") and row[4].endswith("%")


def test_the_metrics_api_answers_as_metrics_server(pods: list[str], api: Api) -> None:
    doc: dict[str, Any] = api("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/spin")
    assert doc["kind"] == "PodMetrics" and doc["window"] and doc["containers"][0]["name"] == "spin"
    assert doc["containers"][0]["usage"]["cpu"].endswith("n")
    listed = api("GET", "/apis/metrics.k8s.io/v1beta1/nodes")
    assert listed["kind"] == "NodeMetricsList" and [n["metadata"]["name"] for n in listed["items"]] == [NODE]
    groups = api("GET", "/apis")
    assert any(g["name"] == "metrics.k8s.io" for g in groups["groups"])


def test_skiff_kubectl_top_lays_out_what_kubectl_does(pods: list[str], kubectl: KubectlRun,  # noqa: F811
                                                      api_server: ServerProcess) -> None:
    for what in ("pod", "node"):
        theirs = kubectl("top", what).stdout.splitlines()
        ours = subprocess.run([sys.executable, "-m", "skiff.cli.main", "kubectl", "--kubeconfig",
                               str(api_server.kubeconfig), "top", what], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert ours.returncode == 0, ours.stderr
        mine = ours.stdout.splitlines()
        assert mine[0].split() == theirs[0].split()
        assert sorted(line.split()[0] for line in mine[1:]) == sorted(line.split()[0] for line in theirs[1:])


def test_figures_come_from_the_kubelets_last_readings(pods: list[str], api: Api) -> None:
    """The kubelet reads its containers every --housekeeping-interval (2 s here) and answers from the last two
    readings: asked again at once, a spinning pod's figure is the same; after the interval it is a new one."""
    def usage() -> str:
        return api("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/spin")["containers"][0]["usage"]["cpu"]
    # (two fresh measurements of a spinning CPU are never equal to the nanocore; a reading may fall between
    # the two requests, hence a few tries)
    first = wait_for(lambda: (a := usage()) == usage() and a, timeout=10, interval=0.1)
    wait_for(lambda: usage() != first, timeout=10, interval=0.5)
