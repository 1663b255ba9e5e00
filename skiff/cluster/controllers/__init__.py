"""Controllers: reconcile loops over the Kubernetes API (see docs/controllers.md)."""
