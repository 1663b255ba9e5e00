"""Namespace deletion as kube does it, with the real kubectl 1.32: the server marks the namespace Terminating
and refuses new content; the namespace controller deletes everything in it (every namespaced resource
discovery lists, RBAC and leases included), reports what remains in the namespace's conditions, and
finalizes it; then the server removes it. The system's namespaces may not be deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.cluster.api.conftest import REPO, ServerProcess, make_kubectl, wait_for
from tests.cluster.controllers.conftest import NO_SCHEDULER

CONTENT = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: password}
stringData: {p: hunter2}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: default}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: leader}
spec: {holderIdentity: me}
"""
KINDS = "all,cm,secret,sa,role,rolebinding,lease,endpoints,endpointslices,events"


def _conditions(kubectl, namespace: str) -> dict[str, dict[str, str]]:
    ns = json.loads(kubectl("get", "namespace", namespace, "-o", "json").stdout)
    return {c["type"]: c for c in ns["status"].get("conditions") or ()}


def test_deleting_a_namespace_deletes_everything_in_it(kubectl) -> None:
    kubectl("create", "namespace", "doomed")
    kubectl("-n", "doomed", "apply", "-f", "-", input=CONTENT)
    kubectl("-n", "doomed", "create", "deployment", "web", "--image=nginx", "--replicas=2")
    kubectl("-n", "doomed", "create", "service", "clusterip", "web", "--tcp=80:80")
    wait_for(lambda: len(kubectl("-n", "doomed", "get", "pods", "-o", "name").stdout.split()) == 2)
    spec = json.loads(kubectl("get", "namespace", "doomed", "-o", "json").stdout)["spec"]
    assert spec == {"finalizers": ["kubernetes"]}

    kubectl("delete", "namespace", "doomed", timeout=90)  # waits until it is gone
    gone = kubectl("get", "namespace", "doomed", check=False)
    assert gone.returncode != 0 and 'namespaces "doomed" not found' in gone.stderr
    assert kubectl("-n", "doomed", "get", KINDS, "-o", "name").stdout.strip() == ""
    every = kubectl("get", KINDS, "-A", "-o", "custom-columns=NS:.metadata.namespace", "--no-headers").stdout
    assert "doomed" not in every.split()


def test_terminating_namespace_refuses_new_content_and_reports_what_remains(kubectl) -> None:
    kubectl("create", "namespace", "held")
    kubectl("-n", "held", "apply", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pinned\n"
            "  finalizers: [example.com/hold]\n")
    kubectl("delete", "namespace", "held", "--wait=false")
    deleted = json.loads(kubectl("get", "namespace", "held", "-o", "json").stdout)
    assert deleted["status"]["phase"] == "Terminating" and deleted["metadata"]["deletionTimestamp"]

    refused = kubectl("-n", "held", "create", "configmap", "late", check=False)
    assert refused.returncode != 0
    assert ('configmaps "late" is forbidden: unable to create new content in namespace held because it is being '
            "terminated") in refused.stderr

    def stuck() -> dict[str, dict[str, str]] | None:
        found = _conditions(kubectl, "held")
        return found if found.get("NamespaceFinalizersRemaining", {}).get("status") == "True" else None
    conditions = wait_for(stuck, timeout=20)
    assert conditions["NamespaceContentRemaining"]["status"] == "True"
    assert conditions["NamespaceContentRemaining"]["reason"] == "SomeResourcesRemain"
    assert "configmaps. has 1 resource instances" in conditions["NamespaceContentRemaining"]["message"]
    assert conditions["NamespaceFinalizersRemaining"]["message"] == (
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    assert conditions["NamespaceDeletionDiscoveryFailure"]["status"] == "False"
    assert conditions["NamespaceDeletionContentFailure"]["reason"] == "ContentDeleted"
    assert kubectl("get", "namespace", "held", "--no-headers").stdout.split()[:2] == ["held", "Terminating"]

    # whoever holds the finalizer lets go: the controller finishes and the namespace goes
    kubectl("-n", "held", "patch", "configmap", "pinned", "--type=json",
            "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    wait_for(lambda: kubectl("get", "namespace", "held", check=False).returncode != 0, timeout=20)


def test_system_namespaces_may_not_be_deleted(kubectl) -> None:
    for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
        result = kubectl("delete", "namespace", name, check=False)
        assert result.returncode != 0
        assert f'namespaces "{name}" is forbidden: this namespace may not be deleted' in result.stderr
        phase = kubectl("get", "namespace", name, "-o", "jsonpath={.status.phase}").stdout
        assert phase == "Active"


def test_finalizers_change_only_through_finalize(api_server, kubectl) -> None:
    """A namespace manifest without spec.finalizers (replace, apply) keeps the kubernetes finalizer: the
    content must still be deleted before the namespace goes."""
    kubectl("create", "namespace", "kept")
    kubectl("replace", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kept\n"
            "  labels: {team: a}\nspec:\n  finalizers: []\n")
    ns = json.loads(kubectl("get", "namespace", "kept", "-o", "json").stdout)
    assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["metadata"]["labels"]["team"] == "a"
    kubectl("delete", "namespace", "kept")


def test_the_server_alone_leaves_the_namespace_terminating_until_the_controller_runs(tmp_path, kubectl_cache) -> None:
    """The content is the controller's to delete: without it a deleted namespace stays Terminating with its
    content; ``skiff controller-manager --controllers namespace`` started later finishes the job."""
    server = ServerProcess(tmp_path / "server", "--disable-controllers", NO_SCHEDULER)
    server.start()
    manager = None
    try:
        kubectl = make_kubectl(server, kubectl_cache)
        kubectl("create", "namespace", "later")
        kubectl("-n", "later", "create", "configmap", "left", "--from-literal=a=b")
        kubectl("delete", "namespace", "later", "--wait=false")
        phase = kubectl("get", "namespace", "later", "-o", "jsonpath={.status.phase}").stdout
        assert phase == "Terminating"
        assert kubectl("-n", "later", "get", "cm", "-o", "name").stdout.split() == ["configmap/left"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        manager = subprocess.Popen([sys.executable, "-m", "skiff.cli.main", "controller-manager", "--kubeconfig",
                                    str(server.data_dir / "cred" / "controller-manager.kubeconfig"),
                                    "--controllers", "namespace"], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: kubectl("get", "namespace", "later", check=False).returncode != 0, timeout=30)
        assert kubectl("get", "cm", "-A", "-o", "name", "--field-selector",
                       "metadata.namespace=later").stdout.strip() == ""
    finally:
        if manager is not None:
            manager.terminate()
            manager.wait(15)
        server.stop()
