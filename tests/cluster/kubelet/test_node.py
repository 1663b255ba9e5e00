"""The agent registers its Node (as system:node:n1, with the node's own token) and keeps it alive."""

from __future__ import annotations

import os

from tests.cluster.kubelet.conftest import NODE, AgentProcess, Api, KubectlRun, wait_for


def test_node_is_registered_ready_with_the_machines_capacity(agent: AgentProcess, api: Api) -> None:
    node = api("GET", f"/api/v1/nodes/{NODE}")
    status = node["status"]
    assert status["capacity"]["cpu"] == str(os.cpu_count())
    assert status["capacity"]["pods"] == "110"
    with open("/proc/meminfo") as f:
        mem_kib = next(line.split()[1] for line in f if line.startswith("MemTotal:"))
    assert status["capacity"]["memory"] == f"{mem_kib}Ki"
    assert status["allocatable"]["cpu"] == str(os.cpu_count())
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert {"type": "Hostname", "address": NODE} in status["addresses"]
    info = status["nodeInfo"]
    version = agent.engine.request("GET", "/version").json()["Version"]
    assert info["containerRuntimeVersion"] == f"skiff://{version}"
    assert info["kubeletVersion"].startswith("v1.32")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == NODE


def test_lease_is_renewed(agent: AgentProcess, api: Api) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
    first = api("GET", path)
    assert first["spec"]["holderIdentity"] == NODE
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
    wait_for(lambda: api("GET", path)["spec"]["renewTime"] != first["spec"]["renewTime"], timeout=10)


def test_kubectl_shows_the_node_ready(agent: AgentProcess, kubectl: KubectlRun) -> None:
    out = kubectl("get", "nodes", "-o", "wide").stdout
    line = next(line for line in out.splitlines() if line.startswith(NODE + " "))
    assert " Ready " in line
    assert "skiff://" in line and "127.0.0.1" in line
