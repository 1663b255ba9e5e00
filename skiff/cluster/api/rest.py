"""Generic REST storage over the store: create, get, list, update (and every patch), delete.

One ``Registry`` serves every type in the catalogue; what differs per type is data (``resources``),
defaults and validation (``validation``), and a few hooks (Service IPs, Namespace lifecycle, pod
graceful deletion). Updates are optimistic: read, change, compare-and-swap on the store's
mod_revision; a caller who named a resourceVersion gets 409 Conflict when it is stale, otherwise the
change is retried on the fresh object (kube's GuaranteedUpdate).

Deletion follows kube: finalizers or a Foreground policy leave the object with a deletionTimestamp
until they are cleared; pods bound to a node get a grace period (their kubelet deletes them finally).
What happens to dependents and to a namespace's contents is ``lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import os
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from skiff.cluster.api import validation
from skiff.cluster.api.allocators import ServiceAllocator
from skiff.cluster.api.cache import WatchCache
from skiff.cluster.api.lifecycle import FOREGROUND, DeleteOptions, Dependents, Namespaces
from skiff.cluster.api.lifecycle import finalized as namespace_finalized
from skiff.cluster.api.mirror import StoreMirror
from skiff.cluster.api.objects import (
    Obj,
    dumps,
    encode,
    from_kv,
    generate_name,
    meta,
    now_rfc3339,
    spec_of,
    tidy_metadata,
)
from skiff.cluster.api.resources import BY_PATH, ResourceType
from skiff.cluster.api.selectors import Filter
from skiff.cluster.api.status import (
    ApiError,
    FieldError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    invalid,
    not_found,
    qualified,
    timeout,
)
from skiff.cluster.store import Compacted, KeyValue, Store
from skiff.errors import AlreadyExists, Conflict, NotFound

NAMESPACES = BY_PATH[("", "v1", "namespaces")]
SERVICES = BY_PATH[("", "v1", "services")]
PODS = BY_PATH[("", "v1", "pods")]
# Types whose DELETE answers with the object rather than a Status (as kube's registries do).
RETURNS_DELETED = frozenset({"pods", "services", "namespaces", "nodes"})
Mutate = Callable[[Obj], Obj]
Entry = tuple[KeyValue, Obj | None]  # a listed object: as stored, and decoded when a selector looked at it


def parse_revision(text: str | None, field: str = "resourceVersion") -> int | None:
    """A resourceVersion as the store's revision; None for unset; 400 when it is not one of ours."""
    if text in (None, ""):
        return None
    try:
        value = int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad_request(f'{field}: Invalid value: "{text}": must be a decimal integer') from None
    if value < 0:
        raise bad_request(f'{field}: Invalid value: "{text}": must not be negative')
    return value


GENERATE_NAME_ATTEMPTS = 8  # kube-apiserver's: a generated name is drawn again up to 7 times when taken


