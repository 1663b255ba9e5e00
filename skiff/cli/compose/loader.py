"""Loading a Compose project: find the files, read ``.env``, interpolate, merge, validate, normalise.

The result is a ``model.Project`` whose services are in canonical form (long syntax, resolved paths,
``env_file`` folded into ``environment``). Every error is an ``InvalidArgument`` whose message names the file,
the key or the services at fault, in Docker Compose's words where it has some.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from skiff import errors
from skiff.cli.compose import schema
from skiff.cli.compose.interpolation import interpolate_tree, parse_env_file
from skiff.cli.compose.model import Project

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


# --------------------------------------------------------------------------------------------------
# Files, names, environment
# --------------------------------------------------------------------------------------------------


def find_files(cwd: str) -> list[str]:
    """The first default file in ``cwd`` or the nearest parent directory that has one (Compose's search)."""
    directory = os.path.abspath(cwd)
    while True:
        for name in DEFAULT_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return [path]
        parent = os.path.dirname(directory)
        if parent == directory:
            raise errors.NotFound("no configuration file provided: not found")
        directory = parent


def normalize_project_name(name: str) -> str:
    """Compose's normalisation of a directory's name: lower case, only ``[a-z0-9_-]``, no leading ``_``/``-``."""
    return re.sub(r"[^-_a-z0-9]", "", name.lower()).lstrip("_-")


def check_project_name(name: str) -> str:
    if not _PROJECT_NAME.match(name):
        raise errors.InvalidArgument(f'invalid project name "{name}": must consist only of lowercase alphanumeric '
                                     "characters, hyphens, and underscores as well as start with a letter or number")
    return name


def project_environment(working_dir: str, env_files: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables interpolation sees: the ``.env`` file(s) (``--env-file``, else ``<dir>/.env``), with the
    shell's environment over them."""
    files = list(env_files) or [p for p in [os.path.join(working_dir, ".env")] if os.path.isfile(p)]
    values: dict[str, str] = {}
    for path in files:
        try:
            with open(path) as f:
                values.update(parse_env_file(f.read(), path, {**values, **environ}))
        except OSError as e:
            raise errors.InvalidArgument(f"couldn't read env file {path}: {e.strerror}") from None
    return {**values, **environ}


# --------------------------------------------------------------------------------------------------
# The project
# --------------------------------------------------------------------------------------------------


def load_project(files: Iterable[str] = (), *, project_name: str | None = None, env_files: Iterable[str] = (),
                 profiles: Iterable[str] = (), cwd: str | None = None, environ: Mapping[str, str] | None = None,
                 project_directory: str | None = None, warn: Callable[[str], None] | None = None) -> Project:
    """Load, merge and check the project the files describe (see the module docstring)."""
    environ = dict(os.environ if environ is None else environ)
    cwd = os.path.abspath(cwd or os.getcwd())
    paths = [os.path.abspath(os.path.join(cwd, f)) for f in files] or find_files(cwd)
    working_dir = os.path.abspath(project_directory or os.path.dirname(paths[0]))
    env = project_environment(working_dir, [os.path.join(cwd, f) for f in env_files], environ)
    merged: dict[str, Any] = {}
    for path in paths:
        document = _read_yaml(path)
        schema.validate_document(document, path)
        merged = merge(merged, _pre_normalise(interpolate_tree(document, env, warn)))
    if not isinstance(merged.get("services"), dict) or not merged["services"]:
        raise errors.InvalidArgument("no service selected" if "services" in merged
                                     else f"validating {paths[0]}: services must be a mapping")
    name = project_name or env.get("COMPOSE_PROJECT_NAME") or merged.get("name")
    name = check_project_name(name) if name else normalize_project_name(os.path.basename(working_dir))
    if not name:
        raise errors.InvalidArgument(f"project name must not be empty (directory {working_dir}): use -p")
    active = set(profiles) or {p for p in env.get("COMPOSE_PROFILES", "").split(",") if p}
    services = {key: normalize_service(key, spec or {}, working_dir, env) for key, spec in merged["services"].items()}
    enabled = {k: s for k, s in services.items() if not s.get("profiles") or active & set(s["profiles"]) or
               "*" in active}
    project = Project(
        name=name, working_dir=working_dir, config_files=paths, services=enabled,
        disabled={k: s for k, s in services.items() if k not in enabled}, environment=env,
        networks={k: _resource(v) for k, v in (merged.get("networks") or {}).items()},
        volumes={k: _resource(v) for k, v in (merged.get("volumes") or {}).items()},
        secrets={k: _file_resource("secrets", k, v, working_dir) for k, v in (merged.get("secrets") or {}).items()},
        configs={k: _file_resource("configs", k, v, working_dir) for k, v in (merged.get("configs") or {}).items()})
    check_references(project)
    return project


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            document = yaml.safe_load(f)
    except OSError as e:
        raise errors.InvalidArgument(f"open {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise errors.InvalidArgument(f"{path}: yaml: {e}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise errors.InvalidArgument(f"validating {path}: top-level object must be a mapping")
    return document


def _pre_normalise(document: dict) -> dict:
    """Lists that merge as mappings (environment, labels) become mappings before files are merged."""
    for spec in (document.get("services") or {}).values():
        if isinstance(spec, dict):
            for key in ("environment", "labels"):
                if key in spec:
                    spec[key] = _mapping(spec[key], key, allow_none=key == "environment")
    return document


def merge(base: Any, override: Any) -> Any:
    """An override file over a base (Compose's merge for the common cases): mappings merge key by key, the
    list-valued options that accumulate (ports, expose, dns, ...) are joined, other values are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            if key in result and isinstance(result[key], list) and isinstance(value, list) and key in schema.JOINED:
                result[key] = result[key] + [v for v in value if v not in result[key]]
            else:
                result[key] = merge(result.get(key), value) if key in result else value
        return result
    return override


# --------------------------------------------------------------------------------------------------
# Checks across services
# --------------------------------------------------------------------------------------------------


def check_references(project: Project) -> None:
    """depends_on names services that exist and are enabled, and has no cycle; networks, volumes, secrets
    and configs a service uses are declared."""
    everything = {**project.services, **project.disabled}
    for key, spec in project.services.items():
        for dependency in spec.get("depends_on") or {}:
            if dependency not in everything:
                raise errors.InvalidArgument(f'service "{key}" depends on undefined service "{dependency}": '
                                             "invalid compose project")
            if dependency in project.disabled and spec["depends_on"][dependency].get("required", True):
                raise errors.InvalidArgument(f'service "{dependency}" was pulled in as a dependency of service '
                                             f'"{key}" but is not enabled by the active profiles. You may fix this '
                                             f'by adding a common profile to "{dependency}" and "{key}".')
        for network in spec.get("networks") or {}:
            if network != "default" and network not in project.networks:
                raise errors.InvalidArgument(f'service "{key}" refers to undefined network {network}: invalid '
                                             "compose project")
        for volume in spec.get("volumes") or []:
            source = volume.get("source")
            if volume["type"] == "volume" and source and source not in project.volumes:
                raise errors.InvalidArgument(f'service "{key}" refers to undefined volume {source}: invalid '
                                             "compose project")
        for kind in ("secrets", "configs"):
            for item in spec.get(kind) or []:
                if item["source"] not in getattr(project, kind):
                    raise errors.InvalidArgument(f'service "{key}" refers to undefined {kind[:-1]} {item["source"]}: '
                                                 "invalid compose project")
    dependency_order(project.services)


def dependency_order(services: Mapping[str, dict]) -> list[str]:
    """The services, each after the ones it depends on (input order otherwise); a cycle is an error that
    names it."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name):], name]
            raise errors.InvalidArgument(f"dependency cycle detected: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dependency in (services[name].get("depends_on") or {}):
            if dependency in services:
                visit(dependency, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in services:
        visit(name, [])
    return order


# --------------------------------------------------------------------------------------------------
# Normalising one service
# --------------------------------------------------------------------------------------------------


def normalize_service(key: str, spec: dict, working_dir: str, env: Mapping[str, str]) -> dict:
    """A service in canonical form (see ``model``)."""
    where = f"services.{key}"
    if not isinstance(spec, dict):
        raise errors.InvalidArgument(f"{where} must be a mapping")
    out: dict[str, Any] = {}
    for option, value in spec.items():
        if option.startswith("x-"):
            continue
        if value is None and option not in ("environment", "labels"):
            continue
        normaliser = _NORMALISERS.get(option)
        out[option] = normaliser(value, f"{where}.{option}", working_dir) if normaliser else value
    environment = {}
    for path in _env_files(spec.get("env_file"), working_dir):
        try:
            with open(path) as f:
                environment.update(parse_env_file(f.read(), path, env))
        except OSError as e:
            raise errors.InvalidArgument(f"env file {path} not found: {e.strerror}") from None
    environment.update({k: (env.get(k) if v is None else v) for k, v in (out.pop("environment", {}) or {}).items()})
    out.pop("env_file", None)
    if environment:
        out["environment"] = {k: v for k, v in environment.items() if v is not None}
    if "image" not in out and "build" not in out:
        raise errors.InvalidArgument(f'service "{key}" has neither an image nor a build context specified: '
                                     "invalid compose project")
    if "network_mode" not in out and "networks" not in out:
        out["networks"] = {"default": None}
    if out.get("container_name") and (out.get("deploy") or {}).get("replicas", 1) > 1:
        raise errors.InvalidArgument(f'services.deploy.replicas: can\'t set container_name and {key} as container '
                                     "name must be unique: invalid compose project")
    return out


def _env_files(value: Any, working_dir: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    paths = []
    for item in items:
        if isinstance(item, dict):
            path = os.path.join(working_dir, item["path"])
            if item.get("required", True) or os.path.exists(path):
                paths.append(path)
        else:
            paths.append(os.path.join(working_dir, item))
    return paths


def _mapping(value: Any, where: str, allow_none: bool = False) -> dict:
    """``[K=V, ...]`` or ``{K: V}`` as a mapping of strings (``K`` alone: None, taken from the shell)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): (None if v is None and allow_none else _scalar(v)) for k, v in value.items()}
    if isinstance(value, list):
        result: dict[str, Any] = {}
        for item in value:
            k, sep, v = str(item).partition("=")
            result[k] = v if sep else (None if allow_none else "")
        return result
    raise errors.InvalidArgument(f"{where} must be a mapping or a list")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _command(value: Any, where: str, _wd: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise errors.InvalidArgument(f"{where} must be a string or a list")


def _bool(value: Any, where: str, _wd: str = "") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise errors.InvalidArgument(f"{where} must be a boolean")


def _int(value: Any, where: str, _wd: str = "") -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise errors.InvalidArgument(f"{where} must be an integer") from None


def _string_list(value: Any, where: str, _wd: str = "") -> list[str]:
    if isinstance(value, (str, int)):
        return [str(value)]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise errors.InvalidArgument(f"{where} must be a string or a list")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, where: str = "duration") -> float:
    """A Compose duration (``1m30s``, ``500ms``, a number of seconds) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise errors.InvalidArgument(f"{where}: invalid duration {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as Go prints a duration (``1m30s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 6):g}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{round(rest, 9):g}s"
    return f"{hours}h{minutes}m{text}" if hours else (f"{minutes}m{text}" if minutes else text)


def _duration(value: Any, where: str, _wd: str = "") -> str:
    return format_duration(parse_duration(value, where))


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)


def parse_size(value: Any, where: str = "size") -> int:
    """``512m``, ``1g``, ``1.5GB``, a number of bytes: bytes (binary units, as Compose's)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value).strip())
    if m is None:
        raise errors.InvalidArgument(f"{where}: invalid size {value!r}")
    scale = 1024 ** " kmgtp".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * scale)


def _build(value: Any, where: str, working_dir: str) -> dict:
    spec = {"context": value} if isinstance(value, str) else dict(value)
    schema.check_keys(spec, schema.BUILD_KEYS, where)
    context = spec.get("context") or "."
    out: dict[str, Any] = {"context": os.path.normpath(os.path.join(working_dir, context)),
                           "dockerfile": spec.get("dockerfile") or "Dockerfile"}
    if spec.get("args"):
        out["args"] = _mapping(spec["args"], f"{where}.args", allow_none=True)
    for key in ("target", "network", "labels", "cache_from", "no_cache", "pull", "shm_size", "extra_hosts"):
        if spec.get(key) is not None:
            out[key] = spec[key]
    return out


_PORT = re.compile(r"^(?:(?:\[(?P<ip6>[^\]]+)\]|(?P<ip>[^:]*)):)??(?:(?P<published>[\d-]*):)?(?P<target>[\d-]+)"
                   r"(?:/(?P<protocol>\w+))?$")


def _ports(value: Any, where: str, _wd: str) -> list[dict]:
    if not isinstance(value, list):
        raise errors.InvalidArgument(f"{where} must be a list")
    result: list[dict] = []
    for n, item in enumerate(value):
        at = f"{where}[{n}]"
        if isinstance(item, dict):
            schema.check_keys(item, schema.PORT_KEYS, at)
            if "target" not in item:
                raise errors.InvalidArgument(f"{at}: target is required")
            result.append({"mode": item.get("mode", "ingress"), "host_ip": item.get("host_ip", ""),
                           "target": _int(item["target"], f"{at}.target"),
                           "published": str(item.get("published", "") or ""),
                           "protocol": item.get("protocol", "tcp")})
            continue
        m = _PORT.match(str(item))
        if m is None:
            raise errors.InvalidArgument(f"{at}: invalid port {item!r}")
        targets = _port_range(m.group("target"), at)
        published = _port_range(m.group("published"), at) if m.group("published") else []
        if published and len(published) != len(targets) and len(published) != 1 and len(targets) != 1:
            raise errors.InvalidArgument(f"{at}: port ranges don't match in length: {item!r}")
        for i, target in enumerate(targets):
            host = str(published[i] if len(published) == len(targets) else
                       (m.group("published") if published else ""))
            result.append({"mode": "ingress", "host_ip": m.group("ip6") or m.group("ip") or "", "target": target,
                           "published": host, "protocol": m.group("protocol") or "tcp"})
    return result


def _port_range(text: str, where: str) -> list[int]:
    start, sep, end = text.partition("-")
    try:
        first, last = int(start), int(end) if sep else int(start)
    except ValueError:
        raise errors.InvalidArgument(f"{where}: invalid port {text!r}") from None
    if not 0 <= first <= last <= 65535:
        raise errors.InvalidArgument(f"{where}: invalid port range {text!r}")
    return list(range(first, last + 1))


def _volumes(value: Any, where: str, working_dir: str) -> list[dict]:
    if not isinstance(value, list):
        raise errors.InvalidArgument(f"{where} must be a list")
    result = []
    for n, item in enumerate(value):
        at = f"{where}[{n}]"
        if isinstance(item, dict):
            schema.check_keys(item, schema.VOLUME_KEYS, at)
            if item.get("type") not in ("volume", "bind", "tmpfs", "npipe", "cluster", "image"):
                raise errors.InvalidArgument(f"{at}.type: must be one of volume, bind, tmpfs")
            if not item.get("target"):
                raise errors.InvalidArgument(f"{at}: target is required")
            mount = {k: v for k, v in item.items() if v is not None}
            if mount["type"] == "bind":
                mount["source"] = _host_path(str(mount.get("source") or ""), working_dir)
                mount.setdefault("bind", {}).setdefault("create_host_path", True)
            result.append(mount)
            continue
        result.append(_short_volume(str(item), at, working_dir))
    return result


def _short_volume(text: str, where: str, working_dir: str) -> dict:
    """``[source:]target[:mode]``: a host path (``/``, ``.``, ``~``) is a bind, a name a named volume, a
    lone path an anonymous volume."""
    parts = text.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3:
        raise errors.InvalidArgument(f"{where}: invalid volume specification {text!r}")
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    mount: dict[str, Any] = {"type": "volume", "source": source, "target": target}
    if source.startswith(("/", ".", "~")):
        mount = {"type": "bind", "source": _host_path(source, working_dir), "target": target,
                 "bind": {"create_host_path": True}}
    for mode in modes:
        if mode == "ro":
            mount["read_only"] = True
        elif mode == "rw":
            pass
        elif mode == "nocopy":
            mount.setdefault("volume", {})["nocopy"] = True
        elif mode in ("z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate"):
            if mount["type"] == "bind":
                mount["bind"]["selinux" if mode in "zZ" else "propagation"] = mode
        else:
            raise errors.InvalidArgument(f"{where}: invalid mode {mode!r} in {text!r}")
    return mount


def _host_path(path: str, working_dir: str) -> str:
    return os.path.normpath(os.path.join(working_dir, os.path.expanduser(path)))


def _networks(value: Any, where: str, _wd: str) -> dict:
    if isinstance(value, list):
        return {str(v): None for v in value}
    if isinstance(value, dict):
        result = {}
        for name, spec in value.items():
            if spec is not None:
                schema.check_keys(spec, schema.SERVICE_NETWORK_KEYS, f"{where}.{name}")
            result[name] = dict(spec) if spec else None
        return result
    raise errors.InvalidArgument(f"{where} must be a list or a mapping")


def _depends_on(value: Any, where: str, _wd: str) -> dict:
    if isinstance(value, list):
        return {str(v): {"condition": "service_started", "required": True} for v in value}
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{where} must be a list or a mapping")
    result = {}
    for name, spec in value.items():
        spec = dict(spec or {})
        schema.check_keys(spec, schema.DEPENDS_ON_KEYS, f"{where}.{name}")
        condition = spec.get("condition", "service_started")
        if condition not in ("service_started", "service_healthy", "service_completed_successfully"):
            raise errors.InvalidArgument(f"{where}.{name}.condition: must be one of service_started, "
                                         f"service_healthy, service_completed_successfully (not {condition!r})")
        result[name] = {"condition": condition, "required": _bool(spec.get("required", True), where),
                        **({"restart": _bool(spec["restart"], where)} if "restart" in spec else {})}
    return result


def _healthcheck(value: Any, where: str, _wd: str) -> dict:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{where} must be a mapping")
    schema.check_keys(value, schema.HEALTHCHECK_KEYS, where)
    if value.get("disable"):
        return {"disable": True}
    out: dict[str, Any] = {}
    test = value.get("test")
    if isinstance(test, str):
        out["test"] = ["CMD-SHELL", test]
    elif isinstance(test, list):
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise errors.InvalidArgument(f"{where}.test: must start with CMD, CMD-SHELL or NONE")
        out["test"] = [str(t) for t in test]
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if value.get(key) is not None:
            out[key] = _duration(value[key], f"{where}.{key}")
    if value.get("retries") is not None:
        out["retries"] = _int(value["retries"], f"{where}.retries")
    return out


def _restart(value: Any, where: str, _wd: str) -> str:
    text = str(value) if value is not False else "no"
    name = text.partition(":")[0]
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        raise errors.InvalidArgument(f"{where}: invalid restart policy {text!r}")
    return text


def _deploy(value: Any, where: str, _wd: str) -> dict:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{where} must be a mapping")
    schema.check_keys(value, schema.DEPLOY_KEYS, where)
    out: dict[str, Any] = {}
    if value.get("replicas") is not None:
        out["replicas"] = _int(value["replicas"], f"{where}.replicas")
    resources = value.get("resources") or {}
    schema.check_keys(resources, ("limits", "reservations"), f"{where}.resources")
    for kind in ("limits", "reservations"):
        spec = resources.get(kind) or {}
        schema.check_keys(spec, ("cpus", "memory", "pids", "devices", "generic_resources"), f"{where}.resources.{kind}")
        normal: dict[str, Any] = {}
        if spec.get("cpus") is not None:
            normal["cpus"] = float(spec["cpus"])
        if spec.get("memory") is not None:
            normal["memory"] = parse_size(spec["memory"], f"{where}.resources.{kind}.memory")
        if spec.get("pids") is not None:
            normal["pids"] = _int(spec["pids"], f"{where}.resources.{kind}.pids")
        if normal:
            out.setdefault("resources", {})[kind] = normal
    if value.get("restart_policy"):
        out["restart_policy"] = dict(value["restart_policy"])
    if value.get("labels"):
        out["labels"] = _mapping(value["labels"], f"{where}.labels")
    return out


def _extra_hosts(value: Any, where: str, _wd: str) -> list[str]:
    """``host:ip`` entries (the Engine API's form); ``host=ip`` and mappings accepted."""
    if isinstance(value, dict):
        items = [f"{k}:{v}" for k, v in value.items()]
    elif isinstance(value, list):
        items = []
        for entry in value:
            text = str(entry)
            host, sep, ip = text.partition("=")
            items.append(f"{host}:{ip}" if sep else text)
    else:
        raise errors.InvalidArgument(f"{where} must be a list or a mapping")
    return items


def _file_refs(value: Any, where: str, _wd: str) -> list[dict]:
    if not isinstance(value, list):
        raise errors.InvalidArgument(f"{where} must be a list")
    result = []
    for n, item in enumerate(value):
        if isinstance(item, str):
            result.append({"source": item})
        elif isinstance(item, dict):
            schema.check_keys(item, ("source", "target", "uid", "gid", "mode"), f"{where}[{n}]")
            result.append(dict(item))
        else:
            raise errors.InvalidArgument(f"{where}[{n}] must be a name or a mapping")
    return result


def _ulimits(value: Any, where: str, _wd: str) -> dict:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{where} must be a mapping")
    return {k: ({"soft": _int(v, where), "hard": _int(v, where)} if not isinstance(v, dict) else
                {"soft": _int(v.get("soft"), where), "hard": _int(v.get("hard"), where)}) for k, v in value.items()}


def _tmpfs(value: Any, where: str, _wd: str) -> list[str]:
    return _string_list(value, where)


_NORMALISERS: dict[str, Callable[[Any, str, str], Any]] = {
    "build": _build, "command": _command, "entrypoint": _command, "ports": _ports, "volumes": _volumes,
    "networks": _networks, "depends_on": _depends_on, "healthcheck": _healthcheck, "restart": _restart,
    "deploy": _deploy, "labels": lambda v, w, _: _mapping(v, w), "environment": lambda v, w, _: _mapping(v, w, True),
    "extra_hosts": _extra_hosts, "secrets": _file_refs, "configs": _file_refs, "tmpfs": _tmpfs,
    "expose": lambda v, w, _: _string_list(v, w), "dns": lambda v, w, _: _string_list(v, w),
    "dns_search": lambda v, w, _: _string_list(v, w), "cap_add": lambda v, w, _: _string_list(v, w),
    "cap_drop": lambda v, w, _: _string_list(v, w), "profiles": lambda v, w, _: _string_list(v, w),
    "security_opt": lambda v, w, _: _string_list(v, w), "group_add": lambda v, w, _: _string_list(v, w),
    "init": _bool, "read_only": _bool, "privileged": _bool, "tty": _bool, "stdin_open": _bool, "scale": _int,
    "pids_limit": _int, "stop_grace_period": _duration, "ulimits": _ulimits,
    "mem_limit": lambda v, w, _: parse_size(v, w), "shm_size": lambda v, w, _: parse_size(v, w),
    "cpus": lambda v, w, _: float(v), "user": lambda v, w, _: str(v), "hostname": lambda v, w, _: str(v),
    "working_dir": lambda v, w, _: str(v), "container_name": lambda v, w, _: str(v), "image": lambda v, w, _: str(v),
    "sysctls": lambda v, w, _: _mapping(v, w),
}


# --------------------------------------------------------------------------------------------------
# Top-level resources
# --------------------------------------------------------------------------------------------------


def _resource(value: Any) -> dict:
    spec = dict(value or {})
    external = spec.get("external")
    if isinstance(external, dict):  # the old ``external: {name: x}``
        spec["name"], spec["external"] = external.get("name") or spec.get("name"), True
    elif external is not None:
        spec["external"] = _bool(external, "external")
    if "labels" in spec:
        spec["labels"] = _mapping(spec["labels"], "labels")
    return spec


def _file_resource(kind: str, key: str, value: Any, working_dir: str) -> dict:
    spec = dict(value or {})
    if spec.get("external"):
        raise errors.InvalidArgument(f"{kind}.{key}: external {kind} need a swarm; use file:")
    if "file" in spec:
        spec["file"] = _host_path(str(spec["file"]), working_dir)
        return spec
    if "environment" in spec or "content" in spec:
        return spec
    raise errors.InvalidArgument(f"{kind}.{key}: file, environment or content is required")
