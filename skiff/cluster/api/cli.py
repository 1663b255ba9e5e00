"""``skiff server``: the cluster's control plane in one process: the API server, the scheduler and the controllers.

    skiff server [--data-dir DIR] [--listen ADDR:PORT] [--datastore sqlite|etcd://HOST:PORT,...]
                 [--cluster-cidr CIDR] [--service-cidr CIDR] [--write-kubeconfig PATH] [--disable-agent]
                 [--token-file F] [--disable-controllers] [--disable-scheduler]

The admin kubeconfig is always written to ``<data-dir>/cred/admin.kubeconfig`` (and to
``--write-kubeconfig`` when given). SIGTERM or SIGINT stops the server cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Any

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
    parser.add_argument("--disable-controllers", action="store_true",
                        help="run no controllers in this process (run `skiff controller-manager` instead)")
    parser.add_argument("--disable-scheduler", action="store_true",
                        help="run no scheduler in this process (run `skiff scheduler` instead)")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ServerConfig(Path(args.data_dir), args.listen, args.datastore, args.cluster_cidr, args.service_cidr,
                        args.write_kubeconfig, args.token_file, args.disable_agent, args.compact_interval,
                        args.compact_retain, disable_controllers=args.disable_controllers,
                        disable_scheduler=args.disable_scheduler)


async def serve(config: ServerConfig) -> None:
    server = ApiServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # What start-up made (modules, the RBAC policy, discovery and OpenAPI documents) lives as long as
    # the process: keep it out of the collector's full collections, which otherwise walk all of it
    # every few thousand requests (about 50 ms each, stalling every request in flight).
    gc.collect()
    gc.freeze()
    print(f"skiff server: serving {server.url}; kubeconfig {server.admin_kubeconfig}", file=sys.stderr, flush=True)
    controllers = None if config.disable_controllers else _controller_manager(server)
    scheduler = None if config.disable_scheduler else _scheduler(server)
    try:
        await stop.wait()
    finally:
        if scheduler is not None:
            await scheduler.stop()
        if controllers is not None:
            await controllers.stop()
        await server.stop()


def _controller_manager(server: ApiServer) -> Any:
    """The controllers, started in this process as a client of this server with their own credentials."""
    from skiff.cluster.client import load_kubeconfig
    from skiff.cluster.controllers.manager import ControllerManager

    manager = ControllerManager(load_kubeconfig(server.controller_manager_kubeconfig))
    manager.start()
    return manager


def _scheduler(server: ApiServer) -> Any:
    """The scheduler, started in this process as a client of this server (user system:kube-scheduler)."""
    from skiff.cluster.api.auth import AUTHENTICATED, SCHEDULER_USER, User, component_token
    from skiff.cluster.client import ApiClient, ClusterConfig
    from skiff.cluster.scheduler.service import Scheduler

    token = component_token(server.pki.dir / "scheduler.token")
    server.authenticator.tokens[token] = User(SCHEDULER_USER, (AUTHENTICATED,))
    client = ApiClient(ClusterConfig(server.url, ca_pem=server.pki.ca.cert_pem(), token=token),
                       user_agent="skiff-scheduler")
    scheduler = Scheduler(client, owns_client=True)
    scheduler.start()
    return scheduler


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
