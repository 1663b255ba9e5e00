"""The cluster's PKI: a CA, the API server's serving certificate, and client certificates for the admin
and for node agents; and the kubeconfig files that carry them.

Everything lives in ``<data-dir>/tls`` and is made once: a restart reuses it, so kubeconfigs written
earlier keep working. The serving certificate is remade only when the addresses it must name change.
Client identities follow kube's convention: the certificate's CN is the user, its O entries the groups
(``system:admin`` in ``system:masters``; ``system:node:<host>`` in ``system:nodes``).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skiff.atomicfile import write_atomically

VALIDITY = datetime.timedelta(days=3650)
ADMIN_USER, ADMIN_GROUP = "system:admin", "system:masters"
NODE_GROUP = "system:nodes"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"  # the API server's identity towards kubelets (kubeadm's)


@dataclass(frozen=True)
class KeyPair:
    cert_path: Path
    key_path: Path

    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class ClusterPKI:
    """The CA in ``<data-dir>/tls`` and the certificates it signs."""

    def __init__(self, tls_dir: Path) -> None:
        self.dir = tls_dir
        self.ca = KeyPair(tls_dir / "ca.crt", tls_dir / "ca.key")
        self.serving = KeyPair(tls_dir / "serving.crt", tls_dir / "serving.key")
        self.admin = KeyPair(tls_dir / "admin.crt", tls_dir / "admin.key")

    def ensure(self, hosts: list[str]) -> None:
        """Make whatever is missing: the CA, a serving certificate naming ``hosts``, the admin certificate."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (self.ca.cert_path.exists() and self.ca.key_path.exists()):
            self._make_ca()
        if not self._serving_names_cover(hosts):
            self._issue(self.serving, _name("skiff-apiserver"), server_hosts=hosts)
        if not self.admin.cert_path.exists():
            self._issue(self.admin, _name(ADMIN_USER, (ADMIN_GROUP,)))

    def node_credentials(self, node_name: str) -> KeyPair:
        """A client certificate for the node agent on ``node_name`` (made once)."""
        pair = KeyPair(self.dir / f"node-{node_name}.crt", self.dir / f"node-{node_name}.key")
        if not pair.cert_path.exists():
            self._issue(pair, _name(f"system:node:{node_name}", (NODE_GROUP,)))
        return pair

    def kubelet_client_credentials(self) -> KeyPair:
        """The API server's client certificate for calling kubelets (logs, exec); no groups, so it is nobody
        to the API server itself (made once)."""
        pair = KeyPair(self.dir / "kubelet-client.crt", self.dir / "kubelet-client.key")
        if not pair.cert_path.exists():
            self._issue(pair, _name(KUBELET_CLIENT_USER))
        return pair

    def kubelet_serving_credentials(self, node_name: str, hosts: list[str]) -> KeyPair:
        """The serving certificate of the kubelet API on ``node_name``, naming ``hosts`` (its addresses and
        names); kube's CN=system:node:NAME, O=system:nodes. Remade when ``hosts`` grow."""
        pair = KeyPair(self.dir / f"kubelet-serving-{node_name}.crt", self.dir / f"kubelet-serving-{node_name}.key")
        if not self._serving_names_cover(hosts, pair):
            self._issue(pair, _name(f"system:node:{node_name}", (NODE_GROUP,)), server_hosts=hosts)
        return pair

    def _make_ca(self) -> None:
        key = _new_key()
        name = _name("skiff-ca")
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        write_atomically(self.ca.key_path, _key_pem(key), mode=0o600)
        write_atomically(self.ca.cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, pair: KeyPair, subject: x509.Name, server_hosts: list[str] | None = None) -> None:
        ca_key = serialization.load_pem_private_key(self.ca.key_pem(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem())
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server_hosts is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(server_hosts)), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        write_atomically(pair.key_path, _key_pem(key), mode=0o600)
        write_atomically(pair.cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def _serving_names_cover(self, hosts: list[str], pair: KeyPair | None = None) -> bool:
        pair = pair or self.serving
        if not (pair.cert_path.exists() and pair.key_path.exists()):
            return False
        cert = x509.load_pem_x509_certificate(pair.cert_pem())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have = {str(n.value) for n in san}
        return all(h in have for h in hosts)


def serving_hosts(listen_host: str, service_ip: str) -> list[str]:
    """Every name a client may use for the API server: loopback, its listen address, the ``kubernetes``
    Service's names and ClusterIP."""
    hosts = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local", service_ip, socket.gethostname()]
    if listen_host not in ("", "0.0.0.0", "::") and listen_host not in hosts:
        hosts.append(listen_host)
    return hosts


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def kubeconfig(server_url: str, ca: KeyPair, client: KeyPair, user: str, cluster: str = "skiff") -> bytes:
    """A kubeconfig with the certificates embedded (so it can be copied anywhere)."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": server_url,
                                                    "certificate-authority-data": b64(ca.cert_pem())}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(client.cert_pem()),
                                           "client-key-data": b64(client.key_pem())}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user, "namespace": "default"}}],
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def write_kubeconfig(path: Path, server_url: str, pki: ClusterPKI, node: str | None = None) -> None:
    """The admin's kubeconfig, or with ``node`` the node agent's (its own certificate, in system:nodes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    client = pki.admin if node is None else pki.node_credentials(node)
    write_atomically(path, kubeconfig(server_url, pki.ca, client, "admin" if node is None else f"node-{node}"),
                     mode=0o600)
