"""A small synchronous Kubernetes API client: HTTPS requests, discovery, watches.

Standard library only. The kubeconfig is read by ``skiff.cluster.client.config`` (the one loader the
control plane shares); the TLS identity comes from its current (or chosen) context: the cluster's CA, a
client certificate and key, or a bearer token. Errors come back as ``ApiError`` carrying the server's ``Status``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from skiff.cli.kubectl.streams import PROTOCOLS, ChannelSocket, UpgradeRefused
from skiff.cluster.client.config import ClusterConfig, ConfigError, load_kubeconfig

__all__ = ["TABLE_ACCEPT", "ApiError", "ApiResource", "Client", "ClusterConfig", "ConfigError", "load_config"]
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class ApiError(Exception):
    """The API server answered with an error ``Status``."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        self.code = code
        self.status = status
        self.reason = status.get("reason") or http.client.responses.get(code, "Unknown")
        self.message = status.get("message") or f"the server responded with status {code}"
        super().__init__(self.message)


load_config = load_kubeconfig  # the name the commands use


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
        self._ssl = config.ssl_context() if self._https else None
        self._discovery: list[ApiResource] | None = None

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

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """A streamed answer (``pods/log`` with ``follow``), chunk by chunk as the server sends it."""
        url = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        connection = self._connection(None)
        try:
            connection.request("GET", url, headers=self._headers("*/*", None))
            response = connection.getresponse()
            if response.status >= 400:
                data = response.read()
                decoded = _decode(data)
                raise ApiError(response.status, decoded if isinstance(decoded, dict) else {"message": str(decoded)})
            while chunk := response.read1(65536):
                yield chunk
        finally:
            connection.close()

    def upgrade(self, path: str, query: list[tuple[str, str]],
                protocols: tuple[str, ...] = PROTOCOLS) -> ChannelSocket:
        """A channel WebSocket (``pods/exec``, ``pods/attach``, ``pods/portforward``); ApiError when the server
        refuses."""
        url = self._prefix + path + "?" + urlencode(query)
        headers = {"User-Agent": "skiff-kubectl/0.1"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        try:
            return ChannelSocket.connect(self._host, self._port, url, headers, self._ssl, self.timeout, protocols)
        except UpgradeRefused as refused:
            raise ApiError(refused.code, refused.status) from None

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
