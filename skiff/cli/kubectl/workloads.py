"""The workload verbs of ``skiff kubectl``: expose, rollout (status, history, undo, restart, pause, resume) and
set image.

They do what kubectl 1.32 does on the client side, with the same requests and messages: ``expose`` builds
the Service from the workload's selector, ``rollout undo`` copies the chosen ReplicaSet's template back into
the Deployment with a JSON patch, ``rollout status`` reads the Deployment's status as kubectl's status
viewer does.
"""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any, TextIO

from skiff.cli.kubectl.client import ApiError, ApiResource, Client

STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
TEMPLATE_HASH = "pod-template-hash"
# Annotations a rollback keeps from the Deployment rather than taking from the ReplicaSet (kubectl's list).
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})


class WorkloadError(Exception):
    """What kubectl reports as ``error: ...`` for these verbs."""


def one_target(client: Client, words: list[str]) -> tuple[ApiResource, str]:
    """``TYPE/NAME`` or ``TYPE NAME``: exactly one object."""
    if len(words) == 1 and "/" in words[0]:
        kind, _, name = words[0].partition("/")
    elif len(words) == 2:
        kind, name = words
    else:
        raise WorkloadError("exactly one TYPE/NAME (or TYPE NAME) is required")
    return client.resolve(kind), name


def _deployment(client: Client, words: list[str], namespace: str, verb: str) -> tuple[ApiResource, str, dict]:
    resource, name = one_target(client, words)
    if resource.kind != "Deployment":
        raise WorkloadError(f"{verb} is not supported on {resource.name} here (only deployments)")
    return resource, name, client.request("GET", resource.path(namespace, name))


# --- expose ---------------------------------------------------------------------------------------------


def expose(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    resource, name = one_target(client, args.resources)
    obj = client.request("GET", resource.path(namespace if resource.namespaced else None, name))
    selector = args.selector_override or selector_of(obj)
    ports = _service_ports(args, obj)
    service: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": args.name or name},
        "spec": {"selector": selector, "ports": ports},
    }
    labels = (obj.get("metadata") or {}).get("labels")
    if labels:
        service["metadata"]["labels"] = labels
    if args.type:
        service["spec"]["type"] = args.type
    if args.cluster_ip:
        service["spec"]["clusterIP"] = args.cluster_ip
    if args.session_affinity:
        service["spec"]["sessionAffinity"] = args.session_affinity
    if args.external_ip:
        service["spec"]["externalIPs"] = [args.external_ip]
    client.request("POST", f"/api/v1/namespaces/{namespace}/services", body=service,
                   query={"fieldManager": "kubectl-expose"})
    out.write(f"service/{service['metadata']['name']} exposed\n")
    return 0


# --- autoscale ------------------------------------------------------------------------------------------

SCALABLE = ("Deployment", "ReplicaSet", "StatefulSet", "ReplicationController")


def autoscale(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    """An autoscaling/v2 HorizontalPodAutoscaler for one scalable workload (kubectl 1.33's form; 1.32 posts
    the same in autoscaling/v1)."""
    resource, name = one_target(client, args.resources)
    if resource.kind not in SCALABLE:
        raise WorkloadError(f"cannot autoscale a {resource.kind}: only {', '.join(SCALABLE)}")
    if args.max < 1:
        raise WorkloadError("--max=MAXPODS is required and must be at least 1")
    if args.min is not None and args.min > args.max:
        raise WorkloadError(f"--max={args.max} must be larger or equal to --min={args.min}")
    client.request("GET", resource.path(namespace, name))  # the target must exist, as kubectl checks
    spec: dict[str, Any] = {"scaleTargetRef": {"apiVersion": resource.api_version, "kind": resource.kind,
                                               "name": name}, "maxReplicas": args.max}
    if args.min is not None:
        spec["minReplicas"] = args.min
    if args.cpu_percent is not None and args.cpu_percent >= 0:
        spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": args.cpu_percent}}}]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": args.name or name}, "spec": spec}
    client.request("POST", f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers", body=hpa,
                   query={"fieldManager": "kubectl-autoscale"})
    out.write(f"horizontalpodautoscaler.autoscaling/{hpa['metadata']['name']} autoscaled\n")
    return 0


