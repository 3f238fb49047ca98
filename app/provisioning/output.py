"""Where provisioning's messages go: the boot log (stderr) at boot, provisioning.log while it runs."""
from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    print(f"[boot] {message}", file=sys.stderr, flush=True)


def say(message: str) -> None:
    """A line in provisioning.log (the program's stdout)."""
    print(f"[provisioning {time.strftime('%H:%M:%S')}] {message}", flush=True)
