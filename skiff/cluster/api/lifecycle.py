"""How objects go away, beyond one delete: owners' dependents and namespaces' contents.

* ``Dependents`` is kube's garbage collector for deletions made through this server: after an owner is
  deleted its dependents (objects whose ``ownerReferences`` name it) are deleted too (Background), or
  first, the owner waiting with the ``foregroundDeletion`` finalizer (Foreground), or they are kept with
  the reference removed (Orphan).
* ``Namespaces`` is the API side of a namespace's deletion: a deleted namespace is Terminating (closed to new
  objects) until its finalizers are gone; the namespace controller empties it and removes its finalizer.

``Dependents`` works through the ``Registry`` like any client would, as background tasks the registry owns.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skiff.cluster.api.objects import Obj, encode, meta, now_rfc3339, owned_by
from skiff.cluster.api.resources import BY_PATH, STORED, ResourceType
from skiff.cluster.api.selectors import MATCH_ALL
from skiff.cluster.api.status import ApiError, bad_request, forbidden, not_found
from skiff.cluster.store import KeyValue
from skiff.errors import Conflict, NotFound

if TYPE_CHECKING:
    from skiff.cluster.api.rest import Registry

NAMESPACES = BY_PATH[("", "v1", "namespaces")]
FOREGROUND = "foregroundDeletion"
FOREGROUND_PATIENCE = 600  # polls (0.2 s apart) a Foreground deletion waits for its dependents
# kube's NamespaceLifecycle admission refuses deleting the first three; kube-node-lease holds the nodes'
# heartbeats, which the node lifecycle controller relies on.
IMMORTAL = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


@dataclass
class DeleteOptions:
    grace_period: int | None = None
    propagation: str | None = None  # Background | Foreground | Orphan
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, body: Obj | None, query: Any) -> DeleteOptions:
        """From a DELETE's body (DeleteOptions) and query parameters; 400 for values kube refuses."""
        body = body or {}
        pre = body.get("preconditions") or {}
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        propagation = body.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = body.get("orphanDependents", query.get("orphanDependents"))
        if propagation is None and orphan is not None:
            propagation = "Orphan" if str(orphan).lower() == "true" else "Background"
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{propagation}": supported values: '
                              '"Background", "Foreground", "Orphan"')
        try:
            grace_value = None if grace is None else int(grace)
        except ValueError:
            raise bad_request(f"gracePeriodSeconds: invalid value {grace!r}") from None
        dry = body.get("dryRun") or query.getall("dryRun", []) if hasattr(query, "getall") else body.get("dryRun")
        return cls(grace_value, propagation, pre.get("uid"), pre.get("resourceVersion"), bool(dry))


