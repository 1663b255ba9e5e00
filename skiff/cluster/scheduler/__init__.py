"""The scheduler: binds each pending pod to a node (filter, score, bind), as kube-scheduler does.

- ``quantity``, ``terms``, ``podinfo``, ``nodeinfo``: pods and nodes read once into what decisions compare;
- ``cache``: nodes and the pods placed on them, including pods assumed while their bind is in flight;
- ``filters``, ``scores``, ``algorithm``: one decision (sampling nodes as kube does at scale);
- ``queue``: pending pods with back-off and the unschedulable pool;
- ``service``: the API client around them (informers, binding, events); ``cli``: ``skiff scheduler``.

The core (everything but ``service``, ``events`` and ``cli``) touches no network and is tested on plain dicts.
"""
