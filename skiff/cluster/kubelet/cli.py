"""``skiff agent``: the node agent (kubelet) of one node, against a server, driving one engine.

    skiff agent (--server URL --token-file F [--ca-file F] | --kubeconfig F) [--node-name N] [--data-dir DIR]
                [--engine unix:///PATH] [--node-ip IP] [--pause-image IMAGE] [--pause-command CMD]
                [--backoff-base S] [--lease-interval S] [--resync-interval S]
                [--address IP] [--kubelet-port P] [--tls-cert-file F --tls-private-key-file F] [--client-ca-file F]
                [--disable-proxy] [--proxy-table NAME] [--cluster-dns IP] [--cluster-domain DOMAIN]

The Service proxy (an nftables table, ``--proxy-table``) runs beside the kubelet unless ``--disable-proxy``;
with ``--cluster-dns IP`` (the kube-dns ClusterIP, 10.43.0.10) so does the node's cluster DNS, and pods with
``dnsPolicy: ClusterFirst`` get it in their resolv.conf (skiff/cluster/proxy/node.py, docs/cluster.md).
Until the engine answers, the Node is registered NotReady saying why, and the engine is asked again every
2 s. The default sandbox image, ``skiff/pause:3.10``, is made by the agent when the engine lacks it (``pause``).
Stopping the agent (SIGTERM, SIGINT) leaves its pods running, as a stopped kubelet does; the Node stays
registered, its Lease expires and the node lifecycle controller marks it NotReady.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import shlex
import sys
from pathlib import Path

from skiff.cluster.client import ApiClient, ClusterConfig, load_kubeconfig, stop_on_signals
from skiff.cluster.client.command import run_command
from skiff.cluster.kubelet.agent import DEFAULT_ENGINE, NodeAgent, check_node_name, default_node_name
from skiff.cluster.kubelet.kubelet import DEFAULT_PAUSE_IMAGE, KubeletOptions
from skiff.cluster.kubelet.server import DEFAULT_PORT, ServingOptions
from skiff.cluster.proxy.node import DEFAULT_DOMAIN, NodeServiceOptions
from skiff.cluster.proxy.proxier import DEFAULT_TABLE, ProxyOptions
from skiff.errors import InvalidArgument


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff agent", description="The node agent: runs the pods bound to "
                                     "this node on its engine.")
    parser.add_argument("--server", help="the API server's URL (with --token-file)")
    parser.add_argument("--token-file", help="a file holding the node's bearer token")
    parser.add_argument("--ca-file", help="the cluster CA to verify the server with (with --server)")
    parser.add_argument("--kubeconfig", help="the cluster and the node's credentials, instead of --server")
    parser.add_argument("--node-name", default=default_node_name(), help="the Node's name (the host name)")
    parser.add_argument("--data-dir", default="/var/lib/skiff/agent", help="where pod volumes are kept")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, help="the node's engine (Docker API)")
    parser.add_argument("--node-ip", help="the node's InternalIP (default: the host's outgoing address)")
    parser.add_argument("--pause-image", default=DEFAULT_PAUSE_IMAGE,
                        help="the image of the pods' sandboxes (skiff/pause:<tag> is made here when missing)")
    parser.add_argument("--pause-command", help="the sandbox's command (default: the pause image's own)")
    parser.add_argument("--pod-cidr", help="the node's pod CIDR, written to spec.podCIDR (default: "
                        "the one IPAM gives the Node); pods get addresses from it on the engine network skiff-pods")
    parser.add_argument("--address", default="0.0.0.0", help="the kubelet API's listen address")
    parser.add_argument("--kubelet-port", type=int, default=DEFAULT_PORT, help="the kubelet API's port (0: any)")
    parser.add_argument("--tls-cert-file", help="the kubelet API's serving certificate (default: self-signed)")
    parser.add_argument("--tls-private-key-file", help="the key of --tls-cert-file")
    parser.add_argument("--client-ca-file", help="the CA whose clients may call the kubelet API "
                        "(default: the cluster CA)")
    parser.add_argument("--backoff-base", type=float, default=10.0, help="CrashLoopBackOff's first delay (s)")
    parser.add_argument("--backoff-max", type=float, default=300.0, help="CrashLoopBackOff's longest delay (s)")
    parser.add_argument("--lease-interval", type=float, default=10.0, help="seconds between Lease renewals")
    parser.add_argument("--resync-interval", type=float, default=10.0, help="seconds between full resyncs")
    parser.add_argument("--housekeeping-interval", type=float, default=10.0,
                        help="seconds between two readings of the containers' CPU and memory (kubectl top, HPA)")
    parser.add_argument("--disable-proxy", action="store_true", help="run no Service proxy (and no cluster DNS)")
    parser.add_argument("--proxy-table", default=DEFAULT_TABLE, help="the proxy's nftables table (family ip)")
    parser.add_argument("--cluster-dns", help="the cluster DNS's ClusterIP (10.43.0.10): serve DNS on this node, "
                        "and give it to ClusterFirst pods")
    parser.add_argument("--cluster-domain", default=DEFAULT_DOMAIN, help="the cluster's DNS domain")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    if args.kubeconfig and (args.server or args.token_file):
        parser.error("--kubeconfig and --server/--token-file are alternatives")
    if not args.kubeconfig and not (args.server and args.token_file):
        parser.error("pass --server URL --token-file F, or --kubeconfig F")
    try:
        check_node_name(args.node_name)
    except InvalidArgument as exc:
        parser.error(str(exc))
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        parser.error("--tls-cert-file and --tls-private-key-file go together")
    if not 0 <= args.kubelet_port <= 65535:
        parser.error("--kubelet-port must be 0..65535")
    try:
        ProxyOptions(args.node_name, table=args.proxy_table).check()
        if args.cluster_dns:
            ipaddress.IPv4Address(args.cluster_dns)
    except ValueError as exc:
        parser.error(f"--cluster-dns {args.cluster_dns}: {exc}")
    except InvalidArgument as exc:
        parser.error(str(exc))
    for name in ("backoff_base", "backoff_max", "lease_interval", "resync_interval", "housekeeping_interval"):
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


def serving(args: argparse.Namespace) -> ServingOptions:
    """The kubelet API's options; its callers are verified with --client-ca-file, else the cluster CA."""
    try:
        if args.client_ca_file or args.ca_file:
            client_ca = Path(args.client_ca_file or args.ca_file).read_bytes()
        else:
            client_ca = load_kubeconfig(args.kubeconfig).ca_pem if args.kubeconfig else None
    except OSError as exc:
        raise InvalidArgument(f"{exc.filename}: {exc.strerror}") from None
    return ServingOptions(address=args.address, port=args.kubelet_port,
                          cert_file=Path(args.tls_cert_file) if args.tls_cert_file else None,
                          key_file=Path(args.tls_private_key_file) if args.tls_private_key_file else None,
                          client_ca_pem=client_ca)


