"""API discovery documents, built once from the catalogue and served as cached bytes.

Two forms: the plain one (``/api``, ``/apis``, ``/api/v1``, ``/apis/<g>/<v>``) and the aggregated one
(``apidiscovery.k8s.io/v2``) that kubectl 1.32 asks for first; the aggregated answer must carry the
exact Content-Type ``application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`` or
client-go falls back to the plain form.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from skiff.cluster.api.objects import dumps
from skiff.cluster.api.resources import GROUP_VERSIONS, SUB_VERBS, ResourceType, of_group_version

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
SCALE = ("autoscaling", "v1", "Scale")


def wants_aggregated(accept: str) -> str | None:
    """The aggregated version the client asked for (``v2`` or ``v2beta1``), else None."""
    for part in accept.split(","):
        if "as=APIGroupDiscoveryList" in part and "g=apidiscovery.k8s.io" in part:
            return "v2beta1" if "v=v2beta1" in part else "v2"
    return None


def _sub_kind(t: ResourceType, sub: str) -> tuple[str, str, str]:
    if sub == "scale":
        return SCALE
    if sub == "binding":
        return "", "v1", "Binding"
    if sub in ("log", "exec", "attach", "portforward"):
        return "", "v1", {"log": "Pod", "exec": "PodExecOptions", "attach": "PodAttachOptions",
                          "portforward": "PodPortForwardOptions"}[sub]
    if sub == "token":
        return "authentication.k8s.io", "v1", "TokenRequest"
    return t.gvk


def _plain_resources(group: str, version: str) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for t in of_group_version(group, version):
        entry: dict[str, Any] = {"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                                 "kind": t.kind, "verbs": list(t.verbs)}
        if t.short_names:
            entry["shortNames"] = list(t.short_names)
        if t.categories:
            entry["categories"] = list(t.categories)
        resources.append(entry)
        for sub in t.subresources:
            g, v, kind = _sub_kind(t, sub)
            sub_entry: dict[str, Any] = {"name": f"{t.plural}/{sub}", "singularName": "", "namespaced": t.namespaced,
                                         "kind": kind, "verbs": list(SUB_VERBS[sub])}
            if (g, v) != (group, version):
                sub_entry["group"], sub_entry["version"] = g, v
            resources.append(sub_entry)
    return resources


@cache
def api_versions(server_address: str) -> bytes:
    return dumps({"kind": "APIVersions", "versions": ["v1"],
                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})


@cache
def api_group_list() -> bytes:
    groups = []
    for group in dict.fromkeys(g for g, _ in GROUP_VERSIONS if g):
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for g, v in GROUP_VERSIONS if g == group]
        groups.append({"name": group, "versions": versions, "preferredVersion": versions[0]})
    return dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})


@cache
def api_group(group: str) -> bytes | None:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for g, v in GROUP_VERSIONS if g == group]
    if not versions:
        return None
    return dumps({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
                  "preferredVersion": versions[0]})


@cache
def resource_list(group: str, version: str) -> bytes | None:
    if (group, version) not in GROUP_VERSIONS:
        return None
    return dumps({"kind": "APIResourceList", "apiVersion": "v1",
                  "groupVersion": f"{group}/{version}" if group else version,
                  "resources": _plain_resources(group, version)})


def _aggregated_resource(t: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": t.plural, "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": "Namespaced" if t.namespaced else "Cluster", "singularResource": t.singular, "verbs": list(t.verbs)}
    if t.short_names:
        entry["shortNames"] = list(t.short_names)
    if t.categories:
        entry["categories"] = list(t.categories)
    subs = []
    for sub in t.subresources:
        g, v, kind = _sub_kind(t, sub)
        subs.append({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind},
                     "verbs": list(SUB_VERBS[sub])})
    if subs:
        entry["subresources"] = subs
    return entry


@cache
def aggregated(core: bool, version: str = "v2") -> bytes:
    """The APIGroupDiscoveryList of ``/api`` (core) or ``/apis`` (every named group)."""
    items = []
    groups = [""] if core else list(dict.fromkeys(g for g, _ in GROUP_VERSIONS if g))
    for group in groups:
        versions = [{"version": v, "freshness": "Current",
                     "resources": [_aggregated_resource(t) for t in of_group_version(group, v)]}
                    for g, v in GROUP_VERSIONS if g == group]
        items.append({"metadata": {"name": group, "creationTimestamp": None} if group else {},
                      "versions": versions})
    return dumps({"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
                  "metadata": {}, "items": items})
