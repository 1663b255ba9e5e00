"""OpenAPI documents: just enough for kubectl (``apply`` needs ``/openapi/v3`` to decide how to validate).

kubectl reads ``/openapi/v3`` for the list of group-versions, fetches one group-version's document, and
looks for the PATCH operation of the object's path tagged with its GroupVersionKind. Finding the
``fieldValidation`` query parameter there, it leaves validation to the server. The documents declare
no schemas: with schemas kubectl would also expect merge keys for every type, and computes strategic
merge patches from its own compiled-in types anyway. ``/openapi/v2`` is the same in Swagger 2.0 form.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from skiff.cluster.api.objects import dumps
from skiff.cluster.api.resources import GROUP_VERSIONS, ResourceType, of_group_version

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")
_OK = {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}}


def _path_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _operations(t: ResourceType, item: bool) -> dict[str, Any]:
    gvk = {"group": t.group, "version": t.version, "kind": t.kind}
    params = [{"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True} for name in _QUERY]
    verbs = ("get", "put", "patch", "delete") if item else ("get", "post", "delete")
    ops = {}
    for verb in verbs:
        action = {"get": "get" if item else "list", "put": "put", "patch": "patch", "delete": "delete",
                  "post": "post"}[verb]
        ops[verb] = {"operationId": f"{verb}{t.kind}", "parameters": params if verb != "get" else [],
                     "responses": _OK, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
    return ops


def _paths(group: str, version: str) -> dict[str, Any]:
    base = "/" + _path_key(group, version)
    paths: dict[str, Any] = {}
    for t in of_group_version(group, version):
        if not t.stored:
            continue
        scope = f"{base}/namespaces/{{namespace}}" if t.namespaced else base
        paths[f"{scope}/{t.plural}"] = _operations(t, False)
        paths[f"{scope}/{t.plural}/{{name}}"] = _operations(t, True)
    return paths


@cache
def v3_group_version(group: str, version: str) -> bytes | None:
    if (group, version) not in GROUP_VERSIONS:
        return None
    return dumps({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                  "paths": _paths(group, version), "components": {"schemas": {}}})


def _hash(group: str, version: str) -> str:
    return hashlib.sha512(v3_group_version(group, version) or b"").hexdigest()[:64].upper()


@cache
def v3_root() -> bytes:
    paths = {_path_key(g, v): {"serverRelativeURL": f"/openapi/v3/{_path_key(g, v)}?hash={_hash(g, v)}"}
             for g, v in GROUP_VERSIONS}
    return dumps({"paths": paths})


def _proto_string(field: int, text: str) -> bytes:
    data = text.encode()
    return bytes([field << 3 | 2, len(data)]) + data


@cache
def v2_protobuf() -> bytes:
    """A Swagger 2.0 document in gnostic's protobuf form, with no paths and no definitions.

    kubectl fetches it (protobuf only) to validate kinds the v3 documents do not name; with no schema for
    such a kind it skips client-side validation, and the request then fails with kube's own "no matches
    for kind" error instead of a parse error."""
    info = _proto_string(1, "Kubernetes") + _proto_string(2, "v1.32.0")
    return _proto_string(1, "2.0") + bytes([2 << 3 | 2, len(info)]) + info


@cache
def v2() -> bytes:
    paths: dict[str, Any] = {}
    for group, version in GROUP_VERSIONS:
        paths.update(_paths(group, version))
    return dumps({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
                  "definitions": {}})
