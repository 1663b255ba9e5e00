"""Claiming dependents (kube's ControllerRefManager): which objects an owner controls.

An owner controls the objects whose controller reference names it and that its selector still matches.
Orphans that match are adopted (the reference patched in, with the dependent's uid in the patch so a
replacement of the same name is never adopted by mistake), but only after a fresh read shows the owner
still exists and is not being deleted; controlled objects that stopped matching are released.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from skiff.cluster.client import ApiClient, ApiStatusError, Informer, Resource
from skiff.cluster.client.selectors import Labels
from skiff.cluster.controllers.objects import Obj, controller_ref, is_deleting, labels_of, owner_reference

CONTROLLER_UID_INDEX = "controller-uid"
ORPHAN_INDEX = "orphans"  # namespace -> objects with no controller


def index_owned(informer: Informer) -> None:
    """The indexes the workload controllers share: by controller uid, and objects with no controller by
    namespace (the candidates for adoption)."""
    if not informer.has_index(CONTROLLER_UID_INDEX):  # a shared informer: index it once
        informer.add_index(CONTROLLER_UID_INDEX, lambda o: [ref["uid"]] if (ref := controller_ref(o)) else [])
        informer.add_index(ORPHAN_INDEX, lambda o: [] if controller_ref(o) else [o["metadata"].get("namespace", "")])


async def claim(client: ApiClient, owner: Obj, owner_res: Resource, dependents: Informer, dependent_res: Resource,
                matches: Callable[[Labels], bool], wanted: Callable[[Obj], bool] = lambda obj: True) -> list[Obj]:
    """The dependents ``owner`` controls now (``wanted`` filters which count, e.g. active pods)."""
    meta = owner["metadata"]
    owned = [o for o in dependents.by_index(CONTROLLER_UID_INDEX, meta["uid"]) if wanted(o)]
    orphans = [o for o in dependents.by_index(ORPHAN_INDEX, meta.get("namespace") or "")
               if wanted(o) and not is_deleting(o) and matches(labels_of(o))]
    claimed = []
    for obj in owned:
        if matches(labels_of(obj)) or is_deleting(owner):
            claimed.append(obj)
        else:
            await _release(client, owner, obj, dependent_res)
    if orphans and not is_deleting(owner) and await _can_adopt(client, owner, owner_res):
        for obj in orphans:
            adopted = await _adopt(client, owner, owner_res, obj, dependent_res)
            if adopted is not None:
                claimed.append(adopted)
    return claimed


async def _can_adopt(client: ApiClient, owner: Obj, owner_res: Resource) -> bool:
    """A fresh read: adopting for an owner deleted (or replaced) meanwhile would orphan the objects again."""
    meta = owner["metadata"]
    try:
        fresh = await client.get(owner_res, meta["name"], meta.get("namespace"))
    except ApiStatusError as exc:
        if exc.not_found:
            return False
        raise
    return fresh["metadata"]["uid"] == meta["uid"] and not is_deleting(fresh)


async def _adopt(client: ApiClient, owner: Obj, owner_res: Resource, obj: Obj, res: Resource) -> Obj | None:
    ref = owner_reference(owner, owner_res.kind, owner_res.api_version)
    patch = {"metadata": {"ownerReferences": [ref], "uid": obj["metadata"]["uid"]}}
    try:
        return await client.patch(res, obj["metadata"]["name"], patch, namespace=obj["metadata"].get("namespace"),
                                  patch_type="strategic")
    except ApiStatusError as exc:
        if exc.not_found or exc.status_code == 422:  # gone, or replaced by another object of that name
            return None
        raise


async def _release(client: ApiClient, owner: Obj, obj: Obj, res: Resource) -> None:
    patch = {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner["metadata"]["uid"]}],
                          "uid": obj["metadata"]["uid"]}}
    with contextlib.suppress(ApiStatusError):  # gone already, or changed: the next sync looks again
        await client.patch(res, obj["metadata"]["name"], patch, namespace=obj["metadata"].get("namespace"),
                           patch_type="strategic")
