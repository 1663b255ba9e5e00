"""The registry client: pull and push images over the OCI Distribution API (v2), as ``docker pull/push`` do.

Public API (all coroutines run on the caller's event loop; one client per daemon is the intended use)::

    client = RegistryClient(content, images, config_path=None, insecure_registries=(), mirrors=(),
                            user_agent=..., max_concurrent_downloads=3, max_concurrent_uploads=5,
                            chunk_threshold=64 MiB, chunk_size=16 MiB, sources_path=None)
    async with client: ...                                     # or: await client.close()
    await client.pull(ref, platform=None, progress=cb, credentials=None) -> Image
    await client.push(ref, progress=cb, credentials=None) -> str           # the manifest digest
    await client.resolve(ref, credentials=None) -> (media_type, digest, size)
    await client.fetch_blob(ref, digest, size=None, credentials=None) -> str   # stored, verified
    await client.tags(repository, credentials=None) -> list[str]
    await client.login(registry, username, password) -> {"Status": ..., "IdentityToken": ...}
    client.endpoints(domain) -> list[Endpoint]        # pure: which base URLs would be tried, in order

``credentials`` (``skiff.image.auth.Credentials``) override the ``config.json`` ones for one call: the
engine passes what arrives in ``X-Registry-Auth``. ``progress`` is called synchronously with dicts shaped
like dockerd's JSON stream (``{"status": "Downloading", "progressDetail": {"current", "total"},
"progress": "[==> ]", "id": "<12 hex>"}``, ``Already exists``, ``Pull complete``, ``Digest: ...``,
``Status: ...``; for pushes ``Preparing``, ``Pushing``, ``Pushed``, ``Layer already exists``,
``Mounted from <repo>``, ``<tag>: digest: ... size: N`` and an ``aux`` record), so it can forward them
verbatim.

Transport rules (Docker's): a registry is spoken to over https with a verified certificate, unless it
is listed in ``insecure_registries`` (a host, host:port or CIDR) or is loopback (127.0.0.0/8, ::1,
``localhost``); those are tried over https without verification first, then plain http, and the first
that connects is remembered. Docker Hub is ``registry-1.docker.io``; ``mirrors`` (URLs) are tried before
it for pulls only, and a failing mirror falls through to the next endpoint.

Integrity: everything is written through ``ContentStore.writer(digest, size)``, so a blob whose bytes do
not hash to the digest the manifest promised is refused and nothing is kept. Manifests and indexes are
stored exactly as received; their digest is computed here and must match the digest they were asked
by (pinned pulls) and the registry's ``Docker-Content-Digest`` whenever it sends one.

Uploads: a blob up to ``chunk_threshold`` bytes goes up whole in the PUT that closes the upload session
the POST opened; a larger one in ``chunk_size`` PATCHes with ``Content-Range`` (each answer's Location is
where the next goes), then an empty closing PUT. Downloads are streamed, at most
``max_concurrent_downloads`` at a time; an interrupted one is not resumed (the next pull starts it again).

Errors: a registry's error document becomes the Skiff error of its meaning: NAME_UNKNOWN,
MANIFEST_UNKNOWN, BLOB_UNKNOWN -> NotFound; UNAUTHORIZED, DENIED, or a token server's refusal ->
``RegistryAccessDenied`` (an InvalidArgument; from ``skiff.image.auth``), with the registry's message;
UNSUPPORTED -> Unsupported; 5xx and 429 -> SystemFailure; other refusals -> InvalidArgument. A registry
that cannot be reached is a SystemFailure naming the host; content that does not match its digest is
``DigestMismatch``.

Cross-repository mounts: which repositories each blob is known to live in (``registry``, ``repository``)
is recorded in a small SQLite file (``BlobSources``, default ``<content root>/blob-sources.db``) on pull
and push. A push of a blob that the target repository lacks first asks the registry to mount it from
such a repository on the same registry, as Docker's v2 metadata service does, before uploading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

import skiff
from skiff.errors import InvalidArgument, NotFound, SkiffError, SystemFailure, Unsupported
from skiff.image import manifest as mf
from skiff.image.auth import (
    DEFAULT_CONFIG,
    Authorizer,
    Credentials,
    RegistryAccessDenied,
    config_key,
    load_docker_config,
    repository_scope,
)
from skiff.image.content import ContentStore, DigestMismatch, digest_of
from skiff.image.reference import DEFAULT_DOMAIN, Reference
from skiff.image.reference import parse as parse_reference
from skiff.image.store import Image, ImageStore
from skiff.units import human_size

HUB_HOST = "registry-1.docker.io"
USER_AGENT = f"skiff/{skiff.__version__}"
MAX_MANIFEST = 4 << 20  # the size distribution itself refuses manifests beyond
_READ_CHUNK = 1 << 20
_MAX_MOUNT_ATTEMPTS = 3  # as Docker: a few candidate source repositories, then upload
_PROGRESS_INTERVAL = 0.1  # seconds between two byte-progress events of one layer

ProgressCallback = Callable[[dict], None]


# ---------------------------------------------------------------------------------------------- endpoints

@dataclass(frozen=True)
class Endpoint:
    """Where requests for one registry go: its host[:port] and the base URLs to try, in order."""

    host: str
    urls: tuple[str, ...]
    verify_tls: bool = True
    mirror: bool = False


def _hostname(host: str) -> str:
    """``host`` without its port or IPv6 brackets."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    name = _hostname(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure_registries: Collection[str]) -> bool:
    """May ``host`` be reached without verified TLS? Loopback always may (Docker's default), others if listed."""
    if is_loopback(host) or host in insecure_registries or _hostname(host) in insecure_registries:
        return True
    try:
        address = ipaddress.ip_address(_hostname(host))
    except ValueError:
        return False
    for entry in insecure_registries:
        with contextlib.suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                return True
    return False


