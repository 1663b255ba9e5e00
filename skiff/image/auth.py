"""Registry authentication: docker ``config.json`` credentials, ``WWW-Authenticate`` challenges, bearer tokens.

The registry client (``skiff.image.distribution``) always tries a request anonymously first, as Docker and
containerd do: the registry's 401 challenge says which scheme it wants. ``Authorizer`` remembers that
answer per registry host, so later requests carry the right ``Authorization`` up front:

- ``Basic``: the user's credentials, base64, on every request.
- ``Bearer realm=...,service=...,scope=...``: a token from the realm (GET with basic credentials when
  there are any, or an OAuth2 refresh-token POST when the user holds an identity token), cached per
  (host, scopes, identity) until it expires, so a pull asks the token server once, not once per blob.

Credentials come from a docker-style ``config.json`` (``auths`` entries with a base64 ``auth`` or
``username``/``password``, and ``identitytoken``), or per call (the engine receives them in each
request's ``X-Registry-Auth`` header, as dockerd does). Credential helpers (``credsStore``,
``credHelpers``) are not run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from skiff.errors import InvalidArgument, SystemFailure

DEFAULT_CONFIG = "~/.docker/config.json"
# Docker keys Docker Hub's credentials under its v1 index URL; every alias of the Hub maps to it.
HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# Seconds a token is assumed to live when the server does not say (the token spec's default).
DEFAULT_TOKEN_LIFETIME = 60
# Renew this many seconds before expiry, so a token never lapses between the check and the request.
_EXPIRY_MARGIN = 5


class RegistryAccessDenied(InvalidArgument):
    """The registry or its token server refused us: no or wrong credentials, or no right to the repository.

    A subclass of InvalidArgument (so an API layer that knows only the shared catalogue still answers a
    4xx), kept distinct so the engine can answer Docker's 401 for ``/auth`` and say "pull access denied".
    """


@dataclass(frozen=True)
class Credentials:
    """What a user proves themselves with: username/password, an identity (refresh) token, or a ready
    bearer token (``registrytoken`` in Docker's ``X-Registry-Auth``)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def basic(self) -> str | None:
        """The ``Authorization: Basic`` value, when there is a username and password."""
        if not (self.username and self.password):
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @property
    def identity(self) -> str:
        """Who these credentials are, for keying cached tokens (one user's token is never another's)."""
        return self.username or ("identity-token" if self.identity_token else "")

    @classmethod
    def from_x_registry_auth(cls, header: str) -> Credentials | None:
        """Decode Docker's ``X-Registry-Auth`` header (base64url JSON), as the engine receives it."""
        if not header:
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        except (ValueError, binascii.Error) as e:
            raise InvalidArgument(f"invalid X-Registry-Auth header: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid X-Registry-Auth header: not a JSON object")
        creds = cls(str(doc.get("username") or ""), str(doc.get("password") or ""),
                    str(doc.get("identitytoken") or ""), str(doc.get("registrytoken") or ""))
        return creds if creds != cls() else None


def config_key(host: str) -> str:
    """The key a docker ``config.json`` files a registry's credentials under (the Hub's is its v1 URL)."""
    return HUB_KEY if host in _HUB_ALIASES else host


def _normalise_key(key: str) -> str:
    # Entries may be written as URLs ("https://host:5000/v1/"): Docker matches them by host alone.
    if key == HUB_KEY:
        return key
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return config_key(host)


def _entry_credentials(key: str, entry: object) -> Credentials:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"docker config: auths[{key!r}] must be an object")
    username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, binascii.Error) as e:
            raise InvalidArgument(f"docker config: auths[{key!r}].auth is not base64 user:password: {e}") from None
    return Credentials(username, password, str(entry.get("identitytoken") or ""))


def load_docker_config(path: str) -> dict[str, Credentials]:
    """The ``auths`` of a docker config file by normalised key; a missing file means no credentials."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read docker config {path}: {e}") from None
    auths = doc.get("auths", {}) if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise InvalidArgument(f"docker config {path}: 'auths' must be an object")
    return {_normalise_key(k): _entry_credentials(k, v) for k, v in auths.items()}


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lower-case scheme and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (one challenge each), bearer first, then basic."""
    found = [_parse_challenge(v) for v in values]
    order = {"bearer": 0, "basic": 1}
    return sorted((c for c in found if c.scheme in order), key=lambda c: order[c.scheme])


def _parse_challenge(value: str) -> Challenge:
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            val, i = _quoted(rest, i + 1)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            val, i = rest[i:end].strip(), end
        params[key] = val
    return Challenge(scheme.lower(), params)


def _quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string's value starting after its opening quote, and the index past its closing quote."""
    out = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def repository_scope(path: str, push: bool = False) -> str:
    """The token scope for a repository: ``repository:<path>:pull`` or ``...:pull,push``."""
    return f"repository:{path}:{'pull,push' if push else 'pull'}"


@dataclass
class _Token:
    value: str
    expires: float
    refresh_token: str = ""


@dataclass(frozen=True)
class _Bearer:
    realm: str
    service: str


