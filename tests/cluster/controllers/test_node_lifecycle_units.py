"""The node lifecycle and taint eviction decisions, as pure functions: which conditions a silent node gets,
which taints its conditions call for, when a pod must leave a tainted node, how zones are judged; and the
API server's DefaultTolerationSeconds admission."""

from __future__ import annotations

from typing import Any

import pytest

from skiff.cluster.api.validation import default_toleration_seconds
from skiff.cluster.controllers.nodelifecycle import (
    NOT_READY,
    UNREACHABLE,
    ZoneState,
    merge_taints,
    no_execute_key,
    no_schedule_taints,
    owned,
    ready_status,
    same_taints,
    stale_conditions,
    tainting_rate,
    zone_of,
    zone_state,
)
from skiff.cluster.controllers.options import ControllerOptions, from_flags, to_flags
from skiff.cluster.controllers.tainteviction import eviction_delay, tolerates
from skiff.errors import InvalidArgument

NOW = "2026-01-01T00:01:00Z"


def node(conditions: dict[str, str] | None = None, unschedulable: bool = False, taints: list[Any] | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "n", "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels or {}},
            "spec": {"unschedulable": unschedulable, "taints": taints or []},
            "status": {"conditions": [{"type": kind, "status": status, "reason": "KubeletSays",
                                       "lastHeartbeatTime": "2026-01-01T00:00:30Z",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}
                                      for kind, status in (conditions or {}).items()]}}


HEALTHY = {"Ready": "True", "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False"}


# --- a silent node's conditions ----------------------------------------------------------------------------------

def test_a_silent_node_has_every_monitored_condition_unknown_with_its_heartbeat_kept() -> None:
    conditions = {c["type"]: c for c in stale_conditions(node({**HEALTHY, "NetworkUnavailable": "False"}), NOW)}
    for kind in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure"):
        assert conditions[kind]["status"] == "Unknown"
        assert conditions[kind]["reason"] == "NodeStatusUnknown"
        assert conditions[kind]["message"] == "Kubelet stopped posting node status."
        assert conditions[kind]["lastHeartbeatTime"] == "2026-01-01T00:00:30Z"  # what the kubelet last said
        assert conditions[kind]["lastTransitionTime"] == NOW
    assert conditions["NetworkUnavailable"]["status"] == "False"  # not the kubelet's to post: left alone


def test_a_node_that_never_posted_gets_conditions_marked_never_updated() -> None:
    conditions = {c["type"]: c for c in stale_conditions(node(), NOW)}
    assert conditions["Ready"]["status"] == "Unknown"
    assert conditions["Ready"]["reason"] == "NodeStatusNeverUpdated"
    assert conditions["Ready"]["lastHeartbeatTime"] == "2026-01-01T00:00:00Z"  # its creation


def test_conditions_already_unknown_keep_their_transition_time() -> None:
    stale = node({"Ready": "Unknown"})
    ready = next(c for c in stale_conditions(stale, NOW) if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["reason"] == "KubeletSays"


# --- taints from conditions --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("conditions", "unschedulable", "expected"), [
    (HEALTHY, False, []),
    ({**HEALTHY, "Ready": "False"}, False, [NOT_READY]),
    ({**HEALTHY, "Ready": "Unknown"}, False, [UNREACHABLE]),
    ({**HEALTHY, "MemoryPressure": "True", "DiskPressure": "True"}, False,
     ["node.kubernetes.io/disk-pressure", "node.kubernetes.io/memory-pressure"]),
    ({**HEALTHY, "PIDPressure": "True", "NetworkUnavailable": "True"}, False,
     ["node.kubernetes.io/network-unavailable", "node.kubernetes.io/pid-pressure"]),
    ({**HEALTHY, "MemoryPressure": "Unknown"}, False, []),  # only True pressure taints
    (HEALTHY, True, ["node.kubernetes.io/unschedulable"]),
])
def test_no_schedule_taints_follow_the_conditions(conditions: dict[str, str], unschedulable: bool,
                                                  expected: list[str]) -> None:
    taints = no_schedule_taints(node(conditions, unschedulable))
    assert [t["key"] for t in taints] == expected
    assert all(t["effect"] == "NoSchedule" for t in taints)