def plan_endpoint(host: str, insecure_registries: Collection[str] = ()) -> Endpoint:
    """The URLs a registry host is tried at: https only, or https-unverified then http when insecure."""
    if is_insecure(host, insecure_registries):
        return Endpoint(host, (f"https://{host}", f"http://{host}"), verify_tls=False)
    return Endpoint(host, (f"https://{host}",))


def plan_mirror(url: str, insecure_registries: Collection[str] = ()) -> Endpoint:
    """A Docker Hub mirror given as a URL; plain http only for a host that may be insecure."""
    parsed = URL(url if "://" in url else f"https://{url}")
    host = parsed.host_port_subcomponent
    if parsed.scheme not in ("http", "https") or not host or parsed.path not in ("", "/"):
        raise InvalidArgument(f"invalid registry mirror {url!r}: want scheme://host[:port]")
    insecure = is_insecure(host, insecure_registries)
    if parsed.scheme == "http" and not insecure:
        raise InvalidArgument(f"registry mirror {url!r} uses plain http but {host} is not an insecure registry")
    if "://" not in url:
        return dataclasses.replace(plan_endpoint(host, insecure_registries), mirror=True)
    return Endpoint(host, (f"{parsed.scheme}://{host}",), verify_tls=not insecure, mirror=True)


# ---------------------------------------------------------------------------------------------- errors

_NOT_FOUND = {"NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"}
_DENIED = {"UNAUTHORIZED", "DENIED"}
_UNSUPPORTED = {"UNSUPPORTED"}
# What a body-less answer (HEAD) means, in the words the registry would have used.
_STATUS_WORDS = {401: "unauthorized: authentication required",
                 403: "denied: requested access to the resource is denied",
                 404: "not found", 429: "toomanyrequests: rate limited"}


