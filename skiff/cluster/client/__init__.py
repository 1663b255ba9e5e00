"""The control plane's client of the Kubernetes API: what the scheduler, controllers and node agents share.

- ``resources``: ``Resource`` (group, version, plural, kind, scope) and the constants for the types used.
- ``config``: ``load_kubeconfig`` → ``ClusterConfig`` (also ``skiff kubectl``'s kubeconfig loader).
- ``api``: ``ApiClient``, asyncio over one aiohttp keep-alive pool; errors in ``errors``.
- ``informer``: ``Informer``, an indexed cache kept by list + watch, with event handlers.
- ``workqueue``: ``WorkQueue``, deduplicating and rate-limited; ``controller``: the reconcile-loop harness.
- ``selectors``: label selectors (``matchLabels``/``matchExpressions``) matched locally.

Like every client, it reaches the cluster only through the API: it imports nothing of the server or store.
The modules that need aiohttp (api, informer, controller) load on first use of their names, so ``skiff
kubectl``, which needs only ``config``, starts without importing aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from skiff.cluster.client.config import ClusterConfig, ConfigError, load_kubeconfig
from skiff.cluster.client.errors import (
    ApiAlreadyExists,
    ApiConflict,
    ApiInvalid,
    ApiNotFound,
    ApiStatusError,
    status_error,
)
from skiff.cluster.client.resources import (
    CONFIGMAPS,
    CRONJOBS,
    DAEMONSETS,
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    ENDPOINTS,
    EVENTS,
    HORIZONTAL_POD_AUTOSCALERS,
    JOBS,
    LEASES,
    NAMESPACES,
    NODES,
    POD_METRICS,
    PODS,
    REPLICASETS,
    SECRETS,
    SERVICE_ACCOUNTS,
    SERVICES,
    STATEFULSETS,
    Resource,
    resource_for,
)
from skiff.cluster.client.workqueue import ShutDown, TokenBucket, WorkQueue

if TYPE_CHECKING:
    from skiff.cluster.client.api import PATCH_TYPES, ApiClient, Obj
    from skiff.cluster.client.controller import Controller, stop_on_signals
    from skiff.cluster.client.informer import Informer, SharedInformers, object_key, split_key

_LAZY = {"PATCH_TYPES": "api", "ApiClient": "api", "Obj": "api", "Controller": "controller",
         "stop_on_signals": "controller", "Informer": "informer", "SharedInformers": "informer",
         "object_key": "informer", "split_key": "informer"}

__all__ = [
    "CONFIGMAPS", "CRONJOBS", "DAEMONSETS", "DEPLOYMENTS", "ENDPOINTS", "ENDPOINT_SLICES", "EVENTS",
    "HORIZONTAL_POD_AUTOSCALERS", "JOBS", "LEASES", "NAMESPACES", "NODES", "PATCH_TYPES", "PODS", "POD_METRICS",
    "REPLICASETS", "SECRETS", "SERVICES", "SERVICE_ACCOUNTS", "STATEFULSETS", "ApiAlreadyExists", "ApiClient",
    "ApiConflict", "ApiInvalid", "ApiNotFound", "ApiStatusError", "ClusterConfig", "ConfigError", "Controller",
    "Informer", "Obj", "Resource", "SharedInformers", "ShutDown", "TokenBucket", "WorkQueue", "load_kubeconfig",
    "object_key", "resource_for", "split_key", "status_error", "stop_on_signals",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
