"""The Kubernetes API server: REST, discovery, OpenAPI, Table printing, watch, patches, admission, auth."""
