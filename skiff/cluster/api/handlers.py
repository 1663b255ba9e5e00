"""The resource endpoints: HTTP requests on ``/api/v1/...`` and ``/apis/<g>/<v>/...`` to ``Registry`` calls.

Bodies come as JSON or YAML; answers are JSON whatever the client lists first in ``Accept`` (protobuf,
CBOR), as a Table when kubectl asks for one (``as=Table``), or as PartialObjectMetadata. Patches and
Table printing are delegated to ``patch`` and ``printers``; ``status`` and ``scale`` subresources are
views over the main object.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from skiff.cluster.api import conversion, fields, printers, protobuf, watch
from skiff.cluster.api import patch as patches
from skiff.cluster.api.auth import Attributes, RBACAuthorizer, User
from skiff.cluster.api.lifecycle import DeleteOptions
from skiff.cluster.api.metrics import MetricsApi
from skiff.cluster.api.objects import Obj, dumps, from_kv, meta, with_revision
from skiff.cluster.api.podproxy import PodProxy
from skiff.cluster.api.resources import METRICS_GROUP, ResourceType, storage_type
from skiff.cluster.api.rest import RETURNS_DELETED, Entry, Registry, check_type, parse_revision
from skiff.cluster.api.routing import RequestInfo
from skiff.cluster.api.selectors import Filter, LabelSelector
from skiff.cluster.api.status import (
    ApiError,
    FieldError,
    bad_request,
    conflict,
    invalid,
    method_not_allowed,
    not_found,
    success_status,
    unsupported_media_type,
)
from skiff.cluster.api.tokens import ServiceAccountTokens

JSON = "application/json"
BODY_TYPES = (JSON, "application/yaml", "application/x-yaml", "text/yaml", "*/*", "")
META = "meta.k8s.io/v1"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=body if isinstance(body, bytes) else dumps(body), status=status, content_type=JSON)


def base_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_body(raw: bytes, content_type: str) -> Any:
    """A request body as data; 400 for malformed JSON or YAML, 415 for a type that is neither."""
    kind = base_type(content_type)
    if kind == protobuf.CONTENT_TYPE:
        return protobuf.decode(raw)
    if kind not in BODY_TYPES:
        raise unsupported_media_type(content_type)
    if not raw.strip():
        raise bad_request("the request body is empty: an object is required")
    try:
        if kind == JSON or raw.lstrip()[:1] in (b"{", b"["):
            return json.loads(raw)
        return yaml.safe_load(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
    except yaml.YAMLError as exc:
        raise bad_request(f"error converting YAML to JSON: {exc}".replace("\n", " ")) from None


class Renderer:
    """How objects are answered to this request: as themselves, a Table, or PartialObjectMetadata.

    ``t`` is the type the request addressed; the objects handed in are as kept (``storage_type``), and go out
    converted to ``t``'s version."""

    def __init__(self, accept: str, query: Any, t: ResourceType) -> None:
        self.t = t
        self.table = "as=Table" in accept
        self.partial = not self.table and "as=PartialObjectMetadata" in accept
        self.include_object = query.get("includeObject", "Metadata")

    @property
    def plain(self) -> bool:
        """Objects go out as themselves: answers can be spliced from the stored bytes."""
        return not self.table and not self.partial and not self.t.storage_version

    def served(self, obj: Obj) -> Obj:
        """A kept object in the version the request addressed."""
        return conversion.from_storage(self.t, obj)

    def many_raw(self, entries: list[Entry], revision: int, token: str | None) -> bytes:
        """A plain list made from the stored bytes (``plain`` only)."""
        metadata: dict[str, Any] = {"resourceVersion": str(revision)}
        if token:
            metadata["continue"] = token
        head = dumps({"kind": self.t.list_kind, "apiVersion": self.t.group_version, "metadata": metadata})
        items = b",".join(with_revision(kv.value, kv.mod_revision) for kv, _ in entries)
        return head[:-1] + b',"items":[' + items + b"]}"

    def one(self, obj: Obj) -> Obj:
        if self.table:
            return self._table([obj], meta(obj).get("resourceVersion", ""))
        if self.partial:
            return _partial(obj)
        return self.served(obj)

    def many(self, items: list[Obj], revision: int, token: str | None) -> Obj:
        metadata: dict[str, Any] = {"resourceVersion": str(revision)}
        if token:
            metadata["continue"] = token
        if self.table:
            table = self._table(items, str(revision))
            table["metadata"] = metadata
            return table
        if self.partial:
            return {"kind": "PartialObjectMetadataList", "apiVersion": META, "metadata": metadata,
                    "items": [_partial(o) for o in items]}
        return {"kind": self.t.list_kind, "apiVersion": self.t.group_version, "metadata": metadata,
                "items": [self.served(obj) for obj in items]}

    def event_object(self, obj: Obj, first: bool) -> Obj:
        if not self.table:
            return _partial(obj) if self.partial else self.served(obj)
        table = self._table([obj], meta(obj).get("resourceVersion", ""))
        if not first:
            table["columnDefinitions"] = []
        return table

    def _table(self, items: list[Obj], revision: str) -> Obj:
        table = printers.table(self.t.group, self.t.plural, items, now=datetime.datetime.now(datetime.UTC))
        table.setdefault("metadata", {})["resourceVersion"] = revision
        if self.include_object == "Object":
            for row, obj in zip(table.get("rows") or [], items, strict=False):
                row["object"] = self.served(obj)
        elif self.include_object == "None":
            for row in table.get("rows") or []:
                row.pop("object", None)
        return table


