"""What every namespace holds from its creation: the ``default`` ServiceAccount (kube's serviceaccount
controller) and the ``kube-root-ca.crt`` ConfigMap with the cluster's CA (kube's root-ca-cert-publisher); and
the filling of legacy token Secrets (kube's serviceaccount-token controller, ``TokensController``).

Both are per-namespace reconcilers keyed by the namespace's name: a namespace that appears, or the object
being deleted or changed, brings the namespace's key to the queue, and the sync makes the object exist as it
should (recreating it if someone deleted it). Terminating namespaces are left alone: the namespace controller
is emptying them and the server refuses new objects there. The informers on the objects themselves select
them by name, so neither controller caches the cluster's other ServiceAccounts or ConfigMaps.
"""

from __future__ import annotations

import base64
import logging

from skiff.cluster.client import (
    CONFIGMAPS,
    NAMESPACES,
    SECRETS,
    SERVICE_ACCOUNTS,
    ApiClient,
    ApiStatusError,
    Controller,
    Resource,
)
from skiff.cluster.client.informer import Informer, SharedInformers, object_key, split_key
from skiff.cluster.controllers.objects import Obj, is_deleting

log = logging.getLogger(__name__)
DEFAULT_SERVICE_ACCOUNT = "default"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"
ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"
ACCOUNT_UID_ANNOTATION = "kubernetes.io/service-account.uid"
LONGEST_TOKEN = 2**32  # seconds: the longest lifetime a TokenRequest may ask for
ROOT_CA_DESCRIPTION = ("Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
                       "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
                       "guaranteed across distributions of Kubernetes clusters.")


class _PerNamespace(Controller):
    """A reconciler of one named object per namespace, watched through a by-name informer."""

    object_name = ""
    resource: Resource

    def __init__(self, client: ApiClient, informers: SharedInformers, objects: Informer) -> None:
        self.namespaces = informers.informer(NAMESPACES)
        self.objects = objects
        super().__init__(client, [self.namespaces, objects])
        self.namespaces.on_add(lambda ns: self.enqueue(ns["metadata"]["name"]))
        self.namespaces.on_update(lambda old, new: self.enqueue(new["metadata"]["name"]))
        objects.on_update(lambda old, new: self.enqueue(new["metadata"]["namespace"]))
        objects.on_delete(lambda obj: self.enqueue(obj["metadata"]["namespace"]))

    async def sync(self, key: str) -> None:
        namespace = self.namespaces.get(None, key)
        if namespace is None or is_deleting(namespace):
            return
        existing = self.objects.get(key, self.object_name)
        desired = self.desired(key)
        try:
            if existing is None:
                await self.client.create(self.resource, desired, key)
            elif self.differs(existing, desired):
                await self.client.replace(self.resource, self.updated(existing, desired))
        except ApiStatusError as exc:
            # There already (the cache is behind), or the namespace is going: the next event says more.
            if not (exc.already_exists or exc.forbidden or exc.not_found):
                raise

    def desired(self, namespace: str) -> Obj:
        raise NotImplementedError

    def differs(self, existing: Obj, desired: Obj) -> bool:
        return False

    def updated(self, existing: Obj, desired: Obj) -> Obj:
        return existing


class ServiceAccountsController(_PerNamespace):
    """Every active namespace has a ServiceAccount ``default`` (kube's ``serviceaccount`` controller)."""

    name = "serviceaccount"
    object_name = DEFAULT_SERVICE_ACCOUNT
    resource = SERVICE_ACCOUNTS

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        super().__init__(client, informers, informers.informer(
            SERVICE_ACCOUNTS, field_selector=f"metadata.name={DEFAULT_SERVICE_ACCOUNT}"))

    def desired(self, namespace: str) -> Obj:
        return {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": namespace}}


class RootCACertPublisher(_PerNamespace):
    """Every active namespace has a ConfigMap ``kube-root-ca.crt`` whose ``ca.crt`` is the CA this process
    trusts for the API server (kube's ``root-ca-cert-publisher``, which publishes its --root-ca-file)."""

    name = "root-ca-cert-publisher"
    object_name = ROOT_CA_CONFIGMAP
    resource = CONFIGMAPS

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.ca = (client.config.ca_pem or b"").decode()
        if not self.ca:
            log.warning("root-ca-cert-publisher: the kubeconfig names no certificate authority; nothing to publish")
        super().__init__(client, informers, informers.informer(
            CONFIGMAPS, field_selector=f"metadata.name={ROOT_CA_CONFIGMAP}"))

    async def sync(self, key: str) -> None:
        if self.ca:
            await super().sync(key)

    def desired(self, namespace: str) -> Obj:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": namespace,
                             "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
                "data": {"ca.crt": self.ca}}

    def differs(self, existing: Obj, desired: Obj) -> bool:
        return existing.get("data") != desired["data"]

    def updated(self, existing: Obj, desired: Obj) -> Obj:
        return {**existing, "data": desired["data"]}  # with its resourceVersion: a stale cache gets 409


