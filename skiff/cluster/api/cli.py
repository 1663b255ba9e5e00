"""``skiff server``: the cluster's control plane: the API server, and beside it the scheduler and the controllers.

    skiff server [--data-dir DIR] [--listen ADDR:PORT] [--datastore sqlite|etcd://HOST:PORT,...]
                 [--cluster-cidr CIDR] [--service-cidr CIDR] [--write-kubeconfig PATH] [--disable-agent]
                 [--node-name N] [--engine unix:///PATH] [--node-ip IP] [--pause-image IMAGE]
                 [--token-file F] [--disable-controllers] [--disable-scheduler]
                 [--default-not-ready-toleration-seconds S] [--default-unreachable-toleration-seconds S]
                 [the controller manager's --node-monitor-grace-period S, --node-monitor-period S, ...]

The scheduler and the controller manager run as child processes (``skiff scheduler``, ``skiff
controller-manager``, with the credentials the server makes for them; see ``supervisor``), so that they and the
API server each have a core; a child that dies is logged and restarted. Unless ``--disable-agent``, this host's
node agent runs in the server's process (``_agent``), so one command makes a one-node cluster.

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

from skiff.atomicfile import write_atomically
from skiff.cluster.api.auth import AUTHENTICATED, SCHEDULER_USER, User, component_token
from skiff.cluster.api.server import ApiServer, ServerConfig, _token_kubeconfig, nth_address
from skiff.cluster.api.supervisor import ChildProcess
from skiff.cluster.controllers import options as controller_options
from skiff.errors import SkiffError

DEFAULT_DATA_DIR = "/var/lib/skiff/server"


def parse_args(argv: list[str]) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="skiff server", description="Run the Kubernetes API server.")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state: certificates, the SQLite store")
    parser.add_argument("--listen", default="127.0.0.1:6443", help="ADDR:PORT to serve HTTPS on")
    parser.add_argument("--datastore", default="sqlite", help="sqlite (embedded) or etcd://HOST:PORT[,HOST:PORT]")
    parser.add_argument("--cluster-cidr", default="10.42.0.0/16", help="the pods' address range")
    parser.add_argument("--allocate-node-cidrs", action="store_true",
                        help="give every Node a /24 of --cluster-cidr as its pod CIDR (the nodes' pod networks)")
    parser.add_argument("--service-cidr", default="10.43.0.0/16", help="the Services' ClusterIP range")
    parser.add_argument("--write-kubeconfig", type=Path, help="also write the admin kubeconfig here")
    parser.add_argument("--disable-agent", action="store_true", help="run no node agent in this process")
    parser.add_argument("--node-name", help="the agent's Node name (default: the host name)")
    parser.add_argument("--engine", default="unix:///run/skiff/engine.sock", help="the agent's engine (Docker API)")
    parser.add_argument("--node-ip", help="the agent's InternalIP (default: the host's outgoing address)")
    parser.add_argument("--pause-image", help="the pods' sandbox image (default: skiff/pause:3.10, made here)")
    parser.add_argument("--kubelet-port", type=int, default=10250,
                        help="the agent's kubelet API (logs, exec) on --node-ip; 0: a free port")
    parser.add_argument("--disable-proxy", action="store_true",
                        help="the agent runs no Service proxy and no cluster DNS on this host")
    parser.add_argument("--token-file", type=Path, help="static bearer tokens: token,user,uid,\"group1,group2\"")
    parser.add_argument("--compact-interval", type=float, default=300.0, help="seconds between store compactions")
    parser.add_argument("--compact-retain", type=int, default=1000, help="revisions of history compaction keeps")
    parser.add_argument("--disable-controllers", action="store_true",
                        help="run no controllers in this process (run `skiff controller-manager` instead)")
    parser.add_argument("--disable-scheduler", action="store_true",
                        help="run no scheduler in this process (run `skiff scheduler` instead)")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    parser.add_argument("--default-not-ready-toleration-seconds", type=int, default=300,
                        help="tolerationSeconds of the not-ready:NoExecute toleration pods get by default")
    parser.add_argument("--default-unreachable-toleration-seconds", type=int, default=300,
                        help="tolerationSeconds of the unreachable:NoExecute toleration pods get by default")
    controller_options.add_flags(parser)  # passed on to the controller manager
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ServerConfig(Path(args.data_dir), args.listen, args.datastore, args.cluster_cidr, args.service_cidr,
                        args.write_kubeconfig, args.token_file, args.disable_agent, args.compact_interval,
                        args.compact_retain, disable_controllers=args.disable_controllers,
                        disable_scheduler=args.disable_scheduler, node_name=_node_name(parser, args.node_name),
                        engine=args.engine, node_ip=args.node_ip, pause_image=args.pause_image,
                        kubelet_port=args.kubelet_port, disable_proxy=args.disable_proxy,
                        default_not_ready_toleration_seconds=args.default_not_ready_toleration_seconds,
                        default_unreachable_toleration_seconds=args.default_unreachable_toleration_seconds,
                        controller_flags=tuple(controller_options.to_flags(
                            controller_options.from_flags(args, cluster_cidr=args.cluster_cidr,
                                                          allocate_node_cidrs=args.allocate_node_cidrs))))


def _node_name(parser: argparse.ArgumentParser, name: str | None) -> str | None:
    if name is None:
        return None
    from skiff.cluster.kubelet.agent import check_node_name

    try:
        return check_node_name(name)
    except SkiffError as exc:
        parser.error(str(exc))


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
    children = _children(server, config)
    for child in children:
        child.start()
    agent = None if config.disable_agent else await _agent(server, config)
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*(child.stop() for child in children))
        if agent is not None:
            await agent.stop()
        await server.stop()


def _children(server: ApiServer, config: ServerConfig) -> list[ChildProcess]:
    """The scheduler and the controller manager, each its own process and an API client of this server."""
    log_level = ["--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()]
    children = []
    if not config.disable_scheduler:
        children.append(ChildProcess("scheduler", ["scheduler", "--kubeconfig", str(_scheduler_kubeconfig(server)),
                                                   *log_level]))
    if not config.disable_controllers:
        children.append(ChildProcess("controller manager", [*_controller_manager_argv(server), *log_level]))
    return children


def _controller_manager_argv(server: ApiServer) -> list[str]:
    """``skiff controller-manager`` as user system:kube-controller-manager (the kubeconfig the server wrote)."""
    return ["controller-manager", "--kubeconfig", str(server.controller_manager_kubeconfig),
            *server.config.controller_flags]


def _scheduler_kubeconfig(server: ApiServer) -> Path:
    """The scheduler's credentials (user system:kube-scheduler): a bearer token this server accepts, in a
    kubeconfig only root reads."""
    token = component_token(server.pki.dir / "scheduler.token")
    server.authenticator.tokens[token] = User(SCHEDULER_USER, (AUTHENTICATED,))
    path = server.config.data_dir / "cred" / "scheduler.kubeconfig"
    write_atomically(path, _token_kubeconfig(server.url, server.pki.ca.cert_pem(), SCHEDULER_USER, token), mode=0o600)
    return path


async def _agent(server: ApiServer, config: ServerConfig) -> Any:
    """This host's node agent, run in this process as a client of this server with the node's own certificate
    (user system:node:<name> in group system:nodes). It starts in the background: until the engine answers,
    the Node is NotReady saying why, and the server serves regardless."""
    from skiff.cluster.client import ApiClient, ClusterConfig
    from skiff.cluster.kubelet.agent import NodeAgent, default_node_name
    from skiff.cluster.kubelet.kubelet import KubeletOptions
    from skiff.cluster.kubelet.node import default_address
    from skiff.cluster.kubelet.server import ServingOptions
    from skiff.cluster.proxy.node import NodeServiceOptions

    name = config.node_name or default_node_name()
    node_ip = config.node_ip or default_address()
    credentials = server.pki.node_credentials(name)
    client = ApiClient(ClusterConfig(server.url, ca_pem=server.pki.ca.cert_pem(), cert_pem=credentials.cert_pem(),
                                     key_pem=credentials.key_pem()), user_agent=f"skiff-agent/{name}")
    # The kubelet API (logs, exec) with a certificate of this server's CA, so the server can check it, and
    # callers checked against that CA (the server's kubelet-client certificate is one of its).
    serving = server.pki.kubelet_serving_credentials(name, [node_ip, "127.0.0.1", name])
    cluster_dns = None if config.disable_proxy else nth_address(config.service_cidr, 10)
    options = KubeletOptions(node_name=name, data_dir=config.data_dir / "agent", engine=config.engine,
                             node_ip=node_ip, cluster_dns=cluster_dns,
                             serving=ServingOptions(address=node_ip, port=config.kubelet_port,
                                                    cert_file=serving.cert_path, key_file=serving.key_path,
                                                    client_ca_pem=server.pki.ca.cert_pem()))
    if config.pause_image:
        options.pause_image = config.pause_image
    services = None if config.disable_proxy else NodeServiceOptions(name, cluster_dns=cluster_dns)
    agent = NodeAgent(client, options, services=services, owns_client=True)
    await agent.start()
    return agent


def kubelet_certificate(argv: list[str]) -> int:
    """``skiff server kubelet-certificate``: a kubelet serving certificate signed by this server's CA, for an
    agent started elsewhere (``skiff cluster`` gives one to each of its nodes; k3s's server hands out the same).

    Writes ``kubelet.crt``, ``kubelet.key`` (0600) and the CA's ``ca.crt`` into ``--out-dir``; the agent takes
    them as ``--tls-cert-file``, ``--tls-private-key-file`` and ``--client-ca-file``."""
    from skiff.cluster.api.certs import ClusterPKI

    parser = argparse.ArgumentParser(prog="skiff server kubelet-certificate",
                                     description=kubelet_certificate.__doc__.splitlines()[0])  # type: ignore[union-attr]
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="the server's data dir (its CA)")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--address", action="append", required=True, help="an address the kubelet serves on")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    pki = ClusterPKI(Path(args.data_dir) / "tls")
    if not (pki.ca.cert_path.exists() and pki.ca.key_path.exists()):
        print(f"skiff server: no cluster CA in {pki.dir} (start skiff server with this --data-dir first)",
              file=sys.stderr)
        return 1
    pair = pki.kubelet_serving_credentials(args.node_name, [*args.address, args.node_name])
    args.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(args.out_dir / "kubelet.crt", pair.cert_pem())
    write_atomically(args.out_dir / "kubelet.key", pair.key_pem(), mode=0o600)
    write_atomically(args.out_dir / "ca.crt", pki.ca.cert_pem())
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["kubelet-certificate"]:
        return kubelet_certificate(argv[1:])
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