class Dependents:
    """Owners' dependents, found by ``ownerReferences``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._owned_types: set[str] | None = None  # plurals with objects that have ownerReferences; None: unknown

    @property
    def may_exist(self) -> bool:
        """False once a scan found no owned objects at all and none were written since."""
        return self._owned_types != set()

    def note(self, t: ResourceType, obj: Obj) -> None:
        """Called for every object written: remember which types hold owned objects."""
        if self._owned_types is not None and meta(obj).get("ownerReferences"):
            self._owned_types.add(t.plural)

    async def find(self, owner_uid: str, namespace: str | None) -> list[tuple[ResourceType, Obj]]:
        """Objects whose ownerReferences name ``owner_uid``: in its namespace, or anywhere for a cluster-scoped
        owner. Only types known to hold owned objects are scanned (all of them once, after a start)."""
        if self._owned_types is None:
            self._owned_types = set()
            candidates = list(STORED)
        else:
            candidates = [t for t in STORED if t.plural in self._owned_types]
        found = []
        for t in candidates:
            if namespace and not t.namespaced:
                continue
            items, _, _ = await self.registry.list(t, namespace if t.namespaced else None, MATCH_ALL)
            for obj in items:
                if meta(obj).get("ownerReferences"):
                    self._owned_types.add(t.plural)
                    if owned_by(obj, owner_uid):
                        found.append((t, obj))
        return found

    async def delete(self, owner_uid: str, namespace: str | None, policy: str) -> None:
        if not owner_uid:
            return
        for t, obj in await self.find(owner_uid, namespace):
            try:
                await self.registry.delete(t, meta(obj).get("namespace"), meta(obj)["name"],
                                           DeleteOptions(propagation=policy))
            except ApiError:
                pass  # gone already, or refused: the next owner deletion or the GC controller retries

    async def orphan(self, owner: Obj) -> None:
        uid = meta(owner).get("uid", "")

        def drop_ref(o: Obj) -> Obj:
            m = meta(o)
            m["ownerReferences"] = [r for r in m.get("ownerReferences") or [] if r.get("uid") != uid]
            m.pop("resourceVersion", None)
            return o
        for t, obj in await self.find(uid, meta(owner).get("namespace")):
            try:
                await self.registry.update(t, meta(obj).get("namespace"), meta(obj)["name"], drop_ref)
            except ApiError:
                pass

    async def finish_foreground(self, t: ResourceType, namespace: str | None, name: str, uid: str) -> None:
        """Delete the dependents first, then let the owner go by removing its foreground finalizer."""
        for _ in range(FOREGROUND_PATIENCE):
            dependents = await self.find(uid, namespace)
            if not dependents:
                break
            for dt, obj in dependents:
                if not meta(obj).get("deletionTimestamp"):
                    try:
                        await self.registry.delete(dt, meta(obj).get("namespace"), meta(obj)["name"],
                                                   DeleteOptions(propagation="Foreground"))
                    except ApiError:
                        pass
            await asyncio.sleep(0.2)

        def drop_finalizer(o: Obj) -> Obj:
            m = meta(o)
            m["finalizers"] = [f for f in m.get("finalizers") or [] if f != FOREGROUND]
            m.pop("resourceVersion", None)
            return o
        try:
            await self.registry.update(t, namespace, name, drop_finalizer)
        except ApiError:
            pass


class Namespaces:
    """The API server's part of a namespace's lifecycle (kube's namespace registry and its NamespaceLifecycle
    admission plugin); emptying a namespace is the namespace controller's (skiff/cluster/controllers).

    A new namespace carries the ``kubernetes`` finalizer in ``spec.finalizers`` (validation's defaults). A
    DELETE marks it Terminating (``deletionTimestamp``, ``status.phase``), after which creations in it are
    refused; once the controller has removed the content it drops its finalizer through
    ``namespaces/<name>/finalize`` and that update, leaving no finalizer of either kind, deletes the namespace.
    A namespace without finalizers goes at once. The system's namespaces may not be deleted.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @staticmethod
    def check_deletable(name: str) -> None:
        if name in IMMORTAL:
            raise forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                            {"name": name, "kind": "namespaces"})

    @staticmethod
    def prepare_update(live: Obj, new: Obj, subresource: str | None) -> None:
        """``spec.finalizers`` change only through ``finalize`` (and status only through ``status``): a PUT of
        a manifest without them must not let a namespace skip its content's deletion."""
        if subresource == "finalize":
            return
        finalizers = (live.get("spec") or {}).get("finalizers")
        spec = new.setdefault("spec", {})
        if finalizers is None:
            spec.pop("finalizers", None)
        else:
            spec["finalizers"] = finalizers

    async def start_deletion(self, kv: KeyValue, live: Obj) -> Obj:
        """Mark the namespace Terminating (creations in it are refused from now on), or delete it now when
        nothing holds it. A repeated DELETE answers with its current state."""
        m = meta(live)
        if not finalized(live):
            if m.get("deletionTimestamp"):
                return live
            marked = copy.deepcopy(live)
            meta(marked)["deletionTimestamp"] = now_rfc3339()
            meta(marked)["deletionGracePeriodSeconds"] = 0
            marked.setdefault("status", {})["phase"] = "Terminating"
            try:
                revision = await self.registry.store.update(kv.key, encode(marked), kv.mod_revision)
            except Conflict:
                return await self.registry.delete(NAMESPACES, None, m["name"], DeleteOptions()) or live
            meta(marked)["resourceVersion"] = str(revision)
            return marked
        try:
            revision, _ = await self.registry.store.delete(kv.key, kv.mod_revision)
        except Conflict:
            return await self.registry.delete(NAMESPACES, None, m["name"], DeleteOptions()) or live
        except NotFound:
            raise not_found("namespaces", "", m["name"]) from None
        m["resourceVersion"] = str(revision)
        return live


def finalized(namespace: Obj) -> bool:
    """Nothing holds the namespace: no finalizer in its metadata nor in its spec."""
    return not meta(namespace).get("finalizers") and not (namespace.get("spec") or {}).get("finalizers")
