"""The docker verbs as click commands over docker-py's low-level ``APIClient`` (the Engine API only)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import click
import docker
import docker.errors
import docker.types
import requests.exceptions

from skiff import __version__
from skiff.cli.dockercli import formatting as fmt
from skiff.cli.dockercli import streams

DEFAULT_HOST = "unix:///run/skiff/engine.sock"
DEFAULT_REGISTRY = "https://index.docker.io/v1/"


class StatusError(Exception):
    """Leave with ``code`` after printing ``message`` (if any) on stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class State:
    def __init__(self, host: str) -> None:
        self.host = host
        self._api: docker.APIClient | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            # No timeout: logs -f, events, wait and attach last as long as the user wants (as docker's do).
            self._api = docker.APIClient(base_url=self.host, version="auto", timeout=None)
        return self._api


def api() -> docker.APIClient:
    return click.get_current_context().find_object(State).api  # type: ignore[union-attr]


def daemon_message(e: docker.errors.APIError) -> str:
    return f"Error response from daemon: {e.explanation or e}"


def each(names: Iterable[str], action: Callable[[str], Any], echo: bool = True) -> int:
    """docker's multi-target verbs: act on every name, report failures on stderr, exit 1 if any failed."""
    failed = False
    for name in names:
        try:
            action(name)
            if echo:
                click.echo(name)
        except docker.errors.APIError as e:
            click.echo(daemon_message(e), err=True)
            failed = True
    return 1 if failed else 0


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---- the group


CONTEXT = {"help_option_names": ["--help"], "max_content_width": 120}


@click.group(context_settings=CONTEXT)
@click.option("-H", "--host", envvar="SKIFF_HOST", default=DEFAULT_HOST, show_default=True,
              help="Daemon socket to connect to")
@click.pass_context
def cli(ctx: click.Context, host: str) -> None:
    """Skiff: docker's verbs against a Skiff (or any Docker API) engine."""
    if "://" not in host:
        host = "unix://" + host if host.startswith("/") else "tcp://" + host
    ctx.obj = State(host)


def run_cli(argv: list[str]) -> int:
    host = os.environ.get("SKIFF_HOST", DEFAULT_HOST)
    for i, arg in enumerate(argv):
        if arg in ("-H", "--host") and i + 1 < len(argv):
            host = argv[i + 1]
        elif arg.startswith("--host="):
            host = arg.split("=", 1)[1]
    try:
        result = cli.main(args=argv, prog_name="skiff", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        e.show()
        return 125
    except click.Abort:
        return 130
    except StatusError as e:
        if e.message:
            click.echo(e.message, err=True)
        return e.code
    except docker.errors.APIError as e:
        click.echo(daemon_message(e), err=True)
        return 1
    except docker.errors.DockerException as e:
        if isinstance(e.__cause__ or e.__context__, requests.exceptions.ConnectionError) or "Connection" in str(e):
            click.echo(f"Cannot connect to the Skiff daemon at {host}. Is the daemon running?", err=True)
        else:
            click.echo(f"error: {e}", err=True)
        return 1
    except requests.exceptions.ConnectionError:
        click.echo(f"Cannot connect to the Skiff daemon at {host}. Is the daemon running?", err=True)
        return 1
    except BrokenPipeError:
        return 0
    except fmt.TemplateError as e:
        click.echo(f"template parsing error: {e}", err=True)
        return 1


def _format_option(f: Callable) -> Callable:
    return click.option("-f", "--format", "format_", default=None, help="Format output using a Go-like template")(f)


# ---- system


@cli.command(context_settings=CONTEXT)
@_format_option
def version(format_: str | None) -> int:
    """Show the Skiff version information."""
    a = api()
    client = {"Version": __version__, "ApiVersion": a.api_version, "Os": sys.platform, "Arch": os.uname().machine,
              "Context": "default", "PythonVersion": sys.version.split()[0], "DockerPy": docker.__version__}
    server: dict[str, Any] | None
    error = None
    try:
        server = a.version(api_version=False)
    except (docker.errors.APIError, requests.exceptions.ConnectionError) as e:
        server, error = None, e
    if format_:
        out(fmt.render(format_, [{"Client": client, "Server": server}], {}))
        return 0
    lines = ["Client:", f" Version:           {__version__}", f" API version:       {a.api_version}",
             f" Python version:    {client['PythonVersion']}", f" docker-py:         {docker.__version__}",
             f" OS/Arch:           linux/{_arch(client['Arch'])}", " Context:           default", ""]
    if server:
        lines.append(f"Server: {(server.get('Platform') or {}).get('Name', '')}".rstrip())
        for comp in server.get("Components") or [{"Name": "Engine", "Version": server.get("Version"),
                                                   "Details": {}}]:
            lines.append(f" {comp.get('Name')}:")
            lines.append(f"  Version:          {comp.get('Version')}")
            details = comp.get("Details") or {}
            if comp.get("Name") == "Engine":
                details = {"ApiVersion": f"{server.get('ApiVersion')} (minimum version {server.get('MinAPIVersion')})",
                           "GoVersion": server.get("GoVersion"), "GitCommit": server.get("GitCommit"),
                           "Built": server.get("BuildTime"), "OS/Arch": f"{server.get('Os')}/{server.get('Arch')}",
                           "Experimental": str(bool(server.get("Experimental"))).lower(), **{
                               k: v for k, v in details.items()
                               if k not in ("ApiVersion", "MinAPIVersion", "GoVersion", "GitCommit", "BuildTime",
                                            "Os", "Arch", "Experimental", "KernelVersion")}}
            for key, value in details.items():
                if value not in (None, ""):
                    label = {"ApiVersion": "API version", "GoVersion": "Go version",
                             "GitCommit": "Git commit"}.get(key, key)
                    lines.append(f"  {label + ':':<17} {value}")
    out("\n".join(lines) + "\n")
    if error is not None:
        raise error
    return 0


def _arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@cli.command(context_settings=CONTEXT)
@_format_option
def info(format_: str | None) -> int:
    """Display system-wide information."""
    i = api().info()
    if format_:
        out(fmt.render(format_, [i], {}))
        return 0
    lines = ["Client:", f" Version:    {__version__}", " Context:    default", " Debug Mode: false", "",
             "Server:",
             f" Containers: {i.get('Containers', 0)}", f"  Running: {i.get('ContainersRunning', 0)}",
             f"  Paused: {i.get('ContainersPaused', 0)}", f"  Stopped: {i.get('ContainersStopped', 0)}",
             f" Images: {i.get('Images', 0)}", f" Server Version: {i.get('ServerVersion', '')}",
             f" Storage Driver: {i.get('Driver', '')}"]
    for key, value in i.get("DriverStatus") or []:
        lines.append(f"  {key}: {value}")
    lines += [f" Logging Driver: {i.get('LoggingDriver', '')}", f" Cgroup Driver: {i.get('CgroupDriver', '')}",
              f" Cgroup Version: {i.get('CgroupVersion', '')}"]
    runtimes = " ".join(sorted(i.get("Runtimes") or {}))
    if runtimes:
        lines.append(f" Runtimes: {runtimes}")
    lines += [f" Default Runtime: {i.get('DefaultRuntime', '')}", f" Kernel Version: {i.get('KernelVersion', '')}",
              f" Operating System: {i.get('OperatingSystem', '')}", f" OSType: {i.get('OSType', '')}",
              f" Architecture: {i.get('Architecture', '')}", f" CPUs: {i.get('NCPU', '')}",
              f" Total Memory: {fmt.bytes_size(i.get('MemTotal') or 0)}", f" Name: {i.get('Name', '')}",
              f" ID: {i.get('ID', '')}", f" Docker Root Dir: {i.get('DockerRootDir', '')}",
              f" Debug Mode: {str(bool(i.get('Debug'))).lower()}"]
    out("\n".join(lines) + "\n")
    for warning in i.get("Warnings") or []:
        click.echo(warning, err=True)
    return 0


# ---- ps


PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "RunningFor": "CREATED",
              "CreatedAt": "CREATED AT", "Status": "STATUS", "Ports": "PORTS", "Names": "NAMES", "State": "STATE",
              "Size": "SIZE", "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
              "LocalVolumes": "LOCAL VOLUMES"}
PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"


def _ports(ports: list[dict] | None) -> str:
    shown = []
    for p in sorted(ports or [], key=lambda p: (p.get("PrivatePort", 0), p.get("Type", ""), p.get("IP", ""))):
        private = f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        if p.get("PublicPort"):
            ip = p.get("IP") or "0.0.0.0"
            ip = f"[{ip}]" if ":" in ip else ip
            shown.append(f"{ip}:{p['PublicPort']}->{private}")
        else:
            shown.append(private)
    return ", ".join(dict.fromkeys(shown))


def _ps_context(c: dict, trunc: bool) -> dict[str, Any]:
    command = c.get("Command") or ""
    names = [n[1:] for n in c.get("Names") or [] if n.count("/") == 1]
    size = ""
    if "SizeRw" in c:
        size = f"{fmt.human_size(c.get('SizeRw') or 0)} (virtual {fmt.human_size(c.get('SizeRootFs') or 0)})"
    image = c.get("Image") or ""
    if trunc and image.startswith("sha256:"):
        image = image[7:19]
    return {
        "Command": f'"{fmt.ellipsis(command, 20) if trunc else command}"',
        "CreatedAt": fmt.local_time(c.get("Created") or 0),
        "ID": c["Id"][:12] if trunc else c["Id"],
        "Image": image,
        "Labels": ",".join(f"{k}={v}" for k, v in sorted((c.get("Labels") or {}).items())),
        "LocalVolumes": str(sum(1 for m in c.get("Mounts") or [] if m.get("Driver") == "local")),
        "Mounts": ",".join(m.get("Name") or m.get("Source", "") for m in c.get("Mounts") or []),
        "Names": ",".join(names),
        "Networks": ",".join(sorted((c.get("NetworkSettings") or {}).get("Networks") or {})),
        "Platform": None,
        "Ports": _ports(c.get("Ports")),
        "RunningFor": fmt.ago(c.get("Created") or 0),
        "Size": size,
        "State": c.get("State") or "",
        "Status": c.get("Status") or "",
    }


