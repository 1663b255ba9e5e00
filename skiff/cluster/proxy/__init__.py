"""The service proxy of a node (kube-proxy in nftables mode): Services and EndpointSlices → one nft table.

- ``model``: Services + EndpointSlices → ``ServicePort``s (addresses, ports, ready endpoints, affinity).
- ``rules``: ``ServicePort``s → the nft script of one sync (kube-proxy's chain and map layout).
- ``nft``: applies a script with ``nft -f -`` (one transaction).
- ``proxier``: ``ServiceProxy``, informers → rate-limited syncs; the table removed on stop.

It is an API client: it imports nothing of the server, the store or the engine.
"""
