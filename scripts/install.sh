#!/usr/bin/env bash
# Install the appliance into ROOT: its code under ROOT/opt/appliance and its own virtual
# environment (supervisor, Caddy, the manager) in ROOT/opt/appliance/.venv. The engine keeps
# its own Python. The Dockerfile runs this with --root /; the tests run it into a temporary root.
set -euo pipefail

root=/
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a folder}"; shift 2 ;;
    -h|--help) echo "usage: $0 [--root DIR]"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${root%/}/opt/appliance"
python="${PYTHON:-python3}"

echo "[install] $src -> $dest"
mkdir -p "$dest/scripts"
for item in app caddy haproxy supervisor portal provisioning entrypoint.sh pyproject.toml README.md; do
  if [ -e "$src/$item" ]; then
    rm -rf "${dest:?}/$item"
    cp -a "$src/$item" "$dest/$item"
  fi
done
cp -a "$src/scripts/install-engine.sh" "$dest/scripts/" 2>/dev/null || true
find "$dest" -name __pycache__ -type d -prune -exec rm -rf {} +

echo "[install] virtual environment $dest/.venv"
"$python" -m venv "$dest/.venv"
"$dest/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$dest"
echo "[install] done: run $dest/entrypoint.sh"
