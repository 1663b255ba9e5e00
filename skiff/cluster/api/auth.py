"""Authentication (who is asking) and RBAC authorization (may they), as kube-apiserver does them.

Authentication: a client certificate signed by the cluster CA (CN = user, O = groups), or a bearer
token from the static token file (kube's CSV format: ``token,user,uid,"group1,group2"``), or a service
account's token (``tokens.py``; checked by the server after these, as it may read the store). Everyone
authenticated is also in ``system:authenticated``. Anonymous requests get 401, except the health and
version endpoints.

Authorization: ``system:masters`` may do anything; everyone else needs a rule in a ClusterRole or Role
reached through a binding that names them. The RBAC objects are the ones in the store, mirrored in
memory by a ``StoreMirror`` (so a request never reads them from the store), and the defaults kube bootstraps
(cluster-admin, view, edit, system:discovery, system:node) are created at first start.
"""

from __future__ import annotations

import csv
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skiff.atomicfile import write_atomically
from skiff.cluster.api.certs import ADMIN_GROUP, NODE_GROUP
from skiff.cluster.api.mirror import StoreMirror
from skiff.cluster.api.objects import Obj
from skiff.cluster.api.status import ApiError, forbidden, qualified

AUTHENTICATED = "system:authenticated"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/version", "/version/"})
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"
RBAC_PREFIXES = {"roles": "/registry/roles/", "clusterroles": "/registry/clusterroles/",
                 "rolebindings": "/registry/rolebindings/", "clusterrolebindings": "/registry/clusterrolebindings/"}


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # (key, value): what a service-account token says of its use

    @property
    def is_master(self) -> bool:
        return ADMIN_GROUP in self.groups


@dataclass
class Attributes:
    """What a request asks to do, in RBAC's terms."""

    verb: str
    path: str
    resource: str = ""  # empty for a non-resource request
    group: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


class Authenticator:
    def __init__(self, token_file: Path | None) -> None:
        self.tokens: dict[str, User] = {}
        if token_file is not None:
            self.tokens = read_token_file(token_file)

    def authenticate(self, authorization: str | None, peercert: dict[str, Any] | None) -> User | None:
        if authorization and authorization.lower().startswith("bearer "):
            user = self.tokens.get(authorization[7:].strip())
            return user  # a wrong token is a failed login even if a certificate came too
        if peercert:
            return user_from_cert(peercert)
        return None


def read_token_file(path: Path) -> dict[str, User]:
    tokens = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0].startswith("#"):
                continue
            groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
            tokens[row[0].strip()] = User(row[1].strip(), (*groups, AUTHENTICATED), row[2].strip() if len(row) > 2
                                          else "")
    return tokens


def user_from_cert(peercert: dict[str, Any]) -> User | None:
    """The user a verified client certificate names (Python's ``getpeercert()`` form)."""
    cn, orgs = None, []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return User(cn, (*orgs, AUTHENTICATED)) if cn else None


# RBAC ---------------------------------------------------------------------------------------------------------

