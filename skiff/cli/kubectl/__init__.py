"""``skiff kubectl``: kubectl's common verbs (get, describe, apply, create, delete, scale, label, annotate,
expose, rollout, set image, logs, exec, top) as a client of any Kubernetes API server, reached with the
kubeconfig's current context.

It uses no Skiff internals: tables come from the server (``as=Table``), patches are the server's business.
Modules: client.py (kubeconfig, HTTPS, discovery, watch, streams), commands.py (the verbs and the command
line), workloads.py (expose, rollout, set image), pods.py (logs, exec, top), streams.py (the remote-command
WebSocket), output.py (tables, ``-o json|yaml|name|jsonpath``, describe).
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from skiff.cli.kubectl.commands import run

    return run(argv)
