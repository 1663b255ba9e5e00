"""``skiff compose``'s verbs (click), each a client of the Engine API through docker-py, as ``docker compose``.

The project is loaded once per command from ``-f``/``-p``/``--env-file``/``--profile``/``--project-directory``;
the engine is ``-H/--host``, else ``$SKIFF_HOST``, else the default socket. Interactive verbs (``exec``,
``run``) hand the terminal to ``skiff``'s own docker verbs, which already speak attach and exec.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterable
from typing import Any

import click
import docker
import docker.errors
import requests.exceptions
import yaml

from skiff import errors
from skiff.cli.compose import convert, model
from skiff.cli.compose.convergence import Converger, Progress, is_running
from skiff.cli.compose.loader import dependency_order, load_project
from skiff.cli.compose.model import Project
from skiff.cli.dockercli import formatting as fmt

DEFAULT_HOST = "unix:///run/skiff/engine.sock"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


class Session:
    """What every verb needs: the options that select the project, the engine client, the loaded project."""

    def __init__(self, host: str, files: tuple[str, ...], project_name: str | None, env_files: tuple[str, ...],
                 profiles: tuple[str, ...], project_directory: str | None) -> None:
        self.host = host
        self.options = {"files": files, "project_name": project_name, "env_files": env_files,
                        "profiles": profiles, "project_directory": project_directory}
        self._project: Project | None = None
        self._api: docker.APIClient | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = load_project(**self.options, warn=_warn)
        return self._project

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            self._api = docker.APIClient(base_url=self.host, version="auto", timeout=None)
        return self._api

    def converger(self) -> Converger:
        return Converger(self.api, self.project, Progress())


def _warn(message: str) -> None:
    click.echo(f"WARN[0000] {message}", err=True)


def session() -> Session:
    return click.get_current_context().find_object(Session)  # type: ignore[return-value]


def _services(names: Iterable[str]) -> list[str]:
    """The named services (all active ones when none), each checked to exist."""
    project = session().project
    names = list(names)
    for name in names:
        if name not in project.services and name not in project.disabled:
            raise errors.NotFound(f"no such service: {name}")
    return names or list(project.services)


def _with_dependencies(project: Project, names: Iterable[str]) -> list[str]:
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name in wanted:
            return
        wanted.add(name)
        for dependency in (project.services.get(name) or project.disabled.get(name) or {}).get("depends_on") or {}:
            add(dependency)

    for name in names:
        add(name)
    return [s for s in dependency_order({**project.services, **{k: v for k, v in project.disabled.items()
                                                                if k in wanted}}) if s in wanted]


# --------------------------------------------------------------------------------------------------
# The group
# --------------------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.option("-f", "--file", "files", multiple=True, help="Compose configuration files")
@click.option("-p", "--project-name", default=None, help="Project name")
@click.option("--env-file", "env_files", multiple=True, help="Specify an alternate environment file")
@click.option("--profile", "profiles", multiple=True, help="Specify a profile to enable")
@click.option("--project-directory", default=None, help="Specify an alternate working directory")
@click.option("-H", "--host", envvar="SKIFF_HOST", default=DEFAULT_HOST, help="Daemon socket to connect to")
@click.pass_context
def cli(ctx: click.Context, files: tuple[str, ...], project_name: str | None, env_files: tuple[str, ...],
        profiles: tuple[str, ...], project_directory: str | None, host: str) -> None:
    """Define and run multi-container applications with Skiff."""
    if "://" not in host:
        host = "unix://" + host if host.startswith("/") else "tcp://" + host
    ctx.obj = Session(host, files, project_name, env_files, profiles, project_directory)


def run_cli(argv: list[str]) -> int:
    try:
        result = cli.main(args=argv, prog_name="skiff compose", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        e.show()
        return 1
    except click.Abort:
        return 130
    except errors.SkiffError as e:
        click.echo(str(e), err=True)
        return 1
    except docker.errors.APIError as e:
        click.echo(f"Error response from daemon: {e.explanation or e}", err=True)
        return 1
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
        click.echo(f"Cannot connect to the Skiff daemon: {e}", err=True)
        return 1
    except BrokenPipeError:
        return 0


# --------------------------------------------------------------------------------------------------
# up, down
# --------------------------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("-d", "--detach", is_flag=True, help="Detached mode: run containers in the background")
@click.option("--build", "build_", is_flag=True, help="Build images before starting containers")
@click.option("--no-build", is_flag=True, help="Don't build an image, even if it's missing")
@click.option("--scale", multiple=True, help="Scale SERVICE to NUM instances (SERVICE=NUM)")
@click.option("--wait", is_flag=True, help="Wait for services to be running|healthy. Implies detached mode")
@click.option("--wait-timeout", type=float, default=None, help="Maximum duration to wait for the project")
@click.option("--remove-orphans", is_flag=True, help="Remove containers for services not defined in the file")
@click.option("--force-recreate", is_flag=True, help="Recreate containers even if their configuration is unchanged")
@click.option("--no-recreate", is_flag=True, help="If containers already exist, don't recreate them")
@click.option("--no-start", is_flag=True, help="Don't start the services after creating them")
@click.option("--no-deps", is_flag=True, help="Don't start linked services")
@click.argument("services", nargs=-1)
def up(detach: bool, build_: bool, no_build: bool, scale: tuple[str, ...], wait: bool, wait_timeout: float | None,
       remove_orphans: bool, force_recreate: bool, no_recreate: bool, no_start: bool, no_deps: bool,
       services: tuple[str, ...]) -> int:
    """Create and start containers."""
    s = session()
    project = s.project
    targets = _services(services) if no_deps else _with_dependencies(project, _services(services))
    _activate(project, targets)
    counts = _parse_scale(scale, project)
    converger = s.converger()
    orphans = converger.orphans()
    if orphans and remove_orphans:
        converger.remove(orphans)
    elif orphans:
        names = ", ".join(_container_name(c) for c in orphans)
        _warn(f"Found orphan containers ([{names}]) for this project. If you removed or renamed this service in "
              "your compose file, you can run this command with the --remove-orphans flag to clean it up.")
    ensure_images(s, targets, build=build_, no_build=no_build)
    converger.ensure_networks(targets)
    converger.ensure_volumes(targets)
    converger.converge(targets, scale=counts, force_recreate=force_recreate, no_recreate=no_recreate,
                       start=not no_start, wait_timeout=wait_timeout)
    if no_start:
        return 0
    if wait:
        converger.wait_services(targets, wait_timeout)
        return 0
    if detach:
        return 0
    return _attach_foreground(s, targets)


def _activate(project: Project, targets: Iterable[str]) -> None:
    """Services named on the command line (or pulled in as dependencies) run whatever their profiles."""
    for name in targets:
        if name in project.disabled:
            project.services[name] = project.disabled.pop(name)


def _parse_scale(values: Iterable[str], project: Project) -> dict[str, int]:
    counts = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.isdigit():
            raise errors.InvalidArgument(f"invalid --scale value {value!r}: want SERVICE=NUM")
        if name not in project.services:
            raise errors.NotFound(f"no such service: {name}")
        counts[name] = int(number)
    return counts


def _attach_foreground(s: Session, services: list[str]) -> int:
    """``up`` without -d: the containers' logs until they all exit; Ctrl-C stops them."""
    converger = s.converger()
    try:
        _follow_logs(s.api, converger.containers(services), follow=True, tail="all", timestamps=False, prefix=True)
    except KeyboardInterrupt:
        click.echo("Gracefully stopping... (press Ctrl+C again to force)", err=True)
        converger.stop(services)
        return 130
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-v", "--volumes", is_flag=True, help="Remove named volumes declared in the volumes section and "
              "anonymous volumes attached to containers")
