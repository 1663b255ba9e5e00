"""Container networking for the engine, as Docker's bridge driver does it.

- ``ipam``: subnets, gateways and the addresses handed to endpoints.
- ``bridge``: the kernel side over netlink: bridges, veth pairs, an endpoint's interface in its netns.
- ``sandbox``: a container's network namespace, made by the engine before the runtime joins it.
- ``nft``: the engine's nftables table: masquerade, isolation, published ports (DNAT).
- ``proxy``: the userland proxy for published ports on loopback, where DNAT cannot serve.
- ``dns``: the embedded resolver at 127.0.0.11 in containers on user-defined networks.
- ``service``: ``NetworkService``, the facade the engine and the API use.
"""

from skiff import errors


class Forbidden(errors.Conflict):
    """Docker's errdefs.Forbidden (HTTP 403): refused by policy, e.g. removing a predefined network or one with
    active endpoints. It is a Conflict to code that does not know the difference; the networks API answers 403."""
