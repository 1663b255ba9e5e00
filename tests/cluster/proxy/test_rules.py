"""The ruleset as text (pure functions), and real ``nft`` accepting it in a private namespace: a full sync,
a partial one over it, and one that drops a Service (its chains and affinity sets deleted)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from skiff.cluster.proxy.model import Endpoint, LocalTarget, service_ports
from skiff.cluster.proxy.proxier import ProxyOptions
from skiff.cluster.proxy.rules import affinity_set, endpoint_chain, ruleset, service_chain
from skiff.errors import InvalidArgument
from tests.cluster.proxy.netlab import ip


def _svc(name: str, ip_: str, ports: list[dict], **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip_, "ports": ports, **spec}}


def _slice(service: str, endpoints: list[dict], ports: list[dict], name: str = "") -> dict:
    return {"metadata": {"name": name or f"{service}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


WEB = _svc("web", "10.43.0.20", [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
           type="NodePort", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
WEB_SLICES = [
    _slice("web", [{"addresses": ["10.1.0.2"], "conditions": {"ready": True}},
                   {"addresses": ["10.1.0.3"]},  # no conditions: ready
                   {"addresses": ["10.1.0.9"], "conditions": {"ready": False}}],
           [{"name": "http", "port": 8080, "protocol": "TCP"}]),
    _slice("web", [{"addresses": ["10.1.0.2"], "conditions": {"ready": True}}],  # the same endpoint twice
           [{"name": "http", "port": 8080, "protocol": "TCP"}], name="web-y"),
]


def test_model_merges_slices_and_keeps_ready_endpoints() -> None:
    [port] = service_ports([WEB], WEB_SLICES)
    assert (port.id, port.cluster_ip, port.port, port.node_port, port.affinity_timeout) == (
        "default/web/tcp/http", "10.43.0.20", 80, 30080, 60)
    assert port.endpoints == [Endpoint("10.1.0.2", 8080), Endpoint("10.1.0.3", 8080)]


def test_model_terminating_fallback_local_policy_and_skipped_services() -> None:
    svc = _svc("t", "10.43.0.30", [{"port": 80}], internalTrafficPolicy="Local")
    slices = [_slice("t", [{"addresses": ["10.1.0.5"], "nodeName": "n1",
                            "conditions": {"ready": False, "serving": True, "terminating": True}},
                           {"addresses": ["10.1.0.6"], "nodeName": "n2"}], [{"port": 81}])]
    assert service_ports([svc], slices, node_name="n1")[0].endpoints == [Endpoint("10.1.0.5", 81)]
    assert service_ports([svc], slices, node_name="n2")[0].endpoints == [Endpoint("10.1.0.6", 81)]
    headless = _svc("h", "None", [{"port": 80}])
    external = {"metadata": {"name": "e", "namespace": "default"}, "spec": {"type": "ExternalName",
                                                                            "externalName": "x.example"}}
    assert service_ports([headless, external], []) == []


def test_model_local_target_and_load_balancer_ingress() -> None:
    dns = {"metadata": {"name": "kube-dns", "namespace": "kube-system"},
           "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                         {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}
    lb = _svc("lb", "10.43.0.40", [{"port": 80, "nodePort": 31000}], type="LoadBalancer")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    ports = service_ports([dns, lb], [], local=LocalTarget("kube-system", "kube-dns", "10.77.0.1", 5353))
    assert [(p.id, p.local_target) for p in ports[1:]] == [
        ("kube-system/kube-dns/tcp/dns-tcp", Endpoint("10.77.0.1", 5353)),
        ("kube-system/kube-dns/udp/dns", Endpoint("10.77.0.1", 5353))]
    assert (ports[0].ingress_ips, ports[0].node_port) == (["192.0.2.7"], 31000)


def test_ruleset_text() -> None:
    [port] = service_ports([WEB], WEB_SLICES)
    script, state = ruleset("skiff-proxy", [port], full=True)
    chain = service_chain(port)
    eps = [endpoint_chain(port, ep) for ep in port.endpoints]
    assert chain.startswith("service-") and chain.endswith("-default/web/tcp/http")
    assert set(state.fragments[port.id].chains) == {chain, *eps}
    assert set(state.fragments[port.id].sets) == {affinity_set(port, ep) for ep in port.endpoints}
    assert script.splitlines()[:3] == ["add table ip skiff-proxy", "delete table ip skiff-proxy",
                                       "add table ip skiff-proxy"]
    assert f"add element ip skiff-proxy service-ips {{ 10.43.0.20 . tcp . 80 : goto {chain} }}" in script
    assert f"add element ip skiff-proxy service-nodeports {{ tcp . 30080 : goto {chain} }}" in script
    assert (f"add rule ip skiff-proxy {chain} numgen random mod 2 vmap {{ 0 : goto {eps[0]}, "
            f"1 : goto {eps[1]} }}") in script
    assert f"add rule ip skiff-proxy {eps[0]} meta l4proto tcp dnat to 10.1.0.2:8080" in script
    assert "timeout 60s" in script
    # no endpoints: rejected, not DNAT-ed
    empty, _ = ruleset("skiff-proxy", service_ports([WEB], []))
    assert "no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }" in empty
    assert "no-endpoint-nodeports { tcp . 30080 : goto reject-chain }" in empty
    assert "add element ip skiff-proxy service-ips" not in empty


def test_partial_syncs_touch_only_what_changed() -> None:
    other = _svc("other", "10.43.0.21", [{"port": 81}])
    other_slice = _slice("other", [{"addresses": ["10.1.0.8"]}], [{"port": 9000}])
    _, state = ruleset("skiff-proxy", service_ports([WEB, other], [*WEB_SLICES, other_slice]), full=True)
    unchanged, state = ruleset("skiff-proxy", service_ports([WEB, other], [*WEB_SLICES, other_slice]), state)
    assert unchanged == ""
    script, state = ruleset("skiff-proxy", service_ports([WEB, other], [*WEB_SLICES[1:], other_slice]), state)
    assert "other" not in script and "10.1.0.8" not in script and "add table" not in script
    assert "flush chain ip skiff-proxy endpoint-" in script and "delete chain ip skiff-proxy endpoint-" in script
    assert "delete set ip skiff-proxy affinity-" in script
    gone, _ = ruleset("skiff-proxy", service_ports([WEB], WEB_SLICES[1:]), state)
    assert "delete element ip skiff-proxy service-ips { 10.43.0.21 . tcp . 81 }" in gone
    assert "delete element ip skiff-proxy cluster-ips { 10.43.0.21 }" in gone
    assert "web" not in gone


def test_table_names_nft_can_parse() -> None:
    ProxyOptions("n1", table="skiff-proxy").check()
    for bad in ("tproxy", "nat", "a b", "x;y", ""):
        with pytest.raises(InvalidArgument):
            ProxyOptions("n1", table=bad).check()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"skp-rules-{os.getpid()}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "delete", name)


def _nft(netns: str, script: str, *args: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", netns, "nft", *args, "-f", "-"], input=script,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "skiff-proxy"],
                          capture_output=True, text=True, check=True).stdout


def test_real_nft_applies_full_partial_and_shrinking_syncs(netns: str) -> None:
    other = _svc("other", "10.43.0.21", [{"port": 81}])
    other_slice = _slice("other", [{"addresses": ["10.1.0.8"]}], [{"port": 9000}])
    ports = service_ports([WEB, other], [*WEB_SLICES, other_slice])
    script, state = ruleset("skiff-proxy", ports, full=True)
    listed = _nft(netns, script)
    assert "numgen random mod 2 vmap" in listed and "dnat to 10.1.0.3:8080" in listed
    again, state = ruleset("skiff-proxy", ports, state)
    assert _nft(netns, again) == listed  # nothing to do
    smaller, state = ruleset("skiff-proxy", service_ports([WEB, other], [*WEB_SLICES[1:], other_slice]), state)
    listed = _nft(netns, smaller)
    assert "10.1.0.3" not in listed and "dnat to 10.1.0.2:8080" in listed and "dnat to 10.1.0.8:9000" in listed
    assert "numgen" not in listed
    no_endpoints, state = ruleset("skiff-proxy", service_ports([WEB, other], WEB_SLICES[1:]), state)
    listed = _nft(netns, no_endpoints)
    assert "10.1.0.8" not in listed and "10.43.0.21 . tcp . 81 : goto reject-chain" in listed
    gone, _ = ruleset("skiff-proxy", [], state)
    listed = _nft(netns, gone)
    assert "chain service-" not in listed and "affinity-" not in listed and "chain endpoint-" not in listed
    assert "10.43.0.2" not in listed
