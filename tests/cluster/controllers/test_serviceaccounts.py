"""Service accounts end to end, with the real kubectl 1.32: the ``default`` ServiceAccount and the
``kube-root-ca.crt`` ConfigMap in every namespace (the serviceaccount and root-ca-cert-publisher controllers),
``kubectl create token`` (the TokenRequest API) and what such a token may then do (authentication and RBAC),
until its ServiceAccount or the pod it is bound to goes.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.cluster.api.conftest import ServerProcess, wait_for

ISSUER = "https://kubernetes.default.svc.cluster.local"


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_kubeconfig(server: ServerProcess, path: Path, token: str, namespace: str) -> Path:
    """The admin kubeconfig with the user replaced by ``token`` (the server and CA kept)."""
    config = yaml.safe_load(server.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"][0]["context"].update(user="sa", namespace=namespace)
    path.write_text(yaml.safe_dump(config))
    return path


def _status(server: ServerProcess, token: str, path: str = "/api/v1/namespaces/default") -> int:
    return server.request("GET", path, headers={"Authorization": f"Bearer {token}"}, cert=False).status


def test_every_namespace_gets_default_service_account_and_root_ca(api_server, kubectl) -> None:
    kubectl("create", "namespace", "sa-basics")
    assert wait_for(lambda: kubectl("-n", "sa-basics", "get", "sa", "-o", "name").stdout.split()) == [
        "serviceaccount/default"]
    ca = (api_server.data_dir / "tls" / "ca.crt").read_text()

    def published() -> str:
        result = kubectl("-n", "sa-basics", "get", "cm", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}",
                         check=False)
        return result.stdout if result.returncode == 0 else ""
    assert wait_for(published) == ca
    # the system's namespaces have them too
    for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
        wait_for(lambda ns=namespace: kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0)

    # deleted or changed, they come back as they were
    uid = kubectl("-n", "sa-basics", "get", "sa", "default", "-o", "jsonpath={.metadata.uid}").stdout
    kubectl("-n", "sa-basics", "delete", "sa", "default")
    wait_for(lambda: kubectl("-n", "sa-basics", "get", "sa", "default", "-o", "jsonpath={.metadata.uid}",
                             check=False).stdout not in ("", uid))
    kubectl("-n", "sa-basics", "patch", "cm", "kube-root-ca.crt", "-p", '{"data":{"ca.crt":"forged"}}')
    wait_for(lambda: published() == ca)
    kubectl("-n", "sa-basics", "delete", "cm", "kube-root-ca.crt")
    wait_for(lambda: published() == ca)
    kubectl("delete", "namespace", "sa-basics")


def test_create_token_is_a_signed_service_account_jwt(api_server, kubectl) -> None:
    token = kubectl("create", "token", "default").stdout.strip()
    header = json.loads(_unb64(token.split(".")[0]))
    claims = _claims(token)
    assert header["alg"] == "RS256" and header["kid"]
    assert claims["iss"] == ISSUER and claims["aud"] == [ISSUER]
    assert claims["sub"] == "system:serviceaccount:default:default"
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    sa_uid = kubectl("get", "sa", "default", "-o", "jsonpath={.metadata.uid}").stdout
    assert claims["kubernetes.io"] == {"namespace": "default", "serviceaccount": {"name": "default", "uid": sa_uid}}
    assert _claims(kubectl("create", "token", "default", "--duration", "20m").stdout.strip())["exp"] - \
        claims["iat"] in range(1200, 1210)

    # the signature checks out with the key the server publishes (OIDC discovery), by an independent verifier
    discovery = api_server.request("GET", "/.well-known/openid-configuration").json()
    assert discovery["issuer"] == ISSUER and discovery["jwks_uri"] == f"{ISSUER}/openid/v1/jwks"
    (key,) = api_server.request("GET", "/openid/v1/jwks").json()["keys"]
    assert key["kid"] == header["kid"] and key["alg"] == "RS256"
    public = rsa.RSAPublicNumbers(int.from_bytes(_unb64(key["e"]), "big"),
                                  int.from_bytes(_unb64(key["n"]), "big")).public_key()
    signed, signature = token.rsplit(".", 1)
    public.verify(_unb64(signature), signed.encode(), padding.PKCS1v15(), hashes.SHA256())  # raises if forged

    short = kubectl("create", "token", "default", "--duration", "1m", check=False)
    assert short.returncode != 0 and "may not specify a duration less than 10 minutes" in short.stderr
    missing = kubectl("create", "token", "nobody", check=False)
    assert missing.returncode != 0 and 'serviceaccounts "nobody" not found' in missing.stderr


def test_token_authenticates_as_the_service_account_and_rbac_decides(api_server, kubectl, tmp_path) -> None:
    kubectl("create", "namespace", "sa-auth")
    wait_for(lambda: kubectl("-n", "sa-auth", "get", "sa", "default", check=False).returncode == 0)
    token = kubectl("-n", "sa-auth", "create", "token", "default").stdout.strip()
    config = _token_kubeconfig(api_server, tmp_path / "sa.kubeconfig", token, "sa-auth")

    who = json.loads(kubectl("auth", "whoami", "-o", "json", kubeconfig=config).stdout)["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:sa-auth:default"
    assert set(who["groups"]) == {"system:serviceaccounts", "system:serviceaccounts:sa-auth",
                                  "system:authenticated"}
    assert who["extra"] == {"authentication.kubernetes.io/credential-id": [f"JTI={_claims(token)['jti']}"]}
    denied = kubectl("get", "pods", kubeconfig=config, check=False)
    assert denied.returncode != 0 and ('pods is forbidden: User "system:serviceaccount:sa-auth:default" cannot list '
                                       'resource "pods" in API group "" in the namespace "sa-auth"') in denied.stderr

    kubectl("-n", "sa-auth", "create", "configmap", "visible", "--from-literal=a=1")
    kubectl("-n", "sa-auth", "create", "rolebinding", "viewers", "--clusterrole=view",
            "--serviceaccount=sa-auth:default")
    listed = wait_for(lambda: kubectl("get", "configmaps", "-o", "name", kubeconfig=config, check=False).stdout)
    assert "configmap/visible" in listed.split()
    other = kubectl("-n", "default", "get", "configmaps", kubeconfig=config, check=False)
    assert other.returncode != 0 and "forbidden" in other.stderr  # the binding is in sa-auth only
    create = kubectl("create", "configmap", "nope", kubeconfig=config, check=False)
    assert create.returncode != 0 and "forbidden" in create.stderr  # view does not create

    # deleting the ServiceAccount revokes the token, though the controller makes a new `default` at once
    kubectl("-n", "sa-auth", "delete", "sa", "default")
    wait_for(lambda: kubectl("-n", "sa-auth", "get", "sa", "default", check=False).returncode == 0)
    revoked = kubectl("get", "configmaps", kubeconfig=config, check=False)
    assert revoked.returncode != 0 and "Unauthorized" in revoked.stderr
    kubectl("delete", "namespace", "sa-auth")


def test_pod_bound_token_lives_as_long_as_its_pod(api_server, kubectl) -> None:
    kubectl("run", "holder", "--image=busybox", "--restart=Never")
    pod_uid = kubectl("get", "pod", "holder", "-o", "jsonpath={.metadata.uid}").stdout
    assert kubectl("get", "pod", "holder", "-o", "jsonpath={.spec.serviceAccountName}").stdout == "default"
    token = kubectl("create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name",
                    "holder").stdout.strip()
    assert _claims(token)["kubernetes.io"]["pod"] == {"name": "holder", "uid": pod_uid}
    # authenticated (RBAC then refuses: no binding for the default service account in default)
    assert _status(api_server, token) == 403
    review = api_server.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, cert=False)
    extra = review.json()["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["holder"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [pod_uid]
    wrong = kubectl("create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name", "holder",
                    "--bound-object-uid", "not-the-uid", check=False)
    assert wrong.returncode != 0 and "does not match the UID in record" in wrong.stderr
    kubectl("delete", "pod", "holder", "--wait=true")
    assert _status(api_server, token) == 401


def test_tokens_for_other_audiences_or_tampered_are_refused(api_server, kubectl) -> None:
    good = kubectl("create", "token", "default").stdout.strip()
    assert _status(api_server, good) == 403  # authenticated; no permission on the namespace object
    elsewhere = kubectl("create", "token", "default", "--audience", "https://vault.example").stdout.strip()
    assert _claims(elsewhere)["aud"] == ["https://vault.example"]
    assert _status(api_server, elsewhere) == 401
    header, _, signature = good.split(".")
    claims = _claims(good) | {"sub": "system:serviceaccount:kube-system:default"}
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(),
                       signature])
    assert _status(api_server, forged) == 401
    assert _status(api_server, "a.b.c") == 401 and _status(api_server, "not-a-jwt") == 401


@pytest.mark.parametrize("seconds", [599, 2**32 + 1])
def test_token_request_bounds_are_invalid(api_server, seconds: int) -> None:
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"expirationSeconds": seconds}})
    reply = api_server.request("POST", "/api/v1/namespaces/default/serviceaccounts/default/token", body,
                               {"Content-Type": "application/json"})
    assert reply.status == 422 and reply.json()["reason"] == "Invalid"
    assert "spec.expirationSeconds" in reply.json()["message"]


def test_token_signing_key_survives_a_restart(api_server, kubectl) -> None:
    token = kubectl("create", "token", "default", "--duration", "15m").stdout.strip()
    key = (api_server.data_dir / "tls" / "service-account.key").read_bytes()
    assert (api_server.data_dir / "tls" / "service-account.key").stat().st_mode & 0o077 == 0
    api_server.stop()
    api_server.start()
    assert (api_server.data_dir / "tls" / "service-account.key").read_bytes() == key
    assert _status(api_server, token) == 403  # still authenticates
    assert time.time() < _claims(token)["exp"]


TOKEN_SECRET = """\
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: {name}
  annotations: {{kubernetes.io/service-account.name: {account}}}
