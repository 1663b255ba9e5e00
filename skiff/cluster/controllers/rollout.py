"""The arithmetic of Deployments (kube's deployment/util): pure functions over Deployment and ReplicaSet dicts.

Template hashes, maxSurge/maxUnavailable, revisions and their annotations, which ReplicaSet is new, how many
replicas a rolling update may add, proportional scaling, conditions and status. ``deployment.py`` does the
I/O; everything here can be tested without a server.

**pod-template-hash.** kube hashes the template with FNV-32a over Go's ``spew`` dump of the struct, which
cannot be reproduced outside Go; Skiff hashes the template's canonical JSON (sorted keys, no spaces, the
``pod-template-hash`` label left out) with FNV-32a, then, as kube does, appends ``collisionCount`` (4 bytes,
little-endian) and encodes the decimal digits in kube's alphabet (``SafeEncodeString``). So the value has
kube's form (up to 10 characters of ``bcdfghjklmnpqrstvwxz2456789``) and is stable for one stored template,
but differs from the value kube would compute. Nothing depends on that: the *new* ReplicaSet is found by
comparing templates with the hash label ignored (kube's ``EqualIgnoreHash``), never by recomputing a hash.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from skiff.cluster.controllers.objects import Obj, now_rfc3339, parse_time

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ROLLBACK_TO = "deprecated.deployment.rollback.to"
# Annotations a Deployment does not pass on to its ReplicaSets (kube's annotationsToSkip).
NOT_COPIED = frozenset({LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO})
MAX_REVISION_HISTORY_CHARS = 2000

# Condition types and reasons, as kubectl and kube's tooling read them.
PROGRESSING, AVAILABLE, REPLICA_FAILURE = "Progressing", "Available", "ReplicaFailure"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
RS_UPDATED = "ReplicaSetUpdated"
TIMED_OUT = "ProgressDeadlineExceeded"
FOUND_NEW_RS = "FoundNewReplicaSet"
NEW_RS_CREATED = "NewReplicaSetCreated"
FAILED_RS_CREATE = "ReplicaSetCreateError"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
NO_DEADLINE = 2**31 - 1  # progressDeadlineSeconds meaning "never"

_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # kube's SafeEncodeString alphabet


# --- hashing ------------------------------------------------------------------------------------------------

def _fnv32a(data: bytes, value: int = 0x811C9DC5) -> int:
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Obj, collision_count: int | None = None) -> str:
    """The ``pod-template-hash`` of ``template`` (see the module docstring)."""
    canonical = json.dumps(without_hash(template), sort_keys=True, separators=(",", ":")).encode()
    value = _fnv32a(canonical)
    if collision_count:
        value = _fnv32a((collision_count & 0xFFFFFFFF).to_bytes(4, "little"), value)
    return "".join(_ALPHANUMS[ord(ch) % len(_ALPHANUMS)] for ch in str(value))


def without_hash(template: Obj) -> Obj:
    """``template`` in a canonical form, without the ``pod-template-hash`` label.

    Go compares templates as typed structs, where a null, an empty string, map or list and an absent field
    are all the zero value (kubectl's ``rollout undo`` sends ``"creationTimestamp": null``): so they are
    dropped here, recursively, and two templates Go finds equal are equal dicts.
    """
    clean = _without_zero(template or {})
    labels = (clean.get("metadata") or {}).get("labels")
    if labels is not None:
        labels.pop(HASH_LABEL, None)
        if not labels:
            clean["metadata"].pop("labels")
            if not clean["metadata"]:
                clean.pop("metadata")
    return clean


def _without_zero(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: _without_zero(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", {}, [])}
    if isinstance(value, list):
        return [_without_zero(v) for v in value]
    return value


def equal_ignoring_hash(a: Obj, b: Obj) -> bool:
    return without_hash(a) == without_hash(b)


# --- the replica sets of a deployment -------------------------------------------------------------------

def replicas(obj: Obj) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def status_of(obj: Obj, field: str) -> int:
    return int((obj.get("status") or {}).get(field) or 0)


def created(rs: Obj) -> tuple[float, str]:
    return parse_time(rs["metadata"].get("creationTimestamp")) or 0.0, rs["metadata"]["name"]


def find_new(deployment: Obj, replica_sets: list[Obj]) -> Obj | None:
    """The oldest ReplicaSet whose template is the Deployment's (kube's FindNewReplicaSet)."""
    template = deployment["spec"].get("template") or {}
    for rs in sorted(replica_sets, key=created):
        if equal_ignoring_hash(rs["spec"].get("template") or {}, template):
            return rs
    return None


def active(replica_sets: list[Obj | None]) -> list[Obj]:
    return [rs for rs in replica_sets if rs is not None and replicas(rs) > 0]


def total_replicas(replica_sets: list[Obj | None]) -> int:
    """Sum of spec.replicas."""
    return sum(replicas(rs) for rs in replica_sets if rs is not None)


def total_status(replica_sets: list[Obj | None], field: str) -> int:
    return sum(status_of(rs, field) for rs in replica_sets if rs is not None)


def surely_available(replica_sets: list[Obj | None]) -> int:
    """Available pods that will stay: per ReplicaSet at most its spec.replicas. Right after a scale-down its
    status still counts the pods about to be deleted; kube sums status alone and can briefly dip below
    ``replicas - maxUnavailable`` when a second sync reads that stale status."""
    return sum(min(replicas(rs), status_of(rs, "availableReplicas")) for rs in replica_sets if rs is not None)


def revision(obj: Obj) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def max_revision(replica_sets: list[Obj]) -> int:
    return max((revision(rs) for rs in replica_sets), default=0)


# --- the rolling-update fenceposts -----------------------------------------------------------------------

def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An int, or a percentage of ``total`` rounded up or down (kube's GetScaledValueFromIntOrPercent)."""
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%"):
        try:
            return int(text)
        except ValueError:
            raise ValueError("invalid value for IntOrString: invalid type: string is not a percentage") from None
    percent = int(text[:-1])
    scaled = percent * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def is_rolling(deployment: Obj) -> bool:
    return ((deployment["spec"].get("strategy") or {}).get("type") or "RollingUpdate") == "RollingUpdate"


