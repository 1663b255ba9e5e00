"""Skiff's OCI Distribution registry server (``skiff registry``)."""