def _partial(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": META, "metadata": obj.get("metadata", {})}


def field_manager(request: web.Request) -> str:
    manager = request.query.get("fieldManager")
    if manager:
        return manager
    agent = request.headers.get("User-Agent", "unknown")
    return agent.split("/", 1)[0][:128] or "unknown"


class ResourceHandler:
    """Serves every verb on every catalogued type."""

    def __init__(self, registry: Registry, authorizer: RBACAuthorizer) -> None:
        self.registry = registry
        self.authorizer = authorizer
        self.pod_proxy: PodProxy | None = None  # pods/log, exec, attach and portforward, through the kubelet
        self.metrics: MetricsApi | None = None  # metrics.k8s.io, from the kubelets
        self.watches: set[asyncio.Task[Any]] = set()  # the handlers of open watches, ended first at shutdown
        self.tokens: ServiceAccountTokens | None = None  # serviceaccounts/token

    async def handle(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        t = info.type
        if t is None:
            raise not_found(info.plural or "resource", info.group, info.name) if info.plural else \
                _no_resource(info)
        if info.subresource and info.subresource not in t.subresources:
            raise not_found(f"{t.plural}/{info.subresource}", t.group, info.name)
        namespace = info.namespace if t.namespaced else None
        if t.namespaced and info.plural == "namespaces":
            namespace = None
        if (t.namespaced and not namespace and request.method not in ("GET", "HEAD")) or \
                (t.namespaced and not namespace and info.name):
            raise bad_request("the server could not find the requested resource: a namespace is required")
        renderer = Renderer(request.headers.get("Accept", ""), request.query, t)
        method = request.method
        if t.group == METRICS_GROUP:
            if method not in ("GET", "HEAD") or info.watch or self.metrics is None:
                raise method_not_allowed()
            return json_response(await self.metrics.serve(t, namespace, info.name, request.query))
        if not t.stored:
            if method != "POST" or info.name:
                raise method_not_allowed()
            return await self._review(request, t)
        t = storage_type(t)  # what the registry keeps; the renderer knows the version asked for
        if info.subresource:
            return await self._subresource(request, info, t, namespace, renderer)
        response = await self._resource(request, info, t, namespace, renderer)
        for warning in request.get("warnings", ()):
            response.headers.add("Warning", f'299 - "{warning}"')
        return response

    async def _resource(self, request: web.Request, info: RequestInfo, t: ResourceType, namespace: str | None,
                        renderer: Renderer) -> web.StreamResponse:
        method = request.method
        if method in ("GET", "HEAD"):
            if info.watch:
                return await self._watch(request, t, namespace, renderer, info.name)
            if info.name:
                _check_revision_param(request)
                kv = await self.registry.get_kv(t, namespace, info.name)
                if renderer.plain:
                    return json_response(with_revision(kv.value, kv.mod_revision))
                return json_response(renderer.one(from_kv(kv)))
            return await self._list(request, t, namespace, renderer)
        if method == "POST" and not info.name:
            return await self._create(request, t, namespace, renderer)
        if method == "PUT" and info.name:
            return await self._replace(request, t, namespace, info.name, renderer)
        if method == "PATCH" and info.name:
            return await self._patch(request, t, namespace, info.name, renderer)
        if method == "DELETE":
            return await self._delete(request, t, namespace, info.name, renderer)
        raise method_not_allowed()

    async def _list(self, request: web.Request, t: ResourceType, namespace: str | None,
                    renderer: Renderer) -> web.Response:
        q = request.query
        entries, revision, token = await self.registry.list_entries(
            t, namespace, Filter.from_query(q, t.plural), _int_param(q, "limit"), q.get("continue") or None,
            q.get("resourceVersion"), q.get("resourceVersionMatch"))
        if renderer.plain:
            return json_response(renderer.many_raw(entries, revision, token))
        items = [obj if obj is not None else from_kv(kv) for kv, obj in entries]
        return json_response(renderer.many(items, revision, token))

    async def _watch(self, request: web.Request, t: ResourceType, namespace: str | None, renderer: Renderer,
                     name: str) -> web.StreamResponse:
        q = request.query
        flt = Filter.from_query(q, t.plural)
        if name:  # the deprecated /watch/<plural>/<name> form: a field selector on the name
            flt = Filter(flt.labels, flt.fields.__class__.parse(
                ",".join(filter(None, [q.get("fieldSelector"), f"metadata.name={name}"])), t.plural))
        initial = q.get("sendInitialEvents")
        req = watch.WatchRequest(renderer.t, namespace, flt, q.get("resourceVersion"), watch.timeout_of(q),
                                 q.get("allowWatchBookmarks") in ("true", "1"),
                                 None if initial is None else initial == "true")
        parse_revision(req.resource_version)  # a malformed one is a 400 before the stream starts
        response = web.StreamResponse(headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        def client_gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()
        task = asyncio.current_task()
        if task is not None:
            self.watches.add(task)
        try:
            render = None if renderer.plain else renderer.event_object
            await watch.serve(self.registry, req, response.write, render, client_gone)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.watches.discard(task)  # type: ignore[arg-type]
        return response

    def end_watches(self) -> None:
        """Shutting down: end every open watch now (clients re-watch, as from any server that went away) rather
        than after the HTTP server's grace period, which is for the short requests in flight."""
        for task in list(self.watches):
            task.cancel()

    async def _create(self, request: web.Request, t: ResourceType, namespace: str | None,
                      renderer: Renderer) -> web.Response:
        body = parse_body(await request.read(), _content_type(request))
        dry_run = "dryRun" in request.query
        if not isinstance(body, dict):
            raise bad_request("the object must be a JSON object")
        check_fields(request, renderer.t, body)
        body = _to_storage(renderer.t, body)
        body = patches.record_update(None, body, field_manager(request), t.gvk)
        created = await self.registry.create(t, namespace, body, dry_run)
        return json_response(renderer.one(created), 201)

    async def _replace(self, request: web.Request, t: ResourceType, namespace: str | None, name: str,
                       renderer: Renderer, subresource: str | None = None) -> web.Response:
        body = parse_body(await request.read(), _content_type(request))
        if not isinstance(body, dict):
            raise bad_request("the object must be a JSON object")
        manager = field_manager(request)
        served = renderer.t
        check_fields(request, served, body)
        if served.storage_version:
            check_type(served, body)

        def replace(live: Obj) -> Obj:
            # it copies what it returns
            return _record(live, conversion.to_storage(served, body, live), manager, t, subresource)
        create = None
        if t.create_on_update and not subresource:
            async def create() -> Obj:
                return await self.registry.create(t, namespace, patches.record_update(None, body, manager, t.gvk))
        obj, created = await self.registry.update(t, namespace, name, replace, subresource,
                                                  "dryRun" in request.query, create)
        return json_response(renderer.one(obj), 201 if created else 200)

    async def _patch(self, request: web.Request, t: ResourceType, namespace: str | None, name: str,
                     renderer: Renderer, subresource: str | None = None) -> web.Response:
        change, create = self._patch_function(request, t, renderer.t, namespace, await request.read(), subresource)
        obj, created = await self.registry.update(t, namespace, name, change, subresource,
                                                  "dryRun" in request.query, None if subresource else create)
        return json_response(renderer.one(obj), 201 if created else 200)

    def _patch_function(self, request: web.Request, t: ResourceType, served: ResourceType, namespace: str | None,
                        raw: bytes, subresource: str | None
                        ) -> tuple[Callable[[Obj], Obj], Callable[[], Awaitable[Obj]] | None]:
        """How a PATCH changes the live object, in ``served``'s version (``t`` keeps it), and for an apply of
        a missing object, how to create it."""
        kind = base_type(_content_type(request))
        manager = field_manager(request)
        if kind == patches.APPLY_PATCH:
            if not request.query.get("fieldManager"):
                raise bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is "
                                  "required for apply patch")
            applied = parse_body(raw, "application/yaml")
            if not isinstance(applied, dict):
                raise bad_request("apply configuration must be an object")
            force = request.query.get("force") in ("true", "1")
            check_fields(request, served, applied)

            def apply(live: Obj | None) -> Obj:
                seen = None if live is None else conversion.from_storage(served, live)
                config = copy.deepcopy(applied) if live is None else applied
                made = _call_patch(lambda: patches.server_side_apply(seen, config, manager, force, served.gvk))
                return conversion.to_storage(served, made, live)

            async def create() -> Obj:
                return await self.registry.create(t, namespace, apply(None))
            return apply, create
        if kind not in patches.PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: {', '.join(patches.PATCH_TYPES)}")

        def change(live: Obj) -> Obj:
            patched = _call_patch(lambda: patches.apply_patch(conversion.from_storage(served, live), raw, kind,
                                                              served.gvk))
            check_fields(request, served, patched)
            return _record(live, conversion.to_storage(served, patched, live), manager, t, subresource)
        return change, None

    async def _delete(self, request: web.Request, t: ResourceType, namespace: str | None, name: str,
                      renderer: Renderer) -> web.Response:
        raw = await request.read()
        body = parse_body(raw, _content_type(request)) if raw.strip() else None
        options = DeleteOptions.parse(body if isinstance(body, dict) else None, request.query)
        if not name:
            deleted = await self.registry.delete_collection(t, namespace, Filter.from_query(request.query, t.plural),
                                                            options)
            return json_response(renderer.many(deleted, 0, None))
        last = await self.registry.delete(t, namespace, name, options)
        if last is None or (t.plural not in RETURNS_DELETED and not meta(last).get("deletionTimestamp")):
            return json_response(success_status({"name": name, "group": t.group, "kind": t.plural,
                                                 "uid": meta(last or {}).get("uid", "")}))
        return json_response(renderer.one(last))

    async def _review(self, request: web.Request, t: ResourceType) -> web.Response:
        """SelfSubjectAccessReview (may I?) and SelfSubjectReview (who am I?), about the requesting user."""
        body = parse_body(await request.read(), _content_type(request))
        if not isinstance(body, dict):
            raise bad_request("the object must be a JSON object")
        user: User = request["user"]
        body["apiVersion"], body["kind"] = t.group_version, t.kind
        if t.plural == "selfsubjectreviews":
            body["status"] = {"userInfo": {"username": user.name, "uid": user.uid, "groups": list(user.groups)}}
            if user.extra:
                body["status"]["userInfo"]["extra"] = {key: [value] for key, value in user.extra}
            return json_response(body, 201)
        spec = body.get("spec") or {}
        resource, plain = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if resource:
            attrs = Attributes(resource.get("verb", ""), "", resource.get("resource", ""), resource.get("group", ""),
                               resource.get("subresource", ""), resource.get("namespace", ""),
                               resource.get("name", ""))
        elif plain:
            attrs = Attributes(plain.get("verb", ""), plain.get("path", ""))
        else:
            raise invalid(t.kind, t.group, "", [FieldError("spec.resourceAttributes", "Invalid",
                                                           "exactly one of nonResourceAttributes or "
                                                           "resourceAttributes must be specified")])
        body["status"] = {"allowed": self.authorizer.allows(user, attrs)}
        return json_response(body, 201)

    # Subresources ------------------------------------------------------------------------------------------

    async def _subresource(self, request: web.Request, info: RequestInfo, t: ResourceType, namespace: str | None,
                           renderer: Renderer) -> web.StreamResponse:
        sub, name, method = info.subresource, info.name, request.method
        if sub == "status":
            if method == "GET":
                return json_response(renderer.served(await self.registry.get(t, namespace, name)))
            if method == "PUT":
                return await self._replace(request, t, namespace, name, renderer, "status")
            if method == "PATCH":
                return await self._patch(request, t, namespace, name, renderer, "status")
        elif sub == "scale":
            return await self._scale(request, t, namespace, name)
        elif sub == "binding" and method == "POST":
            return await self._bind(request, t, namespace, name)
        elif sub == "finalize" and method == "PUT":
            return await self._finalize(request, t, name)
        elif sub == "token" and method == "POST" and self.tokens is not None:
            body = parse_body(await request.read(), _content_type(request))
            return json_response(await self.tokens.token_request(namespace or "", name, body), 201)
        elif sub in ("log", "exec", "attach", "portforward"):
            pod = await self.registry.get(t, namespace, name)
            if self.pod_proxy is None:
                raise ApiError(503, "ServiceUnavailable", f"pods/{sub} is not served by this API server")
            return await self.pod_proxy.handle(request, pod, sub)
        raise method_not_allowed()

    async def _scale(self, request: web.Request, t: ResourceType, namespace: str | None, name: str) -> web.Response:
        if request.method == "GET":
            return json_response(to_scale(await self.registry.get(t, namespace, name)))
        if request.method not in ("PUT", "PATCH"):
            raise method_not_allowed()
        raw = await request.read()
        kind = base_type(_content_type(request))
        body = parse_body(raw, _content_type(request)) if request.method == "PUT" else None
        manager = field_manager(request)

        def rescale(live: Obj) -> Obj:
            scale = to_scale(live)
            if body is not None:
                wanted = body
            else:
                wanted = _call_patch(lambda: patches.apply_patch(scale, raw, kind, ("autoscaling", "v1", "Scale")))
            rv = meta(wanted).get("resourceVersion") if isinstance(wanted, dict) else None
            if rv and rv != meta(live).get("resourceVersion"):
                raise conflict(t.plural, t.group, name)
            replicas = ((wanted or {}).get("spec") or {}).get("replicas", 0) if isinstance(wanted, dict) else None
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid("Scale", "autoscaling", name, [FieldError(
                    "spec.replicas", "Invalid", "must be greater than or equal to 0", replicas)])
            scaled = {**live, "spec": {**(live.get("spec") or {}), "replicas": replicas}}
            scaled = patches.record_update(live, scaled, manager, t.gvk, "scale")
            meta(scaled).pop("resourceVersion", None)  # checked above
            return scaled
        obj, _ = await self.registry.update(t, namespace, name, rescale, None, "dryRun" in request.query)
        return json_response(to_scale(obj))

    async def _bind(self, request: web.Request, t: ResourceType, namespace: str | None, name: str) -> web.Response:
        binding = parse_body(await request.read(), _content_type(request))
        binding = binding if isinstance(binding, dict) else {}
        target = binding.get("target") if isinstance(binding.get("target"), dict) else {}
        node = target.get("name")
        if not node or not isinstance(node, str):
            raise invalid("Binding", "", name, [FieldError("target.name", "Required")])
        binding_meta = binding.get("metadata") if isinstance(binding.get("metadata"), dict) else {}
        annotations = binding_meta.get("annotations")
        await self.registry.bind(namespace or "", name, node, binding_meta.get("uid") or None,
                                 annotations if isinstance(annotations, dict) else None)
        return json_response(_BOUND, 201)

    async def _finalize(self, request: web.Request, t: ResourceType, name: str) -> web.Response:
        body = parse_body(await request.read(), _content_type(request))
        finalizers = ((body or {}).get("spec") or {}).get("finalizers") if isinstance(body, dict) else None

        def finalize(ns: Obj) -> Obj:
            ns.setdefault("spec", {})["finalizers"] = finalizers or []
            meta(ns).pop("resourceVersion", None)
            return ns
        obj, _ = await self.registry.update(t, None, name, finalize, "finalize")
        return json_response(obj)


_BOUND = dumps(success_status())  # every binding's answer: the same Status


def check_fields(request: web.Request, t: ResourceType, obj: Obj) -> None:
    """``fieldValidation``: Strict refuses unknown fields (400), Warn (the default) answers with a Warning
    header for each, Ignore says nothing. Unknown fields are kept either way: the catalogue of fields is
    not complete below the levels it checks."""
    mode = request.query.get("fieldValidation", "Warn")
    if mode == "Ignore":
        return
    unknown = fields.unknown_fields(t.kind, obj)
    if not unknown:
        return
    listed = ", ".join(f'unknown field "{f}"' for f in unknown)
    if mode == "Strict":
        raise bad_request(f'{t.kind} in version "{t.version}" cannot be handled as a {t.kind}: strict decoding '
                          f"error: {listed}")
    request.setdefault("warnings", []).extend(f'unknown field \\"{f}\\"' for f in unknown)


def _record(live: Obj, desired: Any, manager: str, t: ResourceType, subresource: str | None) -> Any:
    """``desired`` with managedFields recording ``manager``'s write. Through ``status`` only the status
    counts (the registry keeps the rest of the live object), so only status fields change owners."""
    if not isinstance(desired, dict):
        return desired  # the registry refuses it
    if subresource == "status":
        metadata = {k: v for k, v in meta(live).items() if k != "resourceVersion"} | _precondition(desired)
        desired = {**live, "metadata": metadata, "status": desired.get("status")}
        if desired["status"] is None:
            del desired["status"]
    return patches.record_update(live, desired, manager, t.gvk, subresource)


def _precondition(obj: Obj) -> dict[str, Any]:
    rv = meta(obj).get("resourceVersion")
    return {"resourceVersion": rv} if rv else {}


def to_scale(obj: Obj) -> Obj:
    """An autoscaling/v1 Scale view of a Deployment, ReplicaSet or StatefulSet."""
    m = meta(obj)
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    selector = LabelSelector.from_label_selector(spec.get("selector"))
    text = ",".join(f"{r.key}={next(iter(r.values))}" if r.op == "=" else r.key for r in selector.requirements)
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in m},
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {"replicas": status.get("replicas", 0), "selector": text}}


