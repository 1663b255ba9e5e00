"""Service-account tokens: the TokenRequest API (``POST .../serviceaccounts/<name>/token``), the JWTs it issues,
and their authentication, as kube-apiserver does them.

Tokens are RS256 JWTs signed with the cluster's service-account key (``<data-dir>/tls/service-account.key``,
RSA 2048, made at first start; kube's --service-account-signing-key-file). Their claims are kube's: ``iss``,
``sub`` (``system:serviceaccount:<ns>:<name>``), ``aud``, ``exp``/``iat``/``nbf``, ``jti`` and the private
``kubernetes.io`` claim naming the namespace, the ServiceAccount and the object the token is bound to (a Pod,
with its node, or a Secret), each with its uid.

A token authenticates while its signature is good, it is within its lifetime, one of its audiences is the
API server's, and the objects it names still exist with the same uids (and are not being deleted): deleting
the ServiceAccount or the bound pod revokes it. The user is ``system:serviceaccount:<ns>:<name>`` in groups
``system:serviceaccounts``, ``system:serviceaccounts:<ns>`` and ``system:authenticated``.

The public key is published for other verifiers as OIDC discovery does it (``/.well-known/openid-
configuration``, ``/openid/v1/jwks``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from skiff.atomicfile import write_atomically
from skiff.cluster.api.auth import AUTHENTICATED, User
from skiff.cluster.api.objects import Obj, meta
from skiff.cluster.api.resources import BY_PATH
from skiff.cluster.api.status import ApiError, FieldError, bad_request, conflict, invalid

if TYPE_CHECKING:
    from skiff.cluster.api.rest import Registry

ISSUER = "https://kubernetes.default.svc.cluster.local"  # kube's --service-account-issuer in most clusters
DEFAULT_EXPIRATION = 3600  # seconds, TokenRequest's default
MIN_EXPIRATION = 600  # kube's validation: "may not specify a duration less than 10 minutes"
MAX_EXPIRATION = 2**32
CLOCK_SKEW = 60  # seconds of leeway on exp and nbf, as kube's validator allows
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
SERVICE_ACCOUNTS = BY_PATH[("", "v1", "serviceaccounts")]
PODS = BY_PATH[("", "v1", "pods")]
SECRETS = BY_PATH[("", "v1", "secrets")]
NODES = BY_PATH[("", "v1", "nodes")]
_VERIFIED_CACHE = 4096  # verified tokens remembered (signature and JSON work skipped on their next use)


class InvalidToken(Exception):
    """Not a token of ours, or no longer valid."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SigningKey:
    """The RSA key pair tokens are signed with; made once, kept beside the cluster's CA."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_atomically(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), mode=0o600)
        loaded = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        self._key = loaded
        self.public = loaded.public_key()
        der = self.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = _b64(hashlib.sha256(der).digest())  # kube's key id: the SHA-256 of the DER public key

    def sign(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "RS256", "kid": self.kid}, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{header}.{payload}".encode()
        return f"{header}.{payload}.{_b64(self._key.sign(signed, padding.PKCS1v15(), hashes.SHA256()))}"

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this key signed; ``InvalidToken`` otherwise."""
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header = json.loads(_unb64(header_b64))
            if header.get("alg") != "RS256":
                raise InvalidToken(f"unsupported signing algorithm {header.get('alg')!r}")
            self.public.verify(_unb64(signature_b64), f"{header_b64}.{payload_b64}".encode(), padding.PKCS1v15(),
                               hashes.SHA256())
            claims = json.loads(_unb64(payload_b64))
        except (ValueError, InvalidSignature) as exc:
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None
        if not isinstance(claims, dict):
            raise InvalidToken("invalid token: the claims are not an object")
        return claims

    def jwk(self) -> dict[str, Any]:
        numbers = self.public.public_numbers()

        def unsigned(value: int) -> str:
            return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))
        return {"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": unsigned(numbers.n),
                "e": unsigned(numbers.e)}


