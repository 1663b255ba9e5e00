"""The kernel side of a local cluster: the host bridge, one network namespace per node joined to it by a veth,
the nodes' processes (started inside their namespace with ``nsenter --net``), and the removal of all of it,
including what the nodes' engines made (mounts under the cluster's root, cgroups under each node's cgroup
parent, container processes) when those engines are long dead.

Netlink goes through ``skiff.netlink`` (inside a node's namespace on a thread that entered it, ``skiff.netns``);
everything here blocks, and is called from the synchronous ``skiff cluster`` command.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from skiff import netns
from skiff.cluster.local.state import NodeState, Process
from skiff.errors import Conflict, SystemFailure
from skiff.netlink import Netlink

log = logging.getLogger(__name__)
NETNS_DIR = Path("/run/netns")
MTU = 1500


# --- addresses ----------------------------------------------------------------------------------------------


def routed_networks() -> list[ipaddress.IPv4Network]:
    """Every destination the host routes now (any table): a new subnet must overlap none of them."""
    with Netlink() as nl:
        routes = nl.routes(every_table=True)
    return [ipaddress.ip_network(r.destination, strict=False) for r in routes if not r.destination.endswith("/0")]


def free_subnet(pool: ipaddress.IPv4Network, prefixlen: int = 24) -> ipaddress.IPv4Network:
    taken = routed_networks()
    for candidate in pool.subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise Conflict(f"no free /{prefixlen} left in {pool} for a cluster's nodes (pass --subnet)")


def check_subnet_free(subnet: ipaddress.IPv4Network) -> None:
    for net in routed_networks():
        if subnet.overlaps(net):
            raise Conflict(f"subnet {subnet} overlaps {net}, which this host already routes")


# --- links and namespaces -----------------------------------------------------------------------------------


def _namespaces() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def check_names_free(bridge: str, veths: list[str], namespaces: list[str]) -> None:
    """Refuse before anything is made (a failed create removes what its record names: never someone else's)."""
    with Netlink() as nl:
        for name in (bridge, *veths):
            if nl.link_index(name) is not None:
                raise Conflict(f"a link named {name} exists already (a cluster of that name at another root?)")
    existing = _namespaces()
    for name in namespaces:
        if name in existing:
            raise Conflict(f"network namespace {name} exists already (a cluster of that name at another root?)")


def make_bridge(name: str, gateway: str, prefixlen: int) -> None:
    with Netlink() as nl:
        if nl.link_index(name) is not None:
            raise Conflict(f"a link named {name} exists already (another cluster of that name?)")
        nl.add_bridge(name, MTU)
        index = nl.link_index(name)
        assert index is not None
        nl.add_address(index, gateway, prefixlen)
        nl.set_link(index, up=True)


def make_node_namespace(node: NodeState, bridge: str, prefixlen: int, service_cidr: str | None = None) -> None:
    """The node's namespace; a veth from the bridge to its ``eth0`` with the node's address; ``lo`` up; a route
    to the Service range on ``eth0``, when given.

    The nodes have no default route (nothing leaves the cluster), and a socket of the node's own (the engine's
    embedded DNS forwarding a pod's query to the cluster DNS, a process on the node reaching a ClusterIP) is
    routed before the output hook where the proxy DNATs it: without a route to the ClusterIP the send fails
    (ENETUNREACH) before the proxy sees it. A link route suffices: DNATed packets never take it, and anything
    the proxy leaves alone finds no neighbour on the bridge."""
    path = str(NETNS_DIR / node.netns)
    if node.netns in _namespaces():
        raise Conflict(f"network namespace {node.netns} exists already")
    netns.create(path)
    with Netlink() as nl:
        bridge_index = nl.link_index(bridge)
        namespace_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            nl.add_veth(node.veth, "eth0", MTU, peer_netns_fd=namespace_fd)
        except OSError as exc:
            raise SystemFailure(f"veth {node.veth} for node {node.name}: {exc}") from None
        finally:
            os.close(namespace_fd)
        index = nl.link_index(node.veth)
        assert index is not None
        nl.set_link(index, master=bridge_index, up=True)

    def inside() -> None:
        with Netlink() as ns:
            eth0, lo = ns.link_index("eth0"), ns.link_index("lo")
            assert eth0 is not None and lo is not None
            ns.add_address(eth0, node.address, prefixlen)
            ns.set_link(eth0, up=True)
            ns.set_link(lo, up=True)
            if service_cidr:
                ns.add_route(service_cidr, oif=eth0)

    netns.enter(path, inside)


def delete_link(name: str) -> None:
    with Netlink() as nl:
        index = nl.link_index(name)
        if index is not None:
            with contextlib.suppress(OSError):
                nl.delete_link(index)


def remove_namespace(name: str) -> None:
    """The namespace's mount in /run/netns and the file (its links go with it once no process holds it)."""
    netns.remove(str(NETNS_DIR / name))


def namespace_id(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# --- processes ----------------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """``/proc/<pid>/stat``'s starttime (None when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def spawn(argv: list[str], namespace: str, log_path: Path, env: dict[str, str]) -> Process:
    """``argv`` inside ``namespace`` (its network only: the host's mounts and cgroups), in a session of its own
    so that it outlives ``skiff cluster create``; output to ``log_path``."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(["nsenter", f"--net={NETNS_DIR / namespace}", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, env=env, cwd=log_path.parent, start_new_session=True)
    return Process(proc.pid, start_time(proc.pid) or 0, str(log_path))


def alive(process: Process) -> bool:
    return start_time(process.pid) == process.start_time


def terminate(processes: Iterable[Process], timeout: float) -> None:
    """SIGTERM the ones still alive, wait up to ``timeout`` for them, SIGKILL what remains."""
    living = [p for p in processes if alive(p)]
    for p in living:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while living and time.monotonic() < deadline:
        _reap()
        living = [p for p in living if alive(p)]
        time.sleep(0.1)
    for p in living:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


def _reap() -> None:
    """Collect our own children that exited (``create`` cleaning up after a failure started them)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def pids_in_namespace(name: str) -> set[int]:
    wanted = namespace_id(name)
    found: set[int] = set()
    if wanted is None:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/ns/net")
                if (st.st_dev, st.st_ino) == wanted:
                    found.add(int(entry))
    return found


def cgroup_mounts() -> list[str]:
    """The mount point of every cgroup hierarchy (v1 controllers and v2)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if right.split()[0] in ("cgroup", "cgroup2") and fields[3] == "/" and fields[4] not in points:
                points.append(fields[4])
    return points


def cgroup_dirs(parent: str) -> list[Path]:
    """Every directory of the cgroup subtree ``parent`` in every hierarchy, deepest first."""
    dirs = []
    for mount in cgroup_mounts():
        top = Path(mount) / parent.strip("/")
        if top.is_dir():
            dirs += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def pids_in_cgroups(parent: str) -> set[int]:
    found: set[int] = set()
    for d in cgroup_dirs(parent):
        with contextlib.suppress(OSError):
            found |= {int(line) for line in (d / "cgroup.procs").read_text().split()}
    return found


def kill_everything_of(node: NodeState, timeout: float = 10.0) -> None:
    """SIGKILL every process inside the node's namespace (engine, agent, server, monitors, host-network
    containers) or under its cgroup parent (containers), until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = (pids_in_namespace(node.netns) | pids_in_cgroups(node.cgroup_parent)) - {os.getpid()}
        if not pids:
            return
        if time.monotonic() > deadline:
            raise SystemFailure(f"node {node.name}: processes {sorted(pids)} do not die")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        time.sleep(0.1)


def remove_cgroups(parent: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for d in cgroup_dirs(parent):
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # busy for a moment after its last process died
                if time.monotonic() > deadline:
                    raise SystemFailure(f"cannot remove cgroup {d}: {exc}") from None
                time.sleep(0.1)


# --- mounts -------------------------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_below(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    return sorted({p for p in points if p.startswith(prefix) or p == str(root)}, key=len, reverse=True)


def unmount_below(root: Path) -> None:
    """Detach every mount at or under ``root`` (overlays, namespace files, tmpfs volumes), deepest first."""
    for _ in range(5):  # a mount stacked on another shows again after the top one goes
        points = mounts_below(root)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_below(root)
    if left:
        raise SystemFailure(f"mounts left under {root}: {', '.join(left)}")
