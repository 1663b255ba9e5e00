"""``skiff scheduler``: the scheduler alone, as a client of a running API server.

    skiff scheduler [--kubeconfig F] [--scheduler-name NAME ...] [--percentage-of-nodes-to-score N]
                    [--parallel-binds N] [--log-level LEVEL]

``skiff server`` runs the same scheduler in its own process unless started with ``--disable-scheduler``.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio

from skiff.cluster.client import ApiClient, load_kubeconfig, stop_on_signals
from skiff.cluster.client.command import run_command
from skiff.cluster.scheduler.service import Scheduler, SchedulerOptions, scheduler_names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skiff scheduler", description="Bind pending pods to nodes.")
    parser.add_argument("--kubeconfig", help="the cluster and credentials (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--scheduler-name", action="append", default=[],
                        help="schedule pods whose spec.schedulerName is this (repeatable; default-scheduler)")
    parser.add_argument("--percentage-of-nodes-to-score", type=int, default=0,
                        help="stop filtering after this share of nodes fit (0: adaptive, as kube-scheduler)")
    parser.add_argument("--parallel-binds", type=int, default=64, help="bindings in flight at once")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    if not 0 <= args.percentage_of_nodes_to_score <= 100:
        parser.error("--percentage-of-nodes-to-score must be between 0 and 100")
    if args.parallel_binds < 1:
        parser.error("--parallel-binds must be at least 1")
    return args


def options_from(args: argparse.Namespace) -> SchedulerOptions:
    return SchedulerOptions(scheduler_names(args.scheduler_name), args.percentage_of_nodes_to_score,
                            args.parallel_binds)


async def run(args: argparse.Namespace) -> None:
    config = load_kubeconfig(args.kubeconfig)
    stop = stop_on_signals()
    async with ApiClient.from_config(config, user_agent="skiff-scheduler") as client:
        scheduler = Scheduler(client, options_from(args))
        task = scheduler.start()
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await scheduler.stop()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_command("skiff scheduler", args.log_level, lambda: run(args))