def _to_storage(served: ResourceType, body: Obj) -> Obj:
    """A new object sent to ``served``'s endpoint, in the form it is kept in (its apiVersion checked first)."""
    if not served.storage_version:
        return body
    check_type(served, body)
    return conversion.to_storage(served, body)


def _call_patch(fn: Callable[[], Obj]) -> Obj:
    """Run a patch function, mapping its errors to Status codes once."""
    try:
        return fn()
    except patches.ApplyConflict as exc:
        raise ApiError(409, "Conflict", str(exc), {"causes": exc.causes}) from None
    except patches.UnsupportedPatchType as exc:
        raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
    except patches.PatchError as exc:
        if exc.bad_request:
            raise bad_request(exc.message) from None
        raise ApiError(422, "Invalid", exc.message) from None


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, "", "0"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name}: invalid value {raw!r}") from None
    return value if value > 0 else None


def _check_revision_param(request: web.Request) -> None:
    """A get's resourceVersion means "not older than": the latest always qualifies; only its form is checked."""
    parse_revision(request.query.get("resourceVersion"))


def _no_resource(info: RequestInfo) -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _content_type(request: web.Request) -> str:
    """The Content-Type as sent ("" when absent: some clients send JSON without one)."""
    return request.headers.get("Content-Type", "")