class Registry:
    """Every verb over every type, on one store."""

    def __init__(self, store: Store, allocator: ServiceAllocator, mirror: StoreMirror | None = None,
                 cache: WatchCache | None = None, toleration_seconds: tuple[int, int] = (300, 300)) -> None:
        self.store = store
        self.toleration_seconds = toleration_seconds  # DefaultTolerationSeconds admission: (not-ready, unreachable)
        self.cache = cache
        self.allocator = allocator
        # namespaces as the mirror has them: a fast path for the check every create makes
        self._namespaces = mirror.objects.get(NAMESPACES.prefix(None)) if mirror is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dependents = Dependents(self)
        self.namespaces = Namespaces(self)

    # Reads -------------------------------------------------------------------------------------------------

    async def get(self, t: ResourceType, namespace: str | None, name: str, revision: int | None = None) -> Obj:
        kv = await self.get_kv(t, namespace, name, revision)
        return from_kv(kv)

    async def get_kv(self, t: ResourceType, namespace: str | None, name: str,
                     revision: int | None = None) -> KeyValue:
        try:
            if revision is None and self.cache is not None and await self.cache.synced():
                kv = self.cache.get(t.key(namespace, name))
            else:
                kv = await self.store.get(t.key(namespace, name), revision)
        except Compacted as exc:
            raise expired(f"too old resource version: {revision} ({exc.compact_revision})") from None
        if kv is None:
            raise not_found(t.plural, t.group, name)
        return kv

    async def list(self, t: ResourceType, namespace: str | None, flt: Filter, limit: int | None = None,
                   continue_token: str | None = None, resource_version: str | None = None,
                   match: str | None = None) -> tuple[list[Obj], int, str | None]:
        """``(items, snapshot revision, continue token or None)``."""
        entries, revision, token = await self.list_entries(t, namespace, flt, limit, continue_token,
                                                           resource_version, match)
        return [obj if obj is not None else from_kv(kv) for kv, obj in entries], revision, token

    async def list_entries(self, t: ResourceType, namespace: str | None, flt: Filter, limit: int | None = None,
                           continue_token: str | None = None, resource_version: str | None = None,
                           match: str | None = None) -> tuple[list[Entry], int, str | None]:
        """Like ``list``, as ``(stored key-value, decoded object or None)`` pairs: an object is decoded only
        when a selector needed it, so an unfiltered list can be answered from the stored bytes."""
        prefix = t.prefix(namespace)
        revision, start_after = await self._list_start(continue_token, resource_version, match, limit, prefix)
        if revision is None and self.cache is not None and await self.cache.synced():
            kvs, snapshot = self.cache.list(prefix)
            return _select(kvs, flt, limit, snapshot)
        entries: list[Entry] = []
        while True:
            page = None if limit is None else max(limit - len(entries), 50 if flt else 1)
            try:
                kvs, snapshot, more = await self.store.list(prefix, revision, page, start_after)
            except Compacted:
                raise expired(_CONTINUE_EXPIRED if continue_token else
                              f"too old resource version: {resource_version}") from None
            revision = snapshot
            chosen, _, token = _select(kvs, flt, None if limit is None else limit - len(entries), snapshot)
            entries += chosen
            if token is not None:  # the page had more matches than the limit takes
                return entries, snapshot, token
            if not more:
                return entries, snapshot, None
            start_after = kvs[-1].key if kvs else start_after
            if limit is not None and len(entries) >= limit:
                return entries, snapshot, _continue_token(snapshot, start_after)

    async def _list_start(self, continue_token: str | None, resource_version: str | None, match: str | None,
                          limit: int | None, prefix: str) -> tuple[int | None, str | None]:
        if continue_token:
            return _parse_continue(continue_token, prefix)
        wanted = parse_revision(resource_version)
        if match not in (None, "", "Exact", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        if match and not wanted and match == "Exact":
            raise bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for "
                              "resourceVersion \"0\"")
        if not wanted:
            return None, None
        current = await self.store.current_revision()
        if wanted > current:
            raise timeout(f"Too large resource version: {wanted}, current: {current}")
        exact = match == "Exact" or (not match and limit is not None)
        return (wanted if exact else None), None

    # Create ------------------------------------------------------------------------------------------------

    async def create(self, t: ResourceType, namespace: str | None, obj: Obj, dry_run: bool = False) -> Obj:
        generated_from = None if meta(obj).get("name") else meta(obj).get("generateName")
        obj = self._prepare_create(t, namespace, obj)
        if t.namespaced:
            await self._check_namespace_open(namespace or "", t, meta(obj).get("name", ""))
        if t is SERVICES:
            errors = await self.allocator.assign(obj, None)
            if errors:
                self.allocator.release(obj)
                raise invalid(t.kind, t.group, meta(obj).get("name", ""), errors)
        name = meta(obj)["name"]
        if dry_run:
            self._release_if_service(t, obj)
            return obj
        for attempt in range(1, GENERATE_NAME_ATTEMPTS + 1):
            try:
                revision = await self.store.create(t.key(namespace, name), encode(obj))
                break
            except AlreadyExists:
                if generated_from and attempt < GENERATE_NAME_ATTEMPTS:
                    # A generated name that is taken is drawn again (kube 1.32's RetryGenerateName).
                    name = meta(obj)["name"] = generate_name(generated_from)
                    continue
                self._release_if_service(t, obj)
                raise already_exists(t.plural, t.group, name) from None
            except BaseException:
                self._release_if_service(t, obj)
                raise
        meta(obj)["resourceVersion"] = str(revision)
        self.dependents.note(t, obj)
        return obj

    def _prepare_create(self, t: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        """Make ``obj`` (which the caller hands over: it is changed in place) a new object of type ``t``."""
        check_type(t, obj)
        m = meta(obj)
        if m.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if not m.get("name") and m.get("generateName"):
            m["name"] = generate_name(m["generateName"])
        set_namespace(t, obj, namespace)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            m.pop(field, None)
        m["uid"] = new_uid()
        m["creationTimestamp"] = now_rfc3339()
        if t.generation:
            m["generation"] = 1
        if t.has_status and t.plural in STATUS_ON_CREATE_IGNORED:
            obj.pop("status", None)  # status is the controllers' and kubelets' to write
        validation.default(t, obj)
        if t.plural == "pods":
            validation.default_toleration_seconds(obj, *self.toleration_seconds)
        tidy_metadata(obj)
        errors = validation.validate(t, obj)
        if errors:
            raise invalid(t.kind, t.group, m.get("name") or "", errors)
        return obj

    async def _check_namespace_open(self, namespace: str, t: ResourceType, name: str) -> None:
        key = NAMESPACES.key(None, namespace)
        ns = self._namespaces.get(key) if self._namespaces is not None else None
        if ns is None or _terminating(ns):  # not mirrored yet, or about to refuse: ask the store itself
            kv = await self.store.get(key)
            if kv is None:
                raise not_found("namespaces", "", namespace)
            ns = json.loads(kv.value)
        if _terminating(ns):
            raise forbidden(f'{qualified(t.plural, t.group)} "{name}" is forbidden: unable to create new content in '
                            f"namespace {namespace} because it is being terminated",
                            {"name": name, "group": t.group, "kind": t.plural,
                                                 "causes": [{"reason": "NamespaceTerminating",
                                                             "message": f"namespace {namespace} is being terminated",
                                                             "field": "metadata.namespace"}]})

    # Update ------------------------------------------------------------------------------------------------

    async def update(self, t: ResourceType, namespace: str | None, name: str, mutate: Mutate,
                     subresource: str | None = None, dry_run: bool = False,
                     create_missing: Callable[[], Awaitable[Obj]] | None = None) -> tuple[Obj, bool]:
        """Apply ``mutate`` to the live object and store the result; ``(object, created)``.

        ``mutate`` gets a private copy and returns the desired object. A resourceVersion in it is a
        precondition. ``create_missing`` makes the object when it does not exist (PUT on some types,
        server-side apply)."""
        while True:
            try:
                kv = await self.get_kv(t, namespace, name)
            except ApiError as exc:
                if exc.code == 404 and create_missing is not None:
                    try:
                        return await create_missing(), True
                    except ApiError as again:
                        if again.reason == "AlreadyExists":
                            continue  # lost a race with another creator: update what it made
                        raise
                raise
            live = from_kv(kv)
            desired = mutate(from_kv(kv))  # a private copy: decoding again is cheaper than deepcopy
            wanted_rv = meta(desired).get("resourceVersion") if isinstance(desired, dict) else None
            if wanted_rv and wanted_rv != meta(live)["resourceVersion"]:
                parse_revision(wanted_rv, "metadata.resourceVersion")
                raise conflict(t.plural, t.group, name)
            new = await self._prepare_update(t, namespace, name, live, desired, subresource)
            if new == live:
                return live, False  # nothing changed: no new revision, as kube does
            if dry_run:
                return new, False
            if _finalized(new):
                return await self._delete_now(t, namespace, name, kv, new), False
            try:
                revision = await self.store.update(kv.key, encode(new), kv.mod_revision)
            except NotFound:
                raise not_found(t.plural, t.group, name) from None
            except Conflict:
                # Changed since it was read: start over on the fresh object. A resourceVersion the client
                # named no longer matches it (409 above); one that only came from the live object (a patch
                # applied to it carries it along) must not turn a lost race into a 409.
                continue
            meta(new)["resourceVersion"] = str(revision)
            self.dependents.note(t, new)
            if t is SERVICES:
                self.allocator.release(live, keep=new)
            return new, False

    async def bind(self, namespace: str, name: str, node: str, uid: str | None = None,
                   annotations: dict[str, Any] | None = None) -> None:
        """``pods/<name>/binding``: kube's assignPod, one compare-and-swap that sets ``spec.nodeName``, the
        ``PodScheduled`` condition and the binding's annotations. Nothing else of the pod changes, so none of
        an update's defaulting and validation runs: a bind costs one decode and one encode (it is the
        scheduler's every write).

        As kube's GuaranteedUpdate, the first attempt takes the watch cache's copy without waiting for the cache
        to catch up with the store (a pending pod rarely changes, and the compare-and-swap refuses a stale one);
        a retry reads consistently."""
        key = PODS.key(namespace, name)
        kv = self.cache.get(key) if self.cache is not None else None
        consistent = False
        while True:
            if kv is None:
                kv, consistent = await self.get_kv(PODS, namespace, name), True
            pod = json.loads(kv.value)
            m, spec = meta(pod), pod.setdefault("spec", {})
            refusal = _unbindable(pod, name, uid)
            if refusal is not None:
                if not consistent:
                    kv = None  # the cache's copy may be stale (another pod of that name): decide on the store's
                    continue
                raise refusal
            spec["nodeName"] = node
            if annotations:
                m["annotations"] = {**(m.get("annotations") or {}), **{str(k): str(v) for k, v in annotations.items()}}
            _set_condition(pod, {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                 "lastTransitionTime": now_rfc3339()})
            try:
                await self.store.update(key, encode(pod), kv.mod_revision)
            except NotFound:
                raise not_found("pods", "", name) from None
            except Conflict:
                kv = None  # changed since it was read (its status, say): bind the fresh object
                continue
            return

    async def _prepare_update(self, t: ResourceType, namespace: str | None, name: str, live: Obj, desired: Any,
                              subresource: str | None) -> Obj:
        if not isinstance(desired, dict):
            raise bad_request("the object must be a JSON object")
        check_type(t, desired)
        set_namespace(t, desired, namespace)
        if meta(desired).get("name", name) != name:
            raise bad_request(f'the name of the object ({meta(desired).get("name")}) does not match the name on '
                              f'the URL ({name})')
        if subresource == "status":
            new = json.loads(encode(live))
            meta(new)["resourceVersion"] = meta(live)["resourceVersion"]
            new["status"] = desired.get("status")
            if new["status"] is None:
                new.pop("status")
            if "managedFields" in meta(desired):  # who owns which status fields, as the handler recorded it
                meta(new)["managedFields"] = meta(desired)["managedFields"]
        else:
            new = desired
            keep_system_metadata(meta(new), meta(live))
            if t.has_status:
                if "status" in live:
                    new["status"] = live["status"]
                else:
                    new.pop("status", None)
        meta(new)["resourceVersion"] = meta(live)["resourceVersion"]
        if t is NAMESPACES:
            self.namespaces.prepare_update(live, new, subresource)
        validation.default(t, new)
        tidy_metadata(new)
        if t.generation and spec_of(new) != spec_of(live):
            meta(new)["generation"] = int(meta(live).get("generation") or 0) + 1
        errors = validation.validate(t, new, live)
        if t is SERVICES and not errors:
            errors = await self.allocator.assign(new, live)
        if errors:
            raise invalid(t.kind, t.group, name, errors)
        if meta(live).get("deletionTimestamp"):
            added = set(meta(new).get("finalizers") or []) - set(meta(live).get("finalizers") or [])
            if added:
                raise invalid(t.kind, t.group, name, [FieldError(
                    "metadata.finalizers", "Forbidden", "no new finalizers can be added if the object is being "
                    "deleted, found new finalizers " + json.dumps(sorted(added)))])
        return new

    # Delete ------------------------------------------------------------------------------------------------

    async def delete(self, t: ResourceType, namespace: str | None, name: str, options: DeleteOptions) -> Obj | None:
        """Delete (or start deleting) the object; returns its last state, or None if it is already gone."""
        while True:
            kv = await self.get_kv(t, namespace, name)
            live = from_kv(kv)
            m = meta(live)
            if options.uid and options.uid != m.get("uid"):
                raise conflict(t.plural, t.group, name, f"Precondition failed: UID in precondition: {options.uid}, "
                               f"UID in object meta: {m.get('uid')}")
            if options.resource_version and options.resource_version != m.get("resourceVersion"):
                raise conflict(t.plural, t.group, name, "Precondition failed: ResourceVersion in precondition: "
                               f"{options.resource_version}, ResourceVersion in object meta: "
                               f"{m.get('resourceVersion')}")
            if t is NAMESPACES:
                self.namespaces.check_deletable(name)
            if options.dry_run:
                return live
            if t is NAMESPACES:
                return await self.namespaces.start_deletion(kv, live)
            try:
                return await self._delete_one(t, namespace, name, kv, live, options)
            except _Retry:
                continue

    async def _delete_one(self, t: ResourceType, namespace: str | None, name: str, kv: KeyValue, live: Obj,
                          options: DeleteOptions) -> Obj:
        m = meta(live)
        policy = options.propagation or "Background"
        grace = self._grace_period(t, live, options)
        finalizers = list(m.get("finalizers") or [])
        if policy == "Foreground" and FOREGROUND not in finalizers and not m.get("deletionTimestamp"):
            finalizers.append(FOREGROUND)
        if finalizers or grace:
            if policy == "Orphan":
                await self.dependents.orphan(live)
            marked = copy.deepcopy(live)
            mm = meta(marked)
            if not mm.get("deletionTimestamp") or (grace or 0) < int(mm.get("deletionGracePeriodSeconds") or 0):
                mm["deletionTimestamp"] = now_rfc3339(grace or 0)
                mm["deletionGracePeriodSeconds"] = grace or 0
            mm["finalizers"] = finalizers
            if t.generation:
                mm["generation"] = int(mm.get("generation") or 0) + (0 if m.get("deletionTimestamp") else 1)
            if marked == live:
                return live
            try:
                revision = await self.store.update(kv.key, encode(marked), kv.mod_revision)
            except Conflict:
                raise _Retry() from None
            mm["resourceVersion"] = str(revision)
            if FOREGROUND in finalizers:
                self.spawn(self.dependents.finish_foreground(t, namespace, name, mm["uid"]))
            return marked
        if policy == "Orphan":
            await self.dependents.orphan(live)
        return await self._delete_now(t, namespace, name, kv, live, policy)

    def _grace_period(self, t: ResourceType, live: Obj, options: DeleteOptions) -> int:
        """Pods on a node get time to stop (their kubelet finishes the deletion); everything else goes now."""
        if t is not PODS or not (live.get("spec") or {}).get("nodeName"):
            return 0
        if (live.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if options.grace_period is not None:
            return max(0, options.grace_period)
        return int((live.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)

    async def _delete_now(self, t: ResourceType, namespace: str | None, name: str, kv: KeyValue, last: Obj,
                          policy: str = "Background") -> Obj:
        try:
            revision, _ = await self.store.delete(kv.key, kv.mod_revision)
        except NotFound:
            raise not_found(t.plural, t.group, name) from None
        except Conflict:
            raise _Retry() from None
        meta(last)["resourceVersion"] = str(revision)
        if t is SERVICES:
            self.allocator.release(last)
        if policy != "Orphan" and self.dependents.may_exist:
            self.spawn(self.dependents.delete(meta(last).get("uid", ""), namespace, "Background"))
        return last

    async def delete_collection(self, t: ResourceType, namespace: str | None, flt: Filter,
                                options: DeleteOptions) -> list[Obj]:
        items, _, _ = await self.list(t, namespace, flt)
        deleted = []
        for item in items:
            try:
                last = await self.delete(t, namespace, meta(item)["name"], options)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                continue
            if last is not None:
                deleted.append(last)
        return deleted

    # Tasks -------------------------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _release_if_service(self, t: ResourceType, obj: Obj) -> None:
        if t is SERVICES:
            self.allocator.release(obj)


class _Retry(Exception):
    """The object changed under a delete: read it again."""


_CONTINUE_EXPIRED = ("The provided continue parameter is too old to display a consistent list result. You can start "
                     "a new list without the continue parameter, or use the continue token in this response to "
                     "retrieve the remainder of the results. Continuing with the provided token results in an "
                     "inconsistent list - objects that were created, modified, or deleted between the time the "
                     "first chunk was returned and now may show up in the list.")


_VERBATIM = re.compile(r"[A-Za-z0-9._:-]+")  # text every JSON encoder writes as it is, never escaped


def matches_stored(flt: Filter, value: bytes) -> bool | None:
    """Whether the stored object ``value`` matches ``flt``, when its bytes alone tell (None: decode it).

    Field selectors are mostly ``!=`` on a status (the scheduler's ``status.phase!=Succeeded,...``, kubelets'
    ``spec.nodeName=N``): a value that occurs nowhere in the object's JSON is no field's value. So most events
    and list items are matched without decoding them."""
    if flt.labels:
        return None
    for _, equal, wanted in flt.fields.terms:
        if not _VERBATIM.fullmatch(wanted) or wanted.encode() in value:
            return None
        if equal:
            return False  # the field cannot have the value it must have
    return True


def _select(kvs: list[KeyValue], flt: Filter, limit: int | None, revision: int) -> tuple[list[Entry], int, str | None]:
    """The entries of ``kvs`` (in key order) that ``flt`` matches, up to ``limit``; a continue token at
    ``revision`` if more matches remain."""
    entries: list[Entry] = []
    for kv in kvs:
        obj = None
        if flt:
            quick = matches_stored(flt, kv.value)
            if quick is None:
                obj = from_kv(kv)
                if not flt.matches(obj):
                    continue
            elif not quick:
                continue
        if limit is not None and len(entries) == limit:
            return entries, revision, _continue_token(revision, entries[-1][0].key)
        entries.append((kv, obj))
    return entries, revision, None


def _terminating(namespace: Obj) -> bool:
    return bool((namespace.get("metadata") or {}).get("deletionTimestamp")) or \
        (namespace.get("status") or {}).get("phase") == "Terminating"


def _unbindable(pod: Obj, name: str, uid: str | None) -> ApiError | None:
    """Why a binding cannot take this pod (kube's 409s), or None."""
    m, node = meta(pod), (pod.get("spec") or {}).get("nodeName")
    if uid and uid != m.get("uid"):
        return conflict("pods", "", name, f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                        f"{m.get('uid')}")
    if node:
        return conflict("pods", "", name, f'pod {name} is already assigned to node "{node}"')
    if m.get("deletionTimestamp"):
        return conflict("pods", "", name, f"pod {name} is being deleted, cannot be assigned to a host")
    return None


def _set_condition(obj: Obj, condition: dict[str, Any]) -> None:
    """Set a status condition (kube's UpdatePodCondition): its transition time stays when its status does."""
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    conditions = [c for c in status.get("conditions") or () if isinstance(c, dict)]
    for i, current in enumerate(conditions):
        if current.get("type") == condition["type"]:
            if current.get("status") == condition["status"]:
                condition = {**condition, "lastTransitionTime": current.get("lastTransitionTime")}
            conditions[i] = condition
            break
    else:
        conditions.append(condition)
    status["conditions"] = conditions


def _finalized(obj: Obj) -> bool:
    m = meta(obj)
    if obj.get("kind") == "Namespace":  # held by its spec.finalizers too (lifecycle.Namespaces)
        return bool(m.get("deletionTimestamp")) and namespace_finalized(obj)
    return bool(m.get("deletionTimestamp")) and not m.get("finalizers") and not m.get("deletionGracePeriodSeconds")


def _continue_token(revision: int, start_after: str) -> str:
    return base64.urlsafe_b64encode(dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start_after})).decode()


def _parse_continue(token: str, prefix: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        revision, start = int(data["rv"]), str(data["start"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion (version "
                          "meta.k8s.io/v1)") from None
    if not start.startswith(prefix):
        raise bad_request("continue key is not valid: key does not belong to this list")
    return revision, start


_uid_random = random.Random(int.from_bytes(os.urandom(16), "big"))


def new_uid() -> str:
    """A random (version 4) UUID for metadata.uid. Not a secret, so a seeded PRNG serves: os.urandom per
    object costs more than the rest of a create."""
    return str(uuid.UUID(int=_uid_random.getrandbits(128), version=4))


# Types whose status only their controllers (or kubelets) write: a create's status is dropped.
STATUS_ON_CREATE_IGNORED = frozenset({"pods", "deployments", "replicasets", "daemonsets", "statefulsets", "services",
                                      "jobs",
                                      "cronjobs", "horizontalpodautoscalers"})


def check_type(t: ResourceType, obj: Obj) -> None:
    """The body's apiVersion and kind, when given, must be the endpoint's (kube answers 400 otherwise)."""
    if not isinstance(obj, dict):
        raise bad_request("the object must be a JSON object")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version and api_version != t.group_version:
        raise bad_request(f"the API version in the data ({api_version}) does not match the expected API version "
                          f"({t.group_version})")
    if kind and kind != t.kind:
        raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({t.kind})")
    obj["apiVersion"], obj["kind"] = t.group_version, t.kind


def set_namespace(t: ResourceType, obj: Obj, namespace: str | None) -> None:
    m = meta(obj)
    if not t.namespaced:
        m.pop("namespace", None)
        return
    given = m.get("namespace")
    if given and given != namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    m["namespace"] = namespace


def keep_system_metadata(new: dict[str, Any], live: dict[str, Any]) -> None:
    """Fields clients cannot change with an update: identity, creation, deletion, generation."""
    for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                  "namespace", "name"):
        if field in live:
            new[field] = live[field]
        else:
            new.pop(field, None)
    if "managedFields" not in new and "managedFields" in live:
        new["managedFields"] = live["managedFields"]


