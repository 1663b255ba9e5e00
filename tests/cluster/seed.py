"""The seed's walk-through Deployment (``deployment.yaml``: two nginx:1.27 replicas labelled app=web), as both
walk-through modules apply it: on hollow nodes and on a real 3-node cluster."""

DEPLOYMENT_YAML = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
"""
