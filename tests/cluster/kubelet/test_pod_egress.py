"""The agent's masquerade for pod traffic leaving the pod CIDRs (``skiff.cluster.kubelet.podegress``): the pod
CIDRs it reads from Nodes, the table it writes (checked by the real ``nft`` in a network namespace this test
makes and removes), and that it writes only on a change or a forced resync. The end-to-end check, a pod
reaching an address outside the cluster and seen there with its node's address, is in
tests/cluster/local/test_cluster.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from skiff.cluster.kubelet import podegress


def node(name: str, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": spec}


def test_pod_cidrs_come_from_every_node() -> None:
    nodes = [node("a", podCIDR="10.42.0.0/24", podCIDRs=["10.42.0.0/24", "fd00:42::/64"]),
             node("b", podCIDR="10.42.1.0/24"), node("c"), node("d", podCIDR="not-a-cidr"),
             node("e", podCIDRs=["10.42.7.1/24"])]
    assert podegress.pod_cidrs(nodes) == {"10.42.0.0/24", "10.42.1.0/24", "10.42.7.0/24"}


def test_the_script_collapses_the_cidrs_and_exempts_multicast() -> None:
    text = podegress.script("10.42.1.0/24", ["10.42.0.0/24", "10.42.3.0/24"])
    assert "elements = { 10.42.0.0/23, 10.42.3.0/24 }" in text  # its own CIDR is always in the set
    assert "ip saddr 10.42.1.0/24 ip daddr != @pod-cidrs ip daddr != 224.0.0.0/4 masquerade" in text


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"skt-egress-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def listed(namespace: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "table", "ip", podegress.TABLE],
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def test_sync_writes_on_change_or_when_forced_and_remove_drops_the_table(namespace: str) -> None:
    egress = podegress.PodEgress(("ip", "netns", "exec", namespace, "nft"))

    async def scenario() -> None:
        await egress.sync("10.42.1.0/24", ["10.42.2.0/24"])
        table = listed(namespace)
        assert "type nat hook postrouting priority srcnat" in table
        assert "ip saddr 10.42.1.0/24 ip daddr != @pod-cidrs" in table and "masquerade" in table
        assert "10.42.1.0-10.42.2.255" in table or "10.42.1.0/24, 10.42.2.0/24" in table

        subprocess.run(["ip", "netns", "exec", namespace, "nft", "flush", "table", "ip", podegress.TABLE],
                       check=True)  # someone flushed it: an unchanged sync does not notice, a resync mends it
        await egress.sync("10.42.1.0/24", ["10.42.2.0/24"])
        assert "masquerade" not in listed(namespace)
        await egress.sync("10.42.1.0/24", ["10.42.2.0/24"], force=True)
        assert "masquerade" in listed(namespace)

        await egress.sync("10.42.1.0/24", ["10.42.2.0/24", "10.42.9.0/24"])  # a node joined
        assert "10.42.9.0" in listed(namespace)

        await egress.remove()
        assert listed(namespace) == ""
        await egress.remove()  # removing what is gone is fine

    asyncio.run(scenario())
