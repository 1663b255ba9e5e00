"""Bringing the engine to what the project describes, as Docker Compose v2 converges: through the Engine API.

For each service (dependencies first) the containers labelled with the project and service are compared
with the wanted number of replicas and the service's config hash: a container whose hash differs is
recreated (the new one takes its number), a stopped one is started, extras (highest numbers) are removed,
missing ones are created with the next numbers. ``plan_service`` decides; ``Converger`` does it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import docker.errors
import docker.types

from skiff import errors
from skiff.cli.compose import convert, model
from skiff.cli.compose.loader import dependency_order, parse_duration
from skiff.cli.compose.model import Project

DEFAULT_STOP_TIMEOUT = 10
POLL_SECONDS = 0.1


@dataclass
class Action:
    """One step for one container: create | recreate | start | keep | remove."""

    kind: str
    number: int
    container: dict | None = None  # the existing container's summary (GET /containers/json)


def number_of(container: dict) -> int:
    try:
        return int((container.get("Labels") or {}).get(model.NUMBER, "0"))
    except ValueError:
        return 0


def is_running(container: dict) -> bool:
    return container.get("State") in ("running", "restarting", "paused")


def plan_service(config_hash: str, replicas: int, existing: Iterable[dict], *, image_id: str = "",
                 force_recreate: bool = False, no_recreate: bool = False) -> list[Action]:
    """What to do to reach ``replicas`` containers with ``config_hash`` (and, when known, ``image_id``: a pulled
    or rebuilt image recreates too, as Compose's image digest label does) from the ``existing`` ones."""
    containers = sorted(existing, key=number_of)

    def obsolete(c: dict) -> bool:
        labels = c.get("Labels") or {}
        changed = labels.get(model.CONFIG_HASH) != config_hash or bool(image_id and labels.get(model.IMAGE)
                                                                          and labels[model.IMAGE] != image_id)
        return not no_recreate and (force_recreate or changed)

    actions: list[Action] = []
    if len(containers) > replicas:
        # Keep the up-to-date, running, lowest-numbered ones; remove the rest.
        ranked = sorted(containers, key=lambda c: (obsolete(c), not is_running(c), number_of(c)))
        keep = {id(c) for c in ranked[:replicas]}
        actions += [Action("remove", number_of(c), c) for c in containers if id(c) not in keep]
        containers = [c for c in containers if id(c) in keep]
    for c in containers:
        if obsolete(c):
            actions.append(Action("recreate", number_of(c), c))
        elif not is_running(c):
            actions.append(Action("start", number_of(c), c))
        else:
            actions.append(Action("keep", number_of(c), c))
    next_number = max([number_of(c) for c in existing] or [0]) + 1
    actions += [Action("create", next_number + i) for i in range(replicas - len(containers))]
    return actions


class Progress:
    """Compose's plain progress lines on stderr: `` Container demo-web-1  Started``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, kind: str, name: str, status: str) -> None:
        self.stream.write(f" {kind} {name}  {status}\n")
        self.stream.flush()


class Converger:
    """The project's containers, networks and volumes on one engine (``api``: docker-py's APIClient)."""

    def __init__(self, api: Any, project: Project, progress: Callable[[str, str, str], None] | None = None) -> None:
        self.api = api
        self.project = project
        self.progress = progress or Progress()

    # ---- what exists

    def containers(self, services: Iterable[str] | None = None, *, stopped: bool = True,
                   oneoff: bool | None = False) -> list[dict]:
        """The project's containers (of ``services``), by their labels, ordered by service and number."""
        labels = [f"{model.PROJECT}={self.project.name}"]
        if oneoff is not None:
            labels.append(f"{model.ONEOFF}={'True' if oneoff else 'False'}")
        found = self.api.containers(all=stopped, filters={"label": labels})
        wanted = set(services) if services is not None else None
        found = [c for c in found if wanted is None or (c.get("Labels") or {}).get(model.SERVICE) in wanted]
        return sorted(found, key=lambda c: ((c.get("Labels") or {}).get(model.SERVICE, ""), number_of(c)))

    def orphans(self) -> list[dict]:
        known = set(self.project.services) | set(self.project.disabled)
        return [c for c in self.containers() if (c.get("Labels") or {}).get(model.SERVICE) not in known]

    # ---- networks and volumes

    def ensure_networks(self, services: Iterable[str]) -> None:
        used = {key for s in services for key in (self.project.services[s].get("networks") or {})}
        for key in sorted(used):
            spec = self.project.networks.get(key) or {}
            name = self.project.network_name(key)
            if self._exists("network", name):
                continue
            if spec.get("external"):
                raise errors.NotFound(f"network {name} declared as external, but could not be found")
            self.progress("Network", name, "Creating")
            labels = {**(spec.get("labels") or {}), model.NETWORK: key, model.PROJECT: self.project.name,
                      model.VERSION: model.COMPOSE_VERSION}
            ipam = spec.get("ipam")
            self.api.create_network(name, driver=spec.get("driver") or "bridge", options=spec.get("driver_opts"),
                                    labels=labels, internal=bool(spec.get("internal")),
                                    attachable=bool(spec.get("attachable")), enable_ipv6=spec.get("enable_ipv6"),
                                    ipam=_ipam(ipam) if ipam else None, check_duplicate=True)
            self.progress("Network", name, "Created")

    def ensure_volumes(self, services: Iterable[str]) -> None:
        used = {v["source"] for s in services for v in self.project.services[s].get("volumes") or []
                if v["type"] == "volume" and v.get("source")}
        for key in sorted(used):
            spec = self.project.volumes.get(key) or {}
            name = self.project.volume_name(key)
            if self._exists("volume", name):
                continue
            if spec.get("external"):
                raise errors.NotFound(f'external volume "{name}" not found')
            self.progress("Volume", f'"{name}"', "Creating")
            labels = {**(spec.get("labels") or {}), model.VOLUME: key, model.PROJECT: self.project.name,
                      model.VERSION: model.COMPOSE_VERSION}
            self.api.create_volume(name, driver=spec.get("driver") or "local", driver_opts=spec.get("driver_opts"),
                                   labels=labels)
            self.progress("Volume", f'"{name}"', "Created")

    def _exists(self, kind: str, name: str) -> bool:
        try:
            (self.api.inspect_network if kind == "network" else self.api.inspect_volume)(name)
            return True
        except docker.errors.NotFound:
            return False

    # ---- converging services

    def converge(self, services: Iterable[str], *, scale: dict[str, int] | None = None, force_recreate: bool = False,
                 no_recreate: bool = False, start: bool = True, wait_timeout: float | None = None) -> None:
        """Each of ``services`` (in dependency order, each after its dependencies' conditions hold)."""
        wanted = set(services)
        for service in dependency_order(self.project.services):
            if service not in wanted:
                continue
            spec = self.project.services[service]
            if start:
                self.wait_dependencies(service, wait_timeout)
            replicas = (scale or {}).get(service, model.replicas(spec))
            actions = plan_service(model.config_hash(spec), replicas, self.containers([service]),
                                   image_id=self._image_id(service), force_recreate=force_recreate,
                                   no_recreate=no_recreate)
            for action in actions:
                self._apply(service, action, start)

    def _apply(self, service: str, action: Action, start: bool) -> None:
        old = action.container
        if action.kind == "keep":
            self.progress("Container", _name(old), "Running")
        elif action.kind == "start":
            if start:
                self._start(_name(old), old["Id"])
        elif action.kind == "remove":
            self._stop(old)
            self.progress("Container", _name(old), "Removing")
            self.api.remove_container(old["Id"], v=False, force=True)
            self.progress("Container", _name(old), "Removed")
        elif action.kind == "create":
            cid, name = self.create(service, action.number)
            if start:
                self._start(name, cid)
        elif action.kind == "recreate":
            name = _name(old)
            self.progress("Container", name, "Recreate")
            self._stop(old, quiet=True)
            self.api.rename(old["Id"], f"{old['Id'][:12]}_{name}")
            cid, name = self.create(service, action.number, quiet=True)
            self.api.remove_container(old["Id"], v=False, force=True)
            self.progress("Container", name, "Recreated")
            if start:
                self._start(name, cid)

    def create(self, service: str, number: int, *, quiet: bool = False) -> tuple[str, str]:
        name = self.project.container_name(service, number)
        if not quiet:
            self.progress("Container", name, "Creating")
        body = convert.create_body(self.project, service, number, image_id=self._image_id(service),
                                   container_of=self._service_containers())
        try:
            created = self.api.create_container_from_config(body, name)
        except docker.errors.APIError as e:
            raise errors.InvalidArgument(f"Error response from daemon: {e.explanation or e}") from None
        if not quiet:
            self.progress("Container", name, "Created")
        return created["Id"], name

    def _image_id(self, service: str) -> str:
        try:
            return self.api.inspect_image(self.project.image_name(service))["Id"]
        except docker.errors.NotFound:
            return ""

    def _service_containers(self) -> dict[str, str]:
        """One container id per service (what ``network_mode: service:x`` joins)."""
        result: dict[str, str] = {}
        for c in self.containers():
            result.setdefault((c.get("Labels") or {}).get(model.SERVICE, ""), c["Id"])
        return result

    def _start(self, name: str, cid: str) -> None:
        self.progress("Container", name, "Starting")
        try:
            self.api.start(cid)
        except docker.errors.APIError as e:
            raise errors.InvalidArgument(f"Error response from daemon: {e.explanation or e}") from None
        self.progress("Container", name, "Started")

    def _stop(self, container: dict, quiet: bool = False) -> None:
        if not is_running(container):
            return
        name = _name(container)
        if not quiet:
            self.progress("Container", name, "Stopping")
        self.api.stop(container["Id"], timeout=self.stop_timeout(container))
        if not quiet:
            self.progress("Container", name, "Stopped")

    def stop_timeout(self, container: dict) -> int:
        service = (container.get("Labels") or {}).get(model.SERVICE, "")
        spec = self.project.services.get(service) or {}
        grace = spec.get("stop_grace_period")
        return int(parse_duration(grace)) if grace else DEFAULT_STOP_TIMEOUT

    # ---- waiting

    def wait_dependencies(self, service: str, timeout: float | None = None) -> None:
        """Block until each dependency's condition holds (started, healthy, completed successfully)."""
        for dependency, spec in (self.project.services[service].get("depends_on") or {}).items():
            if dependency not in self.project.services:
                continue
            condition = spec["condition"]
            if condition == "service_started":
                continue
            for container in self.containers([dependency]):
                self.progress("Container", _name(container), "Waiting")
                if condition == "service_healthy":
                    self.wait_healthy(container, timeout)
                    self.progress("Container", _name(container), "Healthy")
                else:
                    self.wait_completed(container, dependency, timeout)
                    self.progress("Container", _name(container), "Exited")

    def wait_healthy(self, container: dict, timeout: float | None = None) -> None:
        """Running and, if it has a health check, healthy; an exit or ``unhealthy`` is an error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.api.inspect_container(container["Id"])["State"]
            health = (state.get("Health") or {}).get("Status")
            if state.get("Status") == "exited" or state.get("Status") == "dead":
                raise errors.SystemFailure(f"dependency failed to start: container {_name(container)} exited "
                                           f"({state.get('ExitCode')})")
            if health == "unhealthy":
                raise errors.SystemFailure(f"dependency failed to start: container {_name(container)} is unhealthy")
            if state.get("Running") and health in (None, "healthy"):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise errors.SystemFailure(f"timeout waiting for container {_name(container)} to be healthy")
            time.sleep(POLL_SECONDS)

    def wait_completed(self, container: dict, service: str, timeout: float | None = None) -> None:
        result = self.api.wait(container["Id"], timeout=timeout)
        code = result.get("StatusCode", 0) if isinstance(result, dict) else int(result)
        if code != 0:
            raise errors.SystemFailure(f'service "{service}" didn\'t complete successfully: exit {code}')

    def wait_services(self, services: Iterable[str], timeout: float | None = None) -> None:
        """``up --wait``: every container running and healthy (one-shot services that exited 0 count as done)."""
        for container in self.containers(services):
            if container.get("State") == "exited" and container.get("Status", "").startswith("Exited (0)"):
                continue
            self.progress("Container", _name(container), "Waiting")
            self.wait_healthy(container, timeout)
            self.progress("Container", _name(container), "Healthy")

    # ---- taking things down

    def stop(self, services: Iterable[str] | None = None, timeout: int | None = None) -> None:
        """Stop the containers, dependents before their dependencies."""
        for container in self._reverse_order(self.containers(services, stopped=False, oneoff=None)):
            name = _name(container)
            self.progress("Container", name, "Stopping")
            self.api.stop(container["Id"], timeout=self.stop_timeout(container) if timeout is None else timeout)
            self.progress("Container", name, "Stopped")

    def remove(self, containers: Iterable[dict], volumes: bool = False) -> None:
        for container in containers:
            name = _name(container)
            self.progress("Container", name, "Removing")
            self.api.remove_container(container["Id"], v=volumes, force=True)
            self.progress("Container", name, "Removed")

    def _reverse_order(self, containers: list[dict]) -> list[dict]:
        order = {s: i for i, s in enumerate(dependency_order(self.project.services))}
        return sorted(containers, key=lambda c: -order.get((c.get("Labels") or {}).get(model.SERVICE, ""), -1))

    def down(self, *, volumes: bool = False, remove_orphans: bool = False, rmi: str | None = None,
             timeout: int | None = None) -> None:
        """Stop and remove the project's containers, then its networks; ``volumes``: its named volumes and the
        containers' anonymous ones; ``rmi``: ``all`` images the services use, or the ``local`` ones (built
        without an ``image`` name)."""
        containers = self.containers(oneoff=None)
        known = set(self.project.services) | set(self.project.disabled)
        orphans = [c for c in containers if (c.get("Labels") or {}).get(model.SERVICE) not in known]
        if orphans and not remove_orphans:
            containers = [c for c in containers if c not in orphans]
        for container in self._reverse_order([c for c in containers if is_running(c)]):
            self._stop(container)
        self.remove(self._reverse_order(containers), volumes=volumes)
        self._remove_networks()
        if volumes:
            self._remove_volumes()
        if rmi:
            self._remove_images(rmi)

    def _remove_networks(self) -> None:
        keys = {"default"} | set(self.project.networks)
        for key in sorted(keys):
            spec = self.project.networks.get(key) or {}
            name = self.project.network_name(key)
            if spec.get("external"):
                continue
            try:
                network = self.api.inspect_network(name)
            except docker.errors.NotFound:
                continue
            if (network.get("Labels") or {}).get(model.PROJECT) != self.project.name:
                continue  # not made by this project
            self.progress("Network", name, "Removing")
            self.api.remove_network(network["Id"])
            self.progress("Network", name, "Removed")

    def _remove_volumes(self) -> None:
        for key, spec in sorted(self.project.volumes.items()):
            if spec.get("external"):
                continue
            name = self.project.volume_name(key)
            try:
                volume = self.api.inspect_volume(name)
            except docker.errors.NotFound:
                continue
            if (volume.get("Labels") or {}).get(model.PROJECT) != self.project.name:
                continue
            self.progress("Volume", name, "Removing")
            self.api.remove_volume(name)
            self.progress("Volume", name, "Removed")

    def _remove_images(self, mode: str) -> None:
        if mode not in ("all", "local"):
            raise errors.InvalidArgument(f'invalid --rmi value "{mode}": want "all" or "local"')
        names = {self.project.image_name(s) for s, spec in {**self.project.services, **self.project.disabled}.items()
                 if mode == "all" or not spec.get("image")}
        for name in sorted(names):
            try:
                self.api.remove_image(name)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as e:
                self.progress("Image", name, f"Error: {e.explanation or e}")
                continue
            self.progress("Image", name, "Removed")


def _name(container: dict) -> str:
    names = container.get("Names") or [container.get("Name") or container["Id"][:12]]
    return names[0].lstrip("/")


def _ipam(spec: dict) -> Any:
    pools = [docker.types.IPAMPool(subnet=c.get("subnet"), gateway=c.get("gateway"), iprange=c.get("ip_range"))
             for c in spec.get("config") or []]
    return docker.types.IPAMConfig(driver=spec.get("driver") or "default", pool_configs=pools)