def selector_of(obj: dict[str, Any]) -> dict[str, str]:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        selector = (obj.get("metadata") or {}).get("labels") or {}
    elif kind in ("Service", "ReplicationController"):
        selector = spec.get("selector") or {}
    else:
        wanted = spec.get("selector") or {}
        if wanted.get("matchExpressions"):
            raise WorkloadError("couldn't retrieve selectors via --selector flag or introspection: the "
                                "selector has matchExpressions, which a Service cannot express")
        selector = wanted.get("matchLabels") or {}
    if not selector:
        raise WorkloadError(f"couldn't retrieve selectors via --selector flag or introspection: the {kind} "
                            "has no selector")
    return selector


def _container_ports(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod_spec = spec if obj.get("kind") == "Pod" else ((spec.get("template") or {}).get("spec") or {})
    if obj.get("kind") == "Service":
        return [{"containerPort": p["port"], "protocol": p.get("protocol", "TCP")} for p in spec.get("ports") or []]
    return [port for c in pod_spec.get("containers") or [] for port in c.get("ports") or []]


def _service_ports(args: argparse.Namespace, obj: dict[str, Any]) -> list[dict[str, Any]]:
    if args.port:
        wanted = [{"port": int(args.port), "protocol": args.protocol or "TCP"}]
    else:
        found = _container_ports(obj)
        if not found:
            raise WorkloadError("couldn't find port via --port flag or introspection\n"
                                "See 'kubectl expose -h' for help and examples")
        wanted = [{"port": p["containerPort"], "protocol": args.protocol or p.get("protocol", "TCP")} for p in found]
    ports = []
    for index, port in enumerate(wanted):
        entry: dict[str, Any] = {"port": port["port"], "protocol": port["protocol"]}
        if len(wanted) > 1:
            entry["name"] = f"port-{index + 1}"
        target = args.target_port
        entry["targetPort"] = (int(target) if str(target).isdigit() else target) if target else port["port"]
        ports.append(entry)
    return ports


# --- set image ------------------------------------------------------------------------------------------


def set_image(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    words = list(args.args)
    pairs: dict[str, str] = {}
    while words and "=" in words[-1]:
        container, _, image = words.pop().partition("=")
        pairs[container] = image
    if not pairs:
        raise WorkloadError("at least one image update is required")
    resource, name = one_target(client, words)
    path = resource.path(namespace if resource.namespaced else None, name)
    obj = client.request("GET", path)
    pod_spec = _pod_spec(obj)
    patch_spec: dict[str, list[dict[str, str]]] = {}
    for field in ("initContainers", "containers"):
        for container in pod_spec.get(field) or []:
            image = pairs.get(container["name"], pairs.get("*"))
            if image is not None:
                patch_spec.setdefault(field, []).append({"name": container["name"], "image": image})
    named = {c["name"] for field in ("initContainers", "containers") for c in pod_spec.get(field) or []}
    for container in pairs:
        if container != "*" and container not in named:
            raise WorkloadError(f'unable to find container named "{container}"')
    body = {"spec": patch_spec} if obj.get("kind") == "Pod" else {"spec": {"template": {"spec": patch_spec}}}
    client.request("PATCH", path, body=body, content_type=STRATEGIC, query={"fieldManager": "kubectl-set"})
    out.write(f"{resource.qualified}/{name} image updated\n")
    return 0


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    return spec if obj.get("kind") == "Pod" else ((spec.get("template") or {}).get("spec") or {})


# --- rollout --------------------------------------------------------------------------------------------


def rollout(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    action = ROLLOUT_ACTIONS.get(args.action)
    if action is None:
        raise WorkloadError(f"unknown rollout command {args.action!r} (one of: {', '.join(ROLLOUT_ACTIONS)})")
    return action(args, client, namespace, out)


def deployment_status(deployment: dict[str, Any]) -> tuple[str, bool]:
    """kubectl's DeploymentStatusViewer: the line to print and whether the rollout is done (WorkloadError
    when its progress deadline has passed)."""
    name = deployment["metadata"]["name"]
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    if deployment["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return "Waiting for deployment spec update to be observed...\n", False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise WorkloadError(f'deployment "{name}" exceeded its progress deadline')
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < wanted:
        return (f'Waiting for deployment "{name}" rollout to finish: {updated} out of {wanted} new replicas '
                f"have been updated...\n"), False
    if status.get("replicas", 0) > updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {status.get("replicas", 0) - updated} old '
                f"replicas are pending termination...\n"), False
    if status.get("availableReplicas", 0) < updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {status.get("availableReplicas", 0)} of '
                f"{updated} updated replicas are available...\n"), False
    return f'deployment "{name}" successfully rolled out\n', True


def _status(args: argparse.Namespace, client: Client, namespace: str, out: TextIO) -> int:
    resource, name, deployment = _deployment(client, args.resources, namespace, "rollout status")
    deadline = time.monotonic() + args.timeout if args.timeout else None
    last = ""
    while True:
        line, done = deployment_status(deployment)
        if line != last:
            out.write(line)
            out.flush()
            last = line
        if done or not args.watch:
            return 0
        if deadline is not None and time.monotonic() > deadline:
            raise WorkloadError("timed out waiting for the condition")
        deployment = _next_version(client, resource, namespace, name, deployment, deadline)


def _next_version(client: Client, resource: ApiResource, namespace: str, name: str, current: dict[str, Any],
                  deadline: float | None) -> dict[str, Any]:
    """The Deployment after its next change (a watch on it alone, bounded by ``deadline``)."""
    timeout = 30 if deadline is None else max(1, int(deadline - time.monotonic()) + 1)
    query = {"fieldSelector": f"metadata.name={name}", "resourceVersion": current["metadata"]["resourceVersion"],
             "timeoutSeconds": str(timeout), "allowWatchBookmarks": "false"}
    try:
        for event in client.watch(resource.path(namespace), query):
            if event.get("type") in ("ADDED", "MODIFIED"):
                return event["object"]
            if event.get("type") == "DELETED":
                raise WorkloadError(f'deployment "{name}" was deleted')
    except ApiError as error:
        if error.code != 410:
            raise
    return client.request("GET", resource.path(namespace, name))  # watch ended or expired: read it again


def _owned_replicasets(client: Client, namespace: str, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in
                        ((deployment["spec"].get("selector") or {}).get("matchLabels") or {}).items())
    listing = client.request("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets",
                             query={"labelSelector": selector} if selector else None)
    uid = deployment["metadata"]["uid"]
    return [rs for rs in listing.get("items", [])
            if any(ref.get("uid") == uid and ref.get("controller")
                   for ref in rs["metadata"].get("ownerReferences") or [])]


def _revision(obj: dict[str, Any]) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _history(args: argparse.Namespace, client: Client, namespace: str, out: TextIO) -> int:
    resource, name, deployment = _deployment(client, args.resources, namespace, "rollout history")
    by_revision = {_revision(rs): rs for rs in _owned_replicasets(client, namespace, deployment) if _revision(rs)}
    if args.revision:
        rs = by_revision.get(args.revision)
        if rs is None:
            raise WorkloadError(f"unable to find the specified revision {args.revision}")
        out.write(f"{resource.qualified}/{name} with revision #{args.revision}\n")
        out.write(_describe_template(rs["spec"]["template"]))
        return 0
    out.write(f"{resource.qualified}/{name} \n")
    if not by_revision:
        out.write("No rollout history found.\n")
        return 0
    out.write(f"{'REVISION':<10}{'CHANGE-CAUSE'}\n")
    for revision in sorted(by_revision):
        cause = (by_revision[revision]["metadata"].get("annotations") or {}).get(CHANGE_CAUSE) or "<none>"
        out.write(f"{revision:<10}{cause}\n")
    out.write("\n")
    return 0


def _describe_template(template: dict[str, Any]) -> str:
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())) or "<none>"
    lines = ["Pod Template:", f"  Labels:\t{labels}", "  Containers:"]
    for container in spec.get("containers") or []:
        lines += [f"   {container['name']}:", f"    Image:\t{container.get('image', '')}"]
        ports = ", ".join(f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in container.get("ports") or [])
        lines.append(f"    Port:\t{ports or '<none>'}")
    return "\n".join(lines) + "\n\n"


