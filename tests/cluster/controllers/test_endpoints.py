"""The Endpoints and EndpointSlice controllers in a real ``skiff server`` (controllers and scheduler inside) with
``skiff hollow-nodes`` running the pods, driven by the real kubectl 1.32: ``kubectl expose`` gives a Service
whose Endpoints and slices list the ready pods, follow scaling and readiness, and are left alone when the
Service has no selector."""

# The cluster's fixtures are imported from the scheduler's conftest, so the tests' parameters name them again.
# ruff: noqa: F401, F811

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api.conftest import KubectlRun, wait_for
from tests.cluster.scheduler.conftest import HollowNodesProcess, api_server, hollow_nodes, kubectl
from tests.cluster.scheduler.test_scheduling import running

pytestmark = pytest.mark.usefixtures("hollow_nodes")
SERVICE_NAME = "kubernetes.io/service-name"


def deployment(name: str, replicas: int, port: int = 8080) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                     "name": "web", "image": "nginx:1.27",
                     "ports": [{"name": "http", "containerPort": port}]}]}}}})


def get_json(kubectl: KubectlRun, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def endpoint_ips(kubectl: KubectlRun, name: str) -> tuple[list[str], list[str], list[int]]:
    """(ready IPs, not-ready IPs, ports) of the Endpoints ``name`` (one subset expected)."""
    found = kubectl("get", "endpoints", name, "-o", "json", check=False)
    if found.returncode != 0:
        return [], [], []
    subsets = json.loads(found.stdout).get("subsets") or []
    ready = sorted(a["ip"] for s in subsets for a in s.get("addresses") or ())
    not_ready = sorted(a["ip"] for s in subsets for a in s.get("notReadyAddresses") or ())
    ports = sorted({p["port"] for s in subsets for p in s.get("ports") or ()})
    return ready, not_ready, ports


def slices_of(kubectl: KubectlRun, service: str) -> list[dict[str, Any]]:
    return get_json(kubectl, "endpointslices", "-l", f"{SERVICE_NAME}={service}")["items"]


def wait_endpoints(kubectl: KubectlRun, name: str, ready: list[str], not_ready: list[str] = (),
                   timeout: float = 30.0) -> None:
    """Until the Endpoints and the slices of ``name`` list exactly these ready and not-ready IPs."""
    wanted = (sorted(ready), sorted(not_ready))
    seen: list[Any] = []

    def matches() -> bool:
        by_ready: dict[bool, list[str]] = {True: [], False: []}
        for endpoint in (e for s in slices_of(kubectl, name) for e in s["endpoints"] or ()):
            by_ready[endpoint["conditions"]["ready"]].extend(endpoint["addresses"])
        seen[:] = [endpoint_ips(kubectl, name)[:2], (sorted(by_ready[True]), sorted(by_ready[False]))]
        return seen == [wanted, wanted]
    try:
        wait_for(matches, timeout, interval=0.3)
    except AssertionError:
        raise AssertionError(f"{name}: wanted {wanted}; Endpoints, slices show {seen}") from None


def pod_ips(pods: list[dict[str, Any]]) -> list[str]:
    return sorted(p["status"]["podIP"] for p in pods)


@contextlib.contextmanager
def not_ready(kubectl: KubectlRun, hollow_nodes: HollowNodesProcess, pod: str) -> Iterator[None]:
    """Report ``pod`` not Ready as a kubelet whose readiness probe fails would (pods/status), with the hollow
    nodes stopped (SIGSTOP) so that they do not report it Ready again at once; when they continue they do, as
    the kubelet once the probe passes again."""
    os.kill(hollow_nodes.process.pid, signal.SIGSTOP)
    try:
        patch = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        kubectl("patch", "pod", pod, "--subresource=status", "-p", json.dumps(patch))
        yield
    finally:
        os.kill(hollow_nodes.process.pid, signal.SIGCONT)


def test_expose_lists_ready_pods_and_follows_scaling_and_readiness(kubectl: KubectlRun,
                                                                   hollow_nodes: HollowNodesProcess) -> None:
    kubectl("apply", "-f", "-", input=deployment("ep-web", 3))
    pods = running(kubectl, "app=ep-web", 3)
    out = kubectl("expose", "deployment/ep-web", "--port=80", "--target-port=http").stdout
    assert "service/ep-web exposed" in out
    svc = get_json(kubectl, "service", "ep-web")
    assert svc["spec"]["clusterIP"] not in ("", "None") and svc["spec"]["selector"] == {"app": "ep-web"}
    wait_endpoints(kubectl, "ep-web", pod_ips(pods))
    assert endpoint_ips(kubectl, "ep-web")[2] == [8080]  # the named targetPort, resolved on the pods

    endpoints = get_json(kubectl, "endpoints", "ep-web")
    address = endpoints["subsets"][0]["addresses"][0]
    owner = next(p for p in pods if p["status"]["podIP"] == address["ip"])
    assert address["targetRef"] == {"kind": "Pod", "namespace": "default", "name": owner["metadata"]["name"],
                                    "uid": owner["metadata"]["uid"]}
    assert address["nodeName"] == owner["spec"]["nodeName"]
    assert endpoints["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    row = kubectl("get", "endpoints", "ep-web", "--no-headers").stdout.split()
    assert row[0] == "ep-web" and f"{address['ip']}:8080" in row[1]

    (endpoint_slice,) = slices_of(kubectl, "ep-web")
    assert endpoint_slice["addressType"] == "IPv4"
    assert endpoint_slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == \
        "endpointslice-controller.k8s.io"
    (ref,) = endpoint_slice["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Service", "ep-web",
                                                                        svc["metadata"]["uid"], True)
    assert endpoint_slice["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    entry = next(e for e in endpoint_slice["endpoints"] if e["addresses"] == [address["ip"]])
    assert entry["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert entry["nodeName"] == owner["spec"]["nodeName"] and entry["targetRef"]["uid"] == owner["metadata"]["uid"]
    printed = kubectl("get", "endpointslices", "-l", f"{SERVICE_NAME}=ep-web", "--no-headers").stdout.split()
    assert printed[1:3] == ["IPv4", "8080"]

    kubectl("scale", "deployment/ep-web", "--replicas=5")
    wait_endpoints(kubectl, "ep-web", pod_ips(running(kubectl, "app=ep-web", 5)))
    kubectl("scale", "deployment/ep-web", "--replicas=2")
    pods = running(kubectl, "app=ep-web", 2)
    wait_endpoints(kubectl, "ep-web", pod_ips(pods))

    sick, well = pods
    with not_ready(kubectl, hollow_nodes, sick["metadata"]["name"]):
        wait_endpoints(kubectl, "ep-web", [well["status"]["podIP"]], [sick["status"]["podIP"]])
    wait_endpoints(kubectl, "ep-web", pod_ips(pods))  # reported Ready again

    # nothing changes, nothing is written: no write storm between the two controllers and the informers
    versions = (get_json(kubectl, "endpoints", "ep-web")["metadata"]["resourceVersion"],
                [s["metadata"]["resourceVersion"] for s in slices_of(kubectl, "ep-web")])
    time.sleep(2)
    assert versions == (get_json(kubectl, "endpoints", "ep-web")["metadata"]["resourceVersion"],
                        [s["metadata"]["resourceVersion"] for s in slices_of(kubectl, "ep-web")])

    kubectl("delete", "service", "ep-web")
    wait_for(lambda: kubectl("get", "endpoints", "ep-web", check=False).returncode != 0 and
             not slices_of(kubectl, "ep-web"), 20, interval=0.3)
    kubectl("delete", "deployment", "ep-web")


def test_node_port_and_load_balancer_services(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=deployment("ep-np", 2, port=80))
    ips = pod_ips(running(kubectl, "app=ep-np", 2))
    kubectl("expose", "deployment/ep-np", "--type=NodePort", "--port=80")
    kubectl("expose", "deployment/ep-np", "--name=ep-lb", "--type=LoadBalancer", "--port=8080", "--target-port=80")
    node_port = get_json(kubectl, "service", "ep-np")["spec"]["ports"][0]
    assert 30000 <= node_port["nodePort"] <= 32767
    row = kubectl("get", "service", "ep-lb", "--no-headers").stdout.split()
    assert row[1] == "LoadBalancer" and row[4].startswith("8080:") and row[4].endswith("/TCP")  # 8080:3xxxx/TCP
    wait_endpoints(kubectl, "ep-np", ips)
    wait_endpoints(kubectl, "ep-lb", ips)
    assert endpoint_ips(kubectl, "ep-lb")[2] == [80]
    kubectl("delete", "service", "ep-np", "ep-lb")
    kubectl("delete", "deployment", "ep-np")


def test_headless_and_publish_not_ready_services(kubectl: KubectlRun, hollow_nodes: HollowNodesProcess) -> None:
    kubectl("apply", "-f", "-", input=deployment("ep-hl", 2, port=80))
    pods = running(kubectl, "app=ep-hl", 2)
    kubectl("expose", "deployment/ep-hl", "--cluster-ip=None", "--port=80")
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ep-all"},
                "spec": {"selector": {"app": "ep-hl"}, "ports": [{"port": 80}], "publishNotReadyAddresses": True}}
    kubectl("apply", "-f", "-", input=json.dumps(headless))
    wait_endpoints(kubectl, "ep-hl", pod_ips(pods))
    assert slices_of(kubectl, "ep-hl")[0]["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    sick = pods[0]
    with not_ready(kubectl, hollow_nodes, sick["metadata"]["name"]):
        wait_endpoints(kubectl, "ep-hl", [pods[1]["status"]["podIP"]], [sick["status"]["podIP"]])
        wait_endpoints(kubectl, "ep-all", pod_ips(pods))  # not ready, still published as ready
    wait_endpoints(kubectl, "ep-hl", pod_ips(pods))
    kubectl("delete", "service", "ep-hl", "ep-all")
    kubectl("delete", "deployment", "ep-hl")


def test_services_without_selector_keep_their_users_endpoints(kubectl: KubectlRun) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ep-ext"},
               "spec": {"ports": [{"port": 5432}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ep-ext"},
                 "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]}
    kubectl("apply", "-f", "-", input=json.dumps(service))
    kubectl("apply", "-f", "-", input=json.dumps(endpoints))
    before = get_json(kubectl, "endpoints", "ep-ext")
    # a Service with a selector made after it is synced: by then the controllers have seen both objects
    kubectl("apply", "-f", "-", input=deployment("ep-later", 1))
    kubectl("expose", "deployment/ep-later", "--port=80")
    wait_endpoints(kubectl, "ep-later", pod_ips(running(kubectl, "app=ep-later", 1)))
    after = get_json(kubectl, "endpoints", "ep-ext")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["subsets"] == [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432, "protocol": "TCP"}]}]
    assert not [s for s in slices_of(kubectl, "ep-ext")
                if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") ==
                "endpointslice-controller.k8s.io"]
    kubectl("delete", "service", "ep-ext", "ep-later")
    kubectl("delete", "deployment", "ep-later")