@click.option("--rmi", default=None, help='Remove images used by services: "local" or "all"')
@click.option("--remove-orphans", is_flag=True, help="Remove containers for services not defined in the file")
@click.option("-t", "--timeout", type=int, default=None, help="Specify a shutdown timeout in seconds")
def down(volumes: bool, rmi: str | None, remove_orphans: bool, timeout: int | None) -> int:
    """Stop and remove containers, networks."""
    session().converger().down(volumes=volumes, remove_orphans=remove_orphans, rmi=rmi, timeout=timeout)
    return 0


# --------------------------------------------------------------------------------------------------
# Images: build, pull, push
# --------------------------------------------------------------------------------------------------


def ensure_images(s: Session, services: Iterable[str], *, build: bool = False, no_build: bool = False) -> None:
    """Build what must be built (``--build``, or a build whose image is missing), pull what is missing."""
    project = s.project
    for name in services:
        spec = project.services[name]
        image = project.image_name(name)
        policy = spec.get("pull_policy", "missing")
        present = _image_exists(s.api, image)
        if spec.get("build") and not no_build and (build or policy == "build" or not present):
            build_image(s, name)
        elif policy == "always" or (not present and policy in ("missing", "if_not_present")):
            if policy == "never":
                raise errors.NotFound(f"No such image: {image}")
            pull_image(s, name)