def _distribution_error(body: bytes) -> tuple[str, str]:
    """(code, "code words: message") from a distribution error document, or ("", "") if it is not one."""
    try:
        doc = json.loads(body)
        first = doc["errors"][0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""
    return code, f"{code.lower().replace('_', ' ')}: {message}" if message else code.lower().replace("_", " ")


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    if resp.method == "HEAD":
        return b""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        return await resp.content.read(64 << 10)
    return b""


def error_for(status: int, body: bytes, what: str) -> SkiffError:
    """The Skiff error for a registry's failed answer: by its error code when it sent one, else its status."""
    code, detail = _distribution_error(body)
    text = f"{what}: {detail or _STATUS_WORDS.get(status, f'HTTP {status}')}"
    if code in _NOT_FOUND or (not code and status == 404):
        return NotFound(text)
    if code in _DENIED or (not code and status in (401, 403)):
        return RegistryAccessDenied(text)
    if code in _UNSUPPORTED or (not code and status == 405):
        return Unsupported(text)
    if status >= 500 or code == "TOOMANYREQUESTS" or status == 429:
        return SystemFailure(text)
    return InvalidArgument(text)


# ---------------------------------------------------------------------------------------------- progress

    raise AssertionError


def progress_bar(current: int, total: int) -> str:
    """Docker's 50-column progress string, for clients that print ``progress`` rather than drawing one."""
    if total <= 0:
        return f"{human_size(current, 4):>8}"
    filled = min(50, current * 50 // total)
    bar = "=" * filled + (">" if filled < 50 else "") + " " * max(0, 49 - filled)
    return f"[{bar}] {human_size(current, 4):>8}/{human_size(total, 4)}"


class _Progress:
    """Sends dockerd-shaped progress records to the caller's callback, throttling byte counts per layer."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last: dict[str, float] = {}

    def status(self, text: str, layer: str | None = None, **extra: Any) -> None:
        if self._callback is None:
            return
        record: dict[str, Any] = {"status": text, **extra}
        if layer is not None:
            record = {"status": text, "progressDetail": {}, "id": layer, **extra}
        self._callback(record)

    def raw(self, record: dict) -> None:
        if self._callback is not None:
            self._callback(record)

    def bytes(self, text: str, layer: str, current: int, total: int) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if current < total and now - self._last.get(layer, 0.0) < _PROGRESS_INTERVAL:
            return
        self._last[layer] = now
        self._callback({"status": text, "progressDetail": {"current": current, "total": total},
                        "progress": progress_bar(current, total), "id": layer})


def _short(digest: str) -> str:
    """The 12-hex id Docker shows for a layer."""
    return digest.split(":", 1)[-1][:12]


# ---------------------------------------------------------------------------------------------- blob sources

class BlobSources:
    """Which (registry, repository) pairs each blob is known to be in: the candidates for cross-repo mounts."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sources (digest TEXT NOT NULL, registry TEXT NOT NULL,"
                        " repository TEXT NOT NULL, seen REAL NOT NULL, PRIMARY KEY (digest, registry, repository))")

    def add(self, digests: Iterable[str], registry: str, repository: str) -> None:
        now = time.time()
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)",
                                [(d, registry, repository, now) for d in digests])

    def candidates(self, digest: str, registry: str, exclude: str) -> list[str]:
        """Other repositories on ``registry`` holding ``digest``, most recently seen first."""
        rows = self.db.execute("SELECT repository FROM sources WHERE digest = ? AND registry = ? AND repository != ?"
                               " ORDER BY seen DESC", (digest, registry, exclude)).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------------------------- transport

Body = bytes | Callable[[], Any] | None


class _Transport:
    """HTTP to registries: base-URL fallback (https, then http where allowed), auth, one retry on 401."""

    def __init__(self, insecure: Collection[str], user_agent: str) -> None:
        self._insecure, self.user_agent = insecure, user_agent
        self._session: aiohttp.ClientSession | None = None
        self._bases: dict[str, str] = {}  # host -> the base URL that answered
        self.auth = Authorizer(self.session, lambda host: not is_insecure(host, self._insecure), user_agent)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
            # No decompression: blobs and manifests must arrive byte for byte, or their digests lie.
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def base(self, endpoint: Endpoint) -> str:
        return self._bases.get(endpoint.host, endpoint.urls[0])

    @contextlib.asynccontextmanager
    async def request(self, method: str, endpoint: Endpoint, target: str, *, what: str, scopes: Sequence[str] = (),
                      creds: Credentials | None = None, headers: dict[str, str] | None = None, body: Body = None,
                      ok: Collection[int] = (200,)) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request to ``target`` (a ``/v2/...`` path or an absolute URL), authorised, retried once on 401.

        The response is released on exit; a status outside ``ok`` raises the matching Skiff error.
        """
        for attempt in (0, 1):
            resp = await self._send(method, endpoint, target, scopes, creds, headers, body)
            try:
                if resp.status == 401 and attempt == 0 and self._ours(endpoint, target):
                    _code, message = _distribution_error(await _error_body(resp))
                    self.auth.challenged(endpoint.host, resp.headers.getall("WWW-Authenticate", []), scopes, creds,
                                         message or "authentication required")
                    continue
                if resp.status not in ok:
                    raise error_for(resp.status, await _error_body(resp), what)
                try:
                    yield resp
                except (TimeoutError, aiohttp.ClientError) as e:  # the body broke off midway
                    raise SystemFailure(f"registry {endpoint.host}: {what}: {_reason(e)}") from None
                return
            finally:
                resp.release()

    def _ours(self, endpoint: Endpoint, target: str) -> bool:
        """Does ``target`` go to the registry itself (so it may carry the registry's credentials)?"""
        return "://" not in target or URL(target).host_port_subcomponent == endpoint.host

    async def _send(self, method: str, endpoint: Endpoint, target: str, scopes: Sequence[str],
                    creds: Credentials | None, headers: dict[str, str] | None, body: Body) -> aiohttp.ClientResponse:
        sent = {"User-Agent": self.user_agent, **(headers or {})}
        if self._ours(endpoint, target):
            authorization = await self.auth.header(endpoint.host, scopes, creds)
            if authorization:
                sent["Authorization"] = authorization
        absolute = "://" in target
        bases = [""] if absolute else ([self._bases[endpoint.host]] if endpoint.host in self._bases else endpoint.urls)
        for i, base in enumerate(bases):
            try:
                resp = await self.session().request(
                    method, URL(base + target, encoded=True), headers=sent, data=body() if callable(body) else body,
                    ssl=endpoint.verify_tls, allow_redirects=method in ("GET", "HEAD"))
            except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError) as e:
                if i + 1 < len(bases):
                    continue  # https refused or not spoken there: the next (http) base is allowed for this host
                raise SystemFailure(f"cannot reach registry {endpoint.host}: {_reason(e)}") from None
            except (TimeoutError, aiohttp.ClientError) as e:
                raise SystemFailure(f"registry {endpoint.host}: {method} failed: {_reason(e)}") from None
            if not absolute:
                self._bases[endpoint.host] = base
            return resp
        raise AssertionError("no base URL")


