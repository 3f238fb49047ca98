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

# --pid: this shell's pid, which supervisord keeps (exec); the boot records it, so a later boot of the same
# root refuses while this one runs, and stops what it left if it died (kill -9).
conf="$("$venv/bin/python" -P -m app.boot --pid $$)"  # -P: import the app beside this script, not from the cwd

# Secrets stop here (docs/security.md, "Processes and secrets"): supervisord passes its environment to every
# program. The admin credentials are in Caddy's config and the token file (0600) only; HF_TOKEN goes, through
# 0600 program files, to the engines, the manager (it renders them) and provisioning (a download step);
# ROUTER_PEERS (the peers' keys) to the router only.
unset OPEN_BUTTON_TOKEN WEB_PASSWORD API_KEYS HF_TOKEN ROUTER_PEERS
exec "$venv/bin/python" -P -m app.supervisord -n -c "$conf"  # supervisord, quiet on a full log disk
