"""The ``skiff`` command: dispatches to a part's command line without importing the others.

Start-up time matters (the engine calls ``skiff runtime`` for every container), so this module
imports nothing but the standard library and loads one verb's module on demand.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module, function). Each part owns its own command-line module.
_VERBS = {
    "runtime": ("skiff.runtime.cli", "entry"),
    "registry": ("skiff.registry.cli", "main"),
    "engine": ("skiff.engine.cli", "main"),
    "server": ("skiff.cluster.api.cli", "main"),
    "controller-manager": ("skiff.cluster.controllers.cli", "main"),
    "scheduler": ("skiff.cluster.scheduler.cli", "main"),
    "hollow-nodes": ("skiff.cluster.hollow.cli", "main"),
    "agent": ("skiff.cluster.kubelet.cli", "main"),
    "cluster": ("skiff.cluster.local.cli", "main"),
    "kubectl": ("skiff.cli.kubectl", "main"),
    "compose": ("skiff.cli.compose", "main"),
}

# docker's verbs (skiff/cli/dockercli): a client of the Engine API; they get the whole argument list, so that
# the global ``-H/--host`` before the verb reaches them.
_DOCKER_VERBS = frozenset({
    "version", "info", "ps", "run", "create", "start", "stop", "restart", "kill", "rm", "logs", "exec", "inspect",
    "top", "wait", "pause", "unpause", "rename", "images", "pull", "push", "tag", "rmi", "save", "load", "import",
    "login", "logout", "events", "stats", "system", "container", "image", "network", "port",
})
_DOCKER_GLOBALS = ("-H", "--host")

_USAGE = """usage: skiff <command> [args...]

commands:
  runtime   the OCI runtime (runc's command line): create, start, run, exec, kill, delete, ...
  registry  an OCI Distribution registry server
  engine    the engine daemon, serving the Docker Engine API
  server    the cluster's control plane: the Kubernetes API server (HTTPS, default 127.0.0.1:6443)
  controller-manager  the cluster's controllers alone, against a server (--kubeconfig F)
  scheduler  the cluster's scheduler alone, against a server (--kubeconfig F)
  hollow-nodes  N simulated nodes that heartbeat and run their pods without containers (--count N)
  agent     the node agent (kubelet): runs the pods bound to this node on its engine
  cluster   local multi-node clusters (create, delete, kubeconfig, load): a network namespace per node
  compose   multi-container applications from a Compose file (as `docker compose`)

docker's verbs, against the engine at -H/--host (or $SKIFF_HOST, default unix:///run/skiff/engine.sock):
  skiff [-H HOST] version | info | ps | run | create | start | stop | restart | kill | rm | logs | exec
        | inspect | top | wait | pause | unpause | rename | images | pull | push | tag | rmi | save | load
        | import | login | logout | events | stats | system df | system prune | container ... | image ...
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_USAGE)
        return 0
    if args[0] == "--version":
        from skiff import __version__

        print(f"skiff {__version__}")
        return 0
    if len(args) > 2 and args[0] in _DOCKER_GLOBALS and args[2] == "compose":
        args = ["compose", "-H", args[1], *args[3:]]  # `skiff -H HOST compose ...`
    if args[0] in _DOCKER_VERBS or args[0] in _DOCKER_GLOBALS or args[0].startswith("--host="):
        from skiff.cli.dockercli import main as docker_main

        return docker_main(args)
    target = _VERBS.get(args[0])
    if target is None:
        sys.stderr.write(f"skiff: unknown command {args[0]!r}\n{_USAGE}")
        return 2
    module, function = target
    return getattr(importlib.import_module(module), function)(args[1:])


if __name__ == "__main__":
    sys.exit(main())