def _image_exists(api: docker.APIClient, image: str) -> bool:
    try:
        api.inspect_image(image)
        return True
    except docker.errors.NotFound:
        return False


def build_image(s: Session, service: str, no_cache: bool = False, pull: bool = False) -> None:
    spec = s.project.services.get(service) or s.project.disabled[service]
    build = spec["build"]
    tag = s.project.image_name(service)
    progress = Progress()
    progress("Service", service, "Building")
    stream = s.api.build(path=build["context"], dockerfile=build.get("dockerfile"), tag=tag,
                         buildargs={k: v for k, v in (build.get("args") or {}).items() if v is not None} or None,
                         target=build.get("target"), nocache=no_cache or bool(build.get("no_cache")),
                         pull=pull or bool(build.get("pull")), rm=True, decode=True,
                         labels={model.PROJECT: s.project.name, model.SERVICE: service,
                                 model.VERSION: model.COMPOSE_VERSION})
    for item in stream:
        if "error" in item:
            raise errors.SystemFailure(f"failed to build service {service}: {item['error'].strip()}")
        if item.get("stream"):
            sys.stderr.write(item["stream"])
    progress("Service", service, "Built")


def pull_image(s: Session, service: str) -> None:
    image = s.project.image_name(service)
    repository, tag = _split_tag(image)
    progress = Progress()
    progress("Image", image, "Pulling")
    for item in s.api.pull(repository, tag=tag, stream=True, decode=True):
        if "error" in item:
            raise errors.SystemFailure(f"Error response from daemon: {item['error']}")
    progress("Image", image, "Pulled")


