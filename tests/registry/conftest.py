"""Fixtures for the registry tests: servers (Skiff's and docker-registry), a busybox image, skopeo.

Every server a test starts is stopped by pid in a finalizer; the session's leak check then confirms
no process is left.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.registry import images, servers

SKOPEO = shutil.which("skopeo")


class Servers:
    """Starts registries in numbered directories under one temp dir and stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[servers.RegistryProcess] = []

    def _fresh(self, prefix: str) -> Path:
        return self.root / f"{prefix}{len(self.started)}"

    def skiff(self, *extra: str, data: Path | None = None,
              tls: ssl.SSLContext | None = None) -> servers.RegistryProcess:
        server = servers.start_skiff(data or self._fresh("skiff"), *extra, tls=tls)
        self.started.append(server)
        return server

    def docker_registry(self, htpasswd: Path | None = None) -> servers.RegistryProcess:
        if not os.path.exists(servers.DOCKER_REGISTRY):
            pytest.skip("docker-registry (the distribution server) is not installed")
        server = servers.start_docker_registry(self._fresh("distribution"), htpasswd)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def module_registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(tmp_path_factory.mktemp("registries"))
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def registry(module_registries: Servers) -> servers.RegistryProcess:
    """One Skiff registry shared by a module's tests (each test uses its own repository names)."""
    return module_registries.skiff()


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> images.Image:
    """A two-layer busybox image as an OCI layout, with an oci-archive of it beside (``.archive``)."""
    root = tmp_path_factory.mktemp("busybox")
    image = images.write_layout(root / "layout", images.busybox_layers(), tag="1")
    images.write_archive(image.layout, root / "busybox.oci.tar")
    return image


@pytest.fixture(scope="session")
def busybox_archive(busybox_image: images.Image) -> Path:
    return busybox_image.layout.parent / "busybox.oci.tar"


Skopeo = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    """Run ``skopeo --insecure-policy ARGS`` (plain HTTP allowed both ways unless ``tls_verify``); fails
    the test on error unless ``check=False``."""
    if SKOPEO is None:
        pytest.skip("skopeo is not installed")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"), "TMPDIR": str(tmp_path)}

    def run(command: str, *args: str, check: bool = True, tls_verify: bool = False) -> subprocess.CompletedProcess:
        flags = ["--src-tls-verify=false", "--dest-tls-verify=false"] if command == "copy" else ["--tls-verify=false"]
        if tls_verify:
            flags = []
        result = subprocess.run([SKOPEO, "--insecure-policy", command, *flags, *args], env=env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            pytest.fail(f"skopeo {command} {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run
