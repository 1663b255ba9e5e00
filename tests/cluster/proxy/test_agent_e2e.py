"""End to end with the real pieces: ``skiff server``, ``skiff engine`` and ``skiff agent --cluster-dns IP``
(kubelet + Service proxy + node-local DNS in one process). A busybox pod resolves
``web.default.svc.cluster.local`` (the server's kube-dns Service, DNAT-ed by the agent's proxy to its DNS
server on the engine bridge's gateway) and fetches from a web pod through the Service's ClusterIP.

The Service has no selector and the test writes its EndpointSlice from the web pod's IP (the endpoint
controllers are not part of this suite's server). The agent's table is ``skiff-proxy-e2e``, in the host's
namespace, as a real node's; every address involved is on the engine fixture's private bridge or a ClusterIP.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api.conftest import ServerProcess, wait_for
from tests.cluster.kubelet.conftest import (  # noqa: F401 - fixtures
    NODE,
    AgentProcess,
    Api,
    api,
    busybox_engine,
    engine,
    engine_api,
    module_engines,
    pod_manifest,
    started,
    wait_pod,
)
from tests.engine.conftest import EngineProcess

TABLE = "skiff-proxy-e2e"


class DnsAgent(AgentProcess):
    """The suite's agent with the proxy and DNS on: its node IP is the engine bridge's gateway, an address of
    this host that the pods reach (loopback would not do: a DNAT from a bridge to 127.0.0.1 is martian).
    With ``pod_cidr`` its pods are on the ``skiff-pods`` network (a user-defined one: the engine's embedded
    DNS is their nameserver, forwarding to the cluster DNS) instead of the engine's default bridge."""

    pod_cidr: str | None = None

    def command(self) -> list[str]:
        command = [arg for arg in super().command() if arg != "--disable-proxy"]  # the suite's agents run none
        command[command.index("--node-ip") + 1] = f"{self.engine.net.prefix}.0.1"
        extra = ["--pod-cidr", self.pod_cidr] if self.pod_cidr else []
        return [*command, "--cluster-dns", cluster_dns(self.engine), "--proxy-table", TABLE, *extra]


@pytest.fixture(scope="module")
def api_server(busybox_engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:  # noqa: F811
    """The suite's server, with Service addresses of the engine fixture's private block: the agent's proxy
    works in the host's namespace, where other sessions' agents may DNAT 10.43.0.0/16 for their own servers."""
    server = ServerProcess(tmp_path_factory.mktemp("apiserver"), "--disable-controllers", "--disable-scheduler",
                           "--service-cidr", service_cidr(busybox_engine))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def service_cidr(node_engine: EngineProcess) -> str:
    return f"{node_engine.net.prefix}.240.0/20"


def cluster_dns(node_engine: EngineProcess) -> str:
    return f"{node_engine.net.prefix}.240.10"  # the kube-dns Service's address: the range's tenth


@pytest.fixture(scope="module", params=["default-bridge", "skiff-pods"])
def dns_agent(request: pytest.FixtureRequest, api_server: ServerProcess, busybox_engine: EngineProcess,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsAgent]:
    process = DnsAgent(tmp_path_factory.mktemp("agent"), api_server, busybox_engine)
    if request.param == "skiff-pods":
        process.pod_cidr = f"{busybox_engine.net.prefix}.200.0/24"
    with started(process):
        yield process
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"table ip {TABLE}" not in tables, "a stopped agent removes its proxy table"


def exec_in(engine_api: Any, pod: str, *command: str) -> tuple[int, str]:  # noqa: F811
    [container] = engine_api.containers(filters={"label": [f"io.kubernetes.pod.name={pod}",
                                                           "io.kubernetes.container.name=main"]})
    exec_id = engine_api.exec_create(container["Id"], list(command))["Id"]
    output = engine_api.exec_start(exec_id).decode(errors="replace")
    return engine_api.exec_inspect(exec_id)["ExitCode"], output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_pod_resolves_and_fetches_through_the_cluster_ip(dns_agent: DnsAgent, api: Api,  # noqa: F811
                                                         engine_api: Any) -> None:  # noqa: F811
    serve = "mkdir -p /www && echo web-pod > /www/index.html && exec httpd -f -p 8080 -h /www"
    api("POST", "/api/v1/namespaces/default/pods",
        pod_manifest("web", [{"name": "main", "command": ["sh", "-c", serve]}]))
    api("POST", "/api/v1/namespaces/default/pods", pod_manifest("client", [{"name": "main",
                                                                            "command": ["sleep", "3600"]}]))
    try:
        web = wait_pod(api, "web", lambda p: p.get("status", {}).get("podIP") and p["status"].get("phase") ==
                       "Running", agent=dns_agent)
        wait_pod(api, "client", lambda p: p.get("status", {}).get("phase") == "Running", agent=dns_agent)
        svc = api("POST", "/api/v1/namespaces/default/services", {
            "metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        api("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", {
            "metadata": {"name": "web-e2e", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [web["status"]["podIP"]], "conditions": {"ready": True},
                           "nodeName": NODE}]})
        code, resolv = exec_in(engine_api, "client", "cat", "/etc/resolv.conf")
        nameserver = "127.0.0.11" if dns_agent.pod_cidr else cluster_dns(dns_agent.engine)  # Docker's rule
        assert f"nameserver {nameserver}" in resolv and "search default.svc.cluster.local svc.cluster.local " \
            "cluster.local" in resolv and "ndots:5" in resolv, resolv
        if dns_agent.pod_cidr:
            assert web["status"]["podIP"].startswith(dns_agent.pod_cidr.removesuffix("0/24"))  # on skiff-pods

        def resolved() -> str | None:
            code, out = exec_in(engine_api, "client", "nslookup", "web.default.svc.cluster.local")
            return out if code == 0 and svc["spec"]["clusterIP"] in out else None

        try:
            wait_for(resolved, timeout=30, interval=0.5)
        except AssertionError:
            raise AssertionError(f"{exec_in(engine_api, 'client', 'nslookup', 'web.default.svc.cluster.local')}"
                                 f"\n--- agent log ---\n{dns_agent.log_tail()}") from None

        def fetched() -> str | None:
            code, out = exec_in(engine_api, "client", "timeout", "5", "wget", "-q", "-O", "-",
                                "http://web.default.svc.cluster.local/")
            return out if code == 0 else None

        try:
            body = wait_for(fetched, timeout=30, interval=0.5)
        except AssertionError:
            listed = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True, text=True).stdout
            raise AssertionError(f"{exec_in(engine_api, 'client', 'wget', '-q', '-O', '-', 'http://web/')}\n"
                                 f"{listed}\n--- agent log ---\n{dns_agent.log_tail()}") from None
        assert body.strip() == "web-pod"
        # the short name, through the search path (ndots:5)
        code, out = exec_in(engine_api, "client", "timeout", "5", "wget", "-q", "-O", "-", "http://web/")
        assert (code, out.strip()) == (0, "web-pod"), out
    finally:
        for path in ("/api/v1/namespaces/default/pods/web", "/api/v1/namespaces/default/pods/client",
                     "/api/v1/namespaces/default/services/web",
                     "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-e2e"):
            try:
                api("DELETE", path)
            except AssertionError:
                pass
        wait_for(lambda: not api("GET", "/api/v1/namespaces/default/pods")["items"],
                 timeout=30, interval=0.3)
