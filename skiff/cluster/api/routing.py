"""Request paths to what they address: kube's RequestInfo (group, version, namespace, resource, name,
subresource, verb), used by both routing and RBAC.
"""

from __future__ import annotations

from dataclasses import dataclass

from skiff.cluster.api.resources import ResourceType, lookup


@dataclass
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    group: str = ""
    version: str = ""
    namespace: str = ""
    plural: str = ""
    name: str = ""
    subresource: str = ""
    type: ResourceType | None = None
    watch: bool = False


_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_info(method: str, path: str, query_watch: bool) -> RequestInfo:
    """Parse ``path``; ``type`` is None for non-resource paths and unknown resources (with ``is_resource`` set)."""
    parts = [p for p in path.split("/") if p]
    lower = method.upper()
    info = RequestInfo(path=path, verb=lower.lower() if lower in ("GET", "HEAD") else "")
    if not parts or parts[0] not in ("api", "apis"):
        info.verb = "get" if lower in ("GET", "HEAD") else lower.lower()
        return info
    if parts[0] == "api":
        if len(parts) < 3:
            info.verb = "get"
            return info
        info.version, rest = parts[1], parts[2:]
    else:
        if len(parts) < 4:
            info.verb = "get"
            return info
        info.group, info.version, rest = parts[1], parts[2], parts[3:]
    info.is_resource = True
    if rest[0] == "watch":
        info.watch, rest = True, rest[1:]
        if not rest:
            return info
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        info.namespace, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and len(rest) >= 2:
        info.namespace = rest[1]  # the namespace object itself: RBAC scopes it to its namespace, as kube does
    info.plural = rest[0]
    info.name = rest[1] if len(rest) > 1 else ""
    info.subresource = rest[2] if len(rest) > 2 else ""
    info.watch = info.watch or query_watch
    info.type = lookup(info.group, info.version, info.plural) if len(rest) <= 3 else None
    if info.type is not None and not info.type.namespaced and info.plural != "namespaces":
        info.namespace = ""
    info.verb = _verb(lower, bool(info.name), info.watch)
    if info.subresource in ("exec", "attach", "portforward") and info.verb == "get":
        info.verb = "create"  # kube 1.31+: their WebSocket upgrade (a GET) needs the create permission
    return info


def _verb(method: str, named: bool, watch: bool) -> str:
    if method in ("GET", "HEAD"):
        return "watch" if watch else ("get" if named else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return _METHOD_VERBS.get(method, method.lower())
