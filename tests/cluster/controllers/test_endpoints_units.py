"""The endpoint computation on its own: which pods become addresses, how ports resolve and pack into subsets,
how endpoints spread over EndpointSlices and what a sync would write."""

from __future__ import annotations

from typing import Any

from skiff.cluster.controllers.endpoints import endpoint_subsets, truncate
from skiff.cluster.controllers.endpointslice import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    desired_endpoints,
    plan_slices,
)
from skiff.cluster.controllers.servicepods import EndpointPort, find_port

NOW = "2026-01-01T00:00:00Z"


def service(ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"],
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}] if ports is None else ports,
                     **spec}}


def pod(name: str, ip: str | None, ready: bool = True, ports: list[dict[str, Any]] | None = None,
        node: str = "n1", deleting: bool = False, phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = NOW
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
            "status": status}


def ips(addresses: list[dict[str, Any]] | None) -> list[str]:
    return [a["ip"] for a in addresses or ()]


# --- Endpoints ------------------------------------------------------------------------------------------------

def test_ready_and_not_ready_pods_split_and_pods_without_ip_or_finished_are_left_out() -> None:
    pods = [pod("b", "10.0.0.2"), pod("a", "10.0.0.1"), pod("c", "10.0.0.3", ready=False), pod("d", None),
            pod("e", "10.0.0.5", phase="Succeeded"), pod("f", "10.0.0.6", deleting=True)]
    (subset,) = endpoint_subsets(service(), pods)
    assert ips(subset["addresses"]) == ["10.0.0.1", "10.0.0.2"]
    assert ips(subset["notReadyAddresses"]) == ["10.0.0.3"]
    assert subset["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert subset["addresses"][0] == {"ip": "10.0.0.1", "nodeName": "n1", "targetRef": {
        "kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}}


def test_named_target_port_resolves_per_pod_and_pods_group_into_subsets_by_ports() -> None:
    svc = service([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                   {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}])
    pods = [pod("a", "10.0.0.1", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.0.0.2", ports=[{"name": "web", "containerPort": 9090}]),
            pod("c", "10.0.0.3", ports=[{"name": "web", "containerPort": 8080}]),
            pod("d", "10.0.0.4", ports=[{"name": "web", "containerPort": 8080, "protocol": "UDP"}])]
    subsets = endpoint_subsets(svc, pods)
    shape = [(ips(s.get("addresses")), [(p.get("name"), p["port"]) for p in s["ports"]]) for s in subsets]
    # as kube's RepackSubsets: ports served by exactly the same addresses share a subset; d has no TCP "web"
    assert shape == [(["10.0.0.1", "10.0.0.3"], [("http", 8080)]), (["10.0.0.2"], [("http", 9090)]),
                     (["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], [("metrics", 9100)])]


def test_same_addresses_on_several_ports_make_one_subset() -> None:
    svc = service([{"name": "a", "port": 80, "targetPort": 80, "protocol": "TCP"},
                   {"name": "b", "port": 443, "targetPort": 443, "protocol": "TCP"}])
    (subset,) = endpoint_subsets(svc, [pod("x", "10.0.0.1"), pod("y", "10.0.0.2", ready=False)])
    assert [p["port"] for p in subset["ports"]] == [80, 443]
    assert ips(subset["addresses"]) == ["10.0.0.1"] and ips(subset["notReadyAddresses"]) == ["10.0.0.2"]


def test_publish_not_ready_addresses_lists_every_pod_as_ready_even_terminating() -> None:
    pods = [pod("a", "10.0.0.1", ready=False), pod("b", "10.0.0.2", deleting=True)]
    (subset,) = endpoint_subsets(service(publishNotReadyAddresses=True), pods)
    assert ips(subset["addresses"]) == ["10.0.0.1", "10.0.0.2"] and "notReadyAddresses" not in subset


def test_headless_service_without_ports_lists_addresses_and_hostnames() -> None:
    svc = service([], clusterIP="None")
    member = pod("a", "10.0.0.1")
    member["spec"].update(hostname="web-0", subdomain="web")
    (subset,) = endpoint_subsets(svc, [member])
    assert "ports" not in subset and subset["addresses"][0]["hostname"] == "web-0"
    assert endpoint_subsets(service([]), [member]) == []  # not headless, no ports: nothing


def test_find_port_protocols_and_sidecars() -> None:
    p = pod("a", "10.0.0.1", ports=[{"name": "dns", "containerPort": 53, "protocol": "UDP"}])
    p["spec"]["initContainers"] = [{"name": "side", "restartPolicy": "Always",
                                    "ports": [{"name": "proxy", "containerPort": 15001}]}]
    assert find_port(p, {"port": 53, "targetPort": "dns", "protocol": "UDP"}) == 53
    assert find_port(p, {"port": 53, "targetPort": "dns", "protocol": "TCP"}) is None
    assert find_port(p, {"port": 1, "targetPort": "proxy"}) == 15001
    assert find_port(p, {"port": 80}) == 80


# --- EndpointSlices -------------------------------------------------------------------------------------------

def test_slice_endpoints_carry_conditions_node_zone_and_target() -> None:
    pods = [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False), pod("c", "10.0.0.3", deleting=True)]
    desired = desired_endpoints(service(), pods, zone_of=lambda node: "zone-1")
    ((key, group),) = desired.items()
    assert key == ("IPv4", (EndpointPort(8080),))
    a, b, c = group.endpoints.values()
    assert a == {"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True, "terminating": False},
                 "nodeName": "n1", "zone": "zone-1",
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}}
    assert b["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert c["conditions"] == {"ready": False, "serving": True, "terminating": True}


def _apply(plan: Any, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slices after ``plan`` (names made up for creations), as the server would hold them."""
    by_name = {s["metadata"]["name"]: s for s in existing}
    for s in plan.delete:
        del by_name[s["metadata"]["name"]]
    for s in plan.update:
        by_name[s["metadata"]["name"]] = s
    for i, s in enumerate(plan.create):
        s["metadata"] = {**s["metadata"], "name": f"web-new{len(by_name)}-{i}"}
        by_name[s["metadata"]["name"]] = s
    return list(by_name.values())


def test_slices_hold_at_most_the_limit_and_stay_put_when_nothing_changes() -> None:
    svc = service()
    pods = [pod(f"p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    plan = plan_slices(svc, [], desired_endpoints(svc, pods))
    assert [len(s["endpoints"]) for s in plan.create] == [100, 100, 50] and not plan.update and not plan.delete
    first = plan.create[0]
    assert first["metadata"]["generateName"] == "web-" and first["addressType"] == "IPv4"
    assert first["metadata"]["labels"] == {"tier": "front", SERVICE_NAME_LABEL: "web",
                                          MANAGED_BY_LABEL: CONTROLLER_NAME}
    assert first["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                     "uid": "svc-uid", "controller": True, "blockOwnerDeletion": True}]
    assert first["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    slices = _apply(plan, [])
    assert not plan_slices(svc, slices, desired_endpoints(svc, pods))  # no write storm: same content, no writes

    # one pod goes not ready and two new ones come: one slice rewritten, the new ones fill the slice with room
    pods[0]["status"]["conditions"][0]["status"] = "False"
    pods += [pod("q1", "10.1.0.1"), pod("q2", "10.1.0.2")]
    plan = plan_slices(svc, slices, desired_endpoints(svc, pods))
    assert not plan.create and not plan.delete and len(plan.update) == 2
    after = _apply(plan, slices)
    assert sorted(len(s["endpoints"]) for s in after) == [52, 100, 100]
    listed = [e["targetRef"]["name"] for s in after for e in s["endpoints"]]
    assert sorted(listed) == sorted(p["metadata"]["name"] for p in pods)


def test_scaling_down_deletes_emptied_slices_and_keeps_a_placeholder_at_zero() -> None:
    svc = service()
    pods = [pod(f"p{i}", f"10.0.0.{i + 1}") for i in range(150)]
    slices = _apply(plan_slices(svc, [], desired_endpoints(svc, pods)), [])
    plan = plan_slices(svc, slices, desired_endpoints(svc, pods[:100]))
    after = _apply(plan, slices)
    assert len(plan.delete) + len(plan.update) >= 1 and len(after) <= 2
    assert sorted(e["targetRef"]["name"] for s in after for e in s["endpoints"]) == sorted(
        p["metadata"]["name"] for p in pods[:100])
    plan = plan_slices(svc, after, desired_endpoints(svc, []))
    (placeholder,) = _apply(plan, after)
    assert placeholder["endpoints"] == [] and "ports" not in placeholder and not plan.create  # reused, not new


def test_pods_with_different_resolved_ports_get_separate_slices_and_a_port_change_reuses_slices() -> None:
    svc = service([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}])
    pods = [pod("a", "10.0.0.1", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.0.0.2", ports=[{"name": "web", "containerPort": 9090}])]
    plan = plan_slices(svc, [], desired_endpoints(svc, pods))
    assert sorted((s["ports"][0]["port"], len(s["endpoints"])) for s in plan.create) == [(8080, 1), (9090, 1)]
    slices = _apply(plan, [])
    svc["spec"]["ports"][0]["targetPort"] = 7000
    plan = plan_slices(svc, slices, desired_endpoints(svc, pods))
    assert not plan.create and len(plan.update) == 1 and len(plan.delete) == 1  # one rewritten, one gone
    assert plan.update[0]["ports"][0]["port"] == 7000 and len(plan.update[0]["endpoints"]) == 2


def test_slices_of_an_earlier_service_of_the_same_name_are_replaced() -> None:
    svc = service()
    slices = _apply(plan_slices(svc, [], desired_endpoints(svc, [pod("a", "10.0.0.1")])), [])
    reborn = service()
    reborn["metadata"]["uid"] = "svc-uid-2"
    plan = plan_slices(reborn, slices, desired_endpoints(reborn, [pod("a", "10.0.0.1")]))
    (rewritten,) = plan.update
    assert rewritten["metadata"]["ownerReferences"][0]["uid"] == "svc-uid-2" and not plan.delete


def test_endpoints_beyond_capacity_are_truncated_ready_first_and_in_proportion() -> None:
    svc = service([{"name": "a", "port": 80, "targetPort": "a", "protocol": "TCP"}])
    pods = [pod(f"p{i}", f"10.1.{i // 200}.{i % 200 + 1}", ready=i % 10 != 0,
                ports=[{"name": "a", "containerPort": 8080 if i % 4 else 9090}]) for i in range(1200)]
    subsets = endpoint_subsets(svc, pods)
    assert truncate(subsets, 1000)
    assert sum(len(s.get("addresses") or ()) for s in subsets) == 1000  # 1080 ready: no room for not-ready ones
    assert all("notReadyAddresses" not in s for s in subsets)
    assert sorted(len(s["addresses"]) for s in subsets) == [223, 777]  # 240 : 840 ready, kept in proportion
    few = endpoint_subsets(svc, pods[:50])
    assert not truncate(few, 1000) and few == endpoint_subsets(svc, pods[:50])
