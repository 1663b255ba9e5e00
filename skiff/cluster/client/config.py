"""Kubeconfig files: how to reach one cluster as one user.

``load_kubeconfig`` merges the files kubectl would read (``--kubeconfig``, else ``$KUBECONFIG``'s list,
else ``~/.kube/config``; the first file to name a cluster, user or context wins, as kubectl merges them)
and resolves the chosen context to a ``ClusterConfig``: the server URL, the CA, and a client certificate
and key (inline ``-data`` or files, relative to the kubeconfig) or a bearer token. ``skiff kubectl`` and
every control-plane component read kubeconfigs through this one module.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skiff.errors import InvalidArgument


class ConfigError(InvalidArgument):
    """The kubeconfig is missing or does not say how to reach a cluster."""


@dataclass
class ClusterConfig:
    """How to reach one cluster as one user, as a kubeconfig context says."""

    server: str
    namespace: str = "default"
    ca_pem: bytes | None = None
    insecure: bool = False
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS client context: trusting the cluster's CA, presenting the client certificate if there is one."""
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            context = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.cert_pem and self.key_pem:
            # ssl loads client identities only from files: write them to a private directory, briefly.
            with tempfile.TemporaryDirectory(prefix="skiff-client-") as scratch:
                cert, key = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
                for target, data in ((cert, self.cert_pem), (key, self.key_pem)):
                    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(descriptor, "wb") as handle:
                        handle.write(data)
                context.load_cert_chain(cert, key)
        return context


def kubeconfig_paths(explicit: str | os.PathLike[str] | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    if os.environ.get("KUBECONFIG"):
        return [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> ClusterConfig:
    """The ``ClusterConfig`` of ``context`` (default: the current context) in the kubeconfig(s)."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    found = False
    for candidate in kubeconfig_paths(path):
        if not candidate.exists():
            continue
        found = True
        try:
            document = yaml.safe_load(candidate.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{candidate}: not a kubeconfig: {exc}") from None
        base = candidate.parent
        for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in document.get(section) or []:
                merged[section].setdefault(entry.get("name"), (entry.get(key) or {}, base))
        merged["current-context"] = merged["current-context"] or document.get("current-context")
    if not found:
        raise ConfigError("no kubeconfig found: pass --kubeconfig or set KUBECONFIG")
    name = context or merged["current-context"]
    if name not in merged["contexts"]:
        raise ConfigError(f'context "{name}" does not exist' if name else "no current context is set")
    ctx, _ = merged["contexts"][name]
    cluster, cluster_base = merged["clusters"].get(ctx.get("cluster"), ({}, Path()))
    user, user_base = merged["users"].get(ctx.get("user"), ({}, Path()))
    if not cluster.get("server"):
        raise ConfigError(f'cluster "{ctx.get("cluster")}" has no server')
    return ClusterConfig(
        server=cluster["server"].rstrip("/"),
        namespace=ctx.get("namespace") or "default",
        ca_pem=_pem(cluster, "certificate-authority", cluster_base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_pem=_pem(user, "client-certificate", user_base),
        key_pem=_pem(user, "client-key", user_base),
        token=user.get("token") or _read_optional(user.get("tokenFile"), user_base),
    )


def _pem(section: dict[str, Any], name: str, base: Path) -> bytes | None:
    if section.get(f"{name}-data"):
        return base64.b64decode(section[f"{name}-data"])
    if section.get(name):
        return (base / section[name]).read_bytes()
    return None


def _read_optional(name: str | None, base: Path) -> str | None:
    return (base / name).read_text().strip() if name else None