def _filters(values: Iterable[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for value in values:
        if "=" not in value:
            raise StatusError(125, f"invalid argument \"{value}\" for \"-f, --filter\" flag: bad format of filter "
                                   "(expected name=value)")
        key, val = value.split("=", 1)
        filters.setdefault(key.strip(), []).append(val)
    return filters


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running)")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
@click.option("-n", "--last", type=int, default=-1, help="Show n last created containers (includes all states)")
@click.option("-l", "--latest", is_flag=True, help="Show the latest created container (includes all states)")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output")
@click.option("-s", "--size", is_flag=True, help="Display total file sizes")
def ps(all_: bool, quiet: bool, filters: tuple[str, ...], format_: str | None, last: int, latest: bool,
       no_trunc: bool, size: bool) -> int:
    """List containers."""
    limit = 1 if latest else last
    containers = api().containers(all=all_ or limit > 0, limit=limit, filters=_filters(filters) or None,
                                  size=size or bool(format_ and (".Size" in format_ or "json" in format_)))
    items = [_ps_context(c, not no_trunc) for c in containers]
    if quiet:
        out("".join(i["ID"] + "\n" for i in items))
        return 0
    template = format_ or (PS_TABLE + ("\t{{.Size}}" if size else ""))
    if template == "json":
        template = "{{json .}}"
    elif template == "table":
        template = PS_TABLE
    out(fmt.render(template, items, PS_HEADERS))
    return 0


# ---- run / create


def _ram_bytes(value: str | None) -> int | None:
    if not value:
        return None
    text = value.strip().lower()
    if text.endswith("b"):
        text = text[:-1]
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(text[-1:] if text else "", 1)
    number = text[:-1] if scale != 1 else text
    try:
        return int(float(number) * scale)
    except ValueError:
        raise StatusError(125, f"invalid argument {value!r}: invalid size: {value!r}") from None


_MOUNT_KEYS = {"src": "source", "dst": "target", "destination": "target", "ro": "readonly"}


def _mount(spec: str) -> docker.types.Mount:
    """One ``--mount`` (``type=bind,source=/x,target=/y,readonly,bind-propagation=rslave,volume-label=k=v,
    tmpfs-size=1m,...``) as docker-py's Mount, as the docker CLI reads it."""
    fields: dict[str, Any] = {"type": "volume", "labels": {}, "driver_opts": {}}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = _MOUNT_KEYS.get(key.strip().lower(), key.strip().lower())
        if key in ("readonly", "volume-nocopy"):
            fields[key] = not sep or value.lower() in ("1", "true")
        elif key == "volume-label":
            name, _, label = value.partition("=")
            fields["labels"][name] = label
        elif key == "volume-opt":
            name, _, option = value.partition("=")
            fields["driver_opts"][name] = option
        elif key in ("type", "source", "target", "bind-propagation", "volume-driver", "tmpfs-size", "tmpfs-mode",
                     "consistency"):
            fields[key] = value
        else:
            raise StatusError(125, f"invalid argument \"{spec}\" for \"--mount\" flag: unexpected key '{key}' in "
                                   f"'{item}'")
    if not fields.get("target"):
        raise StatusError(125, f"invalid argument \"{spec}\" for \"--mount\" flag: target is required")
    driver = fields.get("volume-driver")
    driver_config = docker.types.DriverConfig(driver or "local", fields["driver_opts"]) \
        if driver or fields["driver_opts"] else None
    return docker.types.Mount(
        fields["target"], fields.get("source") or "", type=fields["type"], read_only=fields.get("readonly", False),
        propagation=fields.get("bind-propagation"), no_copy=fields.get("volume-nocopy", False),
        labels=fields["labels"] or None, driver_config=driver_config,
        tmpfs_size=_ram_bytes(fields.get("tmpfs-size")),
        tmpfs_mode=int(fields["tmpfs-mode"], 8) if fields.get("tmpfs-mode") else None)


def _env(values: Iterable[str], env_files: Iterable[str]) -> list[str]:
    env: list[str] = []
    for path in env_files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise StatusError(125, f"open {path}: {e.strerror.lower() if e.strerror else e}") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                env.append(_env_item(line))
    env.extend(_env_item(v) for v in values)
    return [e for e in env if e]


def _env_item(item: str) -> str:
    if "=" in item:
        return item
    return f"{item}={os.environ[item]}" if item in os.environ else ""


def _publish(values: Iterable[str]) -> tuple[list[tuple[str, str]], dict[str, list]]:
    exposed: list[tuple[str, str]] = []
    bindings: dict[str, list] = {}
    for spec in values:
        proto = "tcp"
        if "/" in spec:
            spec, proto = spec.rsplit("/", 1)
        parts = spec.rsplit(":", 2) if not spec.startswith("[") else [spec[1:spec.index("]")],
                                                                      *spec[spec.index("]") + 2:].split(":")]
        container = parts[-1]
        exposed.append((container, proto))
        key = f"{container}/{proto}"
        if len(parts) == 1:
            bindings.setdefault(key, []).append(None)
        elif len(parts) == 2:
            bindings.setdefault(key, []).append(parts[0] or None)
        else:
            bindings.setdefault(key, []).append((parts[0], parts[1]) if parts[1] else (parts[0],))
    return exposed, bindings


def _create_options(f: Callable) -> Callable:
    options = [
        click.option("--name", default=None, help="Assign a name to the container"),
        click.option("-e", "--env", multiple=True, help="Set environment variables"),
        click.option("--env-file", multiple=True, help="Read in a file of environment variables"),
        click.option("-u", "--user", default=None, help="Username or UID (format: <name|uid>[:<group|gid>])"),
        click.option("-w", "--workdir", default=None, help="Working directory inside the container"),
        click.option("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image"),
        click.option("-m", "--memory", default=None, help="Memory limit"),
        click.option("--memory-swap", default=None, help="Swap limit equal to memory plus swap: -1 for unlimited"),
        click.option("--cpus", type=float, default=None, help="Number of CPUs"),
        click.option("--cpu-shares", "-c", type=int, default=None, help="CPU shares (relative weight)"),
        click.option("--pids-limit", type=int, default=None, help="Tune container pids limit (-1 for unlimited)"),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open even if not attached"),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY"),
        click.option("-l", "--label", multiple=True, help="Set meta data on a container"),
        click.option("--hostname", default=None, help="Container host name"),
        click.option("--restart", default=None, help="Restart policy to apply when a container exits"),
        click.option("-p", "--publish", multiple=True, help="Publish a container's port(s) to the host"),
        click.option("-v", "--volume", multiple=True, help="Bind mount a volume"),
        click.option("--mount", "mounts", multiple=True, help="Attach a filesystem mount to the container"),
        click.option("--tmpfs", multiple=True, help="Mount a tmpfs directory"),
        click.option("--volumes-from", multiple=True, help="Mount volumes from the specified container(s)"),
        click.option("--volume-driver", default=None, help="Optional volume driver for the container"),
        click.option("--network", "--net", "network", default=None, help="Connect a container to a network"),
        click.option("--network-alias", multiple=True, help="Add network-scoped alias for the container"),
        click.option("--ip", default=None, help="IPv4 address (e.g., 172.30.100.104)"),
        click.option("--mac-address", default=None, help="Container MAC address (e.g., 92:d0:c6:0a:29:33)"),
        click.option("--add-host", multiple=True, help="Add a custom host-to-IP mapping (host:ip)"),
        click.option("--dns", multiple=True, help="Set custom DNS servers"),
        click.option("-P", "--publish-all", is_flag=True, help="Publish all exposed ports to random ports"),
        click.option("--expose", multiple=True, help="Expose a port or a range of ports"),
        click.option("--privileged", is_flag=True, help="Give extended privileges to this container"),
        click.option("--init", is_flag=True, help="Run an init inside the container"),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities"),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities"),
        click.option("--read-only", is_flag=True, help="Mount the container's root filesystem as read only"),
        click.option("--stop-signal", default=None, help="Signal to stop the container"),
        click.option("--stop-timeout", type=int, default=None, help="Timeout (in seconds) to stop a container"),
        click.option("--rm", "auto_remove", is_flag=True, help="Automatically remove the container when it exits"),
        click.option("--platform", default=None, help="Set platform if server is multi-platform capable"),
        click.option("--ulimit", multiple=True, help="Ulimit options (name=soft[:hard])"),
        click.option("--runtime", default=None, help="Runtime to use for this container"),
        click.option("--health-cmd", default=None, help="Command to run to check health"),
        click.option("--health-interval", default=None, help="Time between running the check (ms|s|m|h)"),
        click.option("--health-timeout", default=None, help="Maximum time to allow one check to run (ms|s|m|h)"),
        click.option("--health-retries", type=int, default=None, help="Consecutive failures needed to report "
                     "unhealthy"),
        click.option("--health-start-period", default=None, help="Start period for the container to initialize "
                     "before starting health-retries countdown (ms|s|m|h)"),
        click.option("--health-start-interval", default=None, help="Time between running the check during the "
                     "start period (ms|s|m|h)"),
        click.option("--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK"),
    ]
    for option in reversed(options):
        f = option(f)
    f = click.argument("command", nargs=-1, type=click.UNPROCESSED)(f)
    return click.argument("image")(f)


