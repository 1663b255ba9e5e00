"""The kubelet's dnsPolicy rules (``containers.dns_host_config``): what the sandbox's Dns/DnsSearch/DnsOptions
become (the engine writes them into resolv.conf: test_agent_e2e reads the file inside a pod)."""

from __future__ import annotations

from skiff.cluster.kubelet.containers import dns_host_config


def pod(namespace: str = "shop", **spec: object) -> dict:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


CLUSTER = {"Dns": ["10.43.0.10"], "DnsSearch": ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"],
           "DnsOptions": ["ndots:5"]}


def test_cluster_first_is_the_default() -> None:
    assert dns_host_config(pod(), "10.43.0.10", "cluster.local") == CLUSTER
    assert dns_host_config(pod(dnsPolicy="ClusterFirst"), "10.43.0.10", "cluster.local") == CLUSTER
    custom = dns_host_config(pod("a"), "10.96.0.10", "k8s.test")
    assert custom["Dns"] == ["10.96.0.10"] and custom["DnsSearch"][0] == "a.svc.k8s.test"


def test_fallbacks_to_the_node_resolv_conf() -> None:
    assert dns_host_config(pod(), None, "cluster.local") == {}  # the agent has no --cluster-dns
    assert dns_host_config(pod(dnsPolicy="Default"), "10.43.0.10", "cluster.local") == {}
    assert dns_host_config(pod(hostNetwork=True), "10.43.0.10", "cluster.local") == {}
    assert dns_host_config(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), "10.43.0.10",
                           "cluster.local") == CLUSTER


def test_dns_config_merges_and_none_takes_only_it() -> None:
    config = {"nameservers": ["192.0.2.1"], "searches": ["corp.example", "svc.cluster.local"],
              "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}
    merged = dns_host_config(pod(dnsConfig=config), "10.43.0.10", "cluster.local")
    assert merged == {"Dns": ["10.43.0.10", "192.0.2.1"],
                      "DnsSearch": [*CLUSTER["DnsSearch"], "corp.example"], "DnsOptions": ["ndots:2", "edns0"]}
    only = dns_host_config(pod(dnsPolicy="None", dnsConfig=config), "10.43.0.10", "cluster.local")
    assert only == {"Dns": ["192.0.2.1"], "DnsSearch": ["corp.example", "svc.cluster.local"],
                    "DnsOptions": ["ndots:2", "edns0"]}
