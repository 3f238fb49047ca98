"""What the boot decided, for the manager: the engines it held back (not autostarted) and why.

Written by the boot (app/boot.py) before supervisord starts; read by the manager when it starts. The manager's
actors start a held engine once its reason is gone, and `release` drops it here, so a later manager start does
not hold it again. Never read back from rendered program files.
"""
from __future__ import annotations

import json

from app.files import write_atomic
from app.settings import Settings


def _read(settings: Settings) -> dict:
    try:
        return json.loads(settings.boot_record.read_text())
    except (OSError, ValueError):
        return {}


def write(settings: Settings, held: dict[str, str]) -> None:
    write_atomic(settings.boot_record, json.dumps({"held": held}, indent=2) + "\n")


def held(settings: Settings) -> dict[str, str]:
    """Instance id -> why the boot did not start its engine (the Hub could not be reached)."""
    return dict(_read(settings).get("held") or {})


def release(settings: Settings, instance_id: str) -> None:
    record = held(settings)
    if record.pop(instance_id, None) is not None:
        write(settings, record)