_CREATE_CTX = {**CONTEXT, "allow_interspersed_args": False}
_GO_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                      "m": 60_000_000_000, "h": 3_600_000_000_000}


def _duration_ns(flag: str, value: str | None) -> int:
    """A Go duration (``1m30s``, ``500ms``) in nanoseconds, as docker's duration flags take them."""
    if not value:
        return 0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    if value != "0" and "".join(n + u for n, u in parts) != value.lstrip("-"):
        raise StatusError(125, f'invalid argument "{value}" for "--{flag}" flag: time: invalid duration "{value}"')
    total = int(sum(float(n) * _GO_DURATION_UNITS[u] for n, u in parts))
    if value.startswith("-"):
        raise StatusError(125, f"skiff: --{flag} cannot be negative")
    return total


def _healthcheck(opts: dict[str, Any]) -> dict | None:
    """``--health-*`` / ``--no-healthcheck`` as the docker CLI sends them (durations in nanoseconds)."""
    durations = {key: _duration_ns(flag, opts[flag.replace("-", "_")]) for key, flag in (
        ("Interval", "health-interval"), ("Timeout", "health-timeout"), ("StartPeriod", "health-start-period"),
        ("StartInterval", "health-start-interval"))}
    retries = opts["health_retries"] or 0
    if retries < 0:
        raise StatusError(125, "skiff: --health-retries cannot be negative")
    have_settings = bool(opts["health_cmd"] or retries or any(durations.values()))
    if opts["no_healthcheck"]:
        if have_settings:
            raise StatusError(125, "skiff: --no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not have_settings:
        return None
    return {"Test": ["CMD-SHELL", opts["health_cmd"]] if opts["health_cmd"] else None, **durations,
            "Retries": retries}


def _create_container(a: docker.APIClient, kwargs: dict[str, Any], health: dict | None) -> dict:
    """docker-py's create_container, with the whole Healthcheck (its own type drops StartInterval)."""
    if not health:
        return a.create_container(**kwargs)
    kwargs = dict(kwargs)
    name, platform = kwargs.pop("name"), kwargs.pop("platform")
    config = a.create_container_config(**kwargs)
    config["Healthcheck"] = {k: v for k, v in health.items() if v}
    return a.create_container_from_config(config, name, platform)


def _create(opts: dict[str, Any], verb: str) -> str:
    """Create the container (pulling its image if missing); returns its ID. Errors exit 125, as docker's."""
    a = api()
    exposed, bindings = _publish(opts["publish"])
    restart = None
    if opts["restart"]:
        name, _, count = opts["restart"].partition(":")
        restart = {"Name": name, "MaximumRetryCount": int(count or 0)}
    ulimits = []
    for spec in opts["ulimit"]:
        name, _, limits = spec.partition("=")
        soft, _, hard = limits.partition(":")
        ulimits.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    memory = _ram_bytes(opts["memory"])
    swap = -1 if opts["memory_swap"] == "-1" else _ram_bytes(opts["memory_swap"])
    # As docker's: `-v /path` alone is an anonymous volume (Config.Volumes); anything with a source is a bind.
    binds = [v for v in opts["volume"] if ":" in v]
    anonymous = [v for v in opts["volume"] if ":" not in v]
    host_config = a.create_host_config(
        auto_remove=opts["auto_remove"], mem_limit=memory, memswap_limit=swap,
        nano_cpus=int(opts["cpus"] * 1e9) if opts["cpus"] else None, cpu_shares=opts["cpu_shares"],
        pids_limit=opts["pids_limit"], port_bindings=bindings or None, binds=binds or None,
        mounts=[_mount(m) for m in opts["mounts"]] or None, tmpfs=list(opts["tmpfs"]) or None,
        volumes_from=list(opts["volumes_from"]) or None, volume_driver=opts["volume_driver"],
        network_mode=opts["network"], privileged=opts["privileged"], init=opts["init"] or None,
        cap_add=list(opts["cap_add"]) or None, cap_drop=list(opts["cap_drop"]) or None,
        read_only=opts["read_only"] or None, restart_policy=restart, ulimits=ulimits or None,
        runtime=opts["runtime"], publish_all_ports=opts["publish_all"] or None,
        extra_hosts=list(opts["add_host"]) or None, dns=list(opts["dns"]) or None)
    exposed += [tuple(e.split("/", 1)) if "/" in e else (e, "tcp") for e in opts["expose"]]
    entrypoint = opts["entrypoint"]
    labels = dict(label.partition("=")[::2] for label in opts["label"])
    kwargs = dict(
        image=opts["image"], command=list(opts["command"]) or None, hostname=opts["hostname"], user=opts["user"],
        stdin_open=opts["interactive"], tty=opts["tty"], environment=_env(opts["env"], opts["env_file"]) or None,
        name=opts["name"], entrypoint=[entrypoint] if entrypoint else ([""] if entrypoint == "" else None),
        working_dir=opts["workdir"], labels=labels or None, stop_signal=opts["stop_signal"],
        stop_timeout=opts["stop_timeout"], ports=exposed or None, host_config=host_config, volumes=anonymous or None,
        platform=opts["platform"], detach=bool(opts.get("detach")), mac_address=opts["mac_address"],
        networking_config=_networking_config(a, opts))
    health = _healthcheck(opts)
    try:
        try:
            created = _create_container(a, kwargs, health)
        except docker.errors.ImageNotFound:
            click.echo(f"Unable to find image '{_with_tag(opts['image'])}' locally", err=True)
            _pull(opts["image"], sys.stderr, opts["platform"])
            created = _create_container(a, kwargs, health)
    except docker.errors.APIError as e:
        raise StatusError(125, f"skiff: {daemon_message(e)}\n\nRun 'skiff {verb} --help' for more information") \
            from None
    for warning in created.get("Warnings") or []:
        click.echo(f"WARNING: {warning}", err=True)
    return created["Id"]


def _networking_config(a: docker.APIClient, opts: dict[str, Any]) -> dict | None:
    """``--network-alias`` and ``--ip`` go in the EndpointsConfig of the ``--network``, as docker sends them."""
    if not (opts["network_alias"] or opts["ip"]):
        return None
    if not opts["network"] or opts["network"] in ("bridge", "default"):
        raise StatusError(125, "skiff: network-scoped aliases and --ip need a user-defined --network")
    endpoint = a.create_endpoint_config(aliases=list(opts["network_alias"]) or None, ipv4_address=opts["ip"])
    return a.create_networking_config({opts["network"]: endpoint})


def _canonical(image: str) -> str:
    """docker's full reference: ``busybox`` is ``docker.io/library/busybox``."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def _with_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return image if (":" in last or "@" in image) else image + ":latest"


def _start_error_status(e: docker.errors.APIError) -> int:
    message = str(e.explanation or e)
    if any(s in message for s in ("executable file not found", "no such file or directory",
                                  "system cannot find the file specified")):
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


@cli.command(context_settings=_CREATE_CTX)
@_create_options
def create(**opts: Any) -> int:
    """Create a new container."""
    click.echo(_create(opts, "create"))
    return 0


@cli.command(context_settings=_CREATE_CTX)
@click.option("-d", "--detach", is_flag=True, help="Run container in background and print container ID")
@click.option("-a", "--attach", "attach_streams", multiple=True, help="Attach to STDIN, STDOUT or STDERR")
@click.option("--sig-proxy", type=bool, default=True, help="Proxy received signals to the process")
@_create_options
def run(detach: bool, attach_streams: tuple[str, ...], sig_proxy: bool, **opts: Any) -> int:
    """Create and run a new container from an image."""
    if opts["tty"] and opts["interactive"] and not detach and not sys.stdin.isatty():
        raise StatusError(1, "the input device is not a TTY")
    cid = _create({**opts, "detach": detach}, "run")
    a = api()
    if detach:
        _start(cid, opts["auto_remove"], "run")
        click.echo(cid)
        return 0
    wanted = {s.lower() for s in attach_streams} or {"stdout", "stderr", *(["stdin"] if opts["interactive"] else [])}
    hijacked = a.attach_socket(cid, params={"stdin": int("stdin" in wanted), "stdout": int("stdout" in wanted),
                                            "stderr": int("stderr" in wanted), "stream": 1, "logs": 0})
    streams.raw_socket(hijacked).settimeout(None)
    return _run_attached(cid, hijacked, opts["tty"], "stdin" in wanted, opts["auto_remove"], "run", sig_proxy)


def _run_attached(cid: str, hijacked: Any, tty: bool, stdin: bool, auto_remove: bool, verb: str,
                  sig_proxy: bool = True, start: bool = True) -> int:
    """Wait for the exit (registered before start), start, copy the streams, return the container's code.
    Without ``start`` (``attach`` to a running container) the wait is for it to stop being running."""
    a = api()
    result: dict[str, Any] = {}
    # The daemon answers a wait's headers once the wait is registered (as dockerd does): only then start, so
    # even an instant exit is seen.
    condition = "removed" if auto_remove else "next-exit" if start else "not-running"
    waiting = a._post(a._url("/containers/{0}/wait", cid), stream=True, timeout=None,
                      params={"condition": condition})
    a._raise_for_status(waiting)

    def wait() -> None:
        try:
            result["status"] = json.loads(waiting.content)
        except Exception as e:  # reported after the streams end
            result["error"] = e

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    if start:
        _start(cid, auto_remove, verb)
    stop_resize = streams.watch_resize(lambda h, w: a.resize(cid, h, w)) if tty and sys.stdout.isatty() else None
    # docker's --sig-proxy: signals the CLI gets go to the container (with a tty, ^C reaches it as a byte)
    stop_proxy = streams.proxy_signals(lambda signum: a.kill(cid, signal=signum)) if sig_proxy and not tty else None
    try:
        with streams.raw_terminal(tty and stdin):
            streams.pump(hijacked, tty, stdin)
    finally:
        for stop_it in (stop_resize, stop_proxy):
            if stop_it:
                stop_it()
    waiter.join()
    if "error" in result:
        raise StatusError(125, f"Error waiting for container: {result['error']}")
    status = result["status"]
    if (status.get("Error") or {}).get("Message"):
        click.echo(f"Error waiting for container: {status['Error']['Message']}", err=True)
        return 125
    return int(status.get("StatusCode", 0))


def _start(cid: str, auto_remove: bool, verb: str) -> None:
    try:
        api().start(cid)
    except docker.errors.APIError as e:
        if auto_remove:
            try:
                api().remove_container(cid, force=True)
            except docker.errors.APIError:
                pass
        raise StatusError(_start_error_status(e), f"skiff: {daemon_message(e)}\n\n"
                                                  f"Run 'skiff {verb} --help' for more information") from None


@cli.command(context_settings=CONTEXT)
@click.option("--no-stdin", is_flag=True, help="Do not attach STDIN")
@click.option("--sig-proxy", type=bool, default=True, help="Proxy all received signals to the process")
@click.argument("container")
def attach(no_stdin: bool, sig_proxy: bool, container: str) -> int:
    """Attach local standard input, output, and error streams to a running container."""
    a = api()
    c = a.inspect_container(container)
    state = c["State"]
    if not state.get("Running"):
        raise StatusError(1, "You cannot attach to a stopped container, start it first")
    if state.get("Paused"):
        raise StatusError(1, "You cannot attach to a paused container, unpause it first")
    tty = bool(c["Config"].get("Tty"))
    stdin = not no_stdin and bool(c["Config"].get("OpenStdin"))
    if tty and stdin and not sys.stdin.isatty():
        raise StatusError(1, "the input device is not a TTY")
    hijacked = a.attach_socket(c["Id"], params={"stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1})
    streams.raw_socket(hijacked).settimeout(None)
    return _run_attached(c["Id"], hijacked, tty, stdin, bool(c["HostConfig"].get("AutoRemove")), "attach",
                         sig_proxy, start=False)


# ---- lifecycle


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR and forward signals")
@click.option("-i", "--interactive", is_flag=True, help="Attach container's STDIN")
@click.argument("containers", nargs=-1, required=True)
def start(attach: bool, interactive: bool, containers: tuple[str, ...]) -> int:
    """Start one or more stopped containers."""
    a = api()
    if attach or interactive:
        if len(containers) > 1:
            raise StatusError(1, "you cannot start and attach multiple containers at once")
        c = a.inspect_container(containers[0])
        tty = bool(c["Config"].get("Tty"))
        hijacked = a.attach_socket(c["Id"], params={"stdin": int(interactive), "stdout": 1, "stderr": 1,
                                                    "stream": 1})
        streams.raw_socket(hijacked).settimeout(None)
        return _run_attached(c["Id"], hijacked, tty, interactive, bool(c["HostConfig"].get("AutoRemove")), "start")
    return each(containers, a.start)


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--time", "timeout", type=int, default=None, help="Seconds to wait before killing the container")
@click.option("-s", "--signal", "sig", default=None, help="Signal to send to the container")
@click.argument("containers", nargs=-1, required=True)
def stop(timeout: int | None, sig: str | None, containers: tuple[str, ...]) -> int:
    """Stop one or more running containers."""
    return each(containers, lambda c: _post_container(c, "stop", {"t": timeout, "signal": sig}))


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--time", "timeout", type=int, default=None, help="Seconds to wait before killing the container")
@click.option("-s", "--signal", "sig", default=None, help="Signal to send to the container")
@click.argument("containers", nargs=-1, required=True)
def restart(timeout: int | None, sig: str | None, containers: tuple[str, ...]) -> int:
    """Restart one or more containers."""
    return each(containers, lambda c: _post_container(c, "restart", {"t": timeout, "signal": sig}))


def _post_container(name: str, action: str, params: dict[str, Any]) -> None:
    a = api()
    res = a._post(a._url("/containers/{0}/" + action, name), params={k: v for k, v in params.items()
                                                                     if v is not None})
    a._raise_for_status(res)


@cli.command(context_settings=CONTEXT)
@click.option("-s", "--signal", "sig", default="KILL", help="Signal to send to the container")
@click.argument("containers", nargs=-1, required=True)
def kill(sig: str, containers: tuple[str, ...]) -> int:
    """Kill one or more running containers."""
    return each(containers, lambda c: api().kill(c, signal=sig))


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container (uses SIGKILL)")
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes associated with the container")
@click.option("-l", "--link", is_flag=True, help="Remove the specified link")
@click.argument("containers", nargs=-1, required=True)
def rm(force: bool, volumes: bool, link: bool, containers: tuple[str, ...]) -> int:
    """Remove one or more containers."""
    return each(containers, lambda c: api().remove_container(c, v=volumes, link=link, force=force))


@cli.command(context_settings=CONTEXT)
@click.argument("containers", nargs=-1, required=True)
def pause(containers: tuple[str, ...]) -> int:
    """Pause all processes within one or more containers."""
    return each(containers, api().pause)


@cli.command(context_settings=CONTEXT)
@click.argument("containers", nargs=-1, required=True)
def unpause(containers: tuple[str, ...]) -> int:
    """Unpause all processes within one or more containers."""
    return each(containers, api().unpause)


@cli.command(context_settings=CONTEXT)
@click.argument("container")
@click.argument("new_name")
def rename(container: str, new_name: str) -> int:
    """Rename a container."""
    api().rename(container, new_name)
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("containers", nargs=-1, required=True)
def wait(containers: tuple[str, ...]) -> int:
    """Block until one or more containers stop, then print their exit codes."""
    failed = False
    for name in containers:
        try:
            click.echo(api().wait(name, timeout=None)["StatusCode"])
        except docker.errors.APIError as e:
            click.echo(daemon_message(e), err=True)
            failed = True
    return 1 if failed else 0


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.argument("container")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
def top(container: str, ps_args: tuple[str, ...]) -> int:
    """Display the running processes of a container."""
    result = api().top(container, ps_args=" ".join(ps_args) or None)
    out(fmt.tabwrite([result.get("Titles") or [], *(result.get("Processes") or [])], minwidth=20, padding=3))
    return 0


# ---- logs and exec


def _frames_from_response(response: Any, tty: bool) -> Iterable[tuple[int, bytes]]:
    raw = response.raw
    if tty:
        while True:
            data = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
            if not data:
                return
            yield 1, data

    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = raw.read(n - len(buf))
            if not chunk:
                return buf
            buf += chunk
        return buf

    while True:
        header = exact(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:8], "big")
        yield header[0], exact(size)


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("-n", "--tail", default="all", help="Number of lines to show from the end of the logs")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--since", default=None, help="Show logs since timestamp or relative (e.g. 42m)")
@click.option("--until", default=None, help="Show logs before a timestamp or relative (e.g. 42m)")
@click.option("--details", is_flag=True, help="Show extra details provided to logs")
@click.argument("container")
def logs(follow: bool, tail: str, timestamps: bool, since: str | None, until: str | None, details: bool,
         container: str) -> int:
    """Fetch the logs of a container."""
    a = api()
    c = a.inspect_container(container)
    params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": int(timestamps), "tail": tail,
              "details": int(details)}
    if since:
        params["since"] = _time_param(since)
    if until:
        params["until"] = _time_param(until)
    res = a._get(a._url("/containers/{0}/logs", c["Id"]), params=params, stream=True)
    a._raise_for_status(res)
    targets = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    try:
        for stream, data in _frames_from_response(res, bool(c["Config"].get("Tty"))):
            target = targets.get(stream, sys.stdout.buffer)
            target.write(data)
            target.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        res.close()
    return 0


def _time_param(value: str) -> str:
    """docker's ``--since/--until``: a relative duration (``10m``) or a timestamp, sent as unix seconds."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", value)
    if m:
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        return f"{time.time() - float(m.group(1)) * scale:.9f}"
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return value
    stamp = fmt.parse_time(value)
    if not stamp:
        raise StatusError(125, f"invalid value for --since/--until: {value!r}")
    return f"{stamp:.9f}"


@cli.command(name="exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Detached mode: run command in the background")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open even if not attached")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("--env-file", multiple=True, help="Read in a file of environment variables")
@click.option("-u", "--user", default=None, help="Username or UID (format: <name|uid>[:<group|gid>])")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container")
@click.option("--privileged", is_flag=True, help="Give extended privileges to the command")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(detach: bool, interactive: bool, tty: bool, env: tuple[str, ...], env_file: tuple[str, ...],
          user: str | None, workdir: str | None, privileged: bool, container: str, command: tuple[str, ...]) -> int:
    """Execute a command in a running container."""
    a = api()
    if tty and interactive and not detach and not sys.stdin.isatty():
        raise StatusError(1, "the input device is not a TTY")
    created = a.exec_create(container, list(command), stdout=not detach, stderr=not detach,
                            stdin=interactive and not detach, tty=tty, privileged=privileged, user=user or "",
                            environment=_env(env, env_file) or None, workdir=workdir)
    exec_id = created["Id"]
    if detach:
        a.exec_start(exec_id, detach=True, tty=tty)
        return 0
    hijacked = a.exec_start(exec_id, tty=tty, socket=True)
    streams.raw_socket(hijacked).settimeout(None)
    stop_resize = streams.watch_resize(lambda h, w: a.exec_resize(exec_id, h, w)) if tty and sys.stdout.isatty() \
        else None
    try:
        with streams.raw_terminal(tty and interactive):
            streams.pump(hijacked, tty, interactive)
    finally:
        if stop_resize:
            stop_resize()
    for _ in range(100):  # the exit is recorded just after the stream ends
        inspected = a.exec_inspect(exec_id)
        if not inspected.get("Running"):
            break
        time.sleep(0.02)
    code = inspected.get("ExitCode")
    return int(code) if code is not None else 126


# ---- inspect


@cli.command(context_settings=CONTEXT)
@_format_option
@click.option("--type", "kind", type=click.Choice(["container", "image"]), default=None,
              help="Only inspect objects of the given type")
@click.option("-s", "--size", is_flag=True, help="Display total file sizes if the type is container")
@click.argument("names", nargs=-1, required=True)
def inspect(format_: str | None, kind: str | None, size: bool, names: tuple[str, ...]) -> int:
    """Return low-level information on Skiff objects."""
    a = api()
    found: list[Any] = []
    failed = False
    for name in names:
        obj = None
        for k in ([kind] if kind else ["container", "image"]):
            try:
                obj = a.inspect_container(name) if k == "container" else a.inspect_image(name)
                break
            except docker.errors.NotFound:
                continue
        if obj is None:
            click.echo(f"Error: No such object: {name}", err=True)
            failed = True
        else:
            found.append(obj)
    if format_:
        out(fmt.render(format_, found, {}))
    else:
        out(json.dumps(found, indent=4, ensure_ascii=False) + "\n")
    return 1 if failed else 0


# ---- images


IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "CreatedSince": "CREATED",
                 "CreatedAt": "CREATED AT", "Size": "SIZE", "Digest": "DIGEST", "Containers": "CONTAINERS",
                 "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE"}
