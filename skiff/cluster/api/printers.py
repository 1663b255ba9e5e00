"""Server-side printing: the ``meta.k8s.io/v1`` Table kube-apiserver answers to ``kubectl get``.

Each resource has kube's own columns (names and types; priority 1 for the ``-o wide`` ones; the descriptions
are Skiff's own words, mostly in ``_printer_docs``) and cells computed the way kube's
``pkg/printers/internalversion`` computes them: a pod's STATUS from its phase, init containers, container states
and deletion; RESTARTS with the time of the last restart; ages with apimachinery's ``duration.HumanDuration``.
A resource without a printer gets kube's default table (Name, Created At). Pure functions of the objects and
the clock; importable without the API server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from skiff.cluster.api._printer_docs import DOCS

Obj = dict[str, Any]
Cell = Any
Printer = Callable[[Obj, datetime], list[Cell]]

# --- columns ------------------------------------------------------------------------------------------

_CONTAINERS_DOC = "The names of the containers in the pod template."
_IMAGES_DOC = "The images the pod template's containers run."


def _column(name: str, description: str, *, type_: str = "string", priority: int = 0, format_: str = "") -> Obj:
    return {"name": name, "type": type_, "format": format_, "description": description, "priority": priority}


def _name_column(priority: int = 0) -> Obj:
    return _column("Name", DOCS["OBJECT_NAME"], format_="name", priority=priority)


def _age_column() -> Obj:
    return _column("Age", DOCS["CREATION_TIMESTAMP"])


# --- formatting helpers ---------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (kube's Time or MicroTime) as an aware datetime; None when unset or invalid."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration``: about two or three significant figures."""
    whole = int(seconds)  # Go truncates toward zero
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def since(value: Any, now: datetime) -> str:
    """kube's translateTimestampSince: the age of a timestamp, ``<unknown>`` when it is unset."""
    moment = parse_time(value)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: ``k=v`` pairs sorted by key, ``<none>`` when empty."""
    if not labels:
        return "<none>"
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def selector_string(selector: Any) -> str:
    """A LabelSelector as labels.Selector.String() writes it (requirements sorted by key)."""
    if not isinstance(selector, dict):
        return ""
    requirements: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        requirements.append((key, f"{key}={value}"))
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key", "")
        values = ",".join(sorted(expression.get("values") or []))
        operator = expression.get("operator")
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(operator, key)
        requirements.append((key, text))
    return ",".join(text for _key, text in sorted(requirements, key=lambda r: r[0]))


def format_label_selector(selector: Any) -> str:
    """metav1.FormatLabelSelector: the selector string, ``<none>`` when it selects by nothing."""
    return selector_string(selector) or "<none>"


def _containers_cells(pod_spec: Any) -> tuple[str, str]:
    containers = (pod_spec or {}).get("containers") or []
    return (",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers))


def _template_spec(obj: Obj) -> Obj:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _name(obj: Obj) -> str:
    return _meta(obj).get("name", "")


def _age(obj: Obj, now: datetime) -> str:
    return since(_meta(obj).get("creationTimestamp"), now)


def _list_with_more(items: list[str], total: int, limit: int = 3) -> str:
    text = ",".join(items[:limit])
    if total > limit:
        return f"{text} + {total - limit} more..."
    return text or "<unset>"


# --- pods -----------------------------------------------------------------------------------------------


def _pod_cells(pod: Obj, now: datetime) -> list[Cell]:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    metadata = _meta(pod)
    conditions = status.get("conditions") or []
    phase = status.get("phase", "")
    reason = status.get("reason") or phase
    if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated" for c in conditions):
        reason = "SchedulingGated"

    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    sidecars = {name for name, c in init_specs.items() if c.get("restartPolicy") == "Always"}
    total = len(spec.get("containers") or []) + len(sidecars)
    ready = 0
    restarts = sidecar_restarts = 0
    last_restart = last_sidecar_restart = None

    initializing = False
    init_count = len(spec.get("initContainers") or [])
    for index, container in enumerate(status.get("initContainerStatuses") or []):
        count = int(container.get("restartCount") or 0)
        restarts += count
        finished = _last_termination(container)
        last_restart = _later(last_restart, finished)
        is_sidecar = container.get("name") in sidecars
        if is_sidecar:
            sidecar_restarts += count
            last_sidecar_restart = _later(last_sidecar_restart, finished)
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and terminated.get("exitCode", 0) == 0:
            continue
        if is_sidecar and container.get("started"):
            if container.get("ready"):
                ready += 1
            continue
        if terminated is not None:
            if terminated.get("reason"):
                reason = "Init:" + terminated["reason"]
            elif terminated.get("signal"):
                reason = f"Init:Signal:{terminated['signal']}"
            else:
                reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
        elif waiting is not None and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{init_count}"
        initializing = True
        break

    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True" for c in conditions)
    if not initializing or initialized:
        restarts, last_restart = sidecar_restarts, last_sidecar_restart
        has_running = False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            last_restart = _later(last_restart, _last_termination(container))
            state = container.get("state") or {}
            terminated, waiting = state.get("terminated"), state.get("waiting")
            if waiting is not None and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode', 0)}"
            elif container.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            reason = "Running" if pod_ready else "NotReady"

    if metadata.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif metadata.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"

    pod_ips = status.get("podIPs") or []
    pod_ip = (pod_ips[0].get("ip") if pod_ips else "") or status.get("podIP") or "<none>"
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        by_type = {c.get("type"): c for c in conditions}
        true_count = sum(1 for g in gates if (by_type.get(g.get("conditionType")) or {}).get("status") == "True")
        gates_text = f"{true_count}/{len(gates)}"
    return [
        _name(pod), f"{ready}/{total}", reason, restarts_text, _age(pod, now),
        pod_ip, spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>", gates_text,
    ]


def _last_termination(container: Obj) -> datetime | None:
    terminated = (container.get("lastState") or {}).get("terminated")
    return parse_time(terminated.get("finishedAt")) if terminated else None


def _later(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate > current else current


def _pod_conditions(pod: Obj) -> list[Obj] | None:
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


# --- workloads ------------------------------------------------------------------------------------------


def _deployment_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_cells(_template_spec(obj))
    replicas = spec.get("replicas", 1)
    return [
        _name(obj), f"{status.get('readyReplicas', 0)}/{replicas}", status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0), _age(obj, now), containers, images, selector_string(spec.get("selector")),
    ]


def _replicaset_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_cells(_template_spec(obj))
    return [
        _name(obj), spec.get("replicas", 1), status.get("replicas", 0), status.get("readyReplicas", 0),
        _age(obj, now), containers, images, format_label_selector(spec.get("selector")),
    ]


def _replicationcontroller_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_cells(_template_spec(obj))
    return [
        _name(obj), spec.get("replicas", 1), status.get("replicas", 0), status.get("readyReplicas", 0),
        _age(obj, now), containers, images, format_labels(spec.get("selector")),
    ]


def _statefulset_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_cells(_template_spec(obj))
    return [
        _name(obj), f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}", _age(obj, now),
        containers, images,
    ]


def _daemonset_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_cells(_template_spec(obj))
    return [
        _name(obj), status.get("desiredNumberScheduled", 0), status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0), status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0),
        format_labels(_template_spec(obj).get("nodeSelector")), _age(obj, now), containers, images,
        format_label_selector(spec.get("selector")),
    ]


def _job_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    succeeded = status.get("succeeded", 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif (spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    duration = ""
    if start is not None:
        duration = human_duration(((end or now) - start).total_seconds())
    conditions = {c.get("type"): c.get("status") == "True" for c in status.get("conditions") or []}
    if conditions.get("Complete"):
        state = "Complete"
    elif conditions.get("Failed"):
        state = "Failed"
    elif _meta(obj).get("deletionTimestamp"):
        state = "Terminating"
    elif conditions.get("Suspended"):
        state = "Suspended"
    elif conditions.get("FailureTarget"):
        state = "FailureTarget"
    else:
        state = "Running"
    containers, images = _containers_cells(_template_spec(obj))
    return [
        _name(obj), state, completions, duration, _age(obj, now), containers, images,
        format_label_selector(spec.get("selector")),
    ]


def _cronjob_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    containers, images = _containers_cells((job_spec.get("template") or {}).get("spec"))
    last = status.get("lastScheduleTime")
    suspend = spec.get("suspend")
    return [
        _name(obj), spec.get("schedule", ""), spec.get("timeZone") or "<none>",
        "<unset>" if suspend is None else ("True" if suspend else "False"),
        len(status.get("active") or []), since(last, now) if last else "<none>", _age(obj, now),
        containers, images, format_label_selector(job_spec.get("selector")),
    ]


# --- services and networking ----------------------------------------------------------------------------


def _service_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec = obj.get("spec") or {}
    service_type = spec.get("type") or "ClusterIP"
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol") or "TCP"
        if port.get("nodePort"):
            ports.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            ports.append(f"{port.get('port')}/{protocol}")
    return [
        _name(obj), service_type, cluster_ips[0] if cluster_ips else "<none>", _external_ip(obj, service_type),
        ",".join(ports) or "<none>", _age(obj, now), format_labels(spec.get("selector")),
    ]


def _external_ip(obj: Obj, service_type: str) -> str:
    spec = obj.get("spec") or {}
    external = spec.get("externalIPs") or []
    if service_type in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if service_type == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        balancers = sorted({i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")})
        if external:
            return ",".join([*balancers, *external])
        return ",".join(balancers) or "<pending>"
    if service_type == "ExternalName":
        return spec.get("externalName", "")
    return "<unknown>"


def _join_host_port(host: str, port: Any) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoints_cells(obj: Obj, now: datetime) -> list[Cell]:
    subsets = obj.get("subsets") or []
    if not subsets:
        return [_name(obj), "<none>", _age(obj, now)]
    shown: list[str] = []
    total = 0
    for subset in subsets:
        addresses = [a.get("ip", "") for a in subset.get("addresses") or []]
        ports = subset.get("ports") or []
        if not ports:
            total += len(addresses)
            shown.extend(addresses[: max(0, 3 - len(shown))])
            continue
        for port in ports:
            total += len(addresses)
            for address in addresses:
                if len(shown) < 3:
                    shown.append(_join_host_port(address, port.get("port")))
    text = ",".join(shown)
    if total > 3:
        text = f"{text} + {total - 3} more..."
    return [_name(obj), text, _age(obj, now)]


def _endpointslice_cells(obj: Obj, now: datetime) -> list[Cell]:
    ports = []
    for port in obj.get("ports") or []:
        if port.get("port") is not None:
            ports.append(str(port["port"]))
        elif port.get("name") is not None:
            ports.append(port["name"])
        else:
            ports.append("*")
    addresses = [a for endpoint in obj.get("endpoints") or [] for a in endpoint.get("addresses") or []]
    return [
        _name(obj), obj.get("addressType", ""), _list_with_more(ports, len(ports)),
        _list_with_more(addresses, len(addresses)), _age(obj, now),
    ]


# --- cluster objects ------------------------------------------------------------------------------------


def _node_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    states = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            states = ["Ready" if condition.get("status") == "True" else "NotReady"]
    if not states:
        states = ["Unknown"]
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    roles = set()
    for key, value in (_meta(obj).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key != "node-role.kubernetes.io/":
            roles.add(key.removeprefix("node-role.kubernetes.io/"))
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind: str) -> str:
        return next((a.get("address", "") for a in addresses if a.get("type") == kind), "<none>")

    return [
        _name(obj), ",".join(states), ",".join(sorted(roles)) or "<none>", _age(obj, now),
        info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
        info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _namespace_cells(obj: Obj, now: datetime) -> list[Cell]:
    return [_name(obj), (obj.get("status") or {}).get("phase", ""), _age(obj, now)]


def _configmap_cells(obj: Obj, now: datetime) -> list[Cell]:
    return [_name(obj), len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), _age(obj, now)]


def _secret_cells(obj: Obj, now: datetime) -> list[Cell]:
    return [_name(obj), obj.get("type", ""), len(obj.get("data") or {}), _age(obj, now)]


def _serviceaccount_cells(obj: Obj, now: datetime) -> list[Cell]:
    return [_name(obj), len(obj.get("secrets") or []), _age(obj, now)]


def _hpa_cells(obj: Obj, now: datetime) -> list[Cell]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ref = spec.get("scaleTargetRef") or {}
    low = spec.get("minReplicas")
    return [_name(obj), f"{ref.get('kind', '')}/{ref.get('name', '')}",
            format_hpa_metrics(spec.get("metrics") or [], status.get("currentMetrics") or []),
            "<unset>" if low is None else str(low), spec.get("maxReplicas", 0), status.get("currentReplicas", 0),
            _age(obj, now)]


def format_hpa_metrics(specs: list[Obj], statuses: list[Obj], shown: int = 2) -> str:
    """``cpu: 12%/50%, memory: 40Mi/100Mi + 1 more...``: each metric's current value (``<unknown>`` before the
    first measurement) against its target, as kubectl's TARGETS column shows them."""
    if not specs:
        return "<none>"
    cells = [_hpa_metric(spec, statuses[i] if i < len(statuses) else {}) for i, spec in enumerate(specs)]
    text = ", ".join(cells[:shown])
    return f"{text} + {len(cells) - shown} more..." if len(cells) > shown else text


