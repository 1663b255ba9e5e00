"""The namespace controller: empties a Terminating namespace, then lets the API server remove it (kube's
``pkg/controller/namespace``).

A DELETE of a namespace only marks it (``deletionTimestamp``, phase Terminating; the server refuses new objects
in it from then on). This controller sees the mark, deletes everything in the namespace through the API, and
when nothing is left removes the ``kubernetes`` entry from the namespace's ``spec.finalizers`` through
``namespaces/<name>/finalize``; with no finalizer left the server deletes the namespace.

What "everything" is comes from discovery, as in kube: every namespaced resource that can be listed and
deleted, by one ``deletecollection`` per resource (Background propagation) where the resource supports it and
by one DELETE per object where it does not. Objects that stay (pods stopping on their nodes, objects held by
finalizers) are counted and the namespace is looked at again shortly. Progress is reported as kube reports it,
in the namespace's status conditions: NamespaceDeletionDiscoveryFailure, NamespaceDeletionContentFailure,
NamespaceContentRemaining, NamespaceFinalizersRemaining (and NamespaceDeletionGroupVersionParsingFailure, which
never fails here).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from skiff.cluster.client import NAMESPACES, ApiClient, ApiStatusError, Controller, Resource
from skiff.cluster.client.informer import SharedInformers
from skiff.cluster.controllers.objects import Obj, is_deleting, now_rfc3339

log = logging.getLogger(__name__)
FINALIZER = "kubernetes"
RECHECK_SECONDS = 1.0  # how soon a namespace with content left (pods stopping, finalizers) is looked at again
_BACKGROUND = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}

# kube's condition types with their reasons and messages when all is well (status "False")
_OK = {
    "NamespaceDeletionDiscoveryFailure": ("ResourcesDiscovered", "All resources successfully discovered"),
    "NamespaceDeletionGroupVersionParsingFailure": ("ParsedGroupVersions",
                                                    "All legacy kube types successfully parsed"),
    "NamespaceDeletionContentFailure": ("ContentDeleted",
                                        "All content successfully deleted, may be waiting on finalization"),
    "NamespaceContentRemaining": ("ContentRemoved", "All content successfully removed"),
    "NamespaceFinalizersRemaining": ("ContentHasNoFinalizers", "All content-preserving finalizers finished"),
}


@dataclass
class Progress:
    """What one pass over a namespace's content found."""

    discovery_error: str = ""
    failures: list[str] = field(default_factory=list)  # resources whose deletion failed, with why
    remaining: Counter[str] = field(default_factory=Counter)  # "pods." -> objects still there
    finalizers: Counter[str] = field(default_factory=Counter)  # finalizer -> objects it holds

    @property
    def done(self) -> bool:
        return not (self.discovery_error or self.failures or self.remaining)

    def conditions(self) -> dict[str, tuple[str, str, str]]:
        """condition type -> (status, reason, message), in kube's words."""
        found = {kind: ("False", *ok) for kind, ok in _OK.items()}
        if self.discovery_error:
            found["NamespaceDeletionDiscoveryFailure"] = ("True", "DiscoveryFailed",
                                                          f"Discovery failed for some groups: {self.discovery_error}")
        if self.failures:
            found["NamespaceDeletionContentFailure"] = (
                "True", "ContentDeletionFailed",
                f"Failed to delete all resource types, {len(self.failures)} remaining: {', '.join(self.failures)}")
        if self.remaining:
            listed = ", ".join(f"{res} has {n} resource instances" for res, n in sorted(self.remaining.items()))
            found["NamespaceContentRemaining"] = ("True", "SomeResourcesRemain",
                                                  f"Some resources are remaining: {listed}")
        if self.finalizers:
            listed = ", ".join(f"{f} in {n} resource instances" for f, n in sorted(self.finalizers.items()))
            found["NamespaceFinalizersRemaining"] = (
                "True", "SomeFinalizersRemain", f"Some content in the namespace has finalizers remaining: {listed}")
        return found


