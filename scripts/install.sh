#!/usr/bin/env bash
# Installs everything Skiff needs on a Debian 12 machine (run as root), then starts it.
#   scripts/install.sh            install, then start (for now: run a busybox container)
#   scripts/install.sh --no-start install only (the test command uses this)
# Idempotent and quick when everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
start=1
[ "${1:-}" = "--no-start" ] && start=0

# System packages: the kernel-facing tools Skiff drives and the peers its tests compare with.
packages=(python3 python3-venv iproute2 nftables libseccomp2 busybox-static runc crun
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
    "$venv/bin/pip" install -q --upgrade pip
    # compat mode: a plain path entry, so `skiff` starts without an import hook on every run.
    "$venv/bin/pip" install -q -e "$here[test]" --config-settings editable_mode=compat
    touch "$stamp"
fi
# Byte-compile now: the runtime's start-up time depends on it, and PYTHONDONTWRITEBYTECODE may be set.
"$venv/bin/python" -m compileall -q "$here/skiff"
ln -sf "$venv/bin/skiff" /usr/local/bin/skiff
ln -sf "$venv/bin/skiff-runtime" /usr/local/bin/skiff-runtime

[ "$start" = 1 ] || exit 0

# Start Skiff. Today that is the runtime: a busybox bundle run as an isolated container.
bundle=/var/lib/skiff/demo/busybox
"$venv/bin/python" -m skiff.runtime.bundle "$bundle" -- sh -c 'echo "hello from a Skiff container: $(hostname), pid $$"; id'
exec skiff runtime run --bundle "$bundle" "skiff-demo-$$"
