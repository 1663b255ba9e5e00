"""``skiff agent``: the node agent (kubelet) of one node, against a server, driving one engine.

    skiff agent (--server URL --token-file F [--ca-file F] | --kubeconfig F) [--node-name N] [--data-dir DIR]
                [--engine unix:///PATH] [--node-ip IP] [--pause-image IMAGE] [--pause-command CMD]
                [--backoff-base S] [--lease-interval S] [--resync-interval S]

Stopping the agent (SIGTERM, SIGINT) leaves its pods running, as a stopped kubelet does; the Node stays
registered, its Lease expires and the node lifecycle controller marks it NotReady.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import socket
import sys
from pathlib import Path

from skiff.cluster.client import ApiClient, ClusterConfig, load_kubeconfig, stop_on_signals
from skiff.cluster.kubelet.kubelet import DEFAULT_PAUSE_IMAGE, Kubelet, KubeletOptions
from skiff.errors import InvalidArgument, SkiffError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff agent", description="The node agent: runs the pods bound to "
                                     "this node on its engine.")
    parser.add_argument("--server", help="the API server's URL (with --token-file)")
    parser.add_argument("--token-file", help="a file holding the node's bearer token")
    parser.add_argument("--ca-file", help="the cluster CA to verify the server with (with --server)")
    parser.add_argument("--kubeconfig", help="the cluster and the node's credentials, instead of --server")
    parser.add_argument("--node-name", default=socket.gethostname().lower(), help="the Node's name (the host name)")
    parser.add_argument("--data-dir", default="/var/lib/skiff/agent", help="where pod volumes are kept")
    parser.add_argument("--engine", default="unix:///run/skiff/engine.sock", help="the node's engine (Docker API)")
    parser.add_argument("--node-ip", help="the node's InternalIP (default: the host's outgoing address)")
    parser.add_argument("--pause-image", default=DEFAULT_PAUSE_IMAGE, help="the image of the pods' sandboxes")
    parser.add_argument("--pause-command", help="the sandbox's command (default: the pause image's own)")
    parser.add_argument("--pod-cidr", help="the node's pod CIDR, written to spec.podCIDR")
    parser.add_argument("--backoff-base", type=float, default=10.0, help="CrashLoopBackOff's first delay (s)")
    parser.add_argument("--backoff-max", type=float, default=300.0, help="CrashLoopBackOff's longest delay (s)")
    parser.add_argument("--lease-interval", type=float, default=10.0, help="seconds between Lease renewals")
    parser.add_argument("--resync-interval", type=float, default=10.0, help="seconds between full resyncs")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    if args.kubeconfig and (args.server or args.token_file):
        parser.error("--kubeconfig and --server/--token-file are alternatives")
    if not args.kubeconfig and not (args.server and args.token_file):
        parser.error("pass --server URL --token-file F, or --kubeconfig F")
    for name in ("backoff_base", "backoff_max", "lease_interval", "resync_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    if args.kubeconfig:
        return load_kubeconfig(args.kubeconfig)
    try:
        token = Path(args.token_file).read_text().strip()
        ca = Path(args.ca_file).read_bytes() if args.ca_file else None
    except OSError as exc:
        raise InvalidArgument(f"{exc.filename}: {exc.strerror}") from None
    if not token:
        raise InvalidArgument(f"{args.token_file} holds no token")
    return ClusterConfig(server=args.server.rstrip("/"), ca_pem=ca, token=token)


def options(args: argparse.Namespace) -> KubeletOptions:
    return KubeletOptions(node_name=args.node_name, data_dir=Path(args.data_dir), engine=args.engine,
                          node_ip=args.node_ip, pause_image=args.pause_image,
                          pause_command=shlex.split(args.pause_command) if args.pause_command else None,
                          backoff_base=args.backoff_base, backoff_max=args.backoff_max,
                          lease_interval=args.lease_interval, resync_interval=args.resync_interval,
                          pod_cidr=args.pod_cidr)


async def run(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    async with ApiClient.from_config(cluster_config(args), user_agent=f"skiff-agent/{args.node_name}") as client:
        kubelet = Kubelet(client, options(args))
        await kubelet.start()
        print(f"skiff agent: node {args.node_name} registered", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await kubelet.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(args))
    except (SkiffError, OSError) as exc:
        print(f"skiff agent: {exc}", file=sys.stderr)
        return 1
    return 0
