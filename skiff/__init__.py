"""Skiff: a container engine and a container orchestrator, in Python."""

__version__ = "0.1.0"