def test_no_execute_taint_follows_ready() -> None:
    assert no_execute_key("True") is None
    assert no_execute_key("False") == NOT_READY
    assert no_execute_key("Unknown") == UNREACHABLE
    assert no_execute_key(None) is None  # no Ready condition yet: the startup grace decides
    assert ready_status(node({"Ready": "False"})) == "False"
    assert ready_status(node()) is None


def test_merging_keeps_foreign_taints_and_the_time_a_taint_was_added() -> None:
    foreign = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
               {"key": NOT_READY, "effect": "PreferNoSchedule"}]  # same key, an effect the controller does not own
    old_unreachable = {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:45Z"}
    current = [*foreign, old_unreachable, {"key": NOT_READY, "effect": "NoSchedule"}]
    merged = merge_taints(current, [{"key": UNREACHABLE, "effect": "NoSchedule"}], UNREACHABLE, NOW)
    assert merged[:2] == foreign
    assert {"key": UNREACHABLE, "effect": "NoSchedule"} in merged
    assert old_unreachable in merged  # kept as it was: its timeAdded does not move
    assert {"key": NOT_READY, "effect": "NoSchedule"} not in merged
    healed = merge_taints(merged, [], None, NOW)
    assert healed == foreign
    fresh = merge_taints(foreign, [], NOT_READY, NOW)
    assert fresh[-1] == {"key": NOT_READY, "effect": "NoExecute", "timeAdded": NOW}
    assert same_taints(list(reversed(merged)), merged)
    assert not same_taints(healed, merged)
    assert owned({"key": UNREACHABLE, "effect": "NoExecute"}) and not owned(foreign[0])


# --- zones and the tainting rate ---------------------------------------------------------------------------------

def test_zone_states_are_kubes() -> None:
    assert zone_state(3, 0, 0.55) is ZoneState.NORMAL
    assert zone_state(2, 1, 0.55) is ZoneState.NORMAL
    assert zone_state(1, 2, 0.55) is ZoneState.NORMAL  # two down are never a disruption
    assert zone_state(2, 3, 0.55) is ZoneState.PARTIAL_DISRUPTION
    assert zone_state(3, 3, 0.55) is ZoneState.NORMAL  # 50 %
    assert zone_state(0, 1, 0.55) is ZoneState.FULL_DISRUPTION
    assert zone_state(0, 0, 0.55) is ZoneState.NORMAL


def test_tainting_rate_slows_down_in_a_disrupted_zone() -> None:
    options = ControllerOptions(node_eviction_rate=0.1, secondary_node_eviction_rate=0.01,
                                large_cluster_size_threshold=50)
    assert tainting_rate(ZoneState.NORMAL, 10, options) == 0.1
    assert tainting_rate(ZoneState.FULL_DISRUPTION, 10, options) == 0.1
    assert tainting_rate(ZoneState.PARTIAL_DISRUPTION, 51, options) == 0.01
    assert tainting_rate(ZoneState.PARTIAL_DISRUPTION, 50, options) == 0.0  # small zones stop


def test_zones_come_from_the_topology_labels() -> None:
    assert zone_of(node()) == ""
    assert zone_of(node(labels={"topology.kubernetes.io/zone": "a"})) == "/a"
    assert zone_of(node(labels={"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "a"})) == "r/a"


# --- tolerations and eviction deadlines --------------------------------------------------------------------------

UNREACHABLE_TAINT = {"key": UNREACHABLE, "effect": "NoExecute"}
NOT_READY_TAINT = {"key": NOT_READY, "effect": "NoExecute"}


@pytest.mark.parametrize(("toleration", "taint", "expected"), [
    ({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}, UNREACHABLE_TAINT, True),
    ({"key": UNREACHABLE, "operator": "Exists"}, UNREACHABLE_TAINT, True),  # any effect
    ({"operator": "Exists"}, UNREACHABLE_TAINT, True),  # any key
    ({"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}, UNREACHABLE_TAINT, False),
    ({"key": NOT_READY, "operator": "Exists"}, UNREACHABLE_TAINT, False),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),  # Equal by default
    ({"key": "k", "operator": "Equal", "value": "w"}, {"key": "k", "value": "v", "effect": "NoExecute"}, False),
    ({"key": "k", "operator": "Bogus"}, {"key": "k", "effect": "NoExecute"}, False),
])
def test_tolerations_match_as_kubes(toleration: dict[str, Any], taint: dict[str, Any], expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


def seconds(key: str, value: int | None) -> dict[str, Any]:
    toleration: dict[str, Any] = {"key": key, "operator": "Exists", "effect": "NoExecute"}
    if value is not None:
        toleration["tolerationSeconds"] = value
    return toleration


def test_eviction_deadlines_from_tolerations() -> None:
    defaults = [seconds(NOT_READY, 300), seconds(UNREACHABLE, 300)]
    assert eviction_delay([], defaults) is None  # no taint: stays
    assert eviction_delay([{"key": UNREACHABLE, "effect": "NoSchedule"}], []) is None  # only NoExecute evicts
    assert eviction_delay([UNREACHABLE_TAINT], defaults) == 300
    assert eviction_delay([UNREACHABLE_TAINT], []) == 0  # not tolerated: at once
    assert eviction_delay([{"key": "other", "effect": "NoExecute"}, UNREACHABLE_TAINT], defaults) == 0
    assert eviction_delay([UNREACHABLE_TAINT], [seconds(UNREACHABLE, None)]) is None  # tolerated forever
    assert eviction_delay([UNREACHABLE_TAINT, NOT_READY_TAINT], [seconds(UNREACHABLE, 60), seconds(NOT_READY, 10)]) \
        == 10  # the shortest of the tolerations used
    assert eviction_delay([UNREACHABLE_TAINT], [seconds(UNREACHABLE, -5)]) == 0
    # each taint takes the first toleration that matches it: forever here, the 5 s one is not used
    assert eviction_delay([UNREACHABLE_TAINT], [{"operator": "Exists"}, seconds(UNREACHABLE, 5)]) is None


# --- DefaultTolerationSeconds admission ----------------------------------------------------------------------------

def test_pods_get_the_default_tolerations() -> None:
    pod: dict[str, Any] = {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    default_toleration_seconds(pod, 300, 120)
    assert pod["spec"]["tolerations"] == [
        {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 120}]


def test_pods_tolerating_the_taints_already_keep_their_own() -> None:
    own = [seconds(UNREACHABLE, 5), {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    pod: dict[str, Any] = {"spec": {"tolerations": list(own)}}
    default_toleration_seconds(pod, 300, 300)
    assert pod["spec"]["tolerations"] == [*own, {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute",
                                                 "tolerationSeconds": 300}]
    everything: dict[str, Any] = {"spec": {"tolerations": [{"operator": "Exists"}]}}  # tolerates all taints
    default_toleration_seconds(everything, 300, 300)
    assert everything["spec"]["tolerations"] == [{"operator": "Exists"}]


# --- options --------------------------------------------------------------------------------------------------

def test_options_round_trip_through_flags() -> None:
    import argparse

    from skiff.cluster.controllers.options import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    options = from_flags(parser.parse_args(["--node-monitor-grace-period", "4", "--node-eviction-rate", "1"]))
    assert options.node_monitor_grace_period == 4 and options.node_eviction_rate == 1
    assert to_flags(options) == ["--node-monitor-grace-period", "4.0", "--node-eviction-rate", "1.0"]
    assert from_flags(parser.parse_args(to_flags(options))) == options
    with pytest.raises(InvalidArgument, match="node-monitor-grace-period"):
        from_flags(parser.parse_args(["--node-monitor-grace-period", "0"]))
