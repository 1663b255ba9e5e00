"""``skiff server``: the cluster's control plane in one process (for now: the API server).

    skiff server [--data-dir DIR] [--listen ADDR:PORT] [--datastore sqlite|etcd://HOST:PORT,...]
                 [--cluster-cidr CIDR] [--service-cidr CIDR] [--write-kubeconfig PATH] [--disable-agent]
                 [--token-file F]

The admin kubeconfig is always written to ``<data-dir>/cred/admin.kubeconfig`` (and to
``--write-kubeconfig`` when given). SIGTERM or SIGINT stops the server cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from skiff.cluster.api.server import ApiServer, ServerConfig
from skiff.errors import SkiffError

DEFAULT_DATA_DIR = "/var/lib/skiff/server"


def parse_args(argv: list[str]) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="skiff server", description="Run the Kubernetes API server.")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state: certificates, the SQLite store")
    parser.add_argument("--listen", default="127.0.0.1:6443", help="ADDR:PORT to serve HTTPS on")
    parser.add_argument("--datastore", default="sqlite", help="sqlite (embedded) or etcd://HOST:PORT[,HOST:PORT]")
    parser.add_argument("--cluster-cidr", default="10.42.0.0/16", help="the pods' address range")
    parser.add_argument("--service-cidr", default="10.43.0.0/16", help="the Services' ClusterIP range")
    parser.add_argument("--write-kubeconfig", type=Path, help="also write the admin kubeconfig here")
    parser.add_argument("--disable-agent", action="store_true", help="run no node agent in this process")
    parser.add_argument("--token-file", type=Path, help="static bearer tokens: token,user,uid,\"group1,group2\"")
    parser.add_argument("--compact-interval", type=float, default=300.0, help="seconds between store compactions")
    parser.add_argument("--compact-retain", type=int, default=1000, help="revisions of history compaction keeps")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ServerConfig(Path(args.data_dir), args.listen, args.datastore, args.cluster_cidr, args.service_cidr,
                        args.write_kubeconfig, args.token_file, args.disable_agent, args.compact_interval,
                        args.compact_retain)


async def serve(config: ServerConfig) -> None:
    server = ApiServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"skiff server: serving {server.url}; kubeconfig {server.admin_kubeconfig}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv)
        asyncio.run(serve(config))
    except SkiffError as exc:
        print(f"skiff server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"skiff server: {exc}", file=sys.stderr)
        return 1
    return 0