class NamespaceController(Controller):
    name = "namespace"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.namespaces = informers.informer(NAMESPACES)
        super().__init__(client, [self.namespaces])
        self.namespaces.on_add(self._changed)
        self.namespaces.on_update(lambda old, new: self._changed(new))

    def _changed(self, namespace: Obj) -> None:
        if is_deleting(namespace):
            self.enqueue(namespace["metadata"]["name"])

    async def sync(self, key: str) -> None:
        try:
            namespace = await self.client.get(NAMESPACES, key)  # fresh: the cache may be behind a finalize
        except ApiStatusError as exc:
            if exc.not_found:
                return
            raise
        if not is_deleting(namespace) or FINALIZER not in ((namespace.get("spec") or {}).get("finalizers") or ()):
            return  # not being deleted, or not ours to empty (finalized already, or never held by us)
        progress = await self._delete_content(key)
        await self._report(namespace, progress)
        if not progress.done:
            log.info("namespace %s: content remains (%s)", key, dict(progress.remaining) or progress.failures)
            self.queue.add_after(key, RECHECK_SECONDS)
            return
        await self._finalize(namespace)

    # --- the content ---------------------------------------------------------------------------------------

    async def _delete_content(self, namespace: str) -> Progress:
        progress = Progress()
        resources = await self._deletable_resources(progress)
        for res, verbs in resources:
            try:
                await self._delete_all(res, verbs, namespace)
                await self._count(res, namespace, progress)
            except ApiStatusError as exc:
                if exc.not_found:
                    continue
                progress.failures.append(f"{res.plural}.{res.group}: {exc}")
        return progress

    async def _deletable_resources(self, progress: Progress) -> list[tuple[Resource, set[str]]]:
        """Every namespaced resource (no subresources) that can be listed and deleted, in each group's
        preferred version, from discovery; a group whose discovery fails is noted and skipped."""
        group_versions = ["v1"]
        try:
            groups = (await self.client.request("GET", "/apis")).get("groups") or []
        except ApiStatusError as exc:
            progress.discovery_error = f"apis: {exc}"
            groups = []
        for group in groups:
            preferred = group.get("preferredVersion") or (group.get("versions") or [{}])[0]
            if preferred.get("groupVersion"):
                group_versions.append(preferred["groupVersion"])
        found = []
        for gv in group_versions:
            path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            try:
                listed = await self.client.request("GET", path)
            except ApiStatusError as exc:
                progress.discovery_error = f"{gv}: {exc}"
                continue
            group, _, version = gv.rpartition("/")
            for entry in listed.get("resources") or ():
                verbs = set(entry.get("verbs") or ())
                if "/" in entry["name"] or not entry.get("namespaced") or not {"list", "delete"} <= verbs:
                    continue
                found.append((Resource(group, version, entry["name"], entry.get("kind", "")), verbs))
        return found

    async def _delete_all(self, res: Resource, verbs: set[str], namespace: str) -> None:
        if "deletecollection" in verbs:
            await self.client.request("DELETE", res.path(namespace), body=_BACKGROUND)
            return
        for obj in (await self.client.list(res, namespace))["items"]:
            if not is_deleting(obj):
                try:
                    await self.client.request("DELETE", res.path(namespace, obj["metadata"]["name"]),
                                              body=_BACKGROUND)
                except ApiStatusError as exc:
                    if not exc.not_found:
                        raise

    async def _count(self, res: Resource, namespace: str, progress: Progress) -> None:
        items = (await self.client.list(res, namespace))["items"]
        if items:
            progress.remaining[f"{res.plural}.{res.group}"] += len(items)
        for obj in items:
            for finalizer in obj["metadata"].get("finalizers") or ():
                progress.finalizers[finalizer] += 1

    # --- the namespace -------------------------------------------------------------------------------------

    async def _report(self, namespace: Obj, progress: Progress) -> None:
        """Write the conditions when they say something new (lastTransitionTime moves only with a status)."""
        old = {c.get("type"): c for c in (namespace.get("status") or {}).get("conditions") or ()}
        conditions, changed = [], False
        for kind, (status, reason, message) in progress.conditions().items():
            before = old.get(kind) or {}
            since = before.get("lastTransitionTime") if before.get("status") == status else now_rfc3339()
            condition = {"type": kind, "status": status, "lastTransitionTime": since, "reason": reason,
                         "message": message}
            changed = changed or condition != before
            conditions.append(condition)
        if changed:
            try:
                await self.client.patch(NAMESPACES, namespace["metadata"]["name"],
                                        {"status": {"conditions": conditions}}, subresource="status")
            except ApiStatusError as exc:
                if not exc.not_found:
                    raise

    async def _finalize(self, namespace: Obj) -> None:
        """Remove our finalizer; the server deletes the namespace when that was the last one."""
        name = namespace["metadata"]["name"]
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                "spec": {"finalizers": [f for f in namespace["spec"]["finalizers"] if f != FINALIZER]}}
        try:
            await self.client.request("PUT", NAMESPACES.path(None, name, "finalize"), body=body)
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
        log.info("namespace %s: emptied and finalized", name)