def _hpa_metric(spec: Obj, status: Obj) -> str:
    kind = spec.get("type")
    key = {"Resource": "resource", "ContainerResource": "containerResource", "Pods": "pods", "Object": "object",
           "External": "external"}.get(kind or "")
    if key is None:
        return "<unknown type>"
    source, current = spec.get(key) or {}, ((status.get(key) or {}).get("current") or {})
    target = source.get("target") or {}
    if key in ("resource", "containerResource"):
        if target.get("averageValue") is not None:
            return f"{source.get('name')}: {current.get('averageValue', '<unknown>')}/{target['averageValue']}"
        now = current.get("averageUtilization")
        wanted = target.get("averageUtilization")
        return (f"{source.get('name')}: {'<unknown>' if now is None else f'{now}%'}/"
                f"{'<auto>' if wanted is None else f'{wanted}%'}")
    if key == "pods":
        return f"{current.get('averageValue', '<unknown>')}/{target.get('averageValue')}"
    if target.get("averageValue") is not None:
        return f"{current.get('averageValue', '<unknown>')}/{target['averageValue']} (avg)"
    return f"{current.get('value', '<unknown>')}/{target.get('value')}"


def _lease_cells(obj: Obj, now: datetime) -> list[Cell]:
    return [_name(obj), (obj.get("spec") or {}).get("holderIdentity") or "", _age(obj, now)]