def _matches(values: Iterable[str] | None, wanted: str) -> bool:
    values = values or ()
    return "*" in values or wanted in values


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    if not _matches(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource:
        return any(url == attrs.path or url == "*" or (url.endswith("*") and attrs.path.startswith(url[:-1]))
                   for url in rule.get("nonResourceURLs") or ())
    if not _matches(rule.get("apiGroups"), attrs.group):
        return False
    wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or ()
    if not (_matches(resources, wanted) or (attrs.subresource and f"*/{attrs.subresource}" in resources)):
        return False
    names = rule.get("resourceNames")
    return not names or attrs.name in names


def subject_matches(subject: dict[str, Any], user: User, namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        return user.name == f"system:serviceaccount:{subject.get('namespace') or namespace}:{name}"
    return False


class RBACAuthorizer:
    """Decides from the RBAC objects the mirror holds (the store's, a watch event behind at most)."""

    def __init__(self, mirror: StoreMirror) -> None:
        self.objects = {plural: mirror.objects[prefix] for plural, prefix in RBAC_PREFIXES.items()}

    def _role_rules(self, kind: str, name: str, namespace: str) -> list[dict[str, Any]]:
        key = (f"/registry/clusterroles/{name}" if kind == "ClusterRole" else f"/registry/roles/{namespace}/{name}")
        role = self.objects["clusterroles" if kind == "ClusterRole" else "roles"].get(key)
        return (role or {}).get("rules") or []

    def allows(self, user: User, attrs: Attributes) -> bool:
        if user.is_master:
            return True
        for binding in self.objects["clusterrolebindings"].values():
            if any(subject_matches(s, user, "") for s in binding.get("subjects") or ()):
                ref = binding.get("roleRef") or {}
                if any(rule_allows(r, attrs) for r in self._role_rules("ClusterRole", ref.get("name", ""), "")):
                    return True
        if not attrs.namespace or not attrs.resource:
            return False
        prefix = f"/registry/rolebindings/{attrs.namespace}/"
        for key, binding in self.objects["rolebindings"].items():
            if key.startswith(prefix) and any(subject_matches(s, user, attrs.namespace)
                                              for s in binding.get("subjects") or ()):
                ref = binding.get("roleRef") or {}
                rules = self._role_rules(ref.get("kind", ""), ref.get("name", ""), attrs.namespace)
                if any(rule_allows(r, attrs) for r in rules):
                    return True
        return False


def forbidden_error(user: User, attrs: Attributes) -> ApiError:
    if not attrs.resource:
        return forbidden(f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"')
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    what = qualified(attrs.resource, attrs.group) + (f' "{attrs.name}"' if attrs.name else "")
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return forbidden(f'{what} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group '
                     f'"{attrs.group}" {scope}', {"name": attrs.name, "group": attrs.group, "kind": attrs.resource})


# The bootstrap policy: created when missing, as kube-apiserver's RBAC post-start hook does.

_DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/",
                   "/openapi", "/openapi/*"]
_READ = ["get", "list", "watch"]
_ALL = ["*"]


def _role(name: str, rules: list[dict[str, Any]]) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules}


def _binding(name: str, role: str, group: str, kind: str = "Group") -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": group}]}


# What the controllers (skiff/cluster/controllers) read and write, as user system:kube-controller-manager.
_CONTROLLED = ["pods", "pods/status", "replicasets", "replicasets/status", "replicasets/scale", "deployments",
               "deployments/status", "deployments/scale", "events", "endpoints", "endpointslices", "services",
               "services/status", "serviceaccounts", "serviceaccounts/token", "secrets", "configmaps", "namespaces",
               "namespaces/status", "namespaces/finalize", "nodes", "nodes/status", "leases",
               "horizontalpodautoscalers", "horizontalpodautoscalers/status", "jobs", "jobs/status",
               "cronjobs", "cronjobs/status", "daemonsets", "daemonsets/status",
               "statefulsets", "statefulsets/status", "statefulsets/scale"]
_WORKLOAD_GROUPS = ["", "apps", "autoscaling", "batch", "coordination.k8s.io", "discovery.k8s.io"]


def bootstrap_policy() -> list[tuple[str, Obj]]:
    """``(plural, object)`` for each default ClusterRole and ClusterRoleBinding."""
    workloads = ["pods", "services", "endpoints", "configmaps", "secrets", "events", "serviceaccounts",
                 "deployments", "deployments/scale", "replicasets", "replicasets/scale", "leases", "endpointslices",
                 "pods/log", "pods/exec", "pods/attach", "pods/portforward", "horizontalpodautoscalers", "jobs",
                 "cronjobs", "daemonsets", "statefulsets", "statefulsets/scale"]
    return [
        ("clusterroles", _role("cluster-admin", [{"apiGroups": _ALL, "resources": _ALL, "verbs": _ALL},
                                                 {"nonResourceURLs": _ALL, "verbs": _ALL}])),
        ("clusterroles", _role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}])),
        ("clusterroles", _role("system:basic-user", [
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}])),
        ("clusterroles", _role("view", [{"apiGroups": _WORKLOAD_GROUPS,
                                         "resources": [r for r in workloads if r != "secrets"] + ["namespaces"],
                                         "verbs": _READ}])),
        ("clusterroles", _role("edit", [{"apiGroups": _WORKLOAD_GROUPS, "resources": workloads, "verbs": _ALL},
                                        {"apiGroups": [""], "resources": ["namespaces"], "verbs": _READ}])),
        ("clusterroles", _role("system:node", [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": _READ},
            {"apiGroups": ["", "coordination.k8s.io"], "verbs": _ALL,
             "resources": ["nodes", "nodes/status", "pods", "pods/status", "events", "leases"]}])),
        ("clusterrolebindings", _binding("cluster-admin", "cluster-admin", ADMIN_GROUP)),
        ("clusterrolebindings", _binding("system:discovery", "system:discovery", AUTHENTICATED)),
        ("clusterrolebindings", _binding("system:basic-user", "system:basic-user", AUTHENTICATED)),
        ("clusterrolebindings", _binding("system:node", "system:node", NODE_GROUP)),
        # service accounts may read the OIDC discovery of their tokens' issuer (tokens.py)
        ("clusterroles", _role("system:service-account-issuer-discovery", [
            {"nonResourceURLs": ["/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                                 "/openid/v1/jwks", "/openid/v1/jwks/"], "verbs": ["get"]}])),
        ("clusterrolebindings", _binding("system:service-account-issuer-discovery",
                                         "system:service-account-issuer-discovery", "system:serviceaccounts")),
        ("clusterroles", _role(CONTROLLER_MANAGER_USER, [
            {"apiGroups": _WORKLOAD_GROUPS, "resources": _CONTROLLED, "verbs": _ALL},
            # the namespace controller empties a terminating namespace of every resource (kube's
            # system:controller:namespace-controller)
            {"apiGroups": _ALL, "resources": _ALL, "verbs": ["get", "list", "watch", "delete", "deletecollection"]}])),
        ("clusterrolebindings", _binding(CONTROLLER_MANAGER_USER, CONTROLLER_MANAGER_USER, CONTROLLER_MANAGER_USER,
                                         kind="User")),
        # kube's system:kube-scheduler: read the cluster, bind pods, note why a pod waits
        ("clusterroles", _role(SCHEDULER_USER, [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": _READ},
            {"apiGroups": [""], "resources": ["pods/binding", "bindings"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": _ALL}])),
        ("clusterrolebindings", _binding(SCHEDULER_USER, SCHEDULER_USER, SCHEDULER_USER, kind="User")),
    ]


AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"


def reconcile_bootstrap(live: Obj, default: Obj) -> Obj | None:
    """A default role or binding already there (from an older Skiff) with what the current default adds: rules
    and subjects it lacks are added, nothing is taken away, as kube-apiserver reconciles its bootstrap policy.
    None when nothing is missing, or when the object's ``rbac.authorization.kubernetes.io/autoupdate`` annotation
    is "false"."""
    if ((live.get("metadata") or {}).get("annotations") or {}).get(AUTOUPDATE) == "false":
        return None
    field = "rules" if "rules" in default else "subjects"
    have = list(live.get(field) or [])
    missing = [entry for entry in default[field] if entry not in have]
    if not missing:
        return None
    return {**live, field: have + missing}


def component_token(path: Path) -> str:
    """The bearer token of an in-process component (made once, kept 0600 beside the cluster's keys)."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_atomically(path, token.encode(), mode=0o600)
    return token
