#!/usr/bin/env bash
# Installs everything Skiff needs on a Debian 12 machine (run as root), then starts it.
#   scripts/install.sh            install, then start: a busybox container, the engine, a one-node cluster
#   scripts/install.sh --no-start install only (the test command uses this)
# Idempotent and quick when everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
start=1
[ "${1:-}" = "--no-start" ] && start=0

# System packages: the kernel-facing tools Skiff drives and the peers its tests compare with.
packages=(python3 python3-venv iproute2 nftables libseccomp2 busybox-static runc crun tini tmux
          skopeo docker-registry etcd-server mmdebstrap)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "skiff-install: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: a virtual environment inside the checkout, with Skiff installed in it.
python=${PYTHON:-python3}
venv="$here/.venv"
stamp="$venv/.skiff-installed"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    # compat mode: a plain path entry, so `skiff` starts without an import hook on every run.
    # Quiet on success; the whole log on failure.
    if ! "$venv/bin/pip" install -q -e "$here[test]" --config-settings editable_mode=compat \
            >"$venv/pip.log" 2>&1; then
        cat "$venv/pip.log"; exit 1
    fi
    touch "$stamp"
fi
# Fast launchers: `python -IS` skips site-packages' .pth processing (about 7 ms, a fifth of a
# container start); the two directories site would have added are put on sys.path by hand instead.
paths=$("$venv/bin/python" -c 'import os, site, skiff; print(repr([os.path.dirname(os.path.dirname(skiff.__file__))] + site.getsitepackages()))')
for entry in "skiff:skiff.cli.main:main" "skiff-runtime:skiff.runtime.cli:entry"; do
    IFS=: read -r name module function <<<"$entry"
    cat > "$venv/bin/$name" <<LAUNCHER
#!$venv/bin/python3 -IS
# Written by scripts/install.sh (see there for why it is not pip's launcher).
import sys
sys.path[:0] = $paths
from $module import $function
sys.exit($function())
LAUNCHER
done
# Byte-compile now: the runtime's start-up time depends on it, and PYTHONDONTWRITEBYTECODE may be set.
"$venv/bin/python" -m compileall -q "$here/skiff"
ln -sf "$venv/bin/skiff" /usr/local/bin/skiff
ln -sf "$venv/bin/skiff-runtime" /usr/local/bin/skiff-runtime

[ "$start" = 1 ] || exit 0

# Start Skiff. First the runtime on its own: a busybox bundle run as an isolated container.
bundle=/var/lib/skiff/demo/busybox
"$venv/bin/python" -m skiff.runtime.bundle "$bundle" -- sh -c 'echo "hello from a Skiff container: $(hostname), pid $$"; id'
skiff runtime run --bundle "$bundle" "skiff-demo-$$"

# Then the engine daemon, in the background, on its default socket (left running if it already is).
sock=/run/skiff/engine.sock
mkdir -p /run/skiff /var/log/skiff
if ! "$venv/bin/python" -c "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])" "$sock" 2>/dev/null; then
    setsid skiff engine >>/var/log/skiff/engine.log 2>&1 < /dev/null &
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
fi
echo "skiff engine is serving the Docker Engine API on $sock (log: /var/log/skiff/engine.log)"
echo "use it with:  export DOCKER_HOST=unix://$sock; docker info"

# And a one-node cluster: the Kubernetes API server on the embedded SQLite store, the scheduler and the
# controllers beside it, and this host's node agent in its process; the agent runs pods on the engine above (its
# sandbox image, skiff/pause:3.10, is made from busybox-static: nothing is pulled). The server writes its admin
# kubeconfig where kubectl looks by default (an existing one is kept, the server's is beside it).
kubeconfig=/root/.kube/config
[ -e "$kubeconfig" ] && ! grep -q skiff "$kubeconfig" && kubeconfig=/root/.kube/skiff.yaml
mkdir -p /root/.kube /var/lib/skiff/server
if ! "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', 6443), 1)" 2>/dev/null; then
    setsid skiff server --data-dir /var/lib/skiff/server --write-kubeconfig "$kubeconfig" \
        >>/var/log/skiff/server.log 2>&1 < /dev/null &
    for _ in $(seq 100); do [ -s "$kubeconfig" ] && break; sleep 0.1; done
fi
kubectl=kubectl
command -v kubectl >/dev/null || kubectl="skiff kubectl"
node=$(hostname | tr '[:upper:]' '[:lower:]')
state="not Ready yet (see the log)"
for _ in $(seq 150); do  # the node turns Ready once the agent has made its sandbox image (a second or two)
    if KUBECONFIG="$kubeconfig" $kubectl get nodes --no-headers 2>/dev/null | grep -q "^$node  *Ready"; then
        state=Ready; break
    fi
    sleep 0.2
done
KUBECONFIG="$kubeconfig" $kubectl get nodes 2>/dev/null || true
echo "skiff server is serving the Kubernetes API on https://127.0.0.1:6443; node $node, on the engine, is $state"
echo "(log: /var/log/skiff/server.log). Use it with:"
echo "    export KUBECONFIG=$kubeconfig"
echo "    $kubectl get nodes"
