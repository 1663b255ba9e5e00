"""Create, load, describe and delete a local cluster.

``create``: the cluster's record first (so ``delete`` can undo a half-made cluster), the bridge and the nodes'
namespaces, then every node's engine at once; node 1's ``skiff server`` (its in-process agent drives node 1's
engine) while the image archive, if any, is loaded into every engine; the other nodes' agents once the server
answers, each with a bearer token of its own (user ``system:node:<name>`` in ``system:nodes``, from the
server's ``--token-file``); done when every Node is Ready with a pod CIDR. On failure everything is removed.

``delete`` stops the processes it recorded (by pid and start time), then removes whatever the nodes hold or
left behind whether or not those processes were still alive: every process in a node's namespace or under its
cgroup parent, mounts under the root, the cgroups, the namespaces (and their veths), the bridge, the root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import yaml

from skiff.atomicfile import write_atomically
from skiff.cluster.client import NODES, ApiClient, load_kubeconfig
from skiff.cluster.local import host
from skiff.cluster.local.state import API_PORT, NODE_POOL, ClusterState, NodeState, plan
from skiff.errors import Conflict, InvalidArgument, NotFound, SystemFailure

log = logging.getLogger(__name__)
_SKIFF_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding the ``skiff`` package
Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [_SKIFF_ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def _skiff(*args: str) -> list[str]:
    return [sys.executable, "-m", "skiff.cli.main", *args]


class LocalCluster:
    def __init__(self, state: ClusterState, say: Say = _quiet) -> None:
        self.state = state
        self.say = say

    # --- create ---------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, root: Path, count: int, *, subnet: str | None = None,
               cluster_cidr: str = "10.42.0.0/16", service_cidr: str = "10.43.0.0/16",
               image_archive: Path | None = None, timeout: float = 180.0, agent_args: tuple[str, ...] = (),
               server_args: tuple[str, ...] = (), say: Say = _quiet) -> LocalCluster:
        if (root / "cluster.json").exists():
            raise Conflict(f"cluster {name} exists already at {root} (skiff cluster delete --name {name})")
        if image_archive is not None and not image_archive.is_file():
            raise InvalidArgument(f"image archive {image_archive}: no such file")
        if subnet:
            try:
                network = ipaddress.IPv4Network(subnet)
            except ValueError as exc:
                raise InvalidArgument(f"--subnet {subnet}: {exc}") from None
            host.check_subnet_free(network)
        else:
            network = host.free_subnet(NODE_POOL)
        state = plan(name, root, count, network, cluster_cidr, service_cidr)
        host.check_names_free(state.bridge, [node.veth for node in state.nodes], [node.netns for node in state.nodes])
        root.mkdir(parents=True, exist_ok=True)
        cluster = cls(state, say)
        cluster.state.save()
        try:
            cluster._build(image_archive, timeout, agent_args, server_args)
        except BaseException:
            say(f"cluster {name}: creation failed; removing what was made")
            logs = cluster.log_tails()
            cluster.delete()
            if logs:
                say(logs)
            raise
        return cluster

    def _build(self, image_archive: Path | None, timeout: float, agent_args: tuple[str, ...],
               server_args: tuple[str, ...] = ()) -> None:
        state = self.state
        prefixlen = ipaddress.ip_network(state.subnet).prefixlen
        began = time.monotonic()
        deadline = began + timeout
        host.make_bridge(state.bridge, state.gateway, prefixlen)
        for node in state.nodes:
            node.path.mkdir(parents=True, exist_ok=True)
            host.make_node_namespace(node, state.bridge, prefixlen, state.service_cidr)
        self.say(f"cluster {state.name}: {_nodes(len(state.nodes))} on {state.bridge} ({state.subnet})")
        for node in state.nodes:
            self._start(node, "engine", self._engine_argv(node))
        state.save()
        self._parallel(lambda node: self._wait_engine(node, deadline))
        self.say(f"cluster {state.name}: engines answer ({time.monotonic() - began:.1f} s)")
        self._write_tokens()
        self._start(state.nodes[0], "server", [*self._server_argv(), *server_args])
        state.save()
        if image_archive is not None:
            self.load(image_archive)
        self._wait_server(deadline)
        self.say(f"cluster {state.name}: API server answers at {state.server_url} ({time.monotonic() - began:.1f} s)")
        self._parallel(self._issue_kubelet_certificate, state.nodes[1:])
        for node in state.nodes[1:]:
            self._start(node, "agent", [*self._agent_argv(node), *agent_args])
        state.save()
        write_atomically(state.path / "kubeconfig", self.kubeconfig().encode(), mode=0o600)
        asyncio.run(self._wait_ready(deadline))
        self.say(f"cluster {state.name}: {_nodes(len(state.nodes))} Ready ({time.monotonic() - began:.1f} s)")

    def _start(self, node: NodeState, role: str, argv: list[str]) -> None:
        node.processes[role] = host.spawn(argv, node.netns, node.path / f"{role}.log", _env())

    def _engine_argv(self, node: NodeState) -> list[str]:
        # The engine's bridge and nftables table live in the node's namespace, so the defaults (skiff0,
        # 10.88.0.0/16, table skiff) collide with nothing; cgroups are the host's: a parent per node.
        return _skiff("engine", "--data-root", str(node.path / "engine"), "--exec-root", str(node.path / "exec"),
                      "-H", node.engine_host, "--cgroup-parent", node.cgroup_parent)

    def _server_argv(self) -> list[str]:
        state, first = self.state, self.state.nodes[0]
        return _skiff("server", "--data-dir", str(state.server_dir), "--listen", f"{first.address}:{API_PORT}",
                      "--allocate-node-cidrs", "--cluster-cidr", state.cluster_cidr,
                      "--service-cidr", state.service_cidr,
                      "--node-name", first.name, "--node-ip", first.address, "--engine", first.engine_host,
                      "--token-file", str(state.path / "tokens.csv"))

    def _agent_argv(self, node: NodeState) -> list[str]:
        return _skiff("agent", "--server", self.state.server_url, "--token-file", str(node.path / "token"),
                      "--ca-file", str(self.state.server_dir / "tls" / "ca.crt"), "--node-name", node.name,
                      "--node-ip", node.address, "--engine", node.engine_host, "--data-dir", str(node.path / "agent"),
                      "--cluster-dns", cluster_dns(self.state.service_cidr),
                      "--tls-cert-file", str(node.path / "pki" / "kubelet.crt"),
                      "--tls-private-key-file", str(node.path / "pki" / "kubelet.key"),
                      "--client-ca-file", str(node.path / "pki" / "ca.crt"))

    def _issue_kubelet_certificate(self, node: NodeState) -> None:
        """The node's kubelet serving certificate from the server's CA, so the server can reach its logs/exec."""
        argv = _skiff("server", "kubelet-certificate", "--data-dir", str(self.state.server_dir),
                      "--node-name", node.name, "--address", node.address, "--out-dir", str(node.path / "pki"))
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=60)
        if done.returncode != 0:
            raise SystemFailure(f"node {node.name}: kubelet certificate: {done.stderr.strip()}")

    def _write_tokens(self) -> None:
        """A bearer token per agent node: the server's static token file names its user and group."""
        rows = []
        for node in self.state.nodes[1:]:
            token = secrets.token_hex(24)
            write_atomically(node.path / "token", f"{token}\n".encode(), mode=0o600)
            rows.append(f'{token},system:node:{node.name},node-{node.name},"system:nodes"\n')
        write_atomically(self.state.path / "tokens.csv", "".join(rows).encode(), mode=0o600)

    def _parallel(self, fn: Callable[[NodeState], Any], nodes: list[NodeState] | None = None) -> list[Any]:
        nodes = self.state.nodes if nodes is None else nodes
        if not nodes:
            return []
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            return list(pool.map(fn, nodes))

    def _check_alive(self, node: NodeState, role: str) -> None:
        process = node.processes[role]
        if not host.alive(process):
            raise SystemFailure(f"node {node.name}: {role} exited:\n{_tail(Path(process.log))}")

    def _wait_engine(self, node: NodeState, deadline: float) -> None:
        while True:
            self._check_alive(node, "engine")
            if node.engine_socket.exists():
                try:
                    client = docker.APIClient(base_url=node.engine_host, version="auto", timeout=10)
                    client.close()
                    return
                except docker.errors.DockerException:
                    pass
            if time.monotonic() > deadline:
                raise SystemFailure(f"node {node.name}: the engine did not answer in time")
            time.sleep(0.1)

    def _wait_server(self, deadline: float) -> None:
        first = self.state.nodes[0]
        while True:
            self._check_alive(first, "server")
            if self.state.admin_kubeconfig.exists() and (self.state.server_dir / "tls" / "ca.crt").exists():
                try:
                    with socket.create_connection((first.address, API_PORT), timeout=2):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise SystemFailure("the API server did not answer in time")
            time.sleep(0.1)

    async def _wait_ready(self, deadline: float) -> None:
        """Until every node is Ready with a pod CIDR."""
        names = {node.name for node in self.state.nodes}
        async with ApiClient.from_config(load_kubeconfig(self.state.path / "kubeconfig")) as client:
            while True:
                for node in self.state.nodes:
                    for role in node.processes:
                        self._check_alive(node, role)
                ready = {n["metadata"]["name"] for n in (await client.list(NODES)).get("items", ())
                         if _ready(n) and (n.get("spec") or {}).get("podCIDR")}
                if names <= ready:
                    return
                if time.monotonic() > deadline:
                    raise SystemFailure(f"nodes not Ready in time: {', '.join(sorted(names - ready))}")
                await asyncio.sleep(0.2)

    # --- use ------------------------------------------------------------------------------------------------

    def kubeconfig(self) -> str:
        """The admin kubeconfig, naming the server by its address on the cluster's bridge."""
        try:
            doc = yaml.safe_load(self.state.admin_kubeconfig.read_text())
        except FileNotFoundError:
            raise NotFound(f"cluster {self.state.name} has no kubeconfig yet (is it running?)") from None
        context = f"skiff-{self.state.name}"
        for entry in doc.get("clusters") or ():
            entry["cluster"]["server"] = self.state.server_url
            entry["name"] = context
        for entry in doc.get("contexts") or ():
            entry["context"]["cluster"] = context
            entry["name"] = context
        doc["current-context"] = context
        return yaml.safe_dump(doc, sort_keys=False)

    def load(self, archive: Path) -> list[str]:
        """``POST /images/load`` of ``archive`` on every node's engine, at once; the images each loaded."""
        if not archive.is_file():
            raise InvalidArgument(f"image archive {archive}: no such file")

        def load_into(node: NodeState) -> list[str]:
            client = docker.APIClient(base_url=node.engine_host, version="auto", timeout=300)
            try:
                with open(archive, "rb") as data:
                    messages = list(client.load_image(data))
            except docker.errors.APIError as exc:
                raise SystemFailure(f"node {node.name}: loading {archive}: {exc.explanation or exc}") from None
            finally:
                client.close()
            errors = [m["error"] for m in messages if m.get("error")]
            if errors:
                raise SystemFailure(f"node {node.name}: loading {archive}: {errors[0]}")
            return [m["stream"].strip() for m in messages if m.get("stream")]

        loaded = self._parallel(load_into)
        self.say(f"cluster {self.state.name}: {archive.name} loaded on {_nodes(len(loaded))}")
        return loaded[0] if loaded else []

    def log_tails(self) -> str:
        parts = []
        for node in self.state.nodes:
            for role, process in node.processes.items():
                parts.append(f"--- {node.name} {role} ({process.log}) ---\n{_tail(Path(process.log))}")
        return "\n".join(parts)

    # --- delete ---------------------------------------------------------------------------------------------

    def delete(self) -> None:
        state = self.state
        for node in state.nodes:  # the agents first: they would restart what is removed below
            host.terminate([p for role, p in node.processes.items() if role != "engine"], timeout=10)
        self._parallel(_remove_containers)
        host.terminate([p for node in state.nodes for role, p in node.processes.items() if role == "engine"],
                       timeout=15)
        for node in state.nodes:
            host.kill_everything_of(node)
        host.unmount_below(state.path)
        for node in state.nodes:
            host.remove_cgroups(node.cgroup_parent)
            host.remove_namespace(node.netns)
            host.delete_link(node.veth)
        host.delete_link(state.bridge)
        shutil.rmtree(state.path, ignore_errors=True)
        if state.path.exists():
            raise SystemFailure(f"cannot remove {state.path}")
        self.say(f"cluster {state.name}: deleted")