def _split_tag(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


@cli.command(context_settings=CONTEXT)
@click.option("--no-cache", is_flag=True, help="Do not use cache when building the image")
@click.option("--pull", is_flag=True, help="Always attempt to pull a newer version of the image")
@click.argument("services", nargs=-1)
def build(no_cache: bool, pull: bool, services: tuple[str, ...]) -> int:
    """Build or rebuild services."""
    s = session()
    for name in _services(services):
        spec = s.project.services.get(name) or s.project.disabled[name]
        if spec.get("build"):
            build_image(s, name, no_cache=no_cache, pull=pull)
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("--ignore-buildable", is_flag=True, help="Ignore images that can be built")
@click.argument("services", nargs=-1)
def pull(ignore_buildable: bool, services: tuple[str, ...]) -> int:
    """Pull service images."""
    s = session()
    for name in _services(services):
        spec = s.project.services[name]
        if spec.get("image") and not (ignore_buildable and spec.get("build")):
            pull_image(s, name)
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("services", nargs=-1)
def push(services: tuple[str, ...]) -> int:
    """Push service images."""
    s = session()
    for name in _services(services):
        image = s.project.image_name(name)
        repository, tag = _split_tag(image)
        Progress()("Image", image, "Pushing")
        for item in s.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in item:
                raise errors.SystemFailure(f"failed to push {image}: {item['error']}")
        Progress()("Image", image, "Pushed")
    return 0


# --------------------------------------------------------------------------------------------------
# Inspecting: ps, logs, images, top, port, config
# --------------------------------------------------------------------------------------------------


def _container_name(c: dict) -> str:
    return (c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/")


def _ports_text(ports: list[dict] | None) -> str:
    shown = []
    for p in sorted(ports or [], key=lambda p: (p.get("PrivatePort", 0), p.get("Type", ""), p.get("IP", ""))):
        private = f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        if p.get("PublicPort"):
            ip = p.get("IP") or "0.0.0.0"
            shown.append(f"{f'[{ip}]' if ':' in ip else ip}:{p['PublicPort']}->{private}")
        else:
            shown.append(private)
    return ", ".join(dict.fromkeys(shown))


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all stopped containers")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--services", "services_only", is_flag=True, help="Display services")
@click.option("--format", "format_", default="table", help="Format the output: table or json")
@click.argument("services", nargs=-1)
def ps(all_: bool, quiet: bool, services_only: bool, format_: str, services: tuple[str, ...]) -> int:
    """List containers."""
    s = session()
    found = s.converger().containers(_services(services), stopped=all_)
    if quiet:
        click.echo("".join(c["Id"] + "\n" for c in found), nl=False)
        return 0
    if services_only:
        click.echo("".join(dict.fromkeys(c["Labels"][model.SERVICE] + "\n" for c in found)), nl=False)
        return 0
    rows = [{"ID": c["Id"], "Name": _container_name(c), "Image": c.get("Image", ""),
             "Command": c.get("Command", ""), "Project": s.project.name, "Service": c["Labels"][model.SERVICE],
             "Created": c.get("Created", 0), "State": c.get("State", ""), "Status": c.get("Status", ""),
             "Health": _health_word(c.get("Status", "")), "ExitCode": 0, "Ports": _ports_text(c.get("Ports")),
             "Labels": c.get("Labels")} for c in found]
    if format_ == "json":
        click.echo("".join(json.dumps(r) + "\n" for r in rows), nl=False)
        return 0
    table = [["NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS"]]
    table += [[r["Name"], r["Image"], json.dumps(fmt.ellipsis(r["Command"], 20), ensure_ascii=False), r["Service"],
               fmt.ago(r["Created"]), r["Status"], r["Ports"]] for r in rows]
    click.echo(fmt.tabwrite(table), nl=False)
    return 0


def _health_word(status: str) -> str:
    for word in ("healthy", "unhealthy", "starting"):
        if f"({word})" in status or f"health: {word}" in status:
            return word
    return ""


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("-n", "--tail", default="all", help="Number of lines to show from the end of the logs")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--no-log-prefix", is_flag=True, help="Don't print prefix in logs")
@click.argument("services", nargs=-1)
def logs(follow: bool, tail: str, timestamps: bool, no_log_prefix: bool, services: tuple[str, ...]) -> int:
    """View output from containers."""
    s = session()
    containers = s.converger().containers(_services(services))
    try:
        _follow_logs(s.api, containers, follow=follow, tail=tail, timestamps=timestamps, prefix=not no_log_prefix)
    except KeyboardInterrupt:
        return 130
    return 0


def _follow_logs(api: docker.APIClient, containers: list[dict], *, follow: bool, tail: str, timestamps: bool,
                 prefix: bool) -> None:
    """Each container's log lines, prefixed ``<service>-<n>  | `` (names padded alike), one thread each."""
    names = {c["Id"]: _short_name(c) for c in containers}
    width = max((len(n) for n in names.values()), default=0)
    lock = threading.Lock()

    def copy(c: dict) -> None:
        head = f"{names[c['Id']].ljust(width)}  | " if prefix else ""
        pending = b""
        for chunk in api.logs(c["Id"], stream=True, follow=follow, timestamps=timestamps,
                              tail=tail if tail == "all" else int(tail)):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with lock:
                for line in lines:
                    sys.stdout.write(head + line.decode(errors="replace") + "\n")
                sys.stdout.flush()
        if pending:
            with lock:
                sys.stdout.write(head + pending.decode(errors="replace") + "\n")
                sys.stdout.flush()

    threads = [threading.Thread(target=copy, args=(c,), daemon=True) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # wakes up for Ctrl-C


def _short_name(c: dict) -> str:
    """The container's name without the project: ``web-1`` (or its container_name)."""
    labels = c.get("Labels") or {}
    name = _container_name(c)
    expected = f"{labels.get(model.PROJECT)}-{labels.get(model.SERVICE)}-{labels.get(model.NUMBER)}"
    return f"{labels.get(model.SERVICE)}-{labels.get(model.NUMBER)}" if name == expected else name


@cli.command(context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.argument("services", nargs=-1)
def images(quiet: bool, services: tuple[str, ...]) -> int:
    """List images used by the created containers."""
    s = session()
    rows = []
    for c in s.converger().containers(_services(services)):
        image = s.api.inspect_image(c["ImageID"])
        repository, _, tag = (c.get("Image") or "").rpartition(":") if ":" in (c.get("Image") or "") else \
            (c.get("Image"), "", "latest")
        rows.append([_container_name(c), repository, tag, image["Id"].split(":")[-1][:12],
                     fmt.human_size(image.get("Size") or 0)])
    if quiet:
        click.echo("".join(dict.fromkeys(r[3] + "\n" for r in rows)), nl=False)
        return 0
    click.echo(fmt.tabwrite([["CONTAINER", "REPOSITORY", "TAG", "IMAGE ID", "SIZE"], *rows]), nl=False)
    return 0


@cli.command(context_settings=CONTEXT)
@click.argument("services", nargs=-1)
def top(services: tuple[str, ...]) -> int:
    """Display the running processes."""
    s = session()
    for c in s.converger().containers(_services(services), stopped=False):
        result = s.api.top(c["Id"])
        click.echo(_container_name(c))
        click.echo(fmt.tabwrite([result["Titles"], *(result.get("Processes") or [])]))
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("--index", type=int, default=1, help="Index of the container if service has multiple replicas")
@click.option("--protocol", default="tcp", help="tcp or udp")
@click.argument("service")
@click.argument("private_port")
def port(index: int, protocol: str, service: str, private_port: str) -> int:
    """Print the public port for a port binding."""
    s = session()
    container = _container(s, service, index)
    ports = s.api.inspect_container(container["Id"])["NetworkSettings"].get("Ports") or {}
    bindings = ports.get(f"{private_port}/{protocol}") or []
    if not bindings:
        raise errors.NotFound(f"no port {private_port}/{protocol} for container {_container_name(container)}")
    binding = bindings[0]
    click.echo(f"{binding.get('HostIp') or '0.0.0.0'}:{binding['HostPort']}")
    return 0


def _container(s: Session, service: str, index: int) -> dict:
    _services([service])
    for c in s.converger().containers([service]):
        if c["Labels"].get(model.NUMBER) == str(index):
            return c
    raise errors.NotFound(f"service \"{service}\" is not running container #{index}")


@cli.command(context_settings=CONTEXT)
@click.option("--services", "services_only", is_flag=True, help="Print the service names, one per line")
@click.option("--volumes", "volumes_only", is_flag=True, help="Print the volume names, one per line")
@click.option("-q", "--quiet", is_flag=True, help="Only validate the configuration, don't print anything")
@click.option("--format", "format_", default="yaml", help="Format the output: yaml or json")
def config(services_only: bool, volumes_only: bool, quiet: bool, format_: str) -> int:
    """Parse, resolve and render the compose file in canonical format."""
    project = session().project
    if quiet:
        return 0
    if services_only:
        click.echo("".join(f"{name}\n" for name in project.services), nl=False)
    elif volumes_only:
        click.echo("".join(f"{name}\n" for name in project.volumes), nl=False)
    elif format_ == "json":
        click.echo(json.dumps(project.to_dict(), indent=2))
    else:
        click.echo(yaml.safe_dump(project.to_dict(), sort_keys=False, default_flow_style=False), nl=False)
    return 0


# --------------------------------------------------------------------------------------------------
# Lifecycle: start, stop, restart, rm
# --------------------------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("services", nargs=-1)
def start(services: tuple[str, ...]) -> int:
    """Start services."""
    s = session()
    converger = s.converger()
    for name in dependency_order(s.project.services):
        if name not in _services(services):
            continue
        converger.wait_dependencies(name)
        for c in converger.containers([name]):
            if not is_running(c):
                converger._start(_container_name(c), c["Id"])
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--timeout", type=int, default=None, help="Specify a shutdown timeout in seconds")
@click.argument("services", nargs=-1)
def stop(timeout: int | None, services: tuple[str, ...]) -> int:
    """Stop services."""
    session().converger().stop(_services(services), timeout)
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--timeout", type=int, default=None, help="Specify a shutdown timeout in seconds")
@click.argument("services", nargs=-1)
def restart(timeout: int | None, services: tuple[str, ...]) -> int:
    """Restart service containers."""
    s = session()
    converger = s.converger()
    for c in converger.containers(_services(services)):
        name = _container_name(c)
        Progress()("Container", name, "Restarting")
        s.api.restart(c["Id"], timeout=converger.stop_timeout(c) if timeout is None else timeout)
        Progress()("Container", name, "Started")
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Don't ask to confirm removal")
@click.option("-s", "--stop", "stop_first", is_flag=True, help="Stop the containers, if required, before removing")
@click.option("-v", "--volumes", is_flag=True, help="Remove any anonymous volumes attached to containers")
@click.argument("services", nargs=-1)
def rm(force: bool, stop_first: bool, volumes: bool, services: tuple[str, ...]) -> int:
    """Removes stopped service containers."""
    s = session()
    converger = s.converger()
    names = _services(services)
    if stop_first:
        converger.stop(names)
    stopped = [c for c in converger.containers(names) if not is_running(c)]
    if not stopped:
        click.echo("No stopped containers", err=True)
        return 0
    if not force:
        listing = ", ".join(_container_name(c) for c in stopped)
        if not sys.stdin.isatty():
            raise errors.InvalidArgument(f"Going to remove {listing}: confirm on a terminal, or use -f")
        if not click.confirm(f"Going to remove {listing}\nAre you sure?", err=True):
            return 0
    converger.remove(stopped, volumes=volumes)
    return 0


# --------------------------------------------------------------------------------------------------
# exec, run
# --------------------------------------------------------------------------------------------------


def _docker_verb(s: Session, *args: str) -> int:
    """Run one of skiff's docker verbs against the same engine (they own the terminal handling)."""
    from skiff.cli.dockercli import main as docker_main

    return docker_main(["-H", s.host, *args])


@cli.command(name="exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Detached mode: Run command in the background")
@click.option("-T", "--no-TTY", "no_tty", is_flag=True, help="Disable pseudo-TTY allocation")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("-u", "--user", default=None, help="Run the command as this user")
@click.option("-w", "--workdir", default=None, help="Path to workdir directory for this command")
@click.option("--privileged", is_flag=True, help="Give extended privileges to the process")
@click.option("--index", type=int, default=1, help="Index of the container if service has multiple replicas")
@click.argument("service")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(detach: bool, no_tty: bool, env: tuple[str, ...], user: str | None, workdir: str | None, privileged: bool,
          index: int, service: str, command: tuple[str, ...]) -> int:
    """Execute a command in a running container."""
    s = session()
    container = _container(s, service, index)
    flags = ["-d"] if detach else ["-i", *(["-t"] if not no_tty and sys.stdin.isatty() else [])]
    flags += [a for e in env for a in ("-e", e)]
    flags += [*(["-u", user] if user else []), *(["-w", workdir] if workdir else []),
              *(["--privileged"] if privileged else [])]
    return _docker_verb(s, "exec", *flags, container["Id"], *command)


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run container in background and print container ID")
@click.option("--rm", "remove", is_flag=True, help="Automatically remove the container when it exits")
@click.option("-T", "--no-TTY", "no_tty", is_flag=True, help="Disable pseudo-TTY allocation")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("--entrypoint", default=None, help="Override the entrypoint of the image")
@click.option("--name", default=None, help="Assign a name to the container")
@click.option("-u", "--user", default=None, help="Run as specified username or uid")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container")
@click.option("--no-deps", is_flag=True, help="Don't start linked services")
@click.option("--service-ports", is_flag=True, help="Run command with the service's ports published")
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(detach: bool, remove: bool, no_tty: bool, env: tuple[str, ...], entrypoint: str | None, name: str | None,
        user: str | None, workdir: str | None, no_deps: bool, service_ports: bool, service: str,
        command: tuple[str, ...]) -> int:
    """Run a one-off command on a service."""
    s = session()
    project = s.project
    _services([service])
    _activate(project, [service])
    converger = s.converger()
    dependencies = [d for d in _with_dependencies(project, [service]) if d != service]
    _activate(project, dependencies)
    ensure_images(s, [service])
    converger.ensure_networks([service, *dependencies])
    converger.ensure_volumes([service, *dependencies])
    if dependencies and not no_deps:
        ensure_images(s, dependencies)
        converger.converge(dependencies, no_recreate=True)
        converger.wait_dependencies(service)
    tty = not no_tty and not detach and sys.stdin.isatty()
    overrides: dict[str, Any] = {"Tty": tty, "OpenStdin": not detach, "StdinOnce": not detach,
                                 "AttachStdin": not detach, "AttachStdout": not detach, "AttachStderr": not detach}
    if command:
        overrides["Cmd"] = list(command)
    if entrypoint is not None:
        overrides["Entrypoint"] = [entrypoint] if entrypoint else [""]
    if env:
        base = dict(v.split("=", 1) for v in convert.create_body(project, service, 1)["Env"] or [] if "=" in v)
        base.update(e.partition("=")[::2] for e in env)
        overrides["Env"] = [f"{k}={v}" for k, v in base.items()]
    if user:
        overrides["User"] = user
    if workdir:
        overrides["WorkingDir"] = workdir
    body = convert.create_body(project, service, 1, oneoff=True, overrides=overrides)
    body["Labels"][model.NUMBER] = "1"
    if not service_ports:
        body["HostConfig"].pop("PortBindings", None)
    if remove:
        body["HostConfig"]["AutoRemove"] = True
    container_name = name or f"{project.name}-{service}-run-{secrets.token_hex(6)}"
    created = s.api.create_container_from_config(body, container_name)
    if detach:
        s.api.start(created["Id"])
        click.echo(container_name)
        return 0
    return _docker_verb(s, "start", "-a", "-i", created["Id"])


def main(argv: list[str]) -> int:
    return run_cli(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