IMAGE_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"


def _image_rows(image: dict, trunc: bool) -> list[dict[str, Any]]:
    short = image["Id"].split(":", 1)[-1][:12] if trunc else image["Id"]
    base = {"ID": short, "CreatedSince": fmt.ago(image.get("Created") or 0),
            "CreatedAt": fmt.local_time(image.get("Created") or 0), "Size": fmt.human_size(image.get("Size") or 0),
            "Containers": "N/A" if image.get("Containers", -1) < 0 else str(image["Containers"]),
            "SharedSize": "N/A", "UniqueSize": "N/A", "VirtualSize": fmt.human_size(image.get("Size") or 0),
            "Digest": "<none>"}
    digests: dict[str, str] = {}
    for d in image.get("RepoDigests") or []:
        repo, _, digest = d.partition("@")
        digests.setdefault(repo, digest)
    rows = []
    tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
    for tag in tags:
        repo, _, name = tag.rpartition(":")
        rows.append({**base, "Repository": repo, "Tag": name, "Digest": digests.get(repo, "<none>")})
    for repo, digest in digests.items():
        if not any(r["Repository"] == repo for r in rows):
            rows.append({**base, "Repository": repo, "Tag": "<none>", "Digest": digest})
    return rows or [{**base, "Repository": "<none>", "Tag": "<none>"}]


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all images (default hides intermediate images)")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output")
@click.option("--digests", is_flag=True, help="Show digests")
@click.argument("repository", required=False)
def images(all_: bool, quiet: bool, filters: tuple[str, ...], format_: str | None, no_trunc: bool,
           digests: bool, repository: str | None) -> int:
    """List images."""
    found = api().images(name=repository, all=all_, filters=_filters(filters) or None)
    rows = [row for image in found for row in _image_rows(image, not no_trunc)]
    if quiet:
        out("".join(dict.fromkeys(r["ID"] + "\n" for r in rows)))
        return 0
    template = format_ or (IMAGE_TABLE.replace("{{.Tag}}", "{{.Tag}}\t{{.Digest}}") if digests else IMAGE_TABLE)
    if template == "json":
        template = "{{json .}}"
    out(fmt.render(template, rows, IMAGE_HEADERS))
    return 0


