"""Hollow nodes (``skiff hollow-nodes``): simulated nodes that register, heartbeat and run the pods bound to
them without containers, so the control plane can be exercised at thousands of nodes (as kubemark does)."""
