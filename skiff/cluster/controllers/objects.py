"""Helpers over API objects as dicts: owner references, pod state, timestamps, status writes.

Kept here so that the controllers read the same facts the same way (kube's controller_utils and podutil).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skiff.cluster.client import ApiClient, Resource

Obj = dict[str, Any]


async def write_status(client: ApiClient, res: Resource, obj: Obj, status: Obj, tolerate: tuple[int, ...] = (404,)
                       ) -> None:
    """PUT ``status`` through ``res``'s status subresource unless the object already has it. A ``tolerate``d
    error (404: the object went meanwhile) is dropped; any other (a 409: it changed since the cache saw it)
    is raised, and the controller retries on the fresher object its cache will hold."""
    from skiff.cluster.client import ApiStatusError

    if status == (obj.get("status") or {}):
        return
    try:
        await client.replace_status(res, {**obj, "status": status})
    except ApiStatusError as exc:
        if exc.status_code not in tolerate:
            raise


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp (None for None or a malformed one)."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def controller_ref(obj: Obj) -> Obj | None:
    """The ownerReference with ``controller: true``, if any."""
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def owner_reference(owner: Obj, kind: str, api_version: str) -> Obj:
    """The controller reference a dependent carries (kube's NewControllerRef)."""
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def is_deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def labels_of(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


# --- pods -----------------------------------------------------------------------------------------------------

def is_pod_active(pod: Obj) -> bool:
    """Not finished and not being deleted: it counts towards its owner's replicas."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not is_deleting(pod)


def ready_condition(pod: Obj) -> Obj | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return condition
    return None


def is_pod_ready(pod: Obj) -> bool:
    condition = ready_condition(pod)
    return condition is not None and condition.get("status") == "True"


def is_pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    """Ready for at least ``min_ready_seconds`` (kube's IsPodAvailable)."""
    if not is_pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((ready_condition(pod) or {}).get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= now


def restart_count(pod: Obj) -> int:
    return sum(int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or ())
