"""``ControllerOptions``: the settings of the controllers (kube-controller-manager's flags), one object the
``ControllerManager`` hands to every controller that takes ``options``.

``add_flags`` puts the same flags on ``skiff controller-manager`` and ``skiff server`` (which runs the
controllers in its own process) and ``from_flags`` reads them back, so the two commands cannot drift apart.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from skiff.errors import InvalidArgument


@dataclass(frozen=True)
class ControllerOptions:
    # node IPAM (kube's --allocate-node-cidrs, off by default as there, --cluster-cidr, --node-cidr-mask-size)
    allocate_node_cidrs: bool = False
    cluster_cidr: str = "10.42.0.0/16"
    node_cidr_mask_size: int = 24
    # node lifecycle (kube's flags of the same names, and their defaults)
    node_monitor_period: float = 5.0  # seconds between two looks at every node's health
    node_monitor_grace_period: float = 40.0  # a node silent this long is Unknown (NotReady)
    node_startup_grace_period: float = 60.0  # a node that never posted a Ready condition gets this long
    node_eviction_rate: float = 0.1  # nodes a second given NoExecute taints, per zone, when the zone is healthy
    secondary_node_eviction_rate: float = 0.01  # the same when most of a large zone is down
    large_cluster_size_threshold: int = 50  # a zone this small stops tainting when most of it is down
    unhealthy_zone_threshold: float = 0.55  # share of not-Ready nodes (and at least 3) that makes a zone unhealthy
    # horizontal pod autoscaling (kube's flags of the same names, and their defaults)
    horizontal_pod_autoscaler_sync_period: float = 15.0  # seconds between two looks at each autoscaler
    horizontal_pod_autoscaler_tolerance: float = 0.1  # a usage this close to the target (as a ratio) is on target
    horizontal_pod_autoscaler_downscale_stabilization: float = 300.0  # seconds of proposals a scale-down waits on

    def check(self) -> None:
        for name in ("node_monitor_period", "node_monitor_grace_period", "node_startup_grace_period"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"--{name.replace('_', '-')} must be positive")
        for name in ("node_eviction_rate", "secondary_node_eviction_rate"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"--{name.replace('_', '-')} must not be negative")
        if not 0 < self.unhealthy_zone_threshold <= 1:
            raise InvalidArgument("--unhealthy-zone-threshold must be in (0, 1]")
        if self.horizontal_pod_autoscaler_sync_period <= 0:
            raise InvalidArgument("--horizontal-pod-autoscaler-sync-period must be positive")
        for name in ("horizontal_pod_autoscaler_tolerance", "horizontal_pod_autoscaler_downscale_stabilization"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"--{name.replace('_', '-')} must not be negative")


# The flags both commands take (the IPAM fields are filled from ``skiff server``'s --cluster-cidr).
_FLAGS = {
    "node_monitor_period": "seconds between health checks of every node",
    "node_monitor_grace_period": "seconds without a heartbeat (Lease or Ready condition) before a node is NotReady",
    "node_startup_grace_period": "seconds a new node may take to post its first Ready condition",
    "node_eviction_rate": "nodes a second given NoExecute taints per zone (healthy zone)",
    "secondary_node_eviction_rate": "nodes a second given NoExecute taints per zone (unhealthy large zone)",
    "large_cluster_size_threshold": "zones with more nodes than this keep tainting at the secondary rate",
    "unhealthy_zone_threshold": "share of NotReady nodes that makes a zone unhealthy",
    "horizontal_pod_autoscaler_sync_period": "seconds between two looks at each horizontal pod autoscaler",
    "horizontal_pod_autoscaler_tolerance": "how far (as a ratio) usage may be from the target before scaling",
    "horizontal_pod_autoscaler_downscale_stabilization": "seconds of recent proposals a scale-down waits on",
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    defaults = ControllerOptions()
    types = {f.name: f.type for f in fields(ControllerOptions)}
    for name, text in _FLAGS.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if types[name] in ("int", int) else float,
                            default=default, help=f"{text} (default: {default})")


def from_flags(args: argparse.Namespace, **extra: object) -> ControllerOptions:
    """The options the parsed flags (and ``extra``, such as the server's cluster CIDR) give."""
    options = ControllerOptions(**{name: getattr(args, name) for name in _FLAGS}, **extra)  # type: ignore[arg-type]
    options.check()
    return options


# Node IPAM's flags: ``skiff controller-manager`` has them; ``skiff server`` passes its own --cluster-cidr on.
_IPAM_FLAGS = ("allocate_node_cidrs", "cluster_cidr", "node_cidr_mask_size")


def to_flags(options: ControllerOptions) -> list[str]:
    """The flags that give ``options`` again (those differing from the defaults), for a child process."""
    defaults = ControllerOptions()
    flags: list[str] = []
    for name in (*_FLAGS, *_IPAM_FLAGS):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            flag = f"--{name.replace('_', '-')}"
            flags += [flag] if isinstance(value, bool) else [flag, str(value)]  # a bool is a store_true flag
    return flags