def _reason(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError) and isinstance(e.os_error, ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__


# ---------------------------------------------------------------------------------------------- one repository

@dataclass(frozen=True)
class _Manifest:
    """A manifest or index exactly as received, with its computed digest and parsed document."""

    media_type: str
    data: bytes
    digest: str
    doc: dict

    @property
    def descriptor(self) -> dict:
        return mf.descriptor(self.media_type, self.digest, len(self.data))


def _check_manifest_digest(data: bytes, pinned: str | None, announced: str | None, what: str) -> str:
    digest = digest_of(data)
    if pinned and digest != pinned:
        raise DigestMismatch(f"{what}: content digest {digest} does not match the requested {pinned}")
    if announced and announced.startswith("sha256:") and announced != digest:
        raise DigestMismatch(f"{what}: content digest {digest} does not match Docker-Content-Digest {announced}")
    return digest


def _content_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip()


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refusing one past ``limit`` bytes (a registry cannot make us buffer without bound)."""
    parts, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise InvalidArgument(f"{what}: larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _file_chunks(path: str, start: int, length: int, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """``length`` bytes of a stored blob from ``start``, counted through ``sent`` as they go out."""
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(_READ_CHUNK, length))
            if not data:
                raise SystemFailure(f"{path} is shorter than its descriptor says")
            length -= len(data)
            yield data
            sent(len(data))


class _Repository:
    """The operations on one repository of one registry endpoint, with the scopes and credentials they need."""

    def __init__(self, transport: _Transport, endpoint: Endpoint, ref: Reference, creds: Credentials | None,
                 push: bool = False) -> None:
        self.t, self.endpoint, self.ref, self.creds = transport, endpoint, ref, creds
        self.path = ref.path
        self.scopes = (repository_scope(ref.path, push),)

    def _request(self, method: str, target: str, what: str, scopes: Sequence[str] | None = None, **kwargs: Any):
        return self.t.request(method, self.endpoint, target, what=what, scopes=scopes or self.scopes,
                              creds=self.creds, **kwargs)

    def _location(self, resp: aiohttp.ClientResponse, what: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise SystemFailure(f"{what}: the registry answered {resp.status} without a Location")
        return str(URL(self.t.base(self.endpoint)).join(URL(location, encoded=True)))

    async def get_manifest(self, obj: str, pinned: str | None = None) -> _Manifest:
        what = f"manifest for {self.ref.repository}{'@' if ':' in obj else ':'}{obj}"
        async with self._request("GET", f"/v2/{self.path}/manifests/{obj}", what, headers={"Accept": mf.ACCEPT}) as r:
            data = await _read_limited(r, MAX_MANIFEST, what)
            ctype, announced = _content_type(r), r.headers.get("Docker-Content-Digest")
        digest = _check_manifest_digest(data, pinned, announced, what)
        media_type, doc = mf.parse(data, ctype if ctype in mf.MANIFESTS + mf.INDEXES else None)
        return _Manifest(media_type, data, digest, doc)

    async def resolve(self, obj: str, pinned: str | None) -> tuple[str, str, int]:
        what = f"manifest for {self.ref}"
        async with self._request("HEAD", f"/v2/{self.path}/manifests/{obj}", what, headers={"Accept": mf.ACCEPT}) as r:
            ctype, announced = _content_type(r), r.headers.get("Docker-Content-Digest", "")
            size = r.content_length
        if ctype in mf.MANIFESTS + mf.INDEXES and announced.startswith("sha256:") and size is not None:
            if pinned and announced != pinned:
                raise DigestMismatch(f"{what}: the registry names it {announced}, not the requested {pinned}")
            return ctype, announced, size
        fetched = await self.get_manifest(obj, pinned)  # the registry did not say: ask for the bytes and hash them
        return fetched.media_type, fetched.digest, len(fetched.data)

    async def download(self, digest: str, sink: Callable[[bytes], None]) -> None:
        async with self._request("GET", f"/v2/{self.path}/blobs/{digest}", f"blob {digest} of {self.ref.repository}") \
                as resp:
            async for chunk in resp.content.iter_chunked(_READ_CHUNK):
                sink(chunk)

    async def blob_exists(self, digest: str) -> bool:
        async with self._request("HEAD", f"/v2/{self.path}/blobs/{digest}", f"blob {digest}", ok=(200, 404)) as resp:
            return resp.status == 200

    async def mount(self, digest: str, source: str) -> tuple[bool, str | None]:
        """Ask for ``digest`` to be mounted from ``source``: (mounted, upload location if refused)."""
        target = f"/v2/{self.path}/blobs/uploads/?mount={digest}&from={source}"
        scopes = (*self.scopes, repository_scope(source))
        try:
            async with self._request("POST", target, f"mount of {digest}", scopes, ok=(201, 202)) as resp:
                return resp.status == 201, None if resp.status == 201 else self._location(resp, "mount")
        except (RegistryAccessDenied, NotFound):
            return False, None  # the source is gone or not ours to read: upload instead

    async def start_upload(self) -> str:
        what = f"upload to {self.ref.repository}"
        async with self._request("POST", f"/v2/{self.path}/blobs/uploads/", what, ok=(202,)) as resp:
            return self._location(resp, what)

    async def upload(self, location: str, blob: str, size: int, digest: str, sent: Callable[[int], None]) -> None:
        """Monolithic upload: the whole blob in the PUT that closes the session."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with self._request("PUT", _with_digest(location, digest), f"upload of {digest}", headers=headers,
                                 body=lambda: _file_chunks(blob, 0, size, sent), ok=(201, 204)):
            pass

    async def upload_chunked(self, location: str, blob: str, size: int, digest: str, chunk: int,
                             sent: Callable[[int], None]) -> None:
        """Chunked upload: PATCHes with Content-Range, each answering the next location, then an empty PUT."""
        for start in range(0, size, chunk):
            length = min(chunk, size - start)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                       "Content-Range": f"{start}-{start + length - 1}"}
            async with self._request("PATCH", location, f"upload of {digest}", headers=headers, ok=(202, 204),
                                     body=lambda s=start, n=length: _file_chunks(blob, s, n, sent)) as resp:
                location = self._location(resp, f"upload of {digest}")
        async with self._request("PUT", _with_digest(location, digest), f"upload of {digest}",
                                 headers={"Content-Length": "0"}, ok=(201, 204)):
            pass

    async def put_manifest(self, obj: str, media_type: str, data: bytes) -> str:
        what = f"manifest {self.ref.repository}:{obj}"
        async with self._request("PUT", f"/v2/{self.path}/manifests/{obj}", what, body=data, ok=(200, 201),
                                 headers={"Content-Type": media_type}) as resp:
            announced = resp.headers.get("Docker-Content-Digest")
        return _check_manifest_digest(data, None, announced, what)

    async def tags(self) -> list[str]:
        found: list[str] = []
        target: str | None = f"/v2/{self.path}/tags/list?n=1000"
        while target:
            async with self._request("GET", target, f"tags of {self.ref.repository}") as resp:
                doc = await resp.json(content_type=None)
                following = resp.links.get("next", {}).get("url")
            found += (doc or {}).get("tags") or []
            target = str(following) if following else None
            if target and "://" not in target and not target.startswith("/"):
                target = "/" + target
        return found


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest.replace(':', '%3A')}"


