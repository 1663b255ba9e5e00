"""A service's canonical config as the Engine API's ``POST /containers/create`` body, named and labelled as
Docker Compose v2 creates its containers."""

from __future__ import annotations

import os
from typing import Any

from skiff.cli.compose import model
from skiff.cli.compose.loader import parse_duration
from skiff.cli.compose.model import Project

_NS = 1_000_000_000


def container_labels(project: Project, service: str, number: int, image_id: str = "", oneoff: bool = False) -> dict:
    spec = project.services[service]
    depends = ",".join(f"{name}:{d['condition']}:{str(d.get('restart', False)).lower()}"
                       for name, d in (spec.get("depends_on") or {}).items())
    labels = dict(spec.get("labels") or {})
    labels.update({
        model.PROJECT: project.name, model.SERVICE: service, model.NUMBER: str(number),
        model.ONEOFF: "True" if oneoff else "False", model.CONFIG_HASH: model.config_hash(spec),
        model.WORKING_DIR: project.working_dir, model.CONFIG_FILES: ",".join(project.config_files),
        model.VERSION: model.COMPOSE_VERSION, model.DEPENDS_ON: depends,
    })
    if image_id:
        labels[model.IMAGE] = image_id
    return labels


def create_body(project: Project, service: str, number: int, *, image_id: str = "", oneoff: bool = False,
                container_of: dict[str, str] | None = None, overrides: dict | None = None) -> dict:
    """The create body of container ``number`` of ``service``. ``container_of`` maps a service to one of its
    containers' ids (for ``network_mode: service:x``); ``overrides`` (``run``) replaces Cmd, Env, ..."""
    spec = project.services[service]
    env = [f"{k}={v}" for k, v in (spec.get("environment") or {}).items()]
    body: dict[str, Any] = {
        "Image": project.image_name(service), "Labels": container_labels(project, service, number, image_id, oneoff),
        "Env": env or None, "Cmd": spec.get("command"), "Entrypoint": spec.get("entrypoint"),
        "Hostname": spec.get("hostname", ""), "Domainname": spec.get("domainname", ""), "User": spec.get("user", ""),
        "WorkingDir": spec.get("working_dir", ""), "Tty": bool(spec.get("tty")),
        "OpenStdin": bool(spec.get("stdin_open")), "AttachStdout": False, "AttachStderr": False,
        "ExposedPorts": exposed_ports(spec) or None,
    }
    if spec.get("stop_signal"):
        body["StopSignal"] = spec["stop_signal"]
    if spec.get("stop_grace_period"):
        body["StopTimeout"] = int(parse_duration(spec["stop_grace_period"]))
    if spec.get("healthcheck"):
        body["Healthcheck"] = healthcheck(spec["healthcheck"])
    body["HostConfig"] = host_config(project, service, container_of or {})
    body["NetworkingConfig"] = networking_config(project, service)
    if overrides:
        body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def exposed_ports(spec: dict) -> dict:
    ports = {f"{p['target']}/{p.get('protocol', 'tcp')}": {} for p in spec.get("ports") or []}
    for item in spec.get("expose") or []:
        port, _, proto = item.partition("/")
        ports[f"{port}/{proto or 'tcp'}"] = {}
    return ports


def healthcheck(spec: dict) -> dict:
    if spec.get("disable"):
        return {"Test": ["NONE"]}
    out: dict[str, Any] = {}
    if spec.get("test"):
        out["Test"] = spec["test"]
    for key, api_key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                         ("start_interval", "StartInterval")):
        if spec.get(key):
            out[api_key] = int(parse_duration(spec[key]) * _NS)
    if spec.get("retries") is not None:
        out["Retries"] = spec["retries"]
    return out


