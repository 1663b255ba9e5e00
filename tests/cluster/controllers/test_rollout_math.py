"""The Deployment arithmetic (``rollout.py``) on its own: kube's fenceposts, surge sizing, proportional shares,
revision annotations, template hashing and comparison, and ReplicaSet deletion order."""

from __future__ import annotations

import pytest

from skiff.cluster.controllers import rollout as r
from skiff.cluster.controllers.replicaset import pods_to_delete


def deployment(replicas: int, surge: object = "25%", unavailable: object = "25%", kind: str = "RollingUpdate",
               **status: int) -> dict:
    strategy: dict = {"type": kind}
    if kind == "RollingUpdate":
        strategy["rollingUpdate"] = {"maxSurge": surge, "maxUnavailable": unavailable}
    return {"metadata": {"name": "d", "generation": 1, "annotations": {}},
            "spec": {"replicas": replicas, "strategy": strategy, "template": {}}, "status": dict(status)}


def rs(name: str, replicas: int, created: str = "2026-01-01T00:00:00Z", available: int = 0, **annotations: str) -> dict:
    return {"metadata": {"name": name, "uid": name, "creationTimestamp": created, "annotations": dict(annotations)},
            "spec": {"replicas": replicas}, "status": {"availableReplicas": available}}


@pytest.mark.parametrize(("replicas", "surge", "unavailable", "expected"), [
    (4, "25%", "25%", (1, 1)),
    (10, "25%", "25%", (3, 2)),  # surge rounds up, unavailable down
    (1, "25%", "25%", (1, 0)),
    (3, 0, "10%", (0, 1)),  # both would be zero: one may be unavailable
    (4, 2, 0, (2, 0)),
    (5, "100%", "50%", (5, 2)),
])
def test_fenceposts(replicas: int, surge: object, unavailable: object, expected: tuple[int, int]) -> None:
    d = deployment(replicas, surge, unavailable)
    assert r.fenceposts(d) == expected
    assert r.max_unavailable(d) == min(expected[1], replicas)


def test_recreate_has_no_surge_or_unavailability() -> None:
    d = deployment(4, kind="Recreate")
    assert (r.max_surge(d), r.max_unavailable(d)) == (0, 0)
    assert r.new_rs_new_replicas(d, [rs("old", 4)], rs("new", 0)) == 4


def test_new_replicaset_grows_within_surge() -> None:
    d = deployment(4, surge=1, unavailable=0)
    assert r.new_rs_new_replicas(d, [rs("old", 4), rs("new", 0)], rs("new", 0)) == 1
    assert r.new_rs_new_replicas(d, [rs("old", 4), rs("new", 1)], rs("new", 1)) == 1  # at 5: wait
    assert r.new_rs_new_replicas(d, [rs("old", 2), rs("new", 1)], rs("new", 1)) == 3
    assert r.new_rs_new_replicas(d, [rs("old", 0), rs("new", 3)], rs("new", 3)) == 4  # never beyond replicas


def test_proportional_shares_follow_max_replicas() -> None:
    d = deployment(20, surge=3, unavailable=2)
    old = rs("old", 8, **{r.MAX_REPLICAS: "13"})
    new = rs("new", 5, **{r.MAX_REPLICAS: "13"})
    assert r.proportion(old, d, 10, 0) == 6  # round(8 * 23 / 13) - 8
    assert r.proportion(new, d, 10, 6) == 4  # round(5 * 23 / 13) - 5, within what is left
    assert r.proportion(new, d, 10, 10) == 0
    assert r.proportion(old, deployment(0), -8, 0) == -8  # to zero: everything goes


def test_active_or_latest() -> None:
    old1, old2 = rs("a", 0, "2026-01-01T00:00:00Z"), rs("b", 0, "2026-01-02T00:00:00Z")
    assert r.find_active_or_latest(None, [old1, old2]) is old2  # none active: the newest
    assert r.find_active_or_latest(rs("n", 0), [old1, old2])["metadata"]["name"] == "n"
    assert r.find_active_or_latest(rs("n", 2), [rs("a", 1)]) is None  # two active: no single one


