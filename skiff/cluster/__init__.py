"""The orchestrator: a Kubernetes API server over a revisioned store, and the services around it.

Each service (API server, scheduler, controllers, kubelet, proxy, DNS) is an asyncio program that
reaches the others only through the Kubernetes API; only the API server touches ``skiff.cluster.store``.
"""