def _undo(args: argparse.Namespace, client: Client, namespace: str, out: TextIO) -> int:
    resource, name, deployment = _deployment(client, args.resources, namespace, "rollout undo")
    by_revision = {_revision(rs): rs for rs in _owned_replicasets(client, namespace, deployment) if _revision(rs)}
    if args.to_revision:
        target = by_revision.get(args.to_revision)
        if target is None:
            raise WorkloadError(f"unable to find specified revision {args.to_revision} in history")
        revision = args.to_revision
    else:
        earlier = sorted(by_revision)[:-1]  # the newest revision is the current one
        if not earlier:
            raise WorkloadError(f'no rollout history found for deployment "{name}"')
        revision = earlier[-1]
        target = by_revision[revision]
    if (deployment.get("spec") or {}).get("paused"):  # kubectl looks for the revision first
        raise WorkloadError("you cannot rollback a paused deployment; resume it first with 'kubectl rollout "
                            "resume' and try again")
    template = _without_hash(target["spec"]["template"])
    if template == _without_hash(deployment["spec"]["template"]):
        out.write(f"{resource.qualified}/{name} skipped rollback (current template already matches revision "
                  f"{revision})\n")
        return 0
    current = deployment["metadata"].get("annotations") or {}
    annotations = {k: v for k, v in current.items() if k in ANNOTATIONS_TO_SKIP}
    annotations.update({k: v for k, v in (target["metadata"].get("annotations") or {}).items()
                        if k not in ANNOTATIONS_TO_SKIP})
    patch = [{"op": "replace", "path": "/spec/template", "value": template},
             {"op": "replace", "path": "/metadata/annotations", "value": annotations}]
    client.request("PATCH", resource.path(namespace, name), body=patch, content_type=JSON_PATCH,
                   query={"fieldManager": "kubectl-rollout"})
    out.write(f"{resource.qualified}/{name} rolled back\n")
    return 0


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    meta = dict(template.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != TEMPLATE_HASH}
    meta["labels"] = labels
    return {**template, "metadata": meta}


