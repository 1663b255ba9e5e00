"""``skiff engine``: run the engine daemon (dockerd's job), serving the Docker Engine API.

    skiff engine [--data-root DIR] [--exec-root DIR] [-H unix:///PATH]... [--group NAME] [--pidfile FILE]
                 [--runtime skiff|runc|crun|PATH] [--registry-mirror URL]... [--insecure-registry HOST]...
                 [--bridge NAME] [--bip CIDR] [--nft-table NAME] [--default-address-pool base=CIDR,size=N]
                 [-H tcp://ADDR:PORT --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY]
                 [--log-level LEVEL] [-D]

Point the docker CLI at it with ``DOCKER_HOST=unix:///run/skiff/engine.sock``. It logs ``API listen on
ADDRESS`` for each address once that address accepts connections, and serves until SIGTERM or SIGINT;
containers keep running across restarts. Errors at start-up are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from skiff.engine.daemon import DEFAULT_DATA_ROOT, DEFAULT_EXEC_ROOT, DEFAULT_HOST, RUNTIMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff engine", description="The Skiff engine: a Docker Engine API daemon.")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), metavar="DIR",
                   help=f"persistent state: images, containers, volumes (default {DEFAULT_DATA_ROOT})")
    p.add_argument("--exec-root", default=str(DEFAULT_EXEC_ROOT), metavar="DIR",
                   help=f"runtime state: pid file, OCI runtime root (default {DEFAULT_EXEC_ROOT})")
    p.add_argument("-H", "--host", dest="hosts", action="append", metavar="ADDRESS",
                   help=f"address to serve on, repeatable: unix:///PATH or, with TLS, tcp://HOST:PORT "
                        f"(default {DEFAULT_HOST})")
    p.add_argument("-G", "--group", metavar="NAME", help="group owning the unix sockets (mode 0660)")
    p.add_argument("-p", "--pidfile", metavar="FILE", help="pid file (default EXEC-ROOT/engine.pid)")
    p.add_argument("--runtime", default="skiff", metavar="RUNTIME",
                   help=f"OCI runtime: {', '.join(RUNTIMES)} or the path of a runc-compatible binary (default skiff)")
    p.add_argument("--cgroup-parent", default="/skiff", metavar="PATH",
                   help="parent cgroup of every container (default /skiff)")
    p.add_argument("--bridge", default="skiff0", metavar="NAME", help="the default network's bridge (default skiff0)")
    p.add_argument("--bip", default="10.88.0.0/16", metavar="CIDR",
                   help="the default network's subnet; its gateway is the first address (default 10.88.0.0/16)")
    p.add_argument("--nft-table", default="skiff", metavar="NAME",
                   help="this engine's nftables table (default skiff)")
    p.add_argument("--default-address-pool", default="base=10.89.0.0/16,size=24", metavar="base=CIDR,size=N",
                   help="where subnets of networks created without one come from (default base=10.89.0.0/16,size=24)")
    p.add_argument("--registry-mirror", dest="mirrors", action="append", default=[], metavar="URL",
                   help="a Docker Hub mirror to pull from first, repeatable")
    p.add_argument("--insecure-registry", dest="insecure", action="append", default=[], metavar="HOST",
                   help="a registry to reach over plain HTTP or unverified TLS, repeatable")
    p.add_argument("--tlsverify", action="store_true", help="require TLS client certificates (needed for tcp://)")
    p.add_argument("--tlscacert", metavar="FILE", help="CA that client certificates must be signed by")
    p.add_argument("--tlscert", metavar="FILE", help="the server's TLS certificate")
    p.add_argument("--tlskey", metavar="FILE", help="the server's TLS key")
    p.add_argument("-l", "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("-D", "--debug", action="store_true", help="same as --log-level debug")
    return p


def _tls(args: argparse.Namespace, parser: argparse.ArgumentParser):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from skiff.engine.daemon import TLSConfig

    files = (args.tlscacert, args.tlscert, args.tlskey)
    if not args.tlsverify:
        if any(files):
            parser.error("--tlscacert/--tlscert/--tlskey need --tlsverify (plain server-side TLS is not offered)")
        return None
    if not all(files):
        parser.error("--tlsverify needs --tlscacert, --tlscert and --tlskey")
    return TLSConfig(Path(args.tlscacert), Path(args.tlscert), Path(args.tlskey))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    level = "DEBUG" if args.debug else args.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skiff.engine.daemon import Daemon, EngineConfig, describe
    from skiff.errors import SkiffError

    try:
        config = EngineConfig(
            data_root=args.data_root, exec_root=args.exec_root, hosts=args.hosts or [DEFAULT_HOST],
            runtime=args.runtime, registry_mirrors=args.mirrors, insecure_registries=args.insecure,
            tls=_tls(args, parser), group=args.group, pidfile=args.pidfile, cgroup_parent=args.cgroup_parent,
            bridge=args.bridge, bip=args.bip, nft_table=args.nft_table, default_address_pool=args.default_address_pool)
        logging.getLogger("skiff.engine").info("starting: %s", describe(config))
        asyncio.run(Daemon(config).run())
    except (OSError, SkiffError) as e:
        print(f"skiff engine: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
