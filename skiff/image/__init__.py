"""Images: content-addressed blobs, manifests and configs, names, overlay snapshots, registries.

The public surface other parts use; the modules behind it are the package's own business.
"""