def options(args: argparse.Namespace) -> KubeletOptions:
    return KubeletOptions(node_name=args.node_name, data_dir=Path(args.data_dir), engine=args.engine,
                          node_ip=args.node_ip, pause_image=args.pause_image,
                          pause_command=shlex.split(args.pause_command) if args.pause_command else None,
                          backoff_base=args.backoff_base, backoff_max=args.backoff_max,
                          lease_interval=args.lease_interval, resync_interval=args.resync_interval,
                          pod_cidr=args.pod_cidr, serving=serving(args), cluster_dns=args.cluster_dns,
                          cluster_domain=args.cluster_domain, housekeeping_interval=args.housekeeping_interval)


def node_services(args: argparse.Namespace) -> NodeServiceOptions | None:
    if args.disable_proxy:
        return None
    return NodeServiceOptions(args.node_name, table=args.proxy_table, cluster_dns=args.cluster_dns,
                              cluster_domain=args.cluster_domain)


async def run(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    async with ApiClient.from_config(cluster_config(args), user_agent=f"skiff-agent/{args.node_name}") as client:
        agent = NodeAgent(client, options(args), services=node_services(args))
        await agent.start()
        started = asyncio.create_task(agent.wait_started())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if started.done():
                started.result()  # start-up's failure, if it failed
                print(f"skiff agent: node {args.node_name} registered", file=sys.stderr, flush=True)
                await stopping
        finally:
            started.cancel()
            stopping.cancel()
            await agent.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_command("skiff agent", args.log_level, lambda: run(args))
