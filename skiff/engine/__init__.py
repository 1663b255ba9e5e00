"""The engine daemon (``skiff engine``): Docker's job. Containers, images, logs, attach, exec and
events, served as the Docker Engine API on a unix socket so the real docker CLI and docker-py work.

Layout (one module per concept):
    daemon.py          Engine: configuration, start-up, wiring, shutdown; ``skiff engine`` (cli.py)
    events.py          EventBus: what /events streams
    monitor.py         the per-container monitor process (stdlib only, like conmon): runs the OCI
                       runtime, holds the container's stdio, writes its log, reaps it, survives restarts
    monitor_client.py  the daemon's asyncio handle on a monitor
    logs.py            the json-file log format: written by the monitor, read for /logs
    containers.py      ContainerService: records, lifecycle, restart policies
    ocispec.py         Docker's container config -> an OCI runtime spec
    api/               the HTTP layer: common.py (errors, streams, hijack, filters), system.py,
                       containers.py, exec.py, images.py
"""
