#!/usr/bin/env bash
# The appliance's entrypoint (the image's ENTRYPOINT; `make run` runs it too).
# Every boot: folders, token, TLS certificate and configs, rendered by the
# Python boot step from the settings; then supervisord takes over as PID 1's
# replacement, so `docker stop` (SIGTERM) stops every program.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${APPLIANCE_VENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

conf="$("$venv/bin/python" -P -m app.boot)"  # -P: import the app beside this script, not from the cwd
exec "$venv/bin/supervisord" -n -c "$conf"