def _config_dir() -> str:
    return os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".skiff")


def _load_config() -> dict[str, Any]:
    try:
        with open(os.path.join(_config_dir(), "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_config(config: dict[str, Any]) -> None:
    directory = _config_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "config.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent="\t")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _registry_key(registry: str | None) -> str:
    if not registry or registry in ("docker.io", "index.docker.io", "registry-1.docker.io", DEFAULT_REGISTRY):
        return DEFAULT_REGISTRY
    return registry.removeprefix("https://").removeprefix("http://").rstrip("/")


def _auth_for(image: str) -> dict[str, str] | None:
    from docker.auth import resolve_repository_name

    registry, _ = resolve_repository_name(image)
    entry = (_load_config().get("auths") or {}).get(_registry_key(registry))
    if not entry or not entry.get("auth"):
        return None
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": user, "password": password, "serveraddress": registry}


def _progress(stream: Iterable[dict], to: Any) -> dict | None:
    """Render a pull/push JSON stream: rich progress bars on a terminal, docker's plain lines otherwise."""
    last = None
    tty = to.isatty()
    if not tty:
        for msg in stream:
            if msg.get("error"):
                raise StatusError(1, msg["error"])
            last = msg
            if "progressDetail" in msg and msg.get("progress"):
                continue
            text = f"{msg['id']}: {msg.get('status', '')}" if msg.get("id") else msg.get("status", "")
            if text:
                to.write(text + "\n")
                to.flush()
        return last
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    console = Console(file=to)
    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.fields[layer]}: {task.description}"), BarColumn(), DownloadColumn(),
                  console=console, transient=False) as progress:
        for msg in stream:
            if msg.get("error"):
                raise StatusError(1, msg["error"])
            last = msg
            layer = msg.get("id")
            status = msg.get("status", "")
            if not layer:
                console.print(status, markup=False, highlight=False)
                continue
            detail = msg.get("progressDetail") or {}
            if layer not in tasks:
                tasks[layer] = progress.add_task(status, layer=layer, total=detail.get("total") or None)
            kwargs: dict[str, Any] = {"description": status}
            if detail.get("total"):
                kwargs.update(total=detail["total"], completed=detail.get("current", 0))
            elif status.endswith("complete") or status in ("Already exists", "Layer already exists", "Pushed"):
                task = progress.tasks[tasks[layer]]
                kwargs.update(total=task.total or 1, completed=task.total or 1)
            progress.update(tasks[layer], **kwargs)
    return last


