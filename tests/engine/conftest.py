"""Shared fixtures for the engine tests: real ``skiff engine`` daemons on temp roots, the real docker CLI and
docker-py pointed at them.

- ``engine``: one daemon per test module (``EngineProcess``: ``.socket``, ``.data_root``, ``.exec_root``,
  ``.host`` (``unix://...``), ``.request(...)`` for raw HTTP, ``.restart()``, ``.log_text()``).
- ``engines``: a factory for tests that need their own daemons (``engines.start(*extra_flags)``).
- ``docker``: ``docker(*args, input=None, timeout=60, check=False) -> CompletedProcess[str]`` running the
  docker CLI against ``engine`` with a private ``DOCKER_CONFIG`` (never the user's).
- ``docker_client``: a docker-py ``DockerClient`` on ``engine`` (API version negotiated).

Every daemon is stopped by pid (SIGTERM, then SIGKILL) at the end; the session's leak check confirms it.
Each daemon gets short paths under the session's temp dir: a unix socket path must fit in 108 bytes.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.body)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the Engine API's transport)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def request(socket_path: str, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
    """One HTTP request on a fresh connection to the engine's socket."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def engine_command(data_root: Path, exec_root: Path, socket_path: Path, *extra: str) -> list[str]:
    """The daemon's command line. Its network flags come first (``extra`` may override them: the last one
    wins): a session-wide scratch block, so that no test engine ever uses the host-wide defaults."""
    return [sys.executable, "-m", "skiff.cli.main", "engine", "--data-root", str(data_root),
            "--exec-root", str(exec_root), "-H", f"unix://{socket_path}", *_scratch_block().flags(), *extra]


# ---------------------------------------------------------------------------------------- networks

NET_LOCKS = Path("/tmp/skiff-test-netblocks")  # one file per 10.K.0.0/16 block in use by a live test session


@dataclass
class NetBlock:
    """A 10.K.0.0/16 block for one test engine: its default bridge (10.K.0.0/24), the pool of networks created
    without a subnet (10.K.16.0/20) and names of its own (bridge, nftables table) so engines of several test
    sessions run side by side. Tests give their own networks subnets from 10.K.100.0 up."""

    k: int

    @property
    def prefix(self) -> str:
        return f"10.{self.k}"

    @property
    def bridge(self) -> str:
        return f"sktb{self.k}"

    @property
    def nft_table(self) -> str:
        return f"skiff_test_{self.k}"

    def flags(self) -> list[str]:
        return ["--bridge", self.bridge, "--bip", f"{self.prefix}.0.1/24", "--nft-table", self.nft_table,
                "--default-address-pool", f"base={self.prefix}.16.0/20,size=24"]

    def subnet(self, n: int) -> str:
        """A /24 for a test's own network (n < 100)."""
        return f"{self.prefix}.{100 + n}.0/24"

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(NET_LOCKS / str(self.k))


def _routed_blocks() -> set[int]:
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=False).stdout
    return {int(m.group(1)) for m in re.finditer(r"(?:^|\s)10\.(\d+)\.\d+\.\d+", out)}


def reserve_net_block() -> NetBlock:
    """A free block: one no route on the host uses and no live test process has claimed (a lock file holding
    its pid, made with O_EXCL; a dead owner's is taken over)."""
    NET_LOCKS.mkdir(exist_ok=True)
    routed = _routed_blocks()
    for k in range(200, 255):
        if k in routed:
            continue
        path = NET_LOCKS / str(k)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(path.read_text().strip() or 0)
                    os.kill(owner, 0)
                    break  # a live session has it
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            return NetBlock(k)
    raise RuntimeError("no free 10.K.0.0/16 block for a test engine")


_SCRATCH: list[NetBlock] = []


def _scratch_block() -> NetBlock:
    if not _SCRATCH:
        _SCRATCH.append(reserve_net_block())
        atexit.register(_SCRATCH[0].release)
    return _SCRATCH[0]


def remove_network_leftovers(engine: EngineProcess) -> None:
    """After an engine stopped: what its networks may have left in the kernel (a container still running, a
    crash): sandboxes' namespaces, bridges and the nftables table."""
    netns_dir = engine.exec_root / "netns"
    if netns_dir.is_dir():
        for path in netns_dir.iterdir():
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                path.unlink()
    bridges = {engine.net.bridge}
    for record in (engine.data_root / "network" / "networks").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            bridges.add(json.loads(record.read_text()).get("bridge") or "")
    for name in filter(None, bridges):
        subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
    subprocess.run(["nft", "delete", "table", "ip", engine.net.nft_table], capture_output=True, check=False)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


