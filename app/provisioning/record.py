"""provisioning.json: what ran, when, with what outcome, and the env boot gave the engines.

app.engine imports it at the top: nothing here imports the manager's modules, so there is no cycle.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

from app import render
from app.settings import Settings

PROGRAM = "provisioning"
WAITING_REASON = "waiting for provisioning to finish (GET /api/provisioning; log: provisioning)"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_record(settings: Settings) -> dict:
    try:
        return json.loads(settings.provisioning_record.read_text())
    except (OSError, ValueError):
        return {}


def save_record(settings: Settings, record: dict) -> None:
    settings.provisioning_record.parent.mkdir(parents=True, exist_ok=True)
    render.write_atomic(settings.provisioning_record, json.dumps(record, indent=2) + "\n", mode=0o600)


def configured(settings: Settings) -> bool:
    return bool(settings.provisioning_script or settings.provisioning_manifest)


def provisioning_pending(settings: Settings) -> bool:
    """True while provisioning is to run or running: engines are held back until it ends."""
    return configured(settings) and load_record(settings).get("status") in ("pending", "running")


def waiting(settings: Settings) -> set[str]:
    """The programs (engines, manifest programs) held back until provisioning ends; empty when none wait."""
    return set(load_record(settings).get("deferred") or []) if provisioning_pending(settings) else set()


def status(settings: Settings) -> dict:
    """What GET /api/provisioning answers."""
    record = load_record(settings)
    return {"configured": configured(settings),
            "script": settings.provisioning_script or None, "manifest": settings.provisioning_manifest or None,
            "status": record.get("status", "not configured" if not configured(settings) else "pending"),
            "pending": provisioning_pending(settings),
            "exit_code": record.get("exit_code"), "started_at": record.get("started_at"),
            "ended_at": record.get("ended_at"), "error": record.get("error"),
            "script_sha256": record.get("script_sha256"), "manifest_sha256": record.get("manifest_sha256"),
            "steps": record.get("steps", []),
            "waiting": record.get("deferred", []) if provisioning_pending(settings) else [],
            "last_success": record.get("last_success"),
            "progress": progress(settings) if record.get("status") == "running" else None,
            "log": str(settings.log_dir / f"{PROGRAM}.log"), "log_url": f"/api/logs/{PROGRAM}"}


def progress(settings: Settings, size: int = 4096) -> str | None:
    """The last line of provisioning.log (a progress bar's latest state, for the portal) while it runs."""
    try:
        with open(settings.log_dir / f"{PROGRAM}.log", "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    pieces = [p.strip() for p in re.split(r"[\r\n]", tail) if p.strip()]
    return pieces[-1][-300:] if pieces else None


def manifest_copy(settings: Settings) -> Path:
    return settings.provisioning_dir / "manifest.yaml"


def script_copy(settings: Settings) -> Path:
    return settings.provisioning_dir / "script.sh"


def engine_env(settings: Settings) -> dict[str, str]:
    """Env the manifest and boot hooks add to every engine (saved at boot, for the manager's re-renders)."""
    return dict(load_record(settings).get("engine_env") or {})