class _Quiet:
    """A sink for ``--quiet`` progress."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _pull(image: str, to: Any, platform: str | None = None, all_tags: bool = False) -> None:
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    if not tag and not all_tags:
        tag = "latest"
    a = api()
    stream = a.pull(repo, tag=tag or None, stream=True, decode=True, auth_config=_auth_for(image),
                    platform=platform, all_tags=all_tags)
    _progress(stream, to)


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all-tags", is_flag=True, help="Download all tagged images in the repository")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@click.option("--platform", default=None, help="Set platform if server is multi-platform capable")
@click.argument("image")
def pull(all_tags: bool, quiet: bool, platform: str | None, image: str) -> int:
    """Download an image from a registry."""
    _pull(image, _Quiet() if quiet else sys.stdout, platform, all_tags)
    if not all_tags:
        click.echo(_canonical(_with_tag(image)))
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all-tags", is_flag=True, help="Push all tags of an image to the repository")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@click.argument("image")
def push(all_tags: bool, quiet: bool, image: str) -> int:
    """Upload an image to a registry."""
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    if not tag and not all_tags:
        tag = "latest"
    stream = api().push(repo, tag=tag, stream=True, decode=True, auth_config=_auth_for(image))
    _progress(stream, _Quiet() if quiet else sys.stdout)
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> int:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    from docker.utils import parse_repository_tag

    repo, name = parse_repository_tag(target)
    api().tag(source, repo, name or "latest")
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Force removal of the image")
@click.option("--no-prune", is_flag=True, help="Do not delete untagged parents")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
def rmi(force: bool, no_prune: bool, images_: tuple[str, ...]) -> int:
    """Remove one or more images."""
    failed = False
    for image in images_:
        try:
            for item in api().remove_image(image, force=force, noprune=no_prune) or []:
                for key, value in item.items():
                    click.echo(f"{key}: {value}")
        except docker.errors.APIError as e:
            click.echo(daemon_message(e), err=True)
            failed = True
    return 1 if failed else 0


@cli.command(context_settings=CONTEXT)
@click.option("-o", "--output", default=None, help="Write to a file, instead of STDOUT")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
def save(output: str | None, images_: tuple[str, ...]) -> int:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    if output is None and sys.stdout.isatty():
        raise StatusError(1, "cowardly refusing to save to a terminal. Use the -o flag or redirect")
    a = api()
    res = a._get(a._url("/images/get"), params={"names": list(images_)}, stream=True)
    a._raise_for_status(res)
    if output:
        tmp = output + ".tmp"
        with open(tmp, "wb") as f:
            for chunk in res.iter_content(1 << 20):
                f.write(chunk)
        os.replace(tmp, output)
    else:
        for chunk in res.iter_content(1 << 20):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-i", "--input", "input_", default=None, help="Read from tar archive file, instead of STDIN")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output")
def load(input_: str | None, quiet: bool) -> int:
    """Load an image from a tar archive or STDIN."""
    if input_ is None and sys.stdin.isatty():
        raise StatusError(1, "requested load from stdin, but stdin is empty")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open(input_, "rb")) if input_ else sys.stdin.buffer
        for msg in api().load_image(source, quiet=quiet):
            if msg.get("error"):
                raise StatusError(1, msg["error"])
            if msg.get("stream"):
                out(msg["stream"])
    return 0


@cli.command(name="import", context_settings=CONTEXT)
@click.option("-c", "--change", multiple=True, help="Apply Dockerfile instruction to the created image")
@click.option("-m", "--message", default=None, help="Set commit message for imported image")
@click.option("--platform", default=None, help="Set platform if server is multi-platform capable")
@click.argument("source")
@click.argument("reference", required=False)
def import_(change: tuple[str, ...], message: str | None, platform: str | None, source: str,
            reference: str | None) -> int:
    """Import the contents from a tarball to create a filesystem image."""
    from docker.utils import parse_repository_tag

    a = api()
    repo, name = parse_repository_tag(reference) if reference else (None, None)
    params: dict[str, Any] = {"repo": repo, "tag": name, "message": message, "platform": platform,
                              "changes": list(change) or None}
    with contextlib.ExitStack() as stack:
        if source == "-" or os.path.exists(source):
            params["fromSrc"] = "-"
            data: Any = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
            res = a._post(a._url("/images/create"), data=data, params={k: v for k, v in params.items() if v},
                          headers={"Content-Type": "application/tar"}, stream=True)
        else:
            params["fromSrc"] = source
            res = a._post(a._url("/images/create"), params={k: v for k, v in params.items() if v}, stream=True)
        a._raise_for_status(res)
        for msg in a._stream_helper(res, decode=True):
            if msg.get("error"):
                raise StatusError(1, msg["error"])
            if msg.get("status"):
                click.echo(msg["status"])
    return 0


# ---- login / logout


@cli.command(context_settings=CONTEXT)
@click.option("-u", "--username", default=None, help="Username")
@click.option("-p", "--password", default=None, help="Password")
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin")
@click.argument("server", required=False)
def login(username: str | None, password: str | None, password_stdin: bool, server: str | None) -> int:
    """Authenticate to a registry (credentials are kept in config.json under DOCKER_CONFIG or ~/.skiff)."""
    if password_stdin:
        if password:
            raise StatusError(1, "--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\r\n")
    if not username:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    key = _registry_key(server)
    a = api()
    res = a._post_json(a._url("/auth"), data={"username": username, "password": password,
                                               "serveraddress": server or DEFAULT_REGISTRY})
    a._raise_for_status(res)
    config = _load_config()
    config.setdefault("auths", {})[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _save_config(config)
    click.echo("Login Succeeded")
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("server", required=False)
def logout(server: str | None) -> int:
    """Log out from a registry."""
    key = _registry_key(server)
    config = _load_config()
    auths = config.get("auths") or {}
    if key not in auths:
        click.echo(f"Not logged in to {server or DEFAULT_REGISTRY}")
        return 0
    click.echo(f"Removing login credentials for {server or DEFAULT_REGISTRY}")
    del auths[key]
    _save_config(config)
    return 0


# ---- events and stats


def _event_line(e: dict) -> str:
    nanos = e.get("timeNano") or int((e.get("time") or 0) * 1e9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(nanos // 10**9)) + f".{nanos % 10**9:09d}"
    offset = time.strftime("%z", time.localtime(nanos // 10**9))
    stamp += "Z" if offset in ("+0000", "-0000") else offset[:3] + ":" + offset[3:]
    actor = e.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    line = f"{stamp} {e.get('Type', '')} {e.get('Action', '')} {actor.get('ID', '')}"
    if attrs:
        line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) + ")"
    return line


@cli.command(context_settings=CONTEXT)
@click.option("--since", default=None, help="Show all events created since timestamp")
@click.option("--until", default=None, help="Stream events until this timestamp")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
def events(since: str | None, until: str | None, filters: tuple[str, ...], format_: str | None) -> int:
    """Get real time events from the server."""
    a = api()
    params: dict[str, Any] = {}
    if since:
        params["since"] = _time_param(since)
    if until:
        params["until"] = _time_param(until)
    if filters:
        params["filters"] = json.dumps(_filters(filters))
    res = a._get(a._url("/events"), params=params, stream=True)
    a._raise_for_status(res)
    template = fmt.Template("{{json .}}" if format_ == "json" else format_) if format_ else None
    try:
        for event in a._stream_helper(res, decode=True):
            out((template.render(event) if template else _event_line(event)) + "\n")
    except KeyboardInterrupt:
        return 0
    finally:
        res.close()
    return 0


STATS_HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
                 "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O",
                 "PIDs": "PIDS"}
STATS_TABLE = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}"
               "\t{{.PIDs}}")


def _stats_row(name: str, s: dict) -> dict[str, str]:
    cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    sys_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    ncpu = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    cpu_pct = cpu_delta / sys_delta * ncpu * 100 if sys_delta > 0 and cpu_delta > 0 else 0.0
    mem = s.get("memory_stats") or {}
    stats = mem.get("stats") or {}
    usage = (mem.get("usage") or 0) - (stats.get("inactive_file") or stats.get("total_inactive_file") or 0)
    limit = mem.get("limit") or 0
    rx = sum(n.get("rx_bytes", 0) for n in (s.get("networks") or {}).values())
    tx = sum(n.get("tx_bytes", 0) for n in (s.get("networks") or {}).values())
    read = write = 0
    for entry in (s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = (entry.get("op") or "").lower()
        read += entry.get("value", 0) if op == "read" else 0
        write += entry.get("value", 0) if op == "write" else 0
    return {"Container": name, "ID": (s.get("id") or "")[:12], "Name": (s.get("name") or "").lstrip("/"),
            "CPUPerc": f"{cpu_pct:.2f}%", "MemUsage": f"{fmt.bytes_size(usage)} / {fmt.bytes_size(limit)}",
            "MemPerc": f"{usage / limit * 100 if limit else 0:.2f}%",
            "NetIO": f"{fmt.human_size(rx)} / {fmt.human_size(tx)}",
            "BlockIO": f"{fmt.human_size(read)} / {fmt.human_size(write)}",
            "PIDs": str((s.get("pids_stats") or {}).get("current", 0))}


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running)")
@click.option("--no-stream", is_flag=True, help="Disable streaming stats and only pull the first result")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
@click.argument("containers", nargs=-1)
def stats(all_: bool, no_stream: bool, no_trunc: bool, format_: str | None, containers: tuple[str, ...]) -> int:
    """Display a live stream of container(s) resource usage statistics."""
    a = api()
    names = list(containers) or [c["Id"] for c in a.containers(all=all_)]
    template = format_ or STATS_TABLE
    while True:
        rows = []
        for name in names:
            try:
                rows.append(_stats_row(name, a.stats(name, stream=False)))
            except docker.errors.APIError as e:
                if containers:
                    raise
                click.echo(daemon_message(e), err=True)
        text = fmt.render(template, rows, STATS_HEADERS)
        if no_stream:
            out(text)
            return 0
        out("\x1b[2J\x1b[H" + text)
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return 0


# ---- volumes


@cli.group(context_settings=CONTEXT)
def volume() -> None:
    """Manage volumes."""


def _options(values: Iterable[str], what: str) -> dict[str, str]:
    result = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep and what == "opt":
            raise StatusError(125, f"invalid argument \"{value}\" for \"-o, --opt\" flag: invalid key value pair "
                                   "format in driver options")
        result[key] = rest
    return result


@volume.command(name="create", context_settings=CONTEXT)
@click.option("-d", "--driver", default="local", show_default=True, help="Specify volume driver name")
@click.option("-o", "--opt", "opts", multiple=True, help="Set driver specific options")
@click.option("--label", "labels", multiple=True, help="Set metadata for a volume")
@click.argument("name", required=False)
def volume_create(driver: str, opts: tuple[str, ...], labels: tuple[str, ...], name: str | None) -> int:
    """Create a volume."""
    try:
        created = api().create_volume(name, driver, _options(opts, "opt") or None, _options(labels, "label") or None)
    except docker.errors.APIError as e:
        raise StatusError(1, daemon_message(e)) from None
    click.echo(created["Name"])
    return 0


VOLUME_HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT", "Scope": "SCOPE",
                  "Labels": "LABELS", "CreatedAt": "CREATED AT"}


@volume.command(name="ls", context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names")
@click.option("-f", "--filter", "filters", multiple=True, help="Provide filter values (e.g. 'dangling=true')")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
def volume_ls(quiet: bool, filters: tuple[str, ...], format_: str | None) -> int:
    """List volumes."""
    try:
        found = api().volumes(filters=_filters(filters) or None).get("Volumes") or []
    except docker.errors.APIError as e:
        raise StatusError(1, daemon_message(e)) from None
    rows = [{**v, "Labels": ",".join(f"{k}={val}" for k, val in (v.get("Labels") or {}).items())}
            for v in sorted(found, key=lambda v: v["Name"])]
    template = "{{.Name}}" if quiet else (format_ or "table {{.Driver}}\t{{.Name}}")
    out(fmt.render(template, rows, VOLUME_HEADERS))
    return 0


@volume.command(name="inspect", context_settings=CONTEXT)
@_format_option
@click.argument("names", nargs=-1, required=True)
def volume_inspect(format_: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more volumes."""
    found, failed = [], False
    for name in names:
        try:
            found.append(api().inspect_volume(name))
        except docker.errors.APIError as e:
            click.echo(daemon_message(e), err=True)
            failed = True
    out(fmt.render(format_, found, {}) if format_ else json.dumps(found, indent=4, ensure_ascii=False) + "\n")
    return 1 if failed else 0