class TokensController(Controller):
    """Fills Secrets of type ``kubernetes.io/service-account-token`` (kube's ``serviceaccount-token``
    controller, for the legacy way of getting a token): ``data.token``, ``data.ca.crt`` and
    ``data.namespace``, and the ``kubernetes.io/service-account.uid`` annotation.

    kube signs a never-expiring legacy JWT with a key of its own; here the token comes from the API server's
    TokenRequest API, bound to the Secret and valid for the longest time the API allows (2^32 s), so the
    controller needs no signing key and the token stops working when the Secret or the ServiceAccount goes, as a
    legacy token does. A token Secret naming a missing ServiceAccount (or one with another uid) is deleted; so
    are an account's token Secrets when the account is deleted.
    """

    name = "serviceaccount-token"

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.secrets = informers.informer(SECRETS, field_selector=f"type={TOKEN_SECRET_TYPE}")
        self.accounts = informers.informer(SERVICE_ACCOUNTS)
        super().__init__(client, [self.secrets, self.accounts])
        self.ca = base64.b64encode(client.config.ca_pem or b"").decode()
        self.secrets.on_add(lambda secret: self.enqueue(object_key(secret)))
        self.secrets.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.accounts.on_add(self._account_changed)
        self.accounts.on_delete(self._account_changed)

    def _account_changed(self, account: Obj) -> None:
        """An account appearing or going decides about the token Secrets naming it."""
        namespace, name = account["metadata"]["namespace"], account["metadata"]["name"]
        for secret in self.secrets.list(namespace):
            if (secret["metadata"].get("annotations") or {}).get(ACCOUNT_NAME_ANNOTATION) == name:
                self.enqueue(object_key(secret))

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        secret = self.secrets.get(namespace, name)
        if secret is None or is_deleting(secret):
            return
        annotations = secret["metadata"].get("annotations") or {}
        if not annotations.get(ACCOUNT_NAME_ANNOTATION):
            return  # names no account (kube's validation refuses such a Secret; this server's does not)
        account = self.accounts.get(namespace, annotations[ACCOUNT_NAME_ANNOTATION])
        wanted_uid = annotations.get(ACCOUNT_UID_ANNOTATION)
        if account is None or (wanted_uid and wanted_uid != account["metadata"]["uid"]):
            await self._delete_if_orphaned(secret)
            return
        data = secret.get("data") or {}
        if data.get("token") and data.get("namespace") and (data.get("ca.crt") or not self.ca):
            return
        await self._fill(secret, account)

    async def _delete_if_orphaned(self, secret: Obj) -> None:
        """Delete the Secret if a fresh read says its account is really gone (the cache may be behind)."""
        meta = secret["metadata"]
        annotations = meta.get("annotations") or {}
        try:
            account = await self.client.get(SERVICE_ACCOUNTS, annotations[ACCOUNT_NAME_ANNOTATION], meta["namespace"])
            if annotations.get(ACCOUNT_UID_ANNOTATION, account["metadata"]["uid"]) == account["metadata"]["uid"]:
                return
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
        try:
            await self.client.delete(SECRETS, meta["name"], meta["namespace"], preconditions={"uid": meta["uid"]})
        except ApiStatusError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    async def _fill(self, secret: Obj, account: Obj) -> None:
        meta, account_meta = secret["metadata"], account["metadata"]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": LONGEST_TOKEN,
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": meta["name"],
                                               "uid": meta["uid"]}}}
        answer = await self.client.create_subresource(SERVICE_ACCOUNTS, account_meta["name"], "token", request,
                                                      meta["namespace"])
        filled = {**secret, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                                  ACCOUNT_UID_ANNOTATION: account_meta["uid"]}},
                  "data": {**(secret.get("data") or {}),
                           "token": base64.b64encode(answer["status"]["token"].encode()).decode(),
                           "namespace": base64.b64encode(meta["namespace"].encode()).decode(),
                           **({"ca.crt": self.ca} if self.ca else {})}}
        try:
            await self.client.replace(SECRETS, filled)  # with its resourceVersion: a stale cache gets 409
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