def _binding_cells(obj: Obj, now: datetime) -> list[Cell]:
    role = obj.get("roleRef") or {}
    users, groups, accounts = [], [], []
    for subject in obj.get("subjects") or []:
        kind = subject.get("kind")
        if kind == "User":
            users.append(subject.get("name", ""))
        elif kind == "Group":
            groups.append(subject.get("name", ""))
        elif kind == "ServiceAccount":
            accounts.append(f"{subject.get('namespace', '')}/{subject.get('name', '')}")
    return [
        _name(obj), f"{role.get('kind', '')}/{role.get('name', '')}", _age(obj, now),
        ", ".join(users), ", ".join(groups), ", ".join(accounts),
    ]


def _event_cells(obj: Obj, now: datetime) -> list[Cell]:
    first = since(obj.get("firstTimestamp"), now)
    if parse_time(obj.get("firstTimestamp")) is None:
        first = since(obj.get("eventTime"), now)
    last = since(obj.get("lastTimestamp"), now) if parse_time(obj.get("lastTimestamp")) else first
    count = obj.get("count") or 0
    series = obj.get("series")
    if series:
        last = since(series.get("lastObservedTime"), now)
        count = series.get("count", 0)
    elif count == 0:
        count = 1  # singleton events of the new API carry no count
    involved = obj.get("involvedObject") or {}
    kind = (involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingController") or ""
    instance = source.get("host") or obj.get("reportingInstance") or ""
    return [
        last, obj.get("type", ""), obj.get("reason", ""), target, involved.get("fieldPath", ""),
        f"{component}, {instance}" if instance else component, (obj.get("message") or "").strip(), first, count,
        _name(obj),
    ]


# --- the table of printers ------------------------------------------------------------------------------

_TEMPLATE_WIDE = [
    _column("Containers", _CONTAINERS_DOC, priority=1),
    _column("Images", _IMAGES_DOC, priority=1),
]

_PRINTERS: dict[tuple[str, str], tuple[list[Obj], Printer]] = {
    ("", "pods"): ([
        _name_column(),
        _column("Ready", "How many of the pod's containers are ready, out of how many it has."),
        _column("Status", "One word for the pod's state, taken from its phase and its containers."),
        _column("Restarts", "How often the pod's containers have restarted, and how long ago the last one did."),
        _age_column(),
        _column("IP", DOCS["POD_IP"], priority=1),
        _column("Node", DOCS["NODE_NAME"], priority=1),
        _column("Nominated Node", DOCS["NOMINATED"], priority=1),
        _column("Readiness Gates", DOCS["READINESS_GATES"], priority=1),
    ], _pod_cells),
    ("", "nodes"): ([
        _name_column(),
        _column("Status", "Whether the node is ready, and whether it takes new pods."),
        _column("Roles", "The roles named in the node's role labels."),
        _age_column(),
        _column("Version", DOCS["KUBELET_VERSION"]),
        _column("Internal-IP", DOCS["NODE_ADDRESSES"], priority=1),
        _column("External-IP", DOCS["NODE_ADDRESSES"], priority=1),
        _column("OS-Image", DOCS["OS_IMAGE"], priority=1),
        _column("Kernel-Version", DOCS["KERNEL"], priority=1),
        _column("Container-Runtime", DOCS["RUNTIME"], priority=1),
    ], _node_cells),
    ("", "namespaces"): ([
        _name_column(), _column("Status", "The namespace's phase, Active or Terminating."), _age_column(),
    ], _namespace_cells),
    ("", "services"): ([
        _name_column(),
        _column("Type", DOCS["SVC_TYPE"]),
        _column("Cluster-IP", DOCS["SVC_CLUSTER_IP"]),
        _column("External-IP", DOCS["SVC_EXTERNAL_IPS"]),
        _column("Port(s)", DOCS["SVC_PORTS"]),
        _age_column(),
        _column("Selector", DOCS["SVC_SELECTOR"], priority=1),
    ], _service_cells),
    ("", "endpoints"): ([
        _name_column(), _column("Endpoints", DOCS["ENDPOINTS_SUBSETS"]), _age_column(),
    ], _endpoints_cells),
    ("", "configmaps"): ([
        _name_column(), _column("Data", DOCS["CM_DATA"]), _age_column(),
    ], _configmap_cells),
    ("", "secrets"): ([
        _name_column(), _column("Type", DOCS["SECRET_TYPE"]), _column("Data", DOCS["SECRET_DATA"]), _age_column(),
    ], _secret_cells),
    ("", "serviceaccounts"): ([
        _name_column(), _column("Secrets", DOCS["SA_SECRETS"]), _age_column(),
    ], _serviceaccount_cells),
    ("", "events"): ([
        _column("Last Seen", DOCS["EV_LAST"]),
        _column("Type", DOCS["EV_TYPE"]),
        _column("Reason", DOCS["EV_REASON"]),
        _column("Object", DOCS["EV_OBJECT"]),
        _column("Subobject", DOCS["EV_SUBOBJECT"], priority=1),
        _column("Source", DOCS["EV_SOURCE"], priority=1),
        _column("Message", DOCS["EV_MESSAGE"]),
        _column("First Seen", DOCS["EV_FIRST"], priority=1),
        _column("Count", DOCS["EV_COUNT"], priority=1),
        _name_column(priority=1),
    ], _event_cells),
    ("", "replicationcontrollers"): ([
        _name_column(),
        _column("Desired", DOCS["RC_SPEC_REPLICAS"], type_="integer"),
        _column("Current", DOCS["RC_STATUS_REPLICAS"], type_="integer"),
        _column("Ready", DOCS["RC_READY"], type_="integer"),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["RC_SELECTOR"], priority=1),
    ], _replicationcontroller_cells),
    ("apps", "deployments"): ([
        _name_column(),
        _column("Ready", "How many of the deployment's pods are ready, out of how many it wants."),
        _column("Up-to-date", DOCS["DEP_UPDATED"]),
        _column("Available", DOCS["DEP_AVAILABLE"]),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["DEP_SELECTOR"], priority=1),
    ], _deployment_cells),
    ("apps", "replicasets"): ([
        _name_column(),
        _column("Desired", DOCS["RS_SPEC_REPLICAS"], type_="integer"),
        _column("Current", DOCS["RS_STATUS_REPLICAS"], type_="integer"),
        _column("Ready", DOCS["RS_READY"], type_="integer"),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["RS_SELECTOR"], priority=1),
    ], _replicaset_cells),
    ("apps", "statefulsets"): ([
        _name_column(), _column("Ready", "How many of the set's pods are ready, out of how many it wants."),
        _age_column(), *_TEMPLATE_WIDE,
    ], _statefulset_cells),
    ("apps", "daemonsets"): ([
        _name_column(),
        _column("Desired", DOCS["DS_DESIRED"], type_="integer"),
        _column("Current", DOCS["DS_CURRENT"], type_="integer"),
        _column("Ready", DOCS["DS_READY"], type_="integer"),
        _column("Up-to-date", DOCS["DS_UPDATED"], type_="integer"),
        _column("Available", DOCS["DS_AVAILABLE"], type_="integer"),
        _column("Node Selector", DOCS["DS_NODE_SELECTOR"]),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["DS_SELECTOR"], priority=1),
    ], _daemonset_cells),
    ("batch", "jobs"): ([
        _name_column(),
        _column("Status", "Whether the job is running, complete, failed or suspended."),
        _column("Completions", DOCS["JOB_COMPLETIONS"]),
        _column("Duration", "How long the job has run, or ran until it finished."),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["JOB_SELECTOR"], priority=1),
    ], _job_cells),
    ("batch", "cronjobs"): ([
        _name_column(),
        _column("Schedule", DOCS["CJ_SCHEDULE"]),
        _column("Timezone", DOCS["CJ_TZ"]),
        _column("Suspend", DOCS["CJ_SUSPEND"], type_="boolean"),
        _column("Active", DOCS["CJ_ACTIVE"], type_="integer"),
        _column("Last Schedule", DOCS["CJ_LAST"]),
        _age_column(), *_TEMPLATE_WIDE,
        _column("Selector", DOCS["JOB_SELECTOR"], priority=1),
    ], _cronjob_cells),
    ("autoscaling", "horizontalpodautoscalers"): ([
        _name_column(),
        _column("Reference", "The workload the autoscaler scales, as kind/name."),
        _column("Targets", "Each metric's current value against its target, the first two of them."),
        _column("MinPods", "The fewest replicas the autoscaler scales down to."),
        _column("MaxPods", "The most replicas the autoscaler scales up to.", type_="integer"),
        _column("Replicas", "How many replicas the autoscaler last saw.", type_="integer"),
        _age_column(),
    ], _hpa_cells),
    ("coordination.k8s.io", "leases"): ([
        _name_column(), _column("Holder", DOCS["LEASE_HOLDER"]), _age_column(),
    ], _lease_cells),
    ("discovery.k8s.io", "endpointslices"): ([
        _name_column(),
        _column("AddressType", DOCS["ES_ADDRESS_TYPE"]),
        _column("Ports", DOCS["ES_PORTS"]),
        _column("Endpoints", DOCS["ES_ENDPOINTS"]),
        _age_column(),
    ], _endpointslice_cells),
}