@dataclass(frozen=True)
class Binding:
    """What a verified token names; checked against the store on every use."""

    namespace: str
    name: str
    uid: str
    bound_kind: str = ""  # Pod or Secret
    bound_name: str = ""
    bound_uid: str = ""
    expires: float = 0.0
    not_before: float = 0.0
    extra: tuple[tuple[str, str], ...] = ()  # the user's extra: credential id, pod and node


class ServiceAccountTokens:
    """Issues TokenRequests and authenticates the tokens issued."""

    def __init__(self, key_path: Path, registry: Registry, issuer: str = ISSUER,
                 audiences: tuple[str, ...] = (ISSUER,)) -> None:
        self.key = SigningKey(key_path)
        self.registry = registry
        self.issuer = issuer
        self.audiences = audiences
        self._verified: dict[str, Binding] = {}

    # --- TokenRequest ----------------------------------------------------------------------------------------

    async def token_request(self, namespace: str, name: str, body: Any) -> Obj:
        """Answer ``POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`` (authentication.k8s.io/v1)."""
        if not isinstance(body, dict):
            raise bad_request("the object must be a JSON object")
        if body.get("kind") not in (None, "TokenRequest"):
            raise bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                              "(TokenRequest)")
        spec = body.get("spec") or {}
        if not isinstance(spec, dict):
            raise bad_request("spec: must be an object")
        expiration = spec.get("expirationSeconds")
        expiration = DEFAULT_EXPIRATION if expiration is None else expiration
        if not isinstance(expiration, int) or isinstance(expiration, bool):
            raise bad_request("spec.expirationSeconds: must be an integer")
        if expiration < MIN_EXPIRATION or expiration > MAX_EXPIRATION:
            too = "less than 10 minutes" if expiration < MIN_EXPIRATION else "greater than 2^32 seconds"
            raise invalid("TokenRequest", "authentication.k8s.io", name, [FieldError(
                "spec.expirationSeconds", "Invalid", f"may not specify a duration {too}", expiration)])
        audiences = spec.get("audiences") or list(self.audiences)
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            raise bad_request("spec.audiences: must be a list of non-empty strings")
        ref = spec.get("boundObjectRef")
        if ref is not None and not isinstance(ref, dict):
            raise bad_request("spec.boundObjectRef: must be an object")
        account = await self.registry.get(SERVICE_ACCOUNTS, namespace, name)
        private: dict[str, Any] = {"namespace": namespace,
                                   "serviceaccount": {"name": name, "uid": meta(account)["uid"]}}
        if ref:
            private.update(await self._bound_claims(namespace, name, ref))
        now = int(time.time())
        claims = {"aud": audiences, "exp": now + expiration, "iat": now, "iss": self.issuer,
                  "jti": str(uuid.uuid4()), "kubernetes.io": private, "nbf": now,
                  "sub": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"}
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _rfc3339(now)},
                "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": ref or None},
                "status": {"token": self.key.sign(claims), "expirationTimestamp": _rfc3339(now + expiration)}}

    async def _bound_claims(self, namespace: str, account: str, ref: Obj) -> dict[str, Any]:
        kind, name = ref.get("kind"), ref.get("name") or ""
        if ref.get("apiVersion", "v1") != "v1" or kind not in ("Pod", "Secret"):
            raise bad_request(f"cannot bind token to object of type {ref.get('apiVersion', '')}, Kind={kind}")
        obj = await self.registry.get(PODS if kind == "Pod" else SECRETS, namespace, name)
        uid = meta(obj)["uid"]
        if ref.get("uid") and ref["uid"] != uid:
            raise conflict("Pod" if kind == "Pod" else "Secret", "", name, f"the UID in the bound object reference "
                           f"({ref['uid']}) does not match the UID in record. The object might have been deleted and "
                           "then recreated")
        if kind == "Secret":
            return {"secret": {"name": name, "uid": uid}}
        if (obj.get("spec") or {}).get("serviceAccountName", "default") != account:
            raise bad_request(f'cannot bind token for serviceaccount "{account}" to pod running with different '
                              "serviceaccount name.")
        claims: dict[str, Any] = {"pod": {"name": name, "uid": uid}}
        node_name = (obj.get("spec") or {}).get("nodeName")
        if node_name:
            try:
                node = await self.registry.get(NODES, None, node_name)
                claims["node"] = {"name": node_name, "uid": meta(node)["uid"]}
            except ApiError:
                pass  # a node not registered (yet): the token names the pod only
        return claims

    # --- authentication --------------------------------------------------------------------------------------

    async def authenticate(self, token: str) -> User | None:
        """The service account a token of ours stands for; None if it is not one or no longer valid."""
        try:
            binding = self._verified.get(token) or self._verify(token)
        except InvalidToken:
            return None
        now = time.time()
        if now > binding.expires + CLOCK_SKEW or now + CLOCK_SKEW < binding.not_before:
            self._verified.pop(token, None)
            return None
        if not await self._still_bound(binding):
            return None
        return User(f"{SERVICE_ACCOUNT_PREFIX}{binding.namespace}:{binding.name}",
                    (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{binding.namespace}", AUTHENTICATED),
                    binding.uid, binding.extra)

    def _verify(self, token: str) -> Binding:
        if token.count(".") != 2:
            raise InvalidToken("not a JWT")
        claims = self.key.verify(token)
        if claims.get("iss") != self.issuer:
            raise InvalidToken("issued elsewhere")
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else audiences or []
        if not set(audiences) & set(self.audiences):
            raise InvalidToken("not for this API server")
        private = claims.get("kubernetes.io") or {}
        account = private.get("serviceaccount") or {}
        bound_kind = "Pod" if "pod" in private else "Secret" if "secret" in private else ""
        bound = private.get(bound_kind.lower()) or {}
        try:
            binding = Binding(private["namespace"], account["name"], account["uid"], bound_kind,
                              bound.get("name", ""), bound.get("uid", ""), float(claims["exp"]),
                              float(claims.get("nbf") or 0), _extra(claims))
        except (KeyError, TypeError, ValueError):
            raise InvalidToken("malformed claims") from None
        if len(self._verified) >= _VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = binding
        return binding

    async def _still_bound(self, binding: Binding) -> bool:
        """The ServiceAccount, and the object the token is bound to, exist as they did when it was issued."""
        checks = [(SERVICE_ACCOUNTS, binding.name, binding.uid)]
        if binding.bound_kind:
            checks.append((PODS if binding.bound_kind == "Pod" else SECRETS, binding.bound_name, binding.bound_uid))
        for t, name, uid in checks:
            try:
                obj = await self.registry.get(t, binding.namespace, name)
            except ApiError:
                return False
            deleted_at = meta(obj).get("deletionTimestamp")
            if meta(obj).get("uid") != uid or (deleted_at and _rfc3339(time.time()) >= deleted_at):
                return False  # a pod stopping within its grace period keeps its token until then, as in kube
        return True

    # --- OIDC discovery --------------------------------------------------------------------------------------

    def openid_configuration(self) -> Obj:
        return {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/openid/v1/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]}

    def jwks(self) -> Obj:
        return {"keys": [self.key.jwk()]}


def _extra(claims: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """kube's user extra for a service-account token: the credential id, and the pod and node it is bound to."""
    private = claims.get("kubernetes.io") or {}
    found = [("authentication.kubernetes.io/credential-id", f"JTI={claims['jti']}")] if claims.get("jti") else []
    for kind in ("node", "pod"):
        for field in ("name", "uid"):
            value = (private.get(kind) or {}).get(field)
            if value:
                found.append((f"authentication.kubernetes.io/{kind}-{field}", str(value)))
    return tuple(found)


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
