"""A small Kubernetes API client: kubeconfig, HTTPS requests, discovery, watches.

Standard library only (plus PyYAML for the kubeconfig). The TLS identity comes from the kubeconfig's
current (or chosen) context: the cluster's CA, a client certificate and key (inline ``-data`` or files), or a
bearer token. Errors come back as ``ApiError`` carrying the server's ``Status``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class ConfigError(Exception):
    """The kubeconfig is missing or does not say how to reach a cluster."""


class ApiError(Exception):
    """The API server answered with an error ``Status``."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        self.code = code
        self.status = status
        self.reason = status.get("reason") or http.client.responses.get(code, "Unknown")
        self.message = status.get("message") or f"the server responded with status {code}"
        super().__init__(self.message)


# --- kubeconfig -----------------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    """How to reach one cluster as one user, as a kubeconfig context says."""

    server: str
    namespace: str = "default"
    ca_pem: bytes | None = None
    insecure: bool = False
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    if os.environ.get("KUBECONFIG"):
        return [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def load_config(path: str | None = None, context: str | None = None) -> ClusterConfig:
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    found = False
    for candidate in kubeconfig_paths(path):
        if not candidate.exists():
            continue
        found = True
        document = yaml.safe_load(candidate.read_text()) or {}
        base = candidate.parent
        for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in document.get(section) or []:
                merged[section].setdefault(entry.get("name"), (entry.get(key) or {}, base))
        merged["current-context"] = merged["current-context"] or document.get("current-context")
    if not found:
        raise ConfigError("no kubeconfig found: pass --kubeconfig or set KUBECONFIG")
    name = context or merged["current-context"]
    if name not in merged["contexts"]:
        raise ConfigError(f'context "{name}" does not exist' if name else "no current context is set")
    ctx, _ = merged["contexts"][name]
    cluster, cluster_base = merged["clusters"].get(ctx.get("cluster"), ({}, Path()))
    user, user_base = merged["users"].get(ctx.get("user"), ({}, Path()))
    if not cluster.get("server"):
        raise ConfigError(f'cluster "{ctx.get("cluster")}" has no server')
    return ClusterConfig(
        server=cluster["server"].rstrip("/"),
        namespace=ctx.get("namespace") or "default",
        ca_pem=_pem(cluster, "certificate-authority", cluster_base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_pem=_pem(user, "client-certificate", user_base),
        key_pem=_pem(user, "client-key", user_base),
        token=user.get("token") or _read_optional(user.get("tokenFile"), user_base),
    )


def _pem(section: dict[str, Any], name: str, base: Path) -> bytes | None:
    if section.get(f"{name}-data"):
        return base64.b64decode(section[f"{name}-data"])
    if section.get(name):
        return (base / section[name]).read_bytes()
    return None


def _read_optional(name: str | None, base: Path) -> str | None:
    return (base / name).read_text().strip() if name else None


# --- requests -------------------------------------------------------------------------------------------


class Client:
    """Requests to one API server."""

    def __init__(self, config: ClusterConfig, timeout: float = 60.0) -> None:
        self.config = config
        self.timeout = timeout
        parts = urlsplit(config.server)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        self._prefix = parts.path.rstrip("/")
        self._ssl = self._ssl_context() if self._https else None
        self._discovery: list[ApiResource] | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.config.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.config.ca_pem:
            context = ssl.create_default_context(cadata=self.config.ca_pem.decode())
        if self.config.cert_pem and self.config.key_pem:
            # ssl loads client identities only from files: write them to a private directory, briefly.
            with tempfile.TemporaryDirectory(prefix="skiff-kubectl-") as scratch:
                cert, key = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
                for target, data in ((cert, self.config.cert_pem), (key, self.config.key_pem)):
                    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(descriptor, "wb") as handle:
                        handle.write(data)
                context.load_cert_chain(cert, key)
        return context

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, accept: str, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "skiff-kubectl/0.1"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        return headers

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", accept: str = "application/json") -> Any:
        """One request; the decoded JSON answer (ApiError for an error Status)."""
        url = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        connection = self._connection(self.timeout)
        try:
            connection.request(method, url, body=payload,
                               headers=self._headers(accept, content_type if payload is not None else None))
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        decoded = _decode(data)
        if response.status >= 400:
            status = decoded if isinstance(decoded, dict) else {"message": data.decode(errors="replace").strip()}
            raise ApiError(response.status, status)
        return decoded

    def watch(self, path: str, query: dict[str, Any], accept: str = "application/json") -> Iterator[dict[str, Any]]:
        """The events of a watch (``watch=true``), one per line, until the server ends the stream."""
        url = self._prefix + path + "?" + urlencode({**query, "watch": "true"})
        connection = self._connection(None)
        try:
            connection.request("GET", url, headers=self._headers(accept, None))
            response = connection.getresponse()
            if response.status >= 400:
                data = response.read()
                decoded = _decode(data)
                raise ApiError(response.status, decoded if isinstance(decoded, dict) else {})
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)
        finally:
            connection.close()

    # --- discovery --------------------------------------------------------------------------------------

    def resources(self) -> list[ApiResource]:
        if self._discovery is None:
            self._discovery = self._discover()
        return self._discovery

    def _discover(self) -> list[ApiResource]:
        found: list[ApiResource] = []
        versions = [("", "v1")]
        for group in self.request("GET", "/apis").get("groups", []):
            preferred = (group.get("preferredVersion") or {}).get("version")
            version = preferred or group["versions"][0]["version"]
            versions.append((group["name"], version))
        for group, version in versions:
            path = f"/apis/{group}/{version}" if group else "/api/v1"
            try:
                listing = self.request("GET", path)
            except ApiError:
                continue
            for entry in listing.get("resources", []):
                if "/" in entry["name"]:
                    continue  # subresources
                found.append(ApiResource(
                    group=group, version=version, name=entry["name"], kind=entry["kind"],
                    namespaced=bool(entry.get("namespaced")), singular=entry.get("singularName") or "",
                    short_names=tuple(entry.get("shortNames") or ()), verbs=tuple(entry.get("verbs") or ()),
                    categories=tuple(entry.get("categories") or ()),
                ))
        return found

    def resolve(self, name: str) -> ApiResource:
        """A resource by plural, singular, short name or kind, optionally qualified (``deployments.apps``)."""
        wanted = name.lower()
        base, _, group = wanted.partition(".")
        for resource in self.resources():
            if group and resource.group != group and not resource.group.startswith(group + "."):
                continue
            if base in (resource.name, resource.singular, resource.kind.lower(), *resource.short_names):
                return resource
        raise ConfigError(f'the server doesn\'t have a resource type "{name}"')

    def for_kind(self, api_version: str, kind: str) -> ApiResource:
        group, _, version = api_version.rpartition("/")
        for resource in self.resources():
            if resource.kind == kind and resource.group == group:
                return ApiResource(**{**resource.__dict__, "version": version})
        raise ConfigError(f'no matches for kind "{kind}" in version "{api_version}"')

    def category(self, name: str) -> list[ApiResource]:
        return [r for r in self.resources() if name in r.categories]


@dataclass(frozen=True)
class ApiResource:
    """One resource type the server serves."""

    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """What kubectl prints before a name: ``deployment.apps``, ``pod``."""
        kind = self.kind.lower()
        return f"{kind}.{self.group}" if self.group else kind

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.name}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


def _decode(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