def _binding_columns(kind: str, role_doc: str) -> list[Obj]:
    return [
        _name_column(),
        _column("Role", role_doc),
        _age_column(),
        _column("Users", f"The users this {kind} names.", priority=1),
        _column("Groups", f"The groups this {kind} names.", priority=1),
        _column("ServiceAccounts", f"The service accounts this {kind} names.", priority=1),
    ]


_RBAC = "rbac.authorization.k8s.io"
_PRINTERS[(_RBAC, "rolebindings")] = (_binding_columns("roleBinding", DOCS["RB_ROLE"]), _binding_cells)
_PRINTERS[(_RBAC, "clusterrolebindings")] = (_binding_columns("clusterRoleBinding", DOCS["CRB_ROLE"]), _binding_cells)

_DEFAULT_COLUMNS = [_name_column(), _column("Created At", DOCS["CREATION_TIMESTAMP"], type_="date")]


def _default_cells(obj: Obj, _now: datetime) -> list[Cell]:
    created = parse_time(_meta(obj).get("creationTimestamp"))
    return [_name(obj), created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else None]


def columns(group: str, resource: str, *, wide_ok: bool = True) -> list[Obj]:
    """The column definitions kube-apiserver sends for a resource."""
    defined, _printer = _PRINTERS.get((group, resource), (_DEFAULT_COLUMNS, _default_cells))
    return [copy.deepcopy(c) for c in defined if wide_ok or c["priority"] == 0]


def table(group: str, resource: str, objects: list[dict], *, now: datetime | None = None,
          wide_ok: bool = True) -> dict:
    """A complete ``meta.k8s.io/v1`` Table of ``objects`` (rows carry PartialObjectMetadata)."""
    now = now or datetime.now(UTC)
    defined, printer = _PRINTERS.get((group, resource), (_DEFAULT_COLUMNS, _default_cells))
    keep = [wide_ok or column["priority"] == 0 for column in defined]
    rows = []
    for obj in objects:
        cells = [cell for cell, wanted in zip(printer(obj, now), keep, strict=True) if wanted]
        row: dict[str, Any] = {"cells": cells, "object": _partial_metadata(obj)}
        if resource == "pods" and group == "":
            conditions = _pod_conditions(obj)
            if conditions:
                row["conditions"] = conditions
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [copy.deepcopy(c) for c, wanted in zip(defined, keep, strict=True) if wanted],
        "rows": rows,
    }


def _partial_metadata(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(_meta(obj)),
    }
