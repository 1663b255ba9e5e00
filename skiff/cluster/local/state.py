"""What a local cluster is made of, written to ``<root>/cluster.json`` (atomically) before anything of it exists in
the kernel and updated as its processes start, so that ``skiff cluster delete`` finds every part from a fresh
shell, even after a crash in the middle of ``create``."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skiff.atomicfile import write_atomically
from skiff.errors import InvalidArgument, NotFound

STATE_FILE = "cluster.json"
NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?")  # <= 8: the bridge is skc-<name>, veths skv<i>-<name>
DEFAULT_NAME = "skiff"
DEFAULT_ROOT = Path("/var/lib/skiff/clusters")
NODE_POOL = ipaddress.ip_network("10.87.0.0/16")  # clear of the engine's 10.88/16 and 10.89/16, pods', services'
API_PORT = 6443


@dataclass
class Process:
    """A process we started: its pid and start time (``/proc/<pid>/stat``'s 22nd field), so that a pid reused by
    another process is never signalled."""

    pid: int
    start_time: int
    log: str


@dataclass
class NodeState:
    index: int  # 1 is the control plane
    name: str
    address: str
    netns: str
    veth: str  # the host end; the node's end is eth0 inside its namespace
    cgroup_parent: str  # the engine's --cgroup-parent
    dir: str
    processes: dict[str, Process] = field(default_factory=dict)  # engine | server | agent -> process

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def engine_socket(self) -> Path:
        return self.path / "engine.sock"

    @property
    def engine_host(self) -> str:
        return f"unix://{self.engine_socket}"


@dataclass
class ClusterState:
    name: str
    root: str
    bridge: str
    subnet: str  # the nodes' network, on the host bridge
    gateway: str  # the host's address on it
    cluster_cidr: str
    service_cidr: str
    nodes: list[NodeState] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def server_url(self) -> str:
        return f"https://{self.nodes[0].address}:{API_PORT}"

    @property
    def server_dir(self) -> Path:
        return self.nodes[0].path / "server"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.server_dir / "cred" / "admin.kubeconfig"

    def save(self) -> None:
        write_atomically(self.path / STATE_FILE, json.dumps(asdict(self), indent=1).encode(), mode=0o600)

    @classmethod
    def load(cls, root: Path) -> ClusterState:
        try:
            doc = json.loads((root / STATE_FILE).read_text())
        except FileNotFoundError:
            raise NotFound(f"no cluster at {root} ({STATE_FILE} is missing)") from None
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{root / STATE_FILE}: {exc}") from None
        nodes = [NodeState(**{**n, "processes": {k: Process(**p) for k, p in n.get("processes", {}).items()}})
                 for n in doc.pop("nodes")]
        return cls(**doc, nodes=nodes)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"invalid cluster name {name!r}: 1 to 8 of a-z, 0-9 and '-', starting and ending "
                              "with a letter or digit")
    return name


def plan(name: str, root: Path, count: int, subnet: ipaddress.IPv4Network, cluster_cidr: str,
         service_cidr: str) -> ClusterState:
    """The names, addresses and paths of a cluster of ``count`` nodes (nothing made yet)."""
    if not 1 <= count <= 50:
        raise InvalidArgument(f"--nodes {count}: a local cluster has 1 to 50 nodes")
    hosts = list(subnet.hosts())
    if len(hosts) < count + 1:
        raise InvalidArgument(f"subnet {subnet} is too small for {count} nodes and the host")
    state = ClusterState(name=name, root=str(root), bridge=f"skc-{name}", subnet=str(subnet), gateway=str(hosts[0]),
                         cluster_cidr=cluster_cidr, service_cidr=service_cidr)
    for i in range(1, count + 1):
        state.nodes.append(NodeState(index=i, name=f"{name}-{i}", address=str(hosts[i]), netns=f"skc-{name}-{i}",
                                     veth=f"skv{i}-{name}", cgroup_parent=f"/skc-{name}-{i}", dir=str(root / f"n{i}")))
    return state
