"""The proxy suite's fixtures: a real ``skiff server``, a client, informers, the private network lab."""

from tests.cluster.proxy.conftest import api_server, client, informers, kubectl, kubectl_cache, lab  # noqa: F401
