"""``ApiClient``: an asyncio client of the Kubernetes API for the control plane's own components.

JSON bodies in and out; errors raised as ``ApiStatusError`` subclasses (see ``errors``). Paths are built
from a ``Resource`` without discovery. Per-request work is kept small on purpose (the scheduler binds about
a thousand pods a second through it): unary requests go over ``http.ConnectionPool``'s keep-alive
connections as preformatted bytes (the fixed headers are encoded once per client); watches, long streams,
go over one aiohttp session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from yarl import URL

from skiff.cluster.client.config import ClusterConfig
from skiff.cluster.client.errors import status_error
from skiff.cluster.client.http import ConnectionPool
from skiff.cluster.client.resources import Resource

Obj = dict[str, Any]
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",  # JSON is YAML: the body is sent as JSON
}
_JSON = "application/json"
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)


class ApiClient:
    """Requests to one API server; use ``async with`` (or ``close()``) to release its connections."""

    def __init__(self, config: ClusterConfig, *, user_agent: str = "skiff-client/0.1", timeout: float = 60.0,
                 pool_size: int = 32) -> None:
        self.config = config
        self._base = config.server.rstrip("/")
        parts = urlsplit(self._base)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": _JSON, "User-Agent": user_agent, **config.headers}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        ssl_context = config.ssl_context() if https else None
        self._pool = ConnectionPool(parts.hostname or "127.0.0.1", port, ssl_context, limit=pool_size,
                                    timeout=timeout)
        host = parts.hostname or "127.0.0.1"
        fixed = {"Host": f"{host}:{port}", **self._headers}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else False,
                                               limit=pool_size, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=self._connector, headers=self._headers,
                                              timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=30),
                                              skip_auto_headers=("Accept-Encoding",), json_serialize=json.dumps)

    @classmethod
    def from_config(cls, config: ClusterConfig, **options: Any) -> ApiClient:
        return cls(config, **options)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self._pool.close()
        await self._session.close()

    # --- the generic request -----------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                      content_type: str = _JSON) -> Any:
        """One request; the decoded JSON answer (``ApiStatusError`` for an error ``Status``)."""
        target = self._prefix + path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None}, quote_via=quote)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        if data is None:
            head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}\r\n"
        else:
            head = (f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n")
        status, raw = await self._pool.request(head.encode(), data)
        decoded = _decode(raw)
        if status >= 400:
            raise status_error(status, decoded)
        return decoded

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        if not query:
            return self._base + path
        return f"{self._base}{path}?{urlencode({k: v for k, v in query.items() if v is not None}, quote_via=quote)}"

    # --- verbs ---------------------------------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self.request("GET", res.path(namespace, name))

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None, resource_version: str | None = None, limit: int | None = None,
                   continue_: str | None = None) -> Obj:
        """The List object (``items``, ``metadata.resourceVersion``, ``metadata.continue``)."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector,
                 "resourceVersion": resource_version, "limit": limit, "continue": continue_}
        return await self.request("GET", res.path(namespace), query=query)

    async def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    allow_bookmarks: bool = True, timeout_seconds: int | None = None) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` for each event after ``resource_version`` until the server ends the stream.

        ADDED, MODIFIED, DELETED and (with ``allow_bookmarks``) BOOKMARK are yielded; an ERROR event is
        raised as ``ApiStatusError`` (``.gone`` when ``resource_version`` was compacted: relist).
        """
        query = {"watch": "1", "resourceVersion": resource_version, "labelSelector": label_selector,
                 "fieldSelector": field_selector, "allowWatchBookmarks": "true" if allow_bookmarks else None,
                 "timeoutSeconds": timeout_seconds}
        url = URL(self._url(res.path(namespace), query), encoded=True)
        async with self._session.get(url, timeout=_NO_TIMEOUT) as response:
            if response.status >= 400:
                raise status_error(response.status, _decode(await response.read()))
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                if b"\n" not in chunk:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise status_error(int(obj.get("code") or 500), obj)
                    yield kind, obj

    async def create(self, res: Resource, body: Obj, namespace: str | None = None) -> Obj:
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        return await self.request("POST", res.path(namespace), body=body)

    async def replace(self, res: Resource, body: Obj) -> Obj:
        """PUT the whole object (its ``metadata.resourceVersion``, if set, makes it compare-and-swap)."""
        meta = body["metadata"]
        return await self.request("PUT", res.path(meta.get("namespace"), meta["name"]), body=body)

    async def replace_status(self, res: Resource, body: Obj) -> Obj:
        meta = body["metadata"]
        return await self.request("PUT", res.path(meta.get("namespace"), meta["name"], "status"), body=body)

    async def patch(self, res: Resource, name: str, patch: Any, *, namespace: str | None = None,
                    patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
                    force: bool | None = None) -> Obj:
        try:
            content_type = PATCH_TYPES[patch_type]
        except KeyError:
            raise ValueError(f"unknown patch type {patch_type!r}: one of {', '.join(PATCH_TYPES)}") from None
        query = {"fieldManager": field_manager, "force": None if force is None else str(force).lower()}
        return await self.request("PATCH", res.path(namespace, name, subresource), query=query, body=patch,
                                  content_type=content_type)

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     propagation_policy: str | None = None, preconditions: dict[str, str] | None = None,
                     grace_period_seconds: int | None = None) -> Obj:
        """The deleted object (or, for one still finalizing, its current state) as the server answers."""
        options: Obj = {}
        if propagation_policy is not None:
            options["propagationPolicy"] = propagation_policy
        if preconditions is not None:
            options["preconditions"] = preconditions
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        body = {"kind": "DeleteOptions", "apiVersion": "v1", **options} if options else None
        return await self.request("DELETE", res.path(namespace, name), body=body)

    async def create_subresource(self, res: Resource, name: str, subresource: str, body: Obj,
                                 namespace: str | None = None) -> Obj:
        """POST to a subresource: ``pods/binding``, ``pods/eviction``."""
        return await self.request("POST", res.path(namespace, name, subresource), body=body)


def _decode(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