def _restart(args: argparse.Namespace, client: Client, namespace: str, out: TextIO) -> int:
    resource, name, deployment = _deployment(client, args.resources, namespace, "rollout restart")
    if (deployment.get("spec") or {}).get("paused"):
        raise WorkloadError(f'{resource.name}.{resource.group} "{name}" can\'t restart paused deployment (run '
                            "rollout resume first)")
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}}
    client.request("PATCH", resource.path(namespace, name), body=patch, content_type=STRATEGIC,
                   query={"fieldManager": "kubectl-rollout"})
    out.write(f"{resource.qualified}/{name} restarted\n")
    return 0


def _pause_command(paused: bool) -> Any:
    word = "paused" if paused else "resumed"

    def command(args: argparse.Namespace, client: Client, namespace: str, out: TextIO) -> int:
        resource, name, deployment = _deployment(client, args.resources, namespace, f"rollout {word[:-1]}")
        if bool((deployment.get("spec") or {}).get("paused")) == paused:
            state = "already paused" if paused else "not paused"
            raise WorkloadError(f'{resource.name}.{resource.group} "{name}" is {state}')
        client.request("PATCH", resource.path(namespace, name), body={"spec": {"paused": paused}},
                       content_type=STRATEGIC, query={"fieldManager": "kubectl-rollout"})
        out.write(f"{resource.qualified}/{name} {word}\n")
        return 0

    return command


ROLLOUT_ACTIONS = {
    "status": _status, "history": _history, "undo": _undo, "restart": _restart,
    "pause": _pause_command(True), "resume": _pause_command(False),
}