def _unique(descriptors: Iterable[dict]) -> list[dict]:
    """Descriptors with duplicate digests dropped (an image may repeat a layer; it is fetched once)."""
    seen: dict[str, dict] = {}
    for d in descriptors:
        seen.setdefault(d["digest"], d)
    return list(seen.values())


async def _all(coros: Iterable[Any]) -> None:
    """Run concurrently; the first failure cancels the rest and is raised as itself (not a group)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- the client

class RegistryClient:
    """Pulls images into a ContentStore + ImageStore and pushes them back out (see the module docstring)."""

    def __init__(self, content: ContentStore, images: ImageStore, *, config_path: str | None = None,
                 insecure_registries: Iterable[str] = (), mirrors: Iterable[str] = (), user_agent: str = USER_AGENT,
                 max_concurrent_downloads: int = 3, max_concurrent_uploads: int = 5,
                 chunk_threshold: int = 64 << 20, chunk_size: int = 16 << 20, sources_path: str | None = None) -> None:
        if chunk_size <= 0 or max_concurrent_downloads <= 0 or max_concurrent_uploads <= 0:
            raise InvalidArgument("chunk size and concurrency limits must be positive")
        self.content, self.images = content, images
        self.config_path = config_path or DEFAULT_CONFIG
        self.insecure_registries = frozenset(insecure_registries)
        self.mirrors = [plan_mirror(m, self.insecure_registries) for m in mirrors]
        self.max_downloads, self.max_uploads = max_concurrent_downloads, max_concurrent_uploads
        self.chunk_threshold, self.chunk_size = chunk_threshold, chunk_size
        self.sources = BlobSources(sources_path or os.path.join(content.root, "blob-sources.db"))
        self._transport = _Transport(self.insecure_registries, user_agent)
        self._config: dict[str, Credentials] | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()
        self.sources.close()

    # -- where and as whom

    def endpoints(self, domain: str) -> list[Endpoint]:
        """The endpoints a pull from ``domain`` tries, in order (mirrors, then Docker Hub itself)."""
        if domain == DEFAULT_DOMAIN:
            return [*self.mirrors, plan_endpoint(HUB_HOST, self.insecure_registries)]
        return [plan_endpoint(domain, self.insecure_registries)]

    def _push_endpoint(self, domain: str) -> Endpoint:
        return self.endpoints(domain)[-1]  # never a mirror: mirrors are read-only caches

    def credentials_for(self, host: str) -> Credentials | None:
        """The config file's credentials for a registry (read once, on first need)."""
        if self._config is None:
            self._config = load_docker_config(self.config_path)
        return self._config.get(config_key(host))

    def _repository(self, ref: Reference, endpoint: Endpoint, creds: Credentials | None,
                    push: bool = False) -> _Repository:
        creds = creds or self.credentials_for(endpoint.host if endpoint.mirror else ref.domain)
        return _Repository(self._transport, endpoint, ref, creds, push)

    async def _on_endpoints(self, ref: Reference, creds: Credentials | None, work: Callable[[_Repository], Any]) -> Any:
        """Run ``work`` against each pull endpoint in turn until one succeeds (a failing mirror is skipped)."""
        endpoints = self.endpoints(ref.domain)
        for i, endpoint in enumerate(endpoints):
            try:
                return await work(self._repository(ref, endpoint, creds))
            except SkiffError:
                if i + 1 == len(endpoints):
                    raise
        raise AssertionError("no endpoint")

    # -- reading

    async def resolve(self, reference: str | Reference, credentials: Credentials | None = None) -> tuple[str, str, int]:
        """(media type, digest, size) of what ``reference`` names on its registry, without fetching blobs."""
        ref = _parse(reference)
        return await self._on_endpoints(ref, credentials, lambda repo: repo.resolve(ref.object, ref.digest))

    async def fetch_blob(self, reference: str | Reference, digest: str, size: int | None = None,
                         credentials: Credentials | None = None) -> str:
        """Store one blob of ``reference``'s repository in the content store (verified); returns its digest."""
        ref = _parse(reference, default_tag=False)
        if not self.content.has(digest):
            await self._on_endpoints(ref, credentials, lambda repo: self._download(repo, digest, size, None))
        return digest

    async def tags(self, repository: str | Reference, credentials: Credentials | None = None) -> list[str]:
        ref = _parse(repository, default_tag=False)
        return await self._on_endpoints(ref, credentials, lambda repo: repo.tags())

    async def login(self, registry: str, username: str, password: str) -> dict:
        """Check credentials against ``/v2/`` the way ``docker login`` does; the answer is dockerd's ``/auth``.

        Nothing is remembered beyond cached tokens: storing credentials is the caller's business.
        """
        host = registry.split("://", 1)[-1].split("/", 1)[0] or DEFAULT_DOMAIN
        domain = DEFAULT_DOMAIN if config_key(host) == config_key(DEFAULT_DOMAIN) else host
        endpoint, creds = self._push_endpoint(domain), Credentials(username, password)
        async with self._transport.request("GET", endpoint, "/v2/", what=f"login to {domain}", creds=creds):
            pass
        identity = ""
        bearer = self._transport.auth.bearer_for(endpoint.host)
        if bearer is not None:  # ask for a refresh token, as docker login does, so the CLI can keep that instead
            identity = (await self._transport.auth.token(endpoint.host, bearer, (), creds, offline=True)).refresh_token
        return {"Status": "Login Succeeded", "IdentityToken": identity}

    # -- pull

    async def pull(self, reference: str | Reference, platform: str | mf.Platform | None = None,
                   progress: ProgressCallback | None = None, credentials: Credentials | None = None) -> Image:
        """Pull ``reference`` (tag or digest) for ``platform`` (default: the host's) and name it locally."""
        ref = _parse(reference)
        wanted = platform if isinstance(platform, mf.Platform) else mf.Platform.parse(platform)
        emit = _Progress(progress)
        emit.status(f"Pulling from {ref.path}", id=ref.tag or ref.digest)
        return await self._on_endpoints(ref, credentials,
                                        lambda repo: self._pull_from(repo, ref, wanted, platform is not None, emit))

    async def _pull_from(self, repo: _Repository, ref: Reference, platform: mf.Platform, explicit: bool,
                         emit: _Progress) -> Image:
        top = await repo.get_manifest(ref.object, ref.digest)
        index = top if top.media_type in mf.INDEXES else None
        manifest = await self._platform_manifest(repo, mf.select_platform(top.doc, platform)) if index else top
        layers = _unique(manifest.doc["layers"])
        if self._up_to_date(str(ref), manifest.digest, top.digest, [manifest.doc["config"], *layers]):
            self._announce(emit, ref, top.digest, "Image is up to date")
            return self.images.get(str(ref))
        config = await self._config_of(repo, manifest.doc)
        _check_image(ref, config, manifest.doc, platform if explicit and index is None else None)
        await self._download_layers(repo, layers, emit)
        for doc in (manifest, index):
            if doc is not None and not self.content.has(doc.digest):
                self.content.put(doc.data, expected=doc.digest)
        self.sources.add([manifest.doc["config"]["digest"], *(d["digest"] for d in layers)], ref.domain, ref.path)
        image = self.images.set(str(ref), manifest.descriptor, repo_digest=top.digest)
        self._announce(emit, ref, top.digest, "Downloaded newer image")
        return image

    async def _platform_manifest(self, repo: _Repository, entry: dict) -> _Manifest:
        """The index entry's manifest: from the store when already there (its name is its verified digest)."""
        digest = entry["digest"]
        if self.content.has(digest):
            data = self.content.read(digest)
            media_type, doc = mf.parse(data, entry.get("mediaType"))
            found = _Manifest(media_type, data, digest, doc)
        else:
            found = await repo.get_manifest(digest, pinned=digest)
        if found.media_type not in mf.MANIFESTS:
            raise InvalidArgument(f"index entry {digest} of {repo.ref} is a {found.media_type}, not a manifest")
        return found

    def _up_to_date(self, name: str, manifest_digest: str, repo_digest: str, blobs: list[dict]) -> bool:
        try:
            current = self.images.get(name)
        except NotFound:
            return False
        return (current.target["digest"] == manifest_digest and current.repo_digest == repo_digest
                and all(self.content.has(b["digest"]) for b in blobs))

    async def _config_of(self, repo: _Repository, manifest: dict) -> dict:
        desc = manifest["config"]
        if not self.content.has(desc["digest"]):
            await self._download(repo, desc["digest"], desc["size"], None)
        return mf.parse_config(self.content.read(desc["digest"]))

    async def _download_layers(self, repo: _Repository, layers: list[dict], emit: _Progress) -> None:
        missing = [d for d in layers if not self.content.has(d["digest"])]
        for d in layers:
            emit.status("Pulling fs layer" if d in missing else "Already exists", _short(d["digest"]))
        limit = asyncio.Semaphore(self.max_downloads)
        await _all(self._download_layer(repo, d, limit, emit) for d in missing)

    async def _download_layer(self, repo: _Repository, desc: dict, limit: asyncio.Semaphore, emit: _Progress) -> None:
        layer = _short(desc["digest"])
        if limit.locked():
            emit.status("Waiting", layer)
        async with limit:
            await self._download(repo, desc["digest"], desc["size"],
                                 lambda n: emit.bytes("Downloading", layer, n, desc["size"]))
        emit.status("Download complete", layer)
        emit.status("Pull complete", layer)

    async def _download(self, repo: _Repository, digest: str, size: int | None,
                        progress: Callable[[int], None] | None) -> None:
        """Stream one blob into the store: verified on commit, and nothing kept if it lies or fails midway."""
        with self.content.writer(digest, size) as writer:
            def sink(chunk: bytes) -> None:
                writer.write(chunk)
                if progress is not None:
                    progress(writer.size)

            await repo.download(digest, sink)
            await asyncio.to_thread(writer.commit)  # the fsync must not stall the other downloads

    def _announce(self, emit: _Progress, ref: Reference, digest: str, outcome: str) -> None:
        emit.status(f"Digest: {digest}")
        emit.status(f"Status: {outcome} for {ref.familiar()}")

    # -- push

    async def push(self, reference: str | Reference, progress: ProgressCallback | None = None,
                   credentials: Credentials | None = None) -> str:
        """Push the local image named ``reference`` to its registry; returns the manifest's digest."""
        ref = _parse(reference)
        image = self.images.get(str(ref))
        data = self.content.read(image.target["digest"])
        repo = self._repository(ref, self._push_endpoint(ref.domain), credentials, push=True)
        emit = _Progress(progress)
        emit.status(f"The push refers to repository [{ref.repository}]")
        layers = _unique(image.layers)
        for d in layers:
            emit.status("Preparing", _short(d["digest"]))
        await self._push_blob(repo, image.manifest["config"], lambda _n: None)  # not shown, as in Docker
        limit = asyncio.Semaphore(self.max_uploads)
        await _all(self._push_layer(repo, d, limit, emit) for d in layers)
        digest = await repo.put_manifest(ref.object, image.target["mediaType"], data)
        self.sources.add([image.config_digest, *(d["digest"] for d in layers)], ref.domain, ref.path)
        tag = ref.tag or digest
        emit.status(f"{tag}: digest: {digest} size: {len(data)}")
        emit.raw({"progressDetail": {}, "aux": {"Tag": ref.tag or "", "Digest": digest, "Size": len(data)}})
        return digest

    async def _push_layer(self, repo: _Repository, desc: dict, limit: asyncio.Semaphore, emit: _Progress) -> None:
        layer, sent = _short(desc["digest"]), [0]

        def count(n: int) -> None:
            sent[0] += n
            emit.bytes("Pushing", layer, sent[0], desc["size"])

        if limit.locked():
            emit.status("Waiting", layer)
        async with limit:
            outcome = await self._push_blob(repo, desc, count)
        emit.status(outcome, layer)

    async def _push_blob(self, repo: _Repository, desc: dict, sent: Callable[[int], None]) -> str:
        """Make the registry hold one blob: already there, mounted from a sibling repository, or uploaded."""
        digest, size = desc["digest"], desc["size"]
        if not self.content.has(digest):
            raise NotFound(f"blob {digest} of {repo.ref} is not in the local content store")
        if await repo.blob_exists(digest):
            return "Layer already exists"
        location = None
        for source in self.sources.candidates(digest, repo.ref.domain, repo.path)[:_MAX_MOUNT_ATTEMPTS]:
            mounted, location = await repo.mount(digest, source)
            if mounted:
                return f"Mounted from {source}"
            if location:
                break  # the registry opened an upload session instead: use it
        location = location or await repo.start_upload()
        blob = self.content.path(digest)
        if size > self.chunk_threshold:
            await repo.upload_chunked(location, blob, size, digest, self.chunk_size, sent)
        else:
            await repo.upload(location, blob, size, digest, sent)
        return "Pushed"


def _parse(reference: str | Reference, default_tag: bool = True) -> Reference:
    return reference if isinstance(reference, Reference) else parse_reference(reference, default_tag)


def _check_image(ref: Reference, config: dict, manifest: dict, platform: mf.Platform | None) -> None:
    """Refuse an image whose config contradicts its manifest, or (if one was asked for) the platform."""
    if len(config["rootfs"]["diff_ids"]) != len(manifest["layers"]):
        raise InvalidArgument(f"{ref}: the config lists {len(config['rootfs']['diff_ids'])} layers, "
                              f"the manifest {len(manifest['layers'])}")
    actual = {"os": config.get("os", ""), "architecture": config.get("architecture", ""),
              "variant": config.get("variant")}
    if platform is not None and not platform.matches(actual):
        found = "/".join(x for x in actual.values() if x)
        raise NotFound(f"image {ref} was found but its platform ({found}) does not match the specified "
                       f"platform ({platform})")