def _remove_containers(node: NodeState) -> None:
    """Every container on the node's engine, removed through its API (so the engine tears down their
    namespaces, veths and rules itself); nothing to do when the engine is gone."""
    engine = node.processes.get("engine")
    if engine is None or not host.alive(engine) or not node.engine_socket.exists():
        return
    try:
        client = docker.APIClient(base_url=node.engine_host, version="auto", timeout=30)
    except docker.errors.DockerException:
        return
    try:
        for container in client.containers(all=True):
            try:
                client.remove_container(container["Id"], force=True, v=True)
            except docker.errors.APIError as exc:
                log.warning("node %s: removing container %s: %s", node.name, container["Id"][:12], exc)
    except (docker.errors.DockerException, OSError) as exc:
        log.warning("node %s: listing containers: %s", node.name, exc)
    finally:
        client.close()


def cluster_dns(service_cidr: str) -> str:
    """The ClusterIP ``skiff server`` gives the ``kube-dns`` Service: the service range's tenth address."""
    return str(ipaddress.ip_network(service_cidr)[10])


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or ())


def _tail(path: Path, size: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def open_cluster(root: Path, say: Say = _quiet) -> LocalCluster:
    return LocalCluster(ClusterState.load(root), say)


def describe(cluster: LocalCluster) -> dict[str, Any]:
    """What ``skiff cluster`` prints about a cluster (``--json`` shape)."""
    state = cluster.state
    return {"name": state.name, "root": state.root, "bridge": state.bridge, "subnet": state.subnet,
            "server": state.server_url, "nodes": [{"name": n.name, "address": n.address, "netns": n.netns,
                                                   "engine": n.engine_host,
                                                   "running": {r: host.alive(p) for r, p in n.processes.items()}}
                                                  for n in state.nodes]}