"""


def test_legacy_token_secret_is_filled_and_goes_with_its_account(api_server, kubectl, tmp_path) -> None:
    kubectl("create", "serviceaccount", "robot")
    kubectl("apply", "-f", "-", input=TOKEN_SECRET.format(name="robot-token", account="robot"))

    def filled() -> dict[str, str] | None:
        secret = json.loads(kubectl("get", "secret", "robot-token", "-o", "json").stdout)
        return secret if (secret.get("data") or {}).get("token") else None
    secret = wait_for(filled)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["namespace"] == "default"
    assert data["ca.crt"] == (api_server.data_dir / "tls" / "ca.crt").read_text()
    uid = kubectl("get", "sa", "robot", "-o", "jsonpath={.metadata.uid}").stdout
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] == uid
    claims = _claims(data["token"])
    assert claims["kubernetes.io"]["secret"] == {"name": "robot-token", "uid": secret["metadata"]["uid"]}
    config = _token_kubeconfig(api_server, tmp_path / "robot.kubeconfig", data["token"], "default")
    who = json.loads(kubectl("auth", "whoami", "-o", "json", kubeconfig=config).stdout)["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:default:robot"

    # a token Secret for an account that does not exist is deleted; so are an account's when it goes
    kubectl("apply", "-f", "-", input=TOKEN_SECRET.format(name="ghost-token", account="ghost"))
    wait_for(lambda: kubectl("get", "secret", "ghost-token", check=False).returncode != 0)
    kubectl("delete", "sa", "robot")
    wait_for(lambda: kubectl("get", "secret", "robot-token", check=False).returncode != 0)
    assert _status(api_server, data["token"]) == 401


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "json parse error"),
    ('{"kind": "TokenRequest", "spec": "soon"}', "spec: must be an object"),
    ('{"spec": {"audiences": "everyone"}}', "spec.audiences"),
    ('{"spec": {"expirationSeconds": "600"}}', "spec.expirationSeconds: must be an integer"),
    ('{"spec": {"boundObjectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}}}',
     "cannot bind token to object of type apps/v1, Kind=Deployment"),
    ('{"kind": "Pod"}', "does not match the expected kind (TokenRequest)"),
])
def test_bad_token_requests_get_400(api_server, body: str, message: str) -> None:
    wait_for(lambda: api_server.request("GET", "/api/v1/namespaces/default/serviceaccounts/default").status == 200)
    reply = api_server.request("POST", "/api/v1/namespaces/default/serviceaccounts/default/token", body,
                               {"Content-Type": "application/json"})
    assert reply.status == 400 and reply.json()["kind"] == "Status" and message in reply.json()["message"]
    assert api_server.request("GET", "/readyz", cert=False).status == 200
