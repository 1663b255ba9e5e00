"""The horizontal pod autoscaler's arithmetic, rule by rule (kube's replica calculator and behavior)."""

from __future__ import annotations

import pytest

from skiff.cluster.controllers import replica_calculator as calc
from skiff.cluster.controllers.replica_calculator import MetricError, PodGroups

TOLERANCE = 0.1


def pod(name: str, phase: str = "Running", ready: bool = True, cpu: str | None = "100m", deleting: bool = False,
        containers: int = 1) -> dict:
    requests = {"cpu": cpu} if cpu else {}
    meta = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    return {"metadata": meta,
            "spec": {"containers": [{"name": f"c{i}", "resources": {"requests": requests}} for i in range(containers)]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def utilization(pods: list[dict], usage: dict[str, int], target: int, current: int) -> calc.Proposal:
    groups = calc.group_pods(pods, usage, "cpu")
    requests = calc.pod_requests(pods, groups.ready + groups.missing + groups.unready, "cpu", None)
    return calc.utilization_replicas(groups, usage, requests, target, current, TOLERANCE)


def test_pods_are_grouped_as_kube_groups_them() -> None:
    pods = [pod("ok"), pod("gone", deleting=True), pod("failed", "Failed"), pod("done", "Succeeded"),
            pod("starting", "Pending"), pod("warming", ready=False), pod("silent")]
    usage = {name: 10 for name in ("ok", "gone", "failed", "done", "warming")}
    assert calc.group_pods(pods, usage, "cpu") == PodGroups(
        ready=["ok"], unready=["starting", "warming"], missing=["silent"], ignored=["gone", "failed", "done"])
    # readiness only matters for CPU (its start-up burst); memory counts a not-ready pod's figures
    assert calc.group_pods(pods, usage, "memory").ready == ["ok", "warming"]


def test_usage_over_the_target_scales_up_in_proportion() -> None:
    proposal = utilization([pod("a"), pod("b")], {"a": 200, "b": 200}, target=50, current=2)
    assert (proposal.replicas, proposal.utilization, proposal.average) == (8, 200, 200)
    assert utilization([pod("a"), pod("b")], {"a": 20, "b": 10}, target=50, current=2).replicas == 1


def test_within_the_tolerance_nothing_changes() -> None:
    assert utilization([pod("a"), pod("b")], {"a": 54, "b": 54}, target=50, current=2).replicas == 2
    assert utilization([pod("a"), pod("b")], {"a": 56, "b": 56}, target=50, current=2).replicas == 3


def test_missing_pods_are_assumed_at_their_request_when_scaling_down() -> None:
    pods = [pod(n) for n in "abcde"]
    usage = {n: 10 for n in "abcd"}  # e has no figures yet
    # the ready pods alone say 10%: 1 replica; with e at 100% of its request the average is 28%: 3
    assert utilization(pods, usage, target=50, current=5).replicas == 3
    # and at zero when scaling up: a=b=200% alone say 8; with c at 0 the average is 133%: 8 again, not more
    assert utilization([pod("a"), pod("b"), pod("c")], {"a": 200, "b": 200}, target=50, current=3).replicas == 8


def test_unready_pods_count_as_idle_when_scaling_up_and_can_cancel_it() -> None:
    pods = [pod("a"), pod("b", ready=False)]
    assert utilization(pods, {"a": 200, "b": 900}, target=50, current=2).replicas == 4  # b's burst is not counted
    # a at 60% alone would scale up; with b idle the average is 30%: the direction flips, so nothing changes
    assert utilization(pods, {"a": 60, "b": 900}, target=50, current=2).replicas == 2


def test_what_cannot_be_measured_is_an_error_in_kubes_words() -> None:
    with pytest.raises(MetricError, match="missing request for cpu in container c0 of Pod a"):
        calc.pod_requests([pod("a", cpu=None)], ["a"], "cpu", None)
    with pytest.raises(MetricError, match="did not receive metrics for targeted pods"):
        utilization([pod("a", ready=False)], {"a": 50}, target=50, current=1)


def test_average_value_targets_divide_the_usage() -> None:
    groups = calc.group_pods([pod("a"), pod("b")], {"a": 300, "b": 100}, "memory")
    proposal = calc.average_value_replicas(groups, {"a": 300, "b": 100}, target=100, current=2, tolerance=TOLERANCE)
    assert (proposal.replicas, proposal.average) == (4, 200)


def test_container_and_pod_usage() -> None:
    usage = {"a": {"web": {"cpu": 30, "memory": 5}, "side": {"cpu": 20, "memory": 7}}, "b": {"side": {"cpu": 4}}}
    assert calc.pod_usage(usage, "cpu", None) == {"a": 50, "b": 4}
    assert calc.pod_usage(usage, "cpu", "web") == {"a": 30}
    assert calc.pod_usage(usage, "memory", None) == {"a": 12}


def test_stabilization_holds_the_highest_recent_proposal_before_scaling_down() -> None:
    behavior = calc.behavior_of(None, down_window=300)
    proposals: list[tuple[float, int]] = [(100.0, 5)]
    assert calc.stabilize(proposals, 200.0, 2, 5, behavior) == (5, "ScaleDownStabilized")
    assert calc.stabilize(proposals, 401.0, 2, 5, behavior) == (2, "ReadyForNewScale")  # 5 left the window
    assert proposals == [(200.0, 2), (401.0, 2)]
    quick = calc.behavior_of({"scaleUp": calc.default_rules("scaleUp", 0) | {"stabilizationWindowSeconds": 60},
                              "scaleDown": calc.default_rules("scaleDown", 0)}, down_window=300)
    assert calc.stabilize([(100.0, 3)], 120.0, 8, 2, quick) == (3, "ScaleUpStabilized")


def test_scaling_policies_limit_the_rate_then_min_and_max() -> None:
    behavior = calc.behavior_of(None, down_window=0)
    # up: 4 pods or 100% per 15 s, whichever allows more
    assert calc.limit_rate(20, 2, 1, 50, 0.0, behavior, [], []) == (
        6, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
    assert calc.limit_rate(20, 10, 1, 50, 0.0, behavior, [], [])[0] == 20
    assert calc.limit_rate(20, 2, 1, 5, 0.0, behavior, [], [])[:2] == (5, "TooManyReplicas")
    # 4 were added 5 s ago: the period started at 2, so 6 is all it may reach yet
    assert calc.limit_rate(20, 6, 1, 50, 5.0, behavior, [(0.0, 4)], [])[0] == 6
    assert calc.limit_rate(20, 6, 1, 50, 16.0, behavior, [(0.0, 4)], [])[0] == 12
    # down: 100% per 15 s, then minReplicas
    assert calc.limit_rate(0, 10, 2, 50, 0.0, behavior, [], [])[:2] == (2, "TooFewReplicas")
    slow = calc.behavior_of({"scaleUp": calc.default_rules("scaleUp", 0), "scaleDown": {
        "stabilizationWindowSeconds": 0, "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}, down_window=0)
    assert calc.limit_rate(1, 10, 1, 50, 0.0, slow, [], [])[:2] == (8, "ScaleDownLimit")
    assert calc.limit_rate(1, 8, 1, 50, 30.0, slow, [], [(0.0, 2)])[0] == 8
    disabled = calc.behavior_of({"scaleUp": {"selectPolicy": "Disabled", "policies": []},
                                 "scaleDown": calc.default_rules("scaleDown", 0)}, down_window=0)
    assert calc.limit_rate(9, 3, 1, 50, 0.0, disabled, [], [])[0] == 3
    assert calc.limit_rate(4, 4, 1, 50, 0.0, behavior, [], []) == (4, "", "")


def test_amounts_print_as_canonical_quantities() -> None:
    assert [calc.format_amount("cpu", v) for v in (250, 2000, 0)] == ["250m", "2", "0"]
    assert [calc.format_amount("memory", v) for v in (64_000_000, 52_428_800)] == ["64M", "52428800"]
    assert calc.amount("cpu", "0.5") == 500 and calc.amount("memory", "1Mi") == 1_048_576
