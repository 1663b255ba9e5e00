"""The CLI tests reuse the engine tests' daemons: ``engine`` (one per module) on ``module_engines``."""

from tests.engine.conftest import engine, module_engines  # noqa: F401  (re-exported fixtures)