def test_revision_annotations_keep_history_on_rollback() -> None:
    d = deployment(2)
    d["metadata"]["annotations"] = {"kubernetes.io/change-cause": "why", r.LAST_APPLIED: "{}", r.REVISION: "3"}
    back = rs("back", 0, **{r.REVISION: "1"})
    assert r.set_new_rs_annotations(d, back, 4, exists=True)
    annotations = back["metadata"]["annotations"]
    assert annotations == {r.REVISION: "4", r.REVISION_HISTORY: "1", "kubernetes.io/change-cause": "why"}
    back["metadata"]["annotations"][r.REVISION] = "2"
    r.set_new_rs_annotations(d, back, 6, exists=True)
    assert back["metadata"]["annotations"][r.REVISION_HISTORY] == "1,2"
    assert not r.set_new_rs_annotations(d, back, 6, exists=True)  # nothing left to change
    fresh = rs("fresh", 2)
    r.set_new_rs_annotations(d, fresh, 1, exists=False)
    assert fresh["metadata"]["annotations"][r.DESIRED_REPLICAS] == "2"
    assert fresh["metadata"]["annotations"][r.MAX_REPLICAS] == "3"


def test_template_hash_and_comparison() -> None:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    as_kubectl_sends_it = {"metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
                           "spec": {"containers": [{"name": "c", "image": "x", "resources": {}}]}}
    labelled = {"metadata": {"labels": {"app": "web", r.HASH_LABEL: "abc"}}, "spec": template["spec"]}
    assert r.equal_ignoring_hash(template, as_kubectl_sends_it) and r.equal_ignoring_hash(template, labelled)
    value = r.template_hash(template)
    assert value == r.template_hash(labelled) == r.template_hash(as_kubectl_sends_it)
    assert 1 <= len(value) <= 10 and set(value) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert r.template_hash(template, 1) != value  # a collision count makes another name
    other = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "y"}]}}
    assert r.template_hash(other) != value and not r.equal_ignoring_hash(template, other)


def test_conditions_keep_transition_time_while_status_holds() -> None:
    status: dict = {}
    first = r.new_condition(r.PROGRESSING, "True", r.RS_UPDATED, "one")
    first["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    r.set_condition(status, first)
    r.set_condition(status, r.new_condition(r.PROGRESSING, "True", r.NEW_RS_AVAILABLE, "two"))
    (cond,) = status["conditions"]
    assert cond["reason"] == r.NEW_RS_AVAILABLE and cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_completion_and_timeouts() -> None:
    d = deployment(2)
    d["spec"]["progressDeadlineSeconds"] = 10
    done = {"updatedReplicas": 2, "replicas": 2, "availableReplicas": 2, "observedGeneration": 1}
    assert r.is_complete(d, done) and not r.is_complete(d, {**done, "replicas": 3})
    status = {"conditions": [{"type": r.PROGRESSING, "reason": r.RS_UPDATED,
                              "lastUpdateTime": "2026-01-01T00:00:00Z"}]}
    assert r.timed_out(d, status, r.parse_time("2026-01-01T00:00:11Z"))
    assert not r.timed_out(d, status, r.parse_time("2026-01-01T00:00:09Z"))
    d["spec"]["progressDeadlineSeconds"] = r.NO_DEADLINE
    assert not r.timed_out(d, status, r.parse_time("2030-01-01T00:00:00Z"))


def pod(name: str, node: str = "", phase: str = "Pending", ready: bool = False, since: str = "",
        created: str = "2026-01-01T00:00:00Z", restarts: int = 0) -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": since}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": conditions, "containerStatuses": [{"restartCount": restarts}]}}


def test_deletion_order() -> None:
    pods = [
        pod("ready-long", "n1", "Running", True, "2026-01-01T00:00:00Z"),
        pod("ready-short", "n2", "Running", True, "2026-01-01T01:00:00Z"),
        pod("crowded", "n3", "Running", True, "2026-01-01T00:00:00Z"),
        pod("crowded-too", "n3", "Running", True, "2026-01-01T00:00:00Z"),
        pod("running-not-ready", "n4", "Running"),
        pod("pending-scheduled", "n5"),
        pod("unscheduled"),
    ]
    order = [p["metadata"]["name"] for p in pods_to_delete(pods, len(pods))]
    assert order[:3] == ["unscheduled", "pending-scheduled", "running-not-ready"]
    assert set(order[3:5]) == {"crowded", "crowded-too"}  # n3 holds two replicas
    assert order[5:] == ["ready-short", "ready-long"]


def test_availability_counts_no_pod_about_to_be_deleted() -> None:
    scaled_down = rs("old", 1, available=4)  # its status still counts the 3 pods it is deleting
    assert r.surely_available([scaled_down, rs("new", 2, available=1), None]) == 2
