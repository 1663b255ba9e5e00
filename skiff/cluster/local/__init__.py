"""``skiff cluster``: local multi-node clusters on one host (what kind does with containers, done with network
namespaces): each node is a namespace on a private host bridge with its own ``skiff engine``; node 1 runs
``skiff server`` (with its in-process agent), the others ``skiff agent``.

- ``state``: what a cluster is made of (names, addresses, paths, processes), recorded in ``<root>/cluster.json``;
- ``host``: the kernel side: the bridge, the nodes' namespaces and veths, processes, mounts and cgroups, and
  removing all of it;
- ``cluster``: create, delete, load, kubeconfig;
- ``cli``: the ``skiff cluster`` command line.

It is a launcher: it starts Skiff's own commands and talks to them through their public APIs (the Engine
API on each node's socket, the Kubernetes API through ``skiff.cluster.client``).
"""
