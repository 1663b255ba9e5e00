"""The node agent (kubelet): runs the pods bound to its node by driving the node's engine through the Docker
Engine API, as dockershim did, and reports them to the API server as any client does.

- ``node``: the Node object (capacity from the machine, addresses, nodeInfo, conditions) and its Lease.
- ``runtime``: the engine, reached with docker-py: containers named and labelled as dockershim named them.
- ``containers``: a pod's container spec → the engine's container config (command, env, resources,
  securityContext, mounts).
- ``volumes``: emptyDir, hostPath, configMap, secret and downwardAPI volumes under the agent's data dir.
- ``probes``: liveness, readiness and startup probes (exec, httpGet, tcpSocket).
- ``status``: the pod status a sync computes (phase, conditions, containerStatuses, qosClass).
- ``pods``: one pod's sync: sandbox, init containers, containers, restarts with back-off, termination.
- ``kubelet``: the agent: registration, heartbeats, the pod watch and the sync workers.
- ``cli``: ``skiff agent``.

It is a client of both APIs and imports nothing of the engine, the images, the runtime or the API server.
"""
