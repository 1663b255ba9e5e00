"""``skiff cluster``: local multi-node clusters, each node a network namespace with its own engine.

    skiff cluster create [--name N] [--nodes 3] [--root DIR] [--subnet CIDR] [--cluster-cidr CIDR]
                         [--service-cidr CIDR] [--image-archive F] [--timeout S] [--agent-arg=A ...]
                         [--server-arg=A ...]
    skiff cluster delete [--name N] [--root DIR]
    skiff cluster kubeconfig [--name N] [--root DIR]
    skiff cluster load [--name N] [--root DIR] ARCHIVE
    skiff cluster status [--name N] [--root DIR]

``--root`` defaults to ``/var/lib/skiff/clusters/<name>``; the cluster's record is ``<root>/cluster.json``, so
every verb but ``create`` finds the cluster from a fresh shell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from skiff.cluster.local.state import DEFAULT_NAME, DEFAULT_ROOT, check_name
from skiff.errors import SkiffError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff cluster", description="Local multi-node clusters.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=text, description=text)
        sub.add_argument("--name", default=DEFAULT_NAME, help=f"the cluster's name (default: {DEFAULT_NAME})")
        sub.add_argument("--root", type=Path, help=f"its directory (default: {DEFAULT_ROOT}/<name>)")
        return sub

    create = verb("create", "make a cluster and wait until its nodes are Ready")
    create.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3; node 1 runs the server)")
    create.add_argument("--subnet", help="the nodes' IPv4 network on the host bridge (default: a free /24 of "
                        "10.87.0.0/16)")
    create.add_argument("--cluster-cidr", default="10.42.0.0/16", help="the pods' range (a /24 per node)")
    create.add_argument("--service-cidr", default="10.43.0.0/16", help="the Services' ClusterIP range")
    create.add_argument("--image-archive", type=Path, help="a `docker save` archive loaded into every node")
    create.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ready nodes")
    create.add_argument("--agent-arg", action="append", default=[], help="an extra `skiff agent` argument of "
                        "nodes 2..N (repeatable, e.g. --agent-arg=--lease-interval=2)")
    create.add_argument("--server-arg", action="append", default=[], help="an extra `skiff server` argument of "
                        "node 1 (repeatable, e.g. --server-arg=--node-monitor-grace-period=15)")
    verb("delete", "stop a cluster and remove everything it made")
    verb("kubeconfig", "print the cluster's admin kubeconfig")
    verb("status", "print the cluster's nodes and processes (JSON)")
    load = verb("load", "load an image archive (`docker save`) into every node's engine")
    load.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    try:
        check_name(args.name)
    except SkiffError as exc:
        parser.error(str(exc))
    args.root = (args.root or DEFAULT_ROOT / args.name).absolute()
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from skiff.cluster.local.cluster import LocalCluster, describe, open_cluster

    try:
        if args.verb == "create":
            LocalCluster.create(args.name, args.root, args.nodes, subnet=args.subnet, cluster_cidr=args.cluster_cidr,
                                service_cidr=args.service_cidr, image_archive=args.image_archive,
                                timeout=args.timeout, agent_args=tuple(args.agent_arg),
                                server_args=tuple(args.server_arg), say=say)
            say(f"kubeconfig: skiff cluster kubeconfig --name {args.name} > kubeconfig  (or {args.root}/kubeconfig)")
        elif args.verb == "delete":
            open_cluster(args.root, say).delete()
        elif args.verb == "kubeconfig":
            sys.stdout.write(open_cluster(args.root).kubeconfig())
        elif args.verb == "load":
            for line in open_cluster(args.root, say).load(args.archive):
                print(line)
        elif args.verb == "status":
            print(json.dumps(describe(open_cluster(args.root)), indent=1))
    except (SkiffError, OSError) as exc:
        print(f"skiff cluster {args.verb}: {exc}", file=sys.stderr)
        return 1
    return 0
