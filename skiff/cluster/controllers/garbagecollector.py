"""The garbage collector: dependents whose owners are gone are deleted (kube's garbage collector, in part).

The API server already deletes (Background, Foreground) or orphans the dependents of an owner deleted
through it (``skiff/cluster/api/lifecycle.py``), but only while it runs: a server killed in the middle of a
cascade, an owner that never existed, or an owner deleted some other way leave objects whose
ownerReferences point at nothing. This controller finds them:

- a dependent (a pod or a ReplicaSet) is looked at when it appears with an owner missing from the caches,
  and when one of its owners is deleted;
- the decision is made on fresh reads, as kube's ``attemptToDeleteItem`` does: the dependent itself
  (an orphaning deletion removes its references before the owner goes, and a cache may not show that yet)
  and each owner (404, or another object with the same name and a different uid, means gone);
- all owners gone: the dependent is deleted (Background, with its uid as precondition); some gone: the
  references to them are removed and the rest kept. Owners of kinds this client does not know are assumed
  to exist.
"""

from __future__ import annotations

import logging

from skiff.cluster.client import (
    DEPLOYMENTS,
    PODS,
    REPLICASETS,
    ApiClient,
    ApiStatusError,
    Controller,
    Resource,
    object_key,
    resource_for,
)
from skiff.cluster.client.informer import SharedInformers, split_key
from skiff.cluster.controllers.objects import Obj, is_deleting
from skiff.errors import NotFound

log = logging.getLogger(__name__)
DEPENDENTS = (PODS, REPLICASETS)
OWNER_UID_INDEX = "owner-uids"


class GarbageCollector(Controller):
    name = "garbage-collector"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.dependents = {res.plural: informers.informer(res) for res in DEPENDENTS}
        self.owners = {(res.group, res.kind): informers.informer(res) for res in (REPLICASETS, DEPLOYMENTS)}
        super().__init__(client, [*self.dependents.values(), informers.informer(DEPLOYMENTS)])
        for plural, informer in self.dependents.items():
            if not informer.has_index(OWNER_UID_INDEX):
                informer.add_index(OWNER_UID_INDEX, _owner_uids)
            informer.on_add(lambda obj, plural=plural: self._maybe_orphaned(plural, obj))
            informer.on_update(lambda old, new, plural=plural: self._maybe_orphaned(plural, new))
        for informer in self.owners.values():
            informer.on_delete(self._owner_deleted)

    async def run(self) -> None:
        """Look at every dependent once the caches are full (the handlers ran while the owners' caches were
        still filling), then follow the events."""
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            await informer.wait_synced()
        for plural, informer in self.dependents.items():
            for obj in informer.list():
                self._maybe_orphaned(plural, obj)
        await super().run()

    def _maybe_orphaned(self, plural: str, obj: Obj) -> None:
        refs = obj["metadata"].get("ownerReferences")
        if refs and not is_deleting(obj) and any(self._missing_from_cache(obj, ref) for ref in refs):
            self.enqueue(f"{plural}|{object_key(obj)}")

    def _missing_from_cache(self, obj: Obj, ref: Obj) -> bool:
        group = ref.get("apiVersion", "").rpartition("/")[0]
        cache = self.owners.get((group, ref.get("kind", "")))
        if cache is None or not cache.has_synced:
            return False  # not a kind cached here: the owner deletion events of those are not seen either
        owner = cache.get(obj["metadata"].get("namespace"), ref.get("name", ""))
        return owner is None or owner["metadata"]["uid"] != ref.get("uid")

    def _owner_deleted(self, owner: Obj) -> None:
        uid = owner["metadata"]["uid"]
        for plural, informer in self.dependents.items():
            for dependent in informer.by_index(OWNER_UID_INDEX, uid):
                self.enqueue(f"{plural}|{object_key(dependent)}")

    async def sync(self, key: str) -> None:
        plural, _, object_name = key.partition("|")
        res = self.dependents[plural].resource
        namespace, name = split_key(object_name)
        try:
            obj = await self.client.get(res, name, namespace)  # fresh: the cache may predate an orphaning
        except ApiStatusError as exc:
            if exc.not_found:
                return
            raise
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or is_deleting(obj):
            return
        gone = [ref for ref in refs if not await self._owner_exists(namespace, ref)]
        if not gone:
            return
        uid = obj["metadata"]["uid"]
        try:
            if len(gone) == len(refs):
                log.info("garbage collector: deleting %s %s: its owners are gone", plural, object_name)
                await self.client.delete(res, name, namespace, propagation_policy="Background",
                                         preconditions={"uid": uid})
            else:
                patch = {"metadata": {"uid": uid, "ownerReferences": [{"$patch": "delete", "uid": ref["uid"]}
                                                                      for ref in gone]}}
                await self.client.patch(res, name, patch, namespace=namespace, patch_type="strategic")
        except ApiStatusError as exc:
            if not (exc.not_found or exc.conflict):  # gone already, or replaced by a namesake
                raise

    async def _owner_exists(self, namespace: str | None, ref: Obj) -> bool:
        try:
            res: Resource = resource_for(ref.get("apiVersion", ""), ref.get("kind", ""))
        except NotFound:
            return True  # a kind unknown here: never collect on a guess
        try:
            owner = await self.client.get(res, ref.get("name", ""), namespace if res.namespaced else None)
        except ApiStatusError as exc:
            if exc.not_found:
                return False
            raise
        return owner["metadata"]["uid"] == ref.get("uid")


def _owner_uids(obj: Obj) -> list[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or () if ref.get("uid")]
