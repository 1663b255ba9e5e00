"""``ControllerManager``: runs the controllers of one process against one API server (kube-controller-manager).

The controllers share one ``ApiClient`` (one connection pool) and one set of informers, so two controllers
watching pods cost one watch and one cache. Everything else between them goes through the API: ``skiff
server`` runs a manager in its own process by default (``--disable-controllers`` turns it off), and
``skiff controller-manager --kubeconfig F`` runs one alone against any server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import ApiClient, ClusterConfig, Controller, SharedInformers
from skiff.cluster.controllers.cronjob import CronJobController
from skiff.cluster.controllers.daemonset import DaemonSetController
from skiff.cluster.controllers.deployment import DeploymentController
from skiff.cluster.controllers.endpoints import EndpointsController
from skiff.cluster.controllers.endpointslice import EndpointSliceController
from skiff.cluster.controllers.garbagecollector import GarbageCollector
from skiff.cluster.controllers.job import JobController
from skiff.cluster.controllers.namespace import NamespaceController
from skiff.cluster.controllers.nodeipam import NodeIpamController
from skiff.cluster.controllers.nodelifecycle import NodeLifecycleController
from skiff.cluster.controllers.options import ControllerOptions
from skiff.cluster.controllers.podautoscaler import HorizontalPodAutoscalerController
from skiff.cluster.controllers.replicaset import ReplicaSetController
from skiff.cluster.controllers.serviceaccounts import (
    RootCACertPublisher,
    ServiceAccountsController,
    TokensController,
)
from skiff.cluster.controllers.servicelb import ServiceLBController
from skiff.cluster.controllers.statefulset import StatefulSetController
from skiff.cluster.controllers.tainteviction import TaintEvictionController
from skiff.errors import InvalidArgument

log = logging.getLogger(__name__)
CONTROLLERS: dict[str, type[Controller]] = {
    "replicaset": ReplicaSetController,
    "deployment": DeploymentController,
    "garbagecollector": GarbageCollector,
    "endpoints": EndpointsController,
    "endpointslice": EndpointSliceController,
    "namespace": NamespaceController,
    "serviceaccount": ServiceAccountsController,
    "root-ca-cert-publisher": RootCACertPublisher,
    "serviceaccount-token": TokensController,
    "nodeipam": NodeIpamController,
    "nodelifecycle": NodeLifecycleController,
    "taint-eviction-controller": TaintEvictionController,
    "servicelb": ServiceLBController,
    "horizontalpodautoscaling": HorizontalPodAutoscalerController,
    "job": JobController,
    "cronjob": CronJobController,
    "daemonset": DaemonSetController,
    "statefulset": StatefulSetController,
}
USER_AGENT = "skiff-controller-manager/0.1"


class ControllerManager:
    def __init__(self, config: ClusterConfig, enabled: Iterable[str] | None = None,
                 options: ControllerOptions | None = None) -> None:
        self.config = config
        self.options = options or ControllerOptions()
        self.enabled = list(CONTROLLERS) if enabled is None else list(enabled)
        unknown = [name for name in self.enabled if name not in CONTROLLERS]
        if unknown:
            raise InvalidArgument(f"unknown controllers: {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})")
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Run the enabled controllers until cancelled."""
        async with ApiClient.from_config(self.config, user_agent=USER_AGENT) as client:
            informers = SharedInformers(client)
            controllers = [_make(CONTROLLERS[name], client, informers, self.options) for name in self.enabled]
            log.info("controller manager: running %s against %s", ", ".join(self.enabled), self.config.server)
            try:
                await asyncio.gather(*(controller.run() for controller in controllers))
            finally:
                await informers.stop()

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="controller-manager")
            self._task.add_done_callback(_report_crash)
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def _make(cls: type[Controller], client: ApiClient, informers: SharedInformers,
          options: ControllerOptions) -> Controller:
    """A controller, given the options if its constructor takes them (configurable controllers do)."""
    if "options" in inspect.signature(cls).parameters:
        return cls(client, informers, options=options)  # type: ignore[call-arg]
    return cls(client, informers)  # type: ignore[arg-type]


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the controller manager stopped", exc_info=task.exception())
