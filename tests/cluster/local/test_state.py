"""``skiff cluster``'s record and plan, without a kernel: names, addresses, paths, and the record's round trip."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from skiff.cluster.local.state import ClusterState, Process, check_name, plan
from skiff.errors import InvalidArgument, NotFound


def test_a_plan_names_and_numbers_the_nodes(tmp_path: Path) -> None:
    state = plan("demo", tmp_path, 3, ipaddress.IPv4Network("10.87.5.0/24"), "10.42.0.0/16", "10.43.0.0/16")
    assert (state.bridge, state.gateway, state.server_url) == ("skc-demo", "10.87.5.1", "https://10.87.5.2:6443")
    assert [(n.name, n.address, n.netns, n.veth, n.cgroup_parent) for n in state.nodes] == [
        ("demo-1", "10.87.5.2", "skc-demo-1", "skv1-demo", "/skc-demo-1"),
        ("demo-2", "10.87.5.3", "skc-demo-2", "skv2-demo", "/skc-demo-2"),
        ("demo-3", "10.87.5.4", "skc-demo-3", "skv3-demo", "/skc-demo-3")]
    assert state.nodes[1].engine_host == f"unix://{tmp_path}/n2/engine.sock"
    assert all(len(name) <= 15 for n in state.nodes for name in (n.veth, state.bridge))


def test_the_record_round_trips(tmp_path: Path) -> None:
    state = plan("rt", tmp_path, 2, ipaddress.IPv4Network("10.87.9.0/24"), "10.42.0.0/16", "10.43.0.0/16")
    state.nodes[0].processes["engine"] = Process(123, 456, str(tmp_path / "n1" / "engine.log"))
    state.save()
    assert ClusterState.load(tmp_path) == state
    with pytest.raises(NotFound):
        ClusterState.load(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["", "-a", "a-", "UPPER", "under_score", "ninechars", "dot.ted"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_name(name)


def test_impossible_plans_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        plan("x", tmp_path, 0, ipaddress.IPv4Network("10.87.0.0/24"), "10.42.0.0/16", "10.43.0.0/16")
    with pytest.raises(InvalidArgument):
        plan("x", tmp_path, 3, ipaddress.IPv4Network("10.87.0.0/30"), "10.42.0.0/16", "10.43.0.0/16")
