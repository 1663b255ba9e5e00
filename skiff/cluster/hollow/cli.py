"""``skiff hollow-nodes``: register N simulated nodes and keep them alive until stopped.

    skiff hollow-nodes [--kubeconfig F] --count N [--name-prefix P] [--lease-interval S] [--cpu Q]
                       [--memory Q] [--max-pods N] [--zones N] [--cluster-cidr CIDR] [--node-cidr-mask-size N]

The nodes stay registered after SIGTERM/SIGINT (as a stopped kubelet's do): their leases expire and the node
lifecycle controller marks them NotReady.
"""

from __future__ import annotations

import argparse
import sys
import time

from skiff.cluster.client import ApiClient, load_kubeconfig, stop_on_signals
from skiff.cluster.client.command import run_command
from skiff.cluster.hollow.nodes import HollowNodes, HollowOptions


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff hollow-nodes",
                                     description="Simulated nodes that heartbeat and run pods without containers.")
    parser.add_argument("--kubeconfig", help="the cluster and credentials (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--count", type=int, required=True, help="how many nodes")
    parser.add_argument("--name-prefix", default="hollow-node-", help="node i is named PREFIX<i>")
    parser.add_argument("--lease-interval", type=float, default=10.0, help="seconds between a node's lease renewals")
    parser.add_argument("--cpu", default="4", help="each node's CPU capacity")
    parser.add_argument("--memory", default="16Gi", help="each node's memory capacity")
    parser.add_argument("--max-pods", type=int, default=110, help="pods each node takes")
    parser.add_argument("--zones", type=int, default=0, help="spread nodes over this many zone labels")
    parser.add_argument("--cluster-cidr", default="10.42.0.0/16", help="the range pod CIDRs are cut from")
    parser.add_argument("--node-cidr-mask-size", type=int, default=24, help="each node's pod CIDR prefix length")
    parser.add_argument("--concurrency", type=int, default=64, help="API calls in flight at once")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.lease_interval <= 0:
        parser.error("--lease-interval must be positive")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


async def run(args: argparse.Namespace) -> None:
    options = HollowOptions(args.count, args.name_prefix, args.lease_interval, args.cpu, args.memory, args.max_pods,
                            args.cluster_cidr, args.node_cidr_mask_size, args.zones, args.concurrency)
    stop = stop_on_signals()
    async with ApiClient.from_config(load_kubeconfig(args.kubeconfig), user_agent="skiff-hollow-node",
                                     pool_size=args.concurrency) as client:
        nodes = HollowNodes(client, options)
        started = time.monotonic()
        await nodes.start()
        print(f"skiff hollow-nodes: {args.count} nodes registered in {time.monotonic() - started:.1f}s",
              file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await nodes.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_command("skiff hollow-nodes", args.log_level, lambda: run(args))