def restart_policy(text: str | None) -> dict:
    name, _, count = (text or "no").partition(":")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def host_config(project: Project, service: str, container_of: dict[str, str]) -> dict:
    spec = project.services[service]
    binds, mounts = _mounts(project, spec)
    limits = ((spec.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    cpus = limits.get("cpus", spec.get("cpus"))
    hc: dict[str, Any] = {
        "Binds": binds or None, "Mounts": mounts or None, "PortBindings": port_bindings(spec) or None,
        "RestartPolicy": restart_policy(spec.get("restart")), "Init": spec.get("init"),
        "ReadonlyRootfs": bool(spec.get("read_only")), "Privileged": bool(spec.get("privileged")),
        "Tmpfs": {path.partition(":")[0]: path.partition(":")[2] for path in spec.get("tmpfs") or []} or None,
        "ExtraHosts": spec.get("extra_hosts"), "CapAdd": spec.get("cap_add"), "CapDrop": spec.get("cap_drop"),
        "Dns": spec.get("dns"), "DnsSearch": spec.get("dns_search"), "SecurityOpt": spec.get("security_opt"),
        "GroupAdd": spec.get("group_add"), "Sysctls": spec.get("sysctls"),
        "NanoCpus": int(float(cpus) * 1e9) if cpus else None,
        "Memory": limits.get("memory", spec.get("mem_limit")), "PidsLimit": limits.get("pids", spec.get("pids_limit")),
        "ShmSize": spec.get("shm_size"),
        "Ulimits": [{"Name": k, "Soft": v["soft"], "Hard": v["hard"]} for k, v in (spec.get("ulimits") or {}).items()]
        or None,
        "NetworkMode": network_mode(project, service, container_of),
    }
    return {k: v for k, v in hc.items() if v is not None}


def network_mode(project: Project, service: str, container_of: dict[str, str]) -> str:
    spec = project.services[service]
    mode = spec.get("network_mode")
    if mode:
        if mode.startswith("service:"):
            return f"container:{container_of[mode.split(':', 1)[1]]}"
        return mode
    networks = list(spec.get("networks") or {})
    return project.network_name(networks[0]) if networks else "default"


def networking_config(project: Project, service: str) -> dict | None:
    spec = project.services[service]
    if spec.get("network_mode"):
        return None
    endpoints = {}
    for key, settings in (spec.get("networks") or {}).items():
        settings = settings or {}
        endpoint: dict[str, Any] = {"Aliases": [service, *(settings.get("aliases") or [])]}
        if settings.get("ipv4_address"):
            endpoint["IPAMConfig"] = {"IPv4Address": settings["ipv4_address"]}
        endpoints[project.network_name(key)] = endpoint
    return {"EndpointsConfig": endpoints}


def port_bindings(spec: dict) -> dict:
    bindings: dict[str, list] = {}
    for port in spec.get("ports") or []:
        key = f"{port['target']}/{port.get('protocol', 'tcp')}"
        bindings.setdefault(key, []).append({"HostIp": port.get("host_ip", ""), "HostPort": port.get("published", "")})
    return bindings


def _mounts(project: Project, spec: dict) -> tuple[list[str], list[dict]]:
    """(Binds, Mounts): binds that may create their host path as ``src:dst[:ro]``, the rest as mounts; secrets
    and configs are read-only binds of their files (at /run/secrets/<name> and /<name>)."""
    binds: list[str] = []
    mounts: list[dict] = []
    for volume in spec.get("volumes") or []:
        read_only = bool(volume.get("read_only"))
        kind = volume["type"]
        if kind == "bind" and (volume.get("bind") or {}).get("create_host_path", True) \
                and not (volume.get("bind") or {}).get("propagation"):
            binds.append(f"{volume['source']}:{volume['target']}" + (":ro" if read_only else ""))
        elif kind == "bind":
            mounts.append({"Type": "bind", "Source": volume["source"], "Target": volume["target"],
                           "ReadOnly": read_only,
                           **({"BindOptions": {"Propagation": volume["bind"]["propagation"]}}
                              if volume["bind"].get("propagation") else {})})
        elif kind == "volume":
            mount: dict[str, Any] = {"Type": "volume", "Target": volume["target"], "ReadOnly": read_only}
            if volume.get("source"):
                mount["Source"] = project.volume_name(volume["source"])
            if (volume.get("volume") or {}).get("nocopy"):
                mount["VolumeOptions"] = {"NoCopy": True}
            mounts.append(mount)
        elif kind == "tmpfs":
            size = (volume.get("tmpfs") or {}).get("size")
            mounts.append({"Type": "tmpfs", "Target": volume["target"],
                           **({"TmpfsOptions": {"SizeBytes": int(size)}} if size else {})})
    for kind, default_dir in (("secrets", "/run/secrets"), ("configs", "/")):
        for ref in spec.get(kind) or []:
            resource = getattr(project, kind)[ref["source"]]
            target = ref.get("target") or ref["source"]
            if not target.startswith("/"):
                target = os.path.join(default_dir, target)
            binds.append(f"{resource_file(project, kind, ref['source'], resource)}:{target}:ro")
    return binds, mounts


def resource_file(project: Project, kind: str, name: str, resource: dict) -> str:
    """The host file a secret or config is mounted from: its ``file``, or for ``environment``/``content`` a file
    written under the project's state directory."""
    if "file" in resource:
        return resource["file"]
    content = resource.get("content")
    if content is None:
        content = project.environment.get(resource.get("environment") or "", "")
    directory = os.path.join(os.path.expanduser("~"), ".cache", "skiff", "compose", project.name, kind)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(str(content))
    os.replace(tmp, path)
    return path
