"""``skiff controller-manager``: the controllers alone, as a client of an API server.

    skiff controller-manager [--kubeconfig F] [--context C] [--controllers replicaset,deployment]
                             [--log-level warning] [--node-monitor-grace-period S] [--node-monitor-period S] ...

``skiff server`` runs the same controllers in its own process unless given ``--disable-controllers``;
running them separately needs credentials allowed to manage workloads (the server writes such a kubeconfig,
user system:kube-controller-manager, to ``<data-dir>/cred/controller-manager.kubeconfig``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from skiff.cluster.client import load_kubeconfig, stop_on_signals
from skiff.cluster.controllers.manager import CONTROLLERS, ControllerManager
from skiff.cluster.controllers.options import add_flags, from_flags
from skiff.errors import SkiffError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff controller-manager", description="Run the cluster's controllers.")
    parser.add_argument("--kubeconfig", help="credentials (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS),
                        help=f"comma-separated controllers to run (default: {','.join(CONTROLLERS)})")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    parser.add_argument("--allocate-node-cidrs", action="store_true",
                        help="give every Node a pod CIDR from --cluster-cidr (the nodeipam controller)")
    parser.add_argument("--cluster-cidr", default="10.42.0.0/16", help="the pods' range, cut into node pod CIDRs")
    parser.add_argument("--node-cidr-mask-size", type=int, default=24, help="the prefix length of a node's pod CIDR")
    add_flags(parser)
    return parser.parse_args(argv)


async def run(manager: ControllerManager) -> None:
    stop = stop_on_signals()
    task = manager.start()
    print(f"skiff controller-manager: {', '.join(manager.enabled)} against {manager.config.server}",
          file=sys.stderr, flush=True)
    await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await manager.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manager = ControllerManager(load_kubeconfig(args.kubeconfig, args.context),
                                    [c.strip() for c in args.controllers.split(",") if c.strip()],
                                    from_flags(args, allocate_node_cidrs=args.allocate_node_cidrs,
                                               cluster_cidr=args.cluster_cidr,
                                               node_cidr_mask_size=args.node_cidr_mask_size))
        asyncio.run(run(manager))
    except (SkiffError, OSError) as exc:
        print(f"skiff controller-manager: {exc}", file=sys.stderr)
        return 1
    return 0
