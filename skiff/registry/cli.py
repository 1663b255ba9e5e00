"""``skiff registry``: run the OCI Distribution registry server, or collect its garbage.

    skiff registry [--listen ADDR] [--data DIR] [--htpasswd FILE] [--realm NAME]
                   [--tls-cert FILE --tls-key FILE] [--upload-ttl SECONDS] [--log-level LEVEL] [--access-log]
    skiff registry garbage-collect [--data DIR] [--dry-run]

ADDR is ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces); port 0 picks a free port. Once
listening it prints ``listening on http://HOST:PORT`` on stdout (tests and scripts wait for that
line, ``https://`` with TLS), then serves until SIGTERM or SIGINT. ``garbage-collect`` removes blobs that no repository
links to any more (after blob and manifest deletes); it refuses to run while a registry uses DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys

DEFAULT_LISTEN = "127.0.0.1:5000"
DEFAULT_DATA = "/var/lib/skiff/registry"


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) from ``host:port``, ``[v6]:port`` or ``:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r}: want HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff registry", description="An OCI Distribution registry server.",
                                epilog="Also: skiff registry garbage-collect [--data DIR] [--dry-run]")
    p.add_argument("--listen", type=parse_listen, default=DEFAULT_LISTEN, metavar="ADDR",
                   help=f"address to listen on (default {DEFAULT_LISTEN})")
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR", help=f"storage directory (default {DEFAULT_DATA})")
    p.add_argument("--htpasswd", metavar="FILE", help="require HTTP Basic auth against this htpasswd file")
    p.add_argument("--realm", default="skiff-registry", help="realm named in the Basic auth challenge")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain first)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--upload-ttl", type=float, default=86400.0, metavar="SECONDS",
                   help="remove upload sessions idle for longer than this (default one day)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["garbage-collect"]:
        return garbage_collect(argv[1:])
    return run_server(argv)


def garbage_collect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="skiff registry garbage-collect",
                                description="Remove blobs no repository links to (run with the registry stopped).")
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = p.parse_args(argv)
    from skiff.errors import SkiffError
    from skiff.registry.storage import Storage

    try:
        storage = Storage(args.data)
        removed = storage.collect_garbage(dry_run=args.dry_run)
    except (OSError, SkiffError) as e:
        print(f"skiff registry: {e}", file=sys.stderr)
        return 1
    for digest in removed:
        print(("would remove " if args.dry_run else "removed ") + digest)
    return 0


def run_server(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skiff.errors import SkiffError
    from skiff.registry.server import make_app, serve
    from skiff.registry.storage import Storage

    try:
        storage = Storage(args.data, upload_ttl=args.upload_ttl)
        auth = None
        if args.htpasswd:
            from skiff.registry.auth import Htpasswd

            auth = Htpasswd(args.htpasswd)
        tls = _tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (OSError, SkiffError) as e:
        print(f"skiff registry: {e}", file=sys.stderr)
        return 1
    app = make_app(storage, auth, args.realm)
    host, port = args.listen

    def announce(url: str) -> None:
        print(f"listening on {url}", flush=True)

    try:
        asyncio.run(serve(app, host, port, announce, access_log=args.access_log, tls=tls))
    except OSError as e:  # e.g. the address is in use
        print(f"skiff registry: {e}", file=sys.stderr)
        return 1
    return 0


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


if __name__ == "__main__":
    sys.exit(main())
