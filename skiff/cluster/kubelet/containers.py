"""A pod's container, as the engine's container config: what dockershim's ``CreateContainer`` wrote.

Command and args become Entrypoint and Cmd (the engine's merge already matches kube's rule: a command drops the
image's Cmd, args alone keep its entrypoint), ``$(VAR)`` references are expanded from the container's
environment, env and envFrom are resolved (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef) against
the API, resources.limits become the engine's memory and CPU limits (requests.cpu its CPU shares), and
securityContext becomes User, ReadonlyRootfs, CapAdd/CapDrop and Privileged. Every container joins the
sandbox's network and IPC namespaces (and its PID namespace with ``shareProcessNamespace``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any

from skiff.cluster.client import ApiNotFound
from skiff.cluster.scheduler.quantity import milli_value, whole_value
from skiff.errors import InvalidArgument

Obj = dict[str, Any]
# (kind, namespace, name) -> the object's data (secrets decoded), or None when it does not exist
Lookup = Callable[[str, str, str], Awaitable[dict[str, str] | None]]
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_CPU_PERIOD = 100_000


class ContainerConfigError(InvalidArgument):
    """The container cannot be configured yet (a missing ConfigMap or Secret, a bad reference): the
    container waits with reason CreateContainerConfigError and is retried."""


def expand(text: str, env: dict[str, str]) -> str:
    """kube's ``$(VAR)`` expansion: known names are replaced, ``$$`` is a literal ``$``, the rest stays."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR_REF.sub(replace, text)


