"""The Docker Engine API over HTTP: one aiohttp application made of route modules.

``build_app(engine)`` installs the shared behaviour from ``common`` (versioned paths, errors, headers) and
then lets each route module (``system``, ``containers``, ``exec``, ``images``) add its routes with
``register(app, engine)``. A module that is not installed yet (or needs a Skiff module that is not) is
skipped with a warning, so its paths answer 404 like any unknown path.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from skiff.engine.api.common import CLIENT_MAX_SIZE, install

log = logging.getLogger(__name__)

ROUTE_MODULES = ("system", "containers", "exec", "images", "volumes", "networks", "build")


def build_app(engine: Any, modules: Iterable[str] = ROUTE_MODULES) -> web.Application:
    """The Engine API application serving ``engine``. ``modules`` picks the route modules (tests build an
    app with only the ones they need, or none, to add routes of their own)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    install(app)
    for name in modules:
        module = _route_module(name)
        if module is not None:
            module.register(app, engine)
    return app


def _route_module(name: str) -> Any | None:
    qualified = f"{__name__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("skiff."):
            raise  # a missing third-party dependency is a real error
        log.warning("route module %s is not available (%s): its paths answer 404", qualified, e)
        return None
