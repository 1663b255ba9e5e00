"""The cluster DNS of a node (CoreDNS's kubernetes plugin): ``cluster.local`` from Services and EndpointSlices.

- ``skiff.dnswire`` (shared with the engine's embedded resolver): the wire format.
- ``zone``: ``ClusterZone``, the records of the cluster domain from the informers' caches.
- ``server``: ``DnsServer``, UDP and TCP on one address.

Authoritative for the cluster domain only: it never forwards or recurses. It is an API client: it imports
nothing of the server, the store or the engine.
"""