def field_value(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
              "status.hostIP": status.get("hostIP"),
              "status.podIPs": ",".join(ip.get("ip", "") for ip in status.get("podIPs") or ()),
              "status.hostIPs": ",".join(ip.get("ip", "") for ip in status.get("hostIPs") or ())}
    if path in simple:
        return simple[path] or ""
    for prefix, mapping in (("metadata.labels", meta.get("labels")), ("metadata.annotations", meta.get("annotations"))):
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((mapping or {}).items()))
        match = re.fullmatch(re.escape(prefix) + r"\['([^']*)'\]", path)
        if match:
            return (mapping or {}).get(match.group(1), "")
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_value(container: Obj, ref: Obj, node_allocatable: dict[str, str]) -> str:
    """``resourceFieldRef``: a container's request or limit (a limit defaults to the node's allocatable)."""
    resource = ref.get("resource") or ""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "limits":
        value = node_allocatable.get(name)
    if value is None:
        return "0"
    divisor = ref.get("divisor") or "1"
    if name == "cpu":
        millis, per = milli_value(value), max(milli_value(divisor), 1)
        return str(-(-millis // per))  # kube rounds CPU up
    return str(-(-whole_value(value) // max(whole_value(divisor), 1)))


async def environment(pod: Obj, container: Obj, lookup: Lookup, node_allocatable: dict[str, str]) -> dict[str, str]:
    """The container's environment: envFrom first, then env (later entries win, ``$(VAR)`` sees earlier ones)."""
    namespace = pod["metadata"].get("namespace") or "default"
    env: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        prefix = source.get("prefix") or ""
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref is None:
                continue
            data = await _source(lookup, kind, namespace, ref.get("name") or "", bool(ref.get("optional")))
            for key, value in (data or {}).items():
                env[prefix + key] = value
    for entry in container.get("env") or ():
        name = entry.get("name") or ""
        if "value" in entry or "valueFrom" not in entry:
            env[name] = expand(str(entry.get("value") or ""), env)
            continue
        value = await _value_from(pod, container, entry["valueFrom"], lookup, namespace, node_allocatable)
        if value is not None:
            env[name] = value
    return env


async def _source(lookup: Lookup, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
    what = "configmap" if kind.startswith("configMap") else "secret"
    data = await lookup(what, namespace, name)
    if data is None and not optional:
        raise ContainerConfigError(f'{what} "{name}" not found')
    return data


async def _value_from(pod: Obj, container: Obj, source: Obj, lookup: Lookup, namespace: str,
                      node_allocatable: dict[str, str]) -> str | None:
    if "fieldRef" in source:
        return field_value(pod, (source["fieldRef"] or {}).get("fieldPath") or "")
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"] or {}, node_allocatable)
    for kind in ("configMapKeyRef", "secretKeyRef"):
        ref = source.get(kind)
        if ref is None:
            continue
        optional = bool(ref.get("optional"))
        data = await _source(lookup, kind, namespace, ref.get("name") or "", optional)
        if data is None:
            return None
        key = ref.get("key") or ""
        if key not in data:
            if optional:
                return None
            what = "configmap" if kind.startswith("configMap") else "secret"
            raise ContainerConfigError(f'couldn\'t find key {key} in {what.capitalize()} {namespace}/{ref.get("name")}')
        return data[key]
    raise ContainerConfigError("valueFrom names no source")


async def api_lookup(client: Any, kind: str, namespace: str, name: str) -> dict[str, str] | None:
    """A ConfigMap's or Secret's data from the API (None when it does not exist); secrets decoded."""
    from skiff.cluster.client import CONFIGMAPS, SECRETS

    try:
        obj = await client.get(CONFIGMAPS if kind == "configmap" else SECRETS, name, namespace)
    except ApiNotFound:
        return None
    if kind == "configmap":
        data = dict(obj.get("data") or {})
        data.update({k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("binaryData") or {}).items()})
        return data
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}


def user_of(pod: Obj, container: Obj) -> str:
    """``uid[:gid]`` from the container's securityContext, falling back to the pod's ("" for the image's)."""
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    context = container.get("securityContext") or {}
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    gid = context.get("runAsGroup", pod_context.get("runAsGroup"))
    if uid is None:
        return "" if gid is None else f"0:{gid}"  # the engine cannot keep the image's user with another group
    return f"{uid}:{gid}" if gid is not None else str(uid)


def resource_limits(container: Obj) -> dict[str, Any]:
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    host: dict[str, Any] = {}
    if limits.get("memory") is not None:
        host["Memory"] = whole_value(limits["memory"])
        host["MemorySwap"] = host["Memory"]  # kube runs without swap: the limit is the limit
    if limits.get("cpu") is not None:
        host["CpuPeriod"] = _CPU_PERIOD
        host["CpuQuota"] = max(milli_value(limits["cpu"]) * _CPU_PERIOD // 1000, 1000)
    cpu_request = requests.get("cpu", limits.get("cpu"))
    if cpu_request is not None:
        host["CpuShares"] = max(milli_value(cpu_request) * 1024 // 1000, 2)  # kube's MilliCPUToShares
    return host


def security(pod: Obj, container: Obj) -> dict[str, Any]:
    context = container.get("securityContext") or {}
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    host: dict[str, Any] = {}
    if context.get("privileged"):
        host["Privileged"] = True
    if context.get("readOnlyRootFilesystem"):
        host["ReadonlyRootfs"] = True
    capabilities = context.get("capabilities") or {}
    if capabilities.get("add"):
        host["CapAdd"] = [_cap(c) for c in capabilities["add"]]
    if capabilities.get("drop"):
        host["CapDrop"] = [_cap(c) for c in capabilities["drop"]]
    groups = [str(g) for g in pod_context.get("supplementalGroups") or ()]
    if pod_context.get("fsGroup") is not None:
        groups.append(str(pod_context["fsGroup"]))
    if groups:
        host["GroupAdd"] = groups
    return host


def _cap(name: str) -> str:
    return name if name.upper() == "ALL" or name.upper().startswith("CAP_") else f"CAP_{name.upper()}"


def engine_config(pod: Obj, container: Obj, *, image: str, sandbox_id: str, env: dict[str, str],
                  labels: dict[str, str], binds: list[str], tmpfs: dict[str, str] | None = None) -> dict[str, Any]:
    """The Engine API create body for ``container`` of ``pod``."""
    spec = pod.get("spec") or {}
    command = [expand(str(word), env) for word in container.get("command") or ()]
    args = [expand(str(word), env) for word in container.get("args") or ()]
    host = {"NetworkMode": f"container:{sandbox_id}", "IpcMode": f"container:{sandbox_id}",
            "RestartPolicy": {"Name": "no"}, "Binds": binds or None, "LogConfig": {"Type": "json-file", "Config": {}},
            **resource_limits(container), **security(pod, container)}
    if spec.get("shareProcessNamespace"):
        host["PidMode"] = f"container:{sandbox_id}"
    if tmpfs:
        host["Tmpfs"] = tmpfs
    config: dict[str, Any] = {
        "Image": image, "Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels,
        "Tty": bool(container.get("tty")), "OpenStdin": bool(container.get("stdin")),
        "StdinOnce": bool(container.get("stdinOnce")), "AttachStdin": False, "AttachStdout": False,
        "AttachStderr": False, "HostConfig": host,
    }
    if command:
        config["Entrypoint"] = command
    if args:
        config["Cmd"] = args
    elif command:
        config["Cmd"] = None
    if container.get("workingDir"):
        config["WorkingDir"] = container["workingDir"]
    user = user_of(pod, container)
    if user:
        config["User"] = user
    return config


def dns_host_config(pod: Obj, cluster_dns: str | None, cluster_domain: str) -> dict[str, Any]:
    """The sandbox's Dns/DnsSearch/DnsOptions for the pod's dnsPolicy (kubelet's rules; the engine writes them
    into resolv.conf, and the pod's containers share the sandbox's). ``ClusterFirst`` (the default): the cluster
    DNS, search ``<ns>.svc.<domain> svc.<domain> <domain>``, ``ndots:5``; it falls back to ``Default`` (the
    node's resolv.conf) for hostNetwork pods and when the agent has no ``--cluster-dns``. ``None``: only
    ``dnsConfig``. ``dnsConfig`` adds nameservers and searches and overrides options by name."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    servers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    cluster = (policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not spec.get("hostNetwork")))
    if cluster and cluster_dns:
        namespace = (pod.get("metadata") or {}).get("namespace") or "default"
        servers = [cluster_dns]
        searches = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = {"ndots": "5"}
    config = spec.get("dnsConfig") or {}
    servers += [s for s in config.get("nameservers") or () if s not in servers]
    searches += [s for s in config.get("searches") or () if s not in searches]
    for option in config.get("options") or ():
        options[option["name"]] = option.get("value")
    host: dict[str, Any] = {}
    if servers:
        host["Dns"] = servers[:3]  # resolvers read at most three
    if searches:
        host["DnsSearch"] = searches[:32]
    if options:
        host["DnsOptions"] = [name if value is None else f"{name}:{value}" for name, value in options.items()]
    return host