class EngineProcess:
    """A ``skiff engine`` subprocess on its own data root, exec root and socket (all under ``root``)."""

    def __init__(self, root: Path, *extra: str, net: NetBlock | None = None) -> None:
        self.root = root
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        self.socket = root / "engine.sock"
        self.log = root / "engine.log"
        self.net = net or _scratch_block()  # its bridge, subnets and nftables table
        self.extra = (*self.net.flags(), *extra)
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> EngineProcess:
        """Start the daemon and wait until it answers /_ping (or fail with its log)."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(engine_command(self.data_root, self.exec_root, self.socket, *self.extra),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
                                            env=_env())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"skiff engine exited with {self.process.returncode}:\n{self.log_text()}")
            if self.socket.exists():
                try:
                    if request(str(self.socket), "GET", "/_ping", timeout=5).status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"skiff engine did not answer within {START_TIMEOUT}s:\n{self.log_text()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; always reaps. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def restart(self) -> EngineProcess:
        self.stop()
        return self.start()

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
        return request(str(self.socket), method, path, body, headers, timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


CGROUP_PARENT = "skiff"  # the engine's default --cgroup-parent, under every hierarchy


def cgroup_parents() -> set[str]:
    """The engine's cgroup parent directories that exist now, in every hierarchy."""
    from tests.leakcheck import cgroup_hierarchies

    return {p for h in cgroup_hierarchies() if os.path.isdir(p := os.path.join(h.mountpoint, CGROUP_PARENT))}


def remove_cgroup_parents(made: set[str]) -> None:
    """Runtimes leave the (empty) parent of a cgroupsPath behind, as runc does: remove the ones we made,
    waiting a little for the last containers' cgroups to go."""
    for path in made:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


class Engines:
    """Starts daemons in numbered directories and stops them all at the end (and removes the cgroup
    parents their containers made)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[EngineProcess] = []
        self._parents_before = cgroup_parents()

    def create(self, *extra: str) -> EngineProcess:
        """A daemon's directories and command, not started (for tests of start-up itself)."""
        root = self.root / f"e{len(self.started)}"
        root.mkdir()
        engine = EngineProcess(root, *extra, net=reserve_net_block())
        self.started.append(engine)
        return engine

    def start(self, *extra: str) -> EngineProcess:
        return self.create(*extra).start()

    def stop_all(self) -> None:
        for engine in self.started:
            engine.stop()
        remove_cgroup_parents(cgroup_parents() - self._parents_before)
        for engine in self.started:
            remove_network_leftovers(engine)
            engine.net.release()


@pytest.fixture
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    e = Engines(tmp_path_factory.mktemp("eng"))
    yield e
    e.stop_all()


@pytest.fixture(scope="module")
def module_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    e = Engines(tmp_path_factory.mktemp("eng"))
    yield e
    e.stop_all()


@pytest.fixture(scope="module")
def engine(module_engines: Engines) -> EngineProcess:
    """One daemon shared by a test module's tests."""
    return module_engines.start()


DockerRunner = Callable[..., subprocess.CompletedProcess]


def docker_runner(host: str, config_dir: Path) -> DockerRunner:
    """``run(*args, input=None, timeout=60, check=False, env=None)``: the docker CLI against ``host``."""
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    config_dir.mkdir(parents=True, exist_ok=True)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(config_dir), "DOCKER_HOST": host,
            "DOCKER_CONFIG": str(config_dir), "DOCKER_CLI_HINTS": "false"}

    def run(*args: str, input: str | None = None, timeout: float = 60, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([DOCKER, *args], input=input, capture_output=True, text=True, timeout=timeout,
                                env={**base, **(env or {})}, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture
def docker(engine: EngineProcess, tmp_path: Path) -> DockerRunner:
    """The docker CLI against the module's ``engine``, with a private DOCKER_CONFIG."""
    return docker_runner(engine.host, tmp_path / "docker-config")


@pytest.fixture
def docker_client(engine: EngineProcess) -> Iterator[object]:
    """docker-py on the module's ``engine`` (it asks /version for the API version, as from_env() does)."""
    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=engine.host, version="auto", timeout=60)
    yield client
    client.close()