def fenceposts(deployment: Obj) -> tuple[int, int]:
    """``(maxSurge, maxUnavailable)`` resolved against spec.replicas (kube's ResolveFenceposts)."""
    rolling = (deployment["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    desired = replicas(deployment)
    surge = scaled_value(rolling.get("maxSurge", "25%"), desired, True)
    unavailable = scaled_value(rolling.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # rounding down made both zero: a rollout could never start
    return surge, unavailable


def max_surge(deployment: Obj) -> int:
    return fenceposts(deployment)[0] if is_rolling(deployment) else 0


def max_unavailable(deployment: Obj) -> int:
    if not is_rolling(deployment) or replicas(deployment) == 0:
        return 0
    return min(fenceposts(deployment)[1], replicas(deployment))


def new_rs_new_replicas(deployment: Obj, all_rss: list[Obj], new_rs: Obj) -> int:
    """How big the new ReplicaSet may be now (kube's NewRSNewReplicas)."""
    desired = replicas(deployment)
    if not is_rolling(deployment):
        return desired
    max_total = desired + max_surge(deployment)
    current = total_replicas(all_rss)
    if current >= max_total:
        return replicas(new_rs)
    return replicas(new_rs) + min(max_total - current, desired - replicas(new_rs))


def is_saturated(deployment: Obj, rs: Obj | None) -> bool:
    if rs is None:
        return False
    desired = str(replicas(deployment))
    return ((rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS) == desired
            and status_of(rs, "availableReplicas") == replicas(deployment) and replicas(rs) == replicas(deployment))


def find_active_or_latest(new_rs: Obj | None, old_rss: list[Obj]) -> Obj | None:
    """The one ReplicaSet to scale when only one has replicas (or the newest, when none has)."""
    if new_rs is None and not old_rss:
        return None
    newest_first = sorted(old_rss, key=created, reverse=True)
    live = active([*newest_first, new_rs])
    if not live:
        return new_rs if new_rs is not None else newest_first[0]
    return live[0] if len(live) == 1 else None


def replica_fraction(rs: Obj, deployment: Obj) -> int:
    """How many replicas ``rs`` gains (or loses) when the Deployment is resized mid-rollout."""
    if replicas(deployment) == 0:
        return -replicas(rs)
    deployment_replicas = replicas(deployment) + max_surge(deployment)
    try:
        annotated = int((rs["metadata"].get("annotations") or {})[MAX_REPLICAS])
    except (KeyError, ValueError):
        annotated = status_of(deployment, "replicas")
    if annotated == 0:
        return 0
    exact = replicas(rs) * deployment_replicas / annotated
    return math.floor(exact + 0.5) - replicas(rs)  # Go's math.Round for non-negatives


def proportion(rs: Obj, deployment: Obj, to_add: int, added: int) -> int:
    if replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    fraction = replica_fraction(rs, deployment)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


# --- annotations ----------------------------------------------------------------------------------------

def copy_annotations(deployment: Obj, rs: Obj) -> bool:
    """Pass the Deployment's annotations on to ``rs`` (in place); whether anything changed."""
    source = deployment["metadata"].get("annotations") or {}
    target = rs["metadata"].setdefault("annotations", {})
    changed = False
    for key, value in source.items():
        if key in NOT_COPIED or target.get(key) == value:
            continue
        target[key] = value
        changed = True
    return changed


def set_replicas_annotations(rs: Obj, desired: int, maximum: int) -> bool:
    annotations = rs["metadata"].setdefault("annotations", {})
    changed = False
    for key, value in ((DESIRED_REPLICAS, str(desired)), (MAX_REPLICAS, str(maximum))):
        if annotations.get(key) != value:
            annotations[key] = value
            changed = True
    return changed


def set_new_rs_annotations(deployment: Obj, rs: Obj, new_revision: int, exists: bool) -> bool:
    """The new ReplicaSet's annotations: the Deployment's, its revision (keeping the revisions it had before
    in revision-history, when an old ReplicaSet comes back by a rollback), its replica counts if it is new."""
    changed = copy_annotations(deployment, rs)
    annotations = rs["metadata"].setdefault("annotations", {})
    old = annotations.get(REVISION)
    try:
        old_revision = int(old) if old is not None else 0
    except ValueError:
        return changed
    if old_revision < new_revision:
        annotations[REVISION] = str(new_revision)
        changed = True
        if old is not None:
            history = [r for r in annotations.get(REVISION_HISTORY, "").split(",") if r]
            history.append(old)
            while len(",".join(history)) > MAX_REVISION_HISTORY_CHARS and len(history) > 1:
                history.pop(0)
            annotations[REVISION_HISTORY] = ",".join(history)
    if not exists and set_replicas_annotations(rs, replicas(deployment),
                                               replicas(deployment) + max_surge(deployment)):
        changed = True
    return changed


# --- conditions and status ------------------------------------------------------------------------------

def condition(status: Obj, kind: str) -> Obj | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == kind:
            return cond
    return None


def new_condition(kind: str, status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def set_condition(status: Obj, cond: Obj) -> None:
    """kube's SetDeploymentCondition: same status and reason is no change; same status keeps the transition time."""
    current = condition(status, cond["type"])
    if current is not None and current.get("status") == cond["status"] and current.get("reason") == cond["reason"]:
        return
    if current is not None and current.get("status") == cond["status"]:
        cond["lastTransitionTime"] = current.get("lastTransitionTime")
    status["conditions"] = [c for c in status.get("conditions") or () if c.get("type") != cond["type"]] + [cond]


def remove_condition(status: Obj, kind: str) -> None:
    if "conditions" in status:
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != kind]
        if not status["conditions"]:
            del status["conditions"]


def has_progress_deadline(deployment: Obj) -> bool:
    deadline = deployment["spec"].get("progressDeadlineSeconds")
    return deadline is not None and int(deadline) != NO_DEADLINE


def calculate_status(deployment: Obj, all_rss: list[Obj | None], new_rs: Obj | None) -> Obj:
    available = total_status(all_rss, "availableReplicas")
    status: Obj = {
        "observedGeneration": deployment["metadata"].get("generation", 0),
        "replicas": total_status(all_rss, "replicas"),
        "updatedReplicas": total_status([new_rs], "replicas"),
        "readyReplicas": total_status(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(total_replicas(all_rss) - available, 0),
    }
    old = deployment.get("status") or {}
    if old.get("collisionCount") is not None:
        status["collisionCount"] = old["collisionCount"]
    if old.get("conditions"):
        status["conditions"] = copy.deepcopy(old["conditions"])
    if available >= replicas(deployment) - max_unavailable(deployment):
        set_condition(status, new_condition(AVAILABLE, "True", MIN_AVAILABLE, "Deployment has minimum availability."))
    else:
        set_condition(status, new_condition(AVAILABLE, "False", MIN_UNAVAILABLE,
                                            "Deployment does not have minimum availability."))
    return status


def omit_empty(status: Obj) -> Obj:
    """Go's omitempty on DeploymentStatus: zero counts are not written."""
    return {k: v for k, v in status.items() if v not in (0, None, [])}


def is_complete(deployment: Obj, status: Obj) -> bool:
    desired = replicas(deployment)
    return (status.get("updatedReplicas", 0) == desired and status.get("replicas", 0) == desired
            and status.get("availableReplicas", 0) == desired
            and status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0))


def is_progressing(deployment: Obj, status: Obj) -> bool:
    old = deployment.get("status") or {}
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = status.get("replicas", 0) - status.get("updatedReplicas", 0)
    return (status.get("updatedReplicas", 0) > old.get("updatedReplicas", 0) or new_old < old_old
            or status.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or status.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def timed_out(deployment: Obj, status: Obj, now: float) -> bool:
    if not has_progress_deadline(deployment):
        return False
    cond = condition(status, PROGRESSING)
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    return since is not None and since + int(deployment["spec"]["progressDeadlineSeconds"]) < now