@volume.command(name="rm", context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Force the removal of one or more volumes")
@click.argument("names", nargs=-1, required=True)
def volume_rm(force: bool, names: tuple[str, ...]) -> int:
    """Remove one or more volumes."""
    return each(names, lambda n: _remove_volume(n, force))


def _remove_volume(name: str, force: bool) -> None:
    # docker-py's remove_volume drops ``force`` on the way (it hands the params to _url, which ignores them).
    a = api()
    a._raise_for_status(a._delete(a._url("/volumes/{0}", name), params={"force": "1"} if force else None))


@volume.command(name="prune", context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused volumes, not just anonymous ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--filter", "filters", multiple=True, help="Provide filter values (e.g. 'label=<label>')")
def volume_prune(all_: bool, force: bool, filters: tuple[str, ...]) -> int:
    """Remove unused local volumes."""
    if not force:
        click.echo("WARNING! This will remove all local volumes not used by at least one container." if all_ else
                   "WARNING! This will remove anonymous local volumes not used by at least one container.")
        if not click.confirm("Are you sure you want to continue?", default=False):
            return 0
    f = _filters(filters)
    if all_:
        f["all"] = ["true"]
    result = api().prune_volumes(filters=f or None)
    if result.get("VolumesDeleted"):
        click.echo("Deleted Volumes:\n" + "".join(v + "\n" for v in result["VolumesDeleted"]))
    click.echo(f"Total reclaimed space: {fmt.human_size(result.get('SpaceReclaimed') or 0)}")
    return 0


volume.add_command(volume_ls, "list")
volume.add_command(volume_rm, "remove")


# ---- networks


@cli.group(context_settings=CONTEXT)
def network() -> None:
    """Manage networks."""


@network.command(name="create", context_settings=CONTEXT)
@click.option("-d", "--driver", default="bridge", show_default=True, help="Driver to manage the Network")
@click.option("--subnet", default=None, help="Subnet in CIDR format that represents a network segment")
@click.option("--gateway", default=None, help="IPv4 Gateway for the master subnet")
@click.option("--ip-range", default=None, help="Allocate container ip from a sub-range")
@click.option("--internal", is_flag=True, help="Restrict external access to the network")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment")
@click.option("--label", "labels", multiple=True, help="Set metadata on a network")
@click.option("-o", "--opt", "opts", multiple=True, help="Set driver specific options")
@click.argument("name")
def network_create(driver: str, subnet: str | None, gateway: str | None, ip_range: str | None, internal: bool,
                   attachable: bool, labels: tuple[str, ...], opts: tuple[str, ...], name: str) -> int:
    """Create a network."""
    ipam = None
    if subnet or gateway or ip_range:
        pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway, iprange=ip_range)
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
    try:
        created = api().create_network(name, driver=driver, options=_options(opts, "opt") or None, ipam=ipam,
                                       internal=internal, attachable=attachable or None,
                                       labels=_options(labels, "label") or None)
    except docker.errors.APIError as e:
        raise StatusError(1, f"Error response from daemon: {daemon_message(e)}") from None
    click.echo(created["Id"])
    return 0


NETWORK_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "Internal": "INTERNAL",
                   "Labels": "LABELS", "CreatedAt": "CREATED AT"}


