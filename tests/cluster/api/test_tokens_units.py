"""Unit tests of the service-account token signing key (skiff/cluster/api/tokens.py): what it signs verifies,
anything altered or signed by another key does not, and its JWK is the key itself."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from skiff.cluster.api.tokens import InvalidToken, SigningKey


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey(tmp_path_factory.mktemp("sa") / "service-account.key")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_signed_claims_verify_and_the_key_is_kept(key: SigningKey, tmp_path) -> None:
    claims = {"sub": "system:serviceaccount:a:b", "exp": 1}
    token = key.sign(claims)
    assert key.verify(token) == claims
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "kid": key.kid}
    path = tmp_path / "k"
    first = SigningKey(path)
    assert SigningKey(path).kid == first.kid and path.stat().st_mode & 0o777 == 0o600


def test_altered_or_foreign_tokens_are_refused(key: SigningKey, tmp_path) -> None:
    header, payload, signature = key.sign({"sub": "x"}).split(".")
    forged_payload = _b64(json.dumps({"sub": "system:admin"}).encode())
    none_header = _b64(json.dumps({"alg": "none"}).encode())
    other = SigningKey(tmp_path / "other").sign({"sub": "x"})
    for bad in (f"{header}.{forged_payload}.{signature}", f"{none_header}.{payload}.", other, "a.b.c", "x",
                f"{header}.{payload}.{signature[:-4]}"):
        with pytest.raises(InvalidToken):
            key.verify(bad)


def test_jwk_is_the_public_key(key: SigningKey) -> None:
    jwk = key.jwk()
    n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=="), "big")
    e = int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=="), "big")
    assert rsa.RSAPublicNumbers(e, n) == key.public.public_numbers()
    assert jwk["kid"] == key.kid and jwk["kty"] == "RSA" and jwk["use"] == "sig"
