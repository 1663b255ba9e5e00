"""Authentication and RBAC: no credentials -> 401 (health and version stay open), an authenticated user
without a binding -> 403 with kube's message, a RoleBinding grants exactly what its Role says.
"""

from __future__ import annotations

import json

import yaml

from tests.cluster.api.conftest import wait_for


def _token_kubeconfig(api_server, tmp_path, token: str):
    """A kubeconfig for ``api_server`` that authenticates with the bearer ``token``."""
    admin = yaml.safe_load(api_server.kubeconfig.read_text())
    admin["users"] = [{"name": "someone", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "someone"
    path = tmp_path / f"kubeconfig-{token}"
    path.write_text(yaml.safe_dump(admin))
    return path


def test_anonymous_requests_get_401_except_health(api_server) -> None:
    for path in ("/api/v1/namespaces", "/api", "/apis/apps/v1/deployments", "/openapi/v3"):
        reply = api_server.request("GET", path, cert=False)
        assert reply.status == 401, path
        assert reply.json()["reason"] == "Unauthorized" and reply.json()["kind"] == "Status"
    for path in ("/healthz", "/livez", "/readyz"):
        assert api_server.request("GET", path, cert=False).body == b"ok"
    assert api_server.request("GET", "/version", cert=False).json()["minor"] == "32"


def test_kubectl_with_an_unknown_token_is_refused(api_server, kubectl, tmp_path) -> None:
    # (kubectl with no credentials at all asks for a password before sending anything: raw requests cover that)
    result = kubectl("get", "pods", kubeconfig=_token_kubeconfig(api_server, tmp_path, "not-a-token"), check=False)
    assert result.returncode != 0
    assert "You must be logged in to the server" in result.stderr


def test_wrong_token_is_401(api_server) -> None:
    reply = api_server.request("GET", "/api/v1/pods", headers={"Authorization": "Bearer nope"}, cert=False)
    assert reply.status == 401


def test_user_without_rbac_permission_gets_403_then_a_binding_allows(api_server, kubectl, tmp_path) -> None:
    jane = _token_kubeconfig(api_server, tmp_path, "jane-token")
    denied = kubectl("get", "configmaps", kubeconfig=jane, check=False)
    assert denied.returncode != 0
    assert ('configmaps is forbidden: User "jane" cannot list resource "configmaps" in API group "" in the '
            'namespace "default"') in denied.stderr
    kubectl("create", "role", "cm-reader", "--verb=get,list,watch", "--resource=configmaps")
    kubectl("create", "rolebinding", "jane-reads", "--role=cm-reader", "--user=jane")
    wait_for(lambda: kubectl("get", "configmaps", kubeconfig=jane, check=False).returncode == 0)
    # reading is allowed now; writing still is not, nor reading elsewhere
    write = kubectl("create", "configmap", "jane-made", kubeconfig=jane, check=False)
    assert write.returncode != 0 and 'cannot create resource "configmaps"' in write.stderr
    other = kubectl("get", "configmaps", "-n", "kube-system", kubeconfig=jane, check=False)
    assert other.returncode != 0 and 'in the namespace "kube-system"' in other.stderr
    nodes = kubectl("get", "nodes", kubeconfig=jane, check=False)
    assert nodes.returncode != 0 and "at the cluster scope" in nodes.stderr
    kubectl("delete", "rolebinding", "jane-reads")
    wait_for(lambda: kubectl("get", "configmaps", kubeconfig=jane, check=False).returncode != 0)
    kubectl("delete", "role", "cm-reader")


def test_group_binding_to_a_cluster_role(api_server, kubectl, tmp_path) -> None:
    jane = _token_kubeconfig(api_server, tmp_path, "jane-token")
    kubectl("create", "clusterrolebinding", "dev-view", "--clusterrole=view", "--group=dev")
    wait_for(lambda: kubectl("get", "deployments", "-A", kubeconfig=jane, check=False).returncode == 0)
    reply = api_server.request("GET", "/api/v1/secrets", headers={"Authorization": "Bearer jane-token"}, cert=False)
    assert reply.status == 403  # view does not include secrets
    kubectl("delete", "clusterrolebinding", "dev-view")


def test_node_credentials_can_update_nodes(api_server) -> None:
    headers = {"Authorization": "Bearer node-token", "Content-Type": "application/json"}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    reply = api_server.request("POST", "/api/v1/nodes", json.dumps(node), headers, cert=False)
    assert reply.status == 201, reply.body
    assert api_server.request("GET", "/api/v1/nodes/n1", headers=headers, cert=False).status == 200
    denied = api_server.request("DELETE", "/apis/apps/v1/namespaces/default/deployments/x", headers=headers,
                                cert=False)
    assert denied.status == 403
    assert api_server.request("DELETE", "/api/v1/nodes/n1").status == 200


def test_admin_kubeconfig_uses_client_certificates(api_server) -> None:
    config = yaml.safe_load(api_server.kubeconfig.read_text())
    user = config["users"][0]["user"]
    assert user["client-certificate-data"] and user["client-key-data"]
    assert config["clusters"][0]["cluster"]["server"] == api_server.url


def test_auth_can_i_and_whoami(api_server, kubectl, tmp_path) -> None:
    jane = _token_kubeconfig(api_server, tmp_path, "jane-token")
    assert kubectl("auth", "can-i", "create", "pods").stdout.strip() == "yes"
    denied = kubectl("auth", "can-i", "create", "pods", kubeconfig=jane, check=False)
    assert denied.stdout.strip() == "no" and denied.returncode == 1
    who = kubectl("auth", "whoami", "-o", "json", kubeconfig=jane).stdout
    info = json.loads(who)["status"]["userInfo"]
    assert info["username"] == "jane" and "dev" in info["groups"]


def test_node_kubeconfig_holds_node_credentials(api_server, kubectl) -> None:
    node_config = api_server.data_dir / "cred" / "node.kubeconfig"
    who = json.loads(kubectl("auth", "whoami", "-o", "json", kubeconfig=node_config).stdout)["status"]["userInfo"]
    assert who["username"].startswith("system:node:") and "system:nodes" in who["groups"]
    kubectl("create", "-f", "-", input="apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n", kubeconfig=node_config)
    assert kubectl("get", "nodes", "-o", "name", kubeconfig=node_config).stdout.split() == ["node/n2"]
    denied = kubectl("delete", "namespace", "default", kubeconfig=node_config, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    kubectl("delete", "node", "n2")