@network.command(name="ls", context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs")
@click.option("-f", "--filter", "filters", multiple=True, help="Provide filter values (e.g. 'driver=bridge')")
@click.option("--format", "format_", default=None, help="Format output using a Go-like template")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output")
def network_ls(quiet: bool, filters: tuple[str, ...], format_: str | None, no_trunc: bool) -> int:
    """List networks."""
    try:
        found = api().networks(filters=_filters(filters) or None)
    except docker.errors.APIError as e:
        raise StatusError(1, f"Error response from daemon: {daemon_message(e)}") from None
    rows = [{**n, "ID": n["Id"] if no_trunc else n["Id"][:12], "Internal": str(n.get("Internal", False)).lower(),
             "Labels": ",".join(f"{k}={v}" for k, v in (n.get("Labels") or {}).items()),
             "CreatedAt": n.get("Created", "")} for n in sorted(found, key=lambda n: n["Name"])]
    template = "{{.ID}}" if quiet else (format_ or "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}")
    out(fmt.render(template, rows, NETWORK_HEADERS))
    return 0


@network.command(name="inspect", context_settings=CONTEXT)
@_format_option
@click.argument("names", nargs=-1, required=True)
def network_inspect(format_: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more networks."""
    found, failed = [], False
    for name in names:
        try:
            found.append(api().inspect_network(name))
        except docker.errors.APIError as e:
            click.echo(f"Error response from daemon: {daemon_message(e)}", err=True)
            failed = True
    out(fmt.render(format_, found, {}) if format_ else json.dumps(found, indent=4, ensure_ascii=False) + "\n")
    return 1 if failed else 0


@network.command(name="rm", context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True)
def network_rm(names: tuple[str, ...]) -> int:
    """Remove one or more networks."""
    return each(names, lambda n: api().remove_network(n))


@network.command(name="connect", context_settings=CONTEXT)
@click.option("--alias", "aliases", multiple=True, help="Add network-scoped alias for the container")
@click.option("--ip", default=None, help="IPv4 address (e.g., 172.30.100.104)")
@click.argument("network_name")
@click.argument("container_name")
def network_connect(aliases: tuple[str, ...], ip: str | None, network_name: str, container_name: str) -> int:
    """Connect a container to a network."""
    try:
        api().connect_container_to_network(container_name, network_name, aliases=list(aliases) or None,
                                           ipv4_address=ip)
    except docker.errors.APIError as e:
        raise StatusError(1, f"Error response from daemon: {daemon_message(e)}") from None
    return 0


@network.command(name="disconnect", context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Force the container to disconnect from a network")
@click.argument("network_name")
@click.argument("container_name")
def network_disconnect(force: bool, network_name: str, container_name: str) -> int:
    """Disconnect a container from a network."""
    try:
        api().disconnect_container_from_network(container_name, network_name, force=force)
    except docker.errors.APIError as e:
        raise StatusError(1, f"Error response from daemon: {daemon_message(e)}") from None
    return 0


@network.command(name="prune", context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--filter", "filters", multiple=True, help="Provide filter values (e.g. 'until=<timestamp>')")
def network_prune(force: bool, filters: tuple[str, ...]) -> int:
    """Remove all unused networks."""
    if not force:
        click.echo("WARNING! This will remove all custom networks not used by at least one container.")
        if not click.confirm("Are you sure you want to continue?", default=False):
            return 0
    result = api().prune_networks(filters=_filters(filters) or None)
    if result.get("NetworksDeleted"):
        click.echo("Deleted Networks:\n" + "".join(n + "\n" for n in result["NetworksDeleted"]))
    return 0


network.add_command(network_ls, "list")
network.add_command(network_rm, "remove")


@cli.command(context_settings=CONTEXT)
@click.argument("container_name")
@click.argument("private_port", required=False)
def port(container_name: str, private_port: str | None) -> int:
    """List port mappings or a specific mapping for the container."""
    try:
        ports = api().inspect_container(container_name)["NetworkSettings"].get("Ports") or {}
    except docker.errors.APIError as e:
        raise StatusError(1, f"Error response from daemon: {daemon_message(e)}") from None
    if private_port is not None:
        key = private_port if "/" in private_port else f"{private_port}/tcp"
        bindings = ports.get(key)
        if not bindings:
            raise StatusError(1, f"Error: No public port '{key}' published for {container_name}")
        out("".join(f"{b['HostIp']}:{b['HostPort']}\n" for b in bindings))
        return 0
    lines = [f"{key} -> {b['HostIp']}:{b['HostPort']}" for key, bindings in sorted(ports.items())
             for b in bindings or []]
    out("".join(line + "\n" for line in lines))
    return 0


# ---- system


@cli.group(context_settings=CONTEXT)
def system() -> None:
    """Manage Skiff."""


@system.command(context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage")
@_format_option
def df(verbose: bool, format_: str | None) -> int:
    """Show disk usage."""
    d = api().df()
    imgs, conts, vols = d.get("Images") or [], d.get("Containers") or [], d.get("Volumes") or []
    cache = d.get("BuildCache") or []
    image_size = d.get("LayersSize") or sum(i.get("Size", 0) for i in imgs)
    image_active = [i for i in imgs if (i.get("Containers") or 0) > 0]
    reclaim_images = image_size - sum(i.get("Size", 0) for i in image_active)
    cont_size = sum(c.get("SizeRw", 0) or 0 for c in conts)
    running = [c for c in conts if c.get("State") in ("running", "paused", "restarting")]
    reclaim_conts = cont_size - sum(c.get("SizeRw", 0) or 0 for c in running)
    vol_size = sum(((v.get("UsageData") or {}).get("Size") or 0) for v in vols)
    vol_active = [v for v in vols if ((v.get("UsageData") or {}).get("RefCount") or 0) > 0]
    cache_size = sum(c.get("Size", 0) for c in cache)

    def pct(reclaim: int, total: int) -> str:
        return f"{fmt.human_size(reclaim, 4)} ({int(reclaim * 100 / total)}%)" if total else fmt.human_size(reclaim, 4)

    rows = [
        {"Type": "Images", "TotalCount": str(len(imgs)), "Active": str(len(image_active)),
         "Size": fmt.human_size(image_size, 4), "Reclaimable": pct(reclaim_images, image_size)},
        {"Type": "Containers", "TotalCount": str(len(conts)), "Active": str(len(running)),
         "Size": fmt.human_size(cont_size, 4), "Reclaimable": pct(reclaim_conts, cont_size)},
        {"Type": "Local Volumes", "TotalCount": str(len(vols)), "Active": str(len(vol_active)),
         "Size": fmt.human_size(vol_size, 4), "Reclaimable": pct(vol_size - 0, vol_size)},
        {"Type": "Build Cache", "TotalCount": str(len(cache)), "Active": "0", "Size": fmt.human_size(cache_size, 4),
         "Reclaimable": fmt.human_size(cache_size, 4)},
    ]
    template = format_ or "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
    out(fmt.render(template, rows, {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
                                    "Reclaimable": "RECLAIMABLE"}))
    return 0


@system.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images not just dangling ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--volumes", is_flag=True, help="Prune anonymous volumes")
@click.option("--filter", "filters", multiple=True, help="Provide filter values (e.g. 'label=<key>=<value>')")
def prune(all_: bool, force: bool, volumes: bool, filters: tuple[str, ...]) -> int:
    """Remove unused data."""
    if not force:
        click.echo("WARNING! This will remove:\n  - all stopped containers\n"
                   + ("  - all anonymous volumes not used by at least one container\n" if volumes else "")
                   + ("  - all images without at least one container associated to them\n" if all_
                      else "  - all dangling images\n"))
        if not click.confirm("Are you sure you want to continue?", default=False):
            return 0
    a = api()
    f = _filters(filters)
    reclaimed = 0
    result = a.prune_containers(filters=f or None)
    deleted = result.get("ContainersDeleted") or []
    reclaimed += result.get("SpaceReclaimed") or 0
    if deleted:
        click.echo("Deleted Containers:\n" + "".join(c + "\n" for c in deleted))
    if volumes:
        try:
            vres = a.prune_volumes(filters=f or None)
            reclaimed += vres.get("SpaceReclaimed") or 0
            if vres.get("VolumesDeleted"):
                click.echo("Deleted Volumes:\n" + "".join(v + "\n" for v in vres["VolumesDeleted"]))
        except docker.errors.APIError:
            pass
    ires = a.prune_images(filters={**f, "dangling": [str(not all_).lower()]})
    reclaimed += ires.get("SpaceReclaimed") or 0
    if ires.get("ImagesDeleted"):
        click.echo("Deleted Images:\n" + "".join(f"{k}: {v}\n" for item in ires["ImagesDeleted"]
                                                 for k, v in item.items()))
    click.echo(f"Total reclaimed space: {fmt.human_size(reclaimed)}")
    return 0


system.add_command(info, "info")
system.add_command(events, "events")


# ---- build


def _key_values(values: Iterable[str], what: str) -> dict[str, str | None]:
    """``--build-arg K=V`` / ``--label K=V``; a bare ``K`` takes the value from the environment (none: unset)."""
    found: dict[str, str | None] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key:
            raise click.UsageError(f"invalid {what} {item!r}: want KEY=VALUE")
        found[key] = value if sep else os.environ.get(key)
    return found


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--tag", "tags", multiple=True, help="Name and optionally a tag in the 'name:tag' format")
@click.option("-f", "--file", "dockerfile", default=None, help="Name of the Dockerfile (default: 'PATH/Dockerfile')")
@click.option("--build-arg", "build_args", multiple=True, help="Set build-time variables")
@click.option("--label", "labels", multiple=True, help="Set metadata for an image")
@click.option("--target", default=None, help="Set the target build stage to build")
@click.option("--no-cache", is_flag=True, help="Do not use cache when building the image")
@click.option("--pull", is_flag=True, help="Always attempt to pull a newer version of the image")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the build output and print image ID on success")
@click.option("--progress", type=click.Choice(["auto", "plain", "tty"]), default="auto", show_default=True,
              help="Set type of progress output")
@click.option("--network", default=None, help="Set the networking mode for the RUN instructions during build")
@click.option("--platform", default=None, help="Set platform if server is multi-platform capable")
@click.option("--rm/--no-rm", default=True, help="Remove intermediate containers after a successful build")
@click.option("--force-rm", is_flag=True, help="Always remove intermediate containers")
@click.argument("path")
def build(tags: tuple[str, ...], dockerfile: str | None, build_args: tuple[str, ...], labels: tuple[str, ...],
          target: str | None, no_cache: bool, pull: bool, quiet: bool, progress: str, network: str | None,
          platform: str | None, rm: bool, force_rm: bool, path: str) -> int:
    """Build an image from a Dockerfile (Docker's legacy builder protocol, POST /build)."""
    if not os.path.isdir(path):
        raise StatusError(1, f'unable to prepare context: path "{path}" not found')
    if dockerfile is not None and not os.path.isabs(dockerfile) and not os.path.exists(dockerfile):
        dockerfile = os.path.join(path, dockerfile)  # docker resolves -f against the context when not found here
    if dockerfile is not None:
        dockerfile = os.path.abspath(dockerfile)
    a = api()
    stream = a.build(path=path, dockerfile=dockerfile, tag=tags[0] if tags else None, quiet=quiet,
                     nocache=no_cache, rm=rm, forcerm=force_rm, pull=pull, target=target,
                     buildargs=_key_values(build_args, "--build-arg") or None,
                     labels={k: v or "" for k, v in _key_values(labels, "--label").items()} or None,
                     network_mode=network, platform=platform, decode=True)
    tty = progress == "tty" or (progress == "auto" and sys.stdout.isatty())
    image_id = _BuildDisplay(tty and not quiet, silent=quiet).show(stream)
    if quiet:
        click.echo(image_id)
        return 0
    for extra in tags[1:]:  # docker-py's build takes one tag; the rest are added as the CLI would
        from docker.utils import parse_repository_tag

        repo, name = parse_repository_tag(extra)
        a.tag(image_id, repo, name or "latest")
        out(f"Successfully tagged {_with_tag(extra)}\n")
    return 0


class _BuildDisplay:
    """The build's JSON stream on the terminal: docker's plain lines, or a live view of the steps (each step
    line with its outcome, the running step's last output lines below it)."""

    TAIL = 6

    def __init__(self, live: bool, silent: bool = False) -> None:
        self.live, self.silent = live, silent
        self.steps: list[list[str]] = []  # [step line, outcome]
        self.output: list[str] = []
        self.image_id = ""

    def show(self, stream: Iterable[dict]) -> str:
        if not self.live:
            for msg in stream:
                self._record(msg, plain=True)
            return self.image_id
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(self._render(), console=console, refresh_per_second=10, transient=False) as live:
            for msg in stream:
                self._record(msg, plain=False)
                live.update(self._render())
        return self.image_id

    def _record(self, msg: dict, plain: bool) -> None:
        if msg.get("error"):
            detail = msg.get("errorDetail") or {}
            raise StatusError(int(detail.get("code") or 1), msg["error"])
        if "aux" in msg:
            self.image_id = (msg["aux"] or {}).get("ID", self.image_id)
            return
        text = msg.get("stream") or msg.get("status") or ""
        match = re.match(r"^(?:Successfully built |)(sha256:[0-9a-f]{64})\s*$", text)
        if match:
            self.image_id = match.group(1)
        if plain:
            if not self.silent:
                out(text if "stream" in msg else text + "\n")
            return
        self._fold(text)

    def _fold(self, text: str) -> None:
        if text.startswith("Step "):
            self.steps.append([text.strip(), ""])
            self.output = []
        elif text.startswith(" ---> ") and self.steps:
            outcome = text[6:].strip()
            if not outcome.startswith("Running in"):
                self.steps[-1][1] = "cached" if outcome == "Using cache" else (self.steps[-1][1] or outcome)
        elif text.startswith(("Successfully", "Removing intermediate")) or text == "\n":
            if text.startswith("Successfully"):
                self.steps.append([text.strip(), "done"])
        else:
            self.output.extend(line for line in text.splitlines() if line.strip())
            self.output = self.output[-self.TAIL:]

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        lines = []
        for i, (step, outcome) in enumerate(self.steps):
            running = i == len(self.steps) - 1 and not outcome
            mark = "…" if running else "✔"
            lines.append(Text(f"{mark} {step}" + (f"  [{outcome}]" if outcome and outcome != "done" else ""),
                              style="bold" if running else "dim" if outcome == "cached" else ""))
        lines.extend(Text("    " + line, style="dim") for line in self.output)
        return Group(*lines)


# ---- management groups: `skiff container ls`, `skiff image ls`, ...


@cli.group(context_settings=CONTEXT)
def container() -> None:
    """Manage containers."""


@cli.group(context_settings=CONTEXT)
def image() -> None:
    """Manage images."""


for _name, _cmd in (("ls", ps), ("ps", ps), ("list", ps), ("run", run), ("create", create), ("start", start),
                    ("stop", stop), ("restart", restart), ("kill", kill), ("rm", rm), ("logs", logs),
                    ("exec", exec_), ("inspect", inspect), ("top", top), ("wait", wait), ("pause", pause),
                    ("unpause", unpause), ("rename", rename), ("stats", stats)):
    container.add_command(_cmd, _name)
for _name, _cmd in (("ls", images), ("list", images), ("pull", pull), ("push", push), ("tag", tag), ("rm", rmi),
                    ("save", save), ("load", load), ("import", import_), ("inspect", inspect)):
    image.add_command(_cmd, _name)
