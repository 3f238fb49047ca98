"""First-boot provisioning (PROVISIONING_SCRIPT, PROVISIONING_MANIFEST), boot hooks and the optional sshd.

One module per job: `record` (provisioning.json), `fetch` (downloads), `manifest` (the YAML's model),
`prepare` (what boot does: hooks, manifest, programs), `steps` and `run` (the program `provisioning`),
`boot_hooks`, `sshd`. The manager needs only the names below (its state and a re-run), so they are
re-exported here; this package imports nothing of the manager's (no cycle through app.engine).
"""
from app.provisioning.record import PROGRAM, WAITING_REASON, engine_env, status, waiting
from app.provisioning.run import rerun

__all__ = ["PROGRAM", "WAITING_REASON", "engine_env", "rerun", "status", "waiting"]
