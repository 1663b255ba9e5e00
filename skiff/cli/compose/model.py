"""A loaded Compose project: its name, where it lives, and its services and resources in canonical form.

Services are kept as canonical dicts (the shape ``skiff compose config`` prints: long syntax everywhere,
durations in seconds), so that the config hash (``com.docker.compose.config-hash``) is a hash of exactly
what the user wrote, after defaults, and the same file always gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# Labels, as Docker Compose v2 writes them (tools that read them work on Skiff's containers too).
PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
ONEOFF = "com.docker.compose.oneoff"
CONFIG_HASH = "com.docker.compose.config-hash"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
VERSION = "com.docker.compose.version"
DEPENDS_ON = "com.docker.compose.depends_on"
IMAGE = "com.docker.compose.image"
NETWORK = "com.docker.compose.network"
VOLUME = "com.docker.compose.volume"
COMPOSE_VERSION = "2.29.7"  # the Docker Compose release whose naming and labels these follow


@dataclass
class Project:
    name: str
    working_dir: str
    config_files: list[str]
    services: dict[str, dict]  # active services only (profiles applied), canonical form
    networks: dict[str, dict] = field(default_factory=dict)
    volumes: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)
    disabled: dict[str, dict] = field(default_factory=dict)  # services whose profiles are not active
    environment: dict[str, str] = field(default_factory=dict)  # what interpolation used

    def network_name(self, key: str) -> str:
        """The engine's name of a project network: ``name:`` if set, else ``<project>_<key>``."""
        spec = self.networks.get(key) or {}
        return spec.get("name") or f"{self.name}_{key}"

    def volume_name(self, key: str) -> str:
        spec = self.volumes.get(key) or {}
        return spec.get("name") or f"{self.name}_{key}"

    def image_name(self, service: str) -> str:
        """The image a service runs: its ``image``, or for a build without one ``<project>-<service>``."""
        spec = self.services.get(service) or self.disabled[service]
        return spec.get("image") or f"{self.name}-{service}"

    def container_name(self, service: str, number: int) -> str:
        spec = self.services[service]
        return spec.get("container_name") or f"{self.name}-{service}-{number}"

    def to_dict(self) -> dict[str, Any]:
        """The canonical document (``skiff compose config``)."""
        doc: dict[str, Any] = {"name": self.name, "services": self.services}
        for key in ("networks", "volumes", "secrets", "configs"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        return doc


def config_hash(service: dict) -> str:
    """Docker Compose's ServiceHash: the service's config without what may change without recreating its
    containers (build, pull policy, scale/replicas, depends_on, profiles)."""
    trimmed = {k: v for k, v in service.items() if k not in ("build", "pull_policy", "scale", "depends_on",
                                                            "profiles")}
    deploy = {k: v for k, v in (trimmed.pop("deploy", None) or {}).items() if k != "replicas"}
    if deploy:
        trimmed["deploy"] = deploy
    return hashlib.sha256(json.dumps(trimmed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def replicas(service: dict) -> int:
    deploy = service.get("deploy") or {}
    if deploy.get("replicas") is not None:
        return int(deploy["replicas"])
    return int(service.get("scale", 1))
