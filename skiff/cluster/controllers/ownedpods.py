"""The pods a workload controller owns: their events routed to the owner's work-queue key, and their deletion,
with the owner's expectations kept (what the Job, DaemonSet and StatefulSet controllers share; kube's
controller_utils does the same for its controllers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from skiff.cluster.client import PODS, ApiClient, ApiStatusError, Informer, object_key
from skiff.cluster.controllers.expectations import Expectations
from skiff.cluster.controllers.objects import Obj, controller_ref, is_deleting


def watch_owned_pods(pods: Informer, kind: str, expectations: Expectations, enqueue: Callable[[str], None]) -> None:
    """On every event of a pod whose controller is a ``kind``: note the creation or deletion its owner
    expected, and enqueue the owner (``namespace/name``)."""
    def changed(pod: Obj, created: bool = False, deleted: bool = False) -> None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != kind:
            return
        key = f"{pod['metadata'].get('namespace')}/{ref['name']}"
        if created:
            expectations.creation_observed(key)
        if deleted or is_deleting(pod):
            expectations.deletion_observed(key, object_key(pod))
        enqueue(key)
    pods.on_add(lambda pod: changed(pod, created=True))
    pods.on_update(lambda old, new: changed(new))
    pods.on_delete(lambda pod: changed(pod, deleted=True))


async def delete_pods(client: ApiClient, expectations: Expectations, key: str, pods: list[Obj],
                      deleted: Callable[[Obj], None]) -> int:
    """Delete ``pods`` (gracefully, each only if it is still the same pod) for the owner ``key``; ``deleted(pod)``
    for each that was (its event, say); how many were asked. A pod already gone or replaced counts as deleted;
    the first other error is raised once all were tried."""
    if not pods:
        return 0
    expectations.expect_deletions(key, [object_key(p) for p in pods])

    async def delete(pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await client.delete(PODS, meta["name"], meta.get("namespace"), preconditions={"uid": meta["uid"]})
        except BaseException as exc:
            expectations.deletion_observed(key, object_key(pod))  # no event will come for it
            if not (isinstance(exc, ApiStatusError) and (exc.not_found or exc.conflict)):
                raise
            return
        deleted(pod)
    results = await asyncio.gather(*(delete(p) for p in pods), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return len(pods)