class Authorizer:
    """Per-host authorization state for one client: the scheme each registry asked for and cached tokens.

    ``session`` returns the client's aiohttp session (created lazily inside the event loop);
    ``verify_tls(host)`` says whether a token realm on that host must present a verified certificate.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession], verify_tls: Callable[[str], bool],
                 user_agent: str) -> None:
        self._session, self._verify_tls, self._user_agent = session, verify_tls, user_agent
        self._schemes: dict[str, _Bearer | str] = {}  # host -> _Bearer or "basic"
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def header(self, host: str, scopes: Iterable[str], creds: Credentials | None) -> str | None:
        """The ``Authorization`` value for a request to ``host`` needing ``scopes`` (None: go anonymous)."""
        if creds and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        scheme = self._schemes.get(host)
        if scheme is None:
            return None
        if scheme == "basic":
            return creds.basic() if creds else None
        assert isinstance(scheme, _Bearer)
        token = await self.token(host, scheme, tuple(sorted(set(scopes))), creds)
        return f"Bearer {token.value}"

    def challenged(self, host: str, values: Iterable[str], scopes: Iterable[str], creds: Credentials | None,
                   message: str) -> None:
        """Learn from a 401: remember the scheme ``host`` wants and drop the token it just refused.

        Raises RegistryAccessDenied when retrying cannot help (basic auth wanted and no credentials to
        offer, or no scheme we speak), with the registry's own ``message``.
        """
        challenges = parse_challenges(values)
        if not challenges:
            raise RegistryAccessDenied(f"{host}: {message} (no supported authentication scheme offered)")
        chosen = challenges[0]
        if chosen.scheme == "basic":
            if not (creds and creds.basic()):
                raise RegistryAccessDenied(f"{host}: {message}: no credentials for {host} (docker login {host})")
            self._schemes[host] = "basic"
            return
        realm = chosen.params.get("realm")
        if not realm:
            raise RegistryAccessDenied(f"{host}: {message} (bearer challenge without a realm)")
        self._schemes[host] = _Bearer(realm, chosen.params.get("service", ""))
        self._tokens.pop(_token_key(host, tuple(sorted(set(scopes))), creds), None)

    async def token(self, host: str, bearer: _Bearer, scopes: tuple[str, ...], creds: Credentials | None,
                    offline: bool = False) -> _Token:
        """A valid token for ``scopes`` on ``host``: cached, or fetched once however many tasks ask at once."""
        key = _token_key(host, scopes, creds)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached and cached.expires > time.monotonic() and not offline:
                return cached
            token = await self._fetch(bearer, scopes, creds, offline)
            self._tokens[key] = token
            return token

    def bearer_for(self, host: str) -> _Bearer | None:
        scheme = self._schemes.get(host)
        return scheme if isinstance(scheme, _Bearer) else None

    async def _fetch(self, bearer: _Bearer, scopes: tuple[str, ...], creds: Credentials | None,
                     offline: bool) -> _Token:
        if creds and creds.identity_token:
            return await self._fetch_oauth(bearer, scopes, creds)
        params = [("service", bearer.service)] if bearer.service else []
        params += [("scope", s) for s in scopes]
        if offline:
            params += [("offline_token", "true"), ("client_id", "skiff")]
        headers = {"User-Agent": self._user_agent}
        if creds and creds.basic():
            headers["Authorization"] = creds.basic() or ""
        return await self._token_request("GET", bearer.realm, headers, params=params)

    async def _fetch_oauth(self, bearer: _Bearer, scopes: tuple[str, ...], creds: Credentials) -> _Token:
        # An identity token is an OAuth2 refresh token: it is exchanged at the realm, never sent as basic auth.
        form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "service": bearer.service,
                "client_id": "skiff", "scope": " ".join(scopes)}
        token = await self._token_request("POST", bearer.realm, {"User-Agent": self._user_agent}, data=form)
        token.refresh_token = token.refresh_token or creds.identity_token
        return token

    async def _token_request(self, method: str, realm: str, headers: dict[str, str], **kwargs: object) -> _Token:
        url = URL(realm)
        host = url.host_port_subcomponent or realm
        ssl = self._verify_tls(host)
        try:
            async with self._session().request(method, realm, headers=headers, ssl=ssl, **kwargs) as resp:
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientError as e:
            raise SystemFailure(f"cannot reach the token server {host}: {e}") from None
        if status in (401, 403):
            raise RegistryAccessDenied(f"token server {host} refused the credentials: {_token_error(body, status)}")
        if status >= 400:
            raise SystemFailure(f"token server {host} answered {status}: {_token_error(body, status)}")
        return _parse_token(body, host)


def _token_key(host: str, scopes: tuple[str, ...], creds: Credentials | None) -> tuple[str, str, str]:
    return host, " ".join(scopes), creds.identity if creds else ""


def _token_error(body: bytes, status: int) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200] or f"HTTP {status}"
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("code"))
        for field in ("details", "error_description", "error", "message"):
            if doc.get(field):
                return str(doc[field])
    return f"HTTP {status}"


def _parse_token(body: bytes, host: str) -> _Token:
    try:
        doc = json.loads(body)
    except ValueError:
        raise SystemFailure(f"token server {host} answered something that is not JSON") from None
    value = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise SystemFailure(f"token server {host} answered without a token")
    lifetime = doc.get("expires_in")
    if not isinstance(lifetime, int) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    expires = time.monotonic() + max(lifetime - _EXPIRY_MARGIN, 1)
    return _Token(value, expires, str(doc.get("refresh_token") or ""))
