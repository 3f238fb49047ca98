"""The messages an instance's actor (app/actor.py) takes, its runtime facts, and the error a command answers with.

Kept apart from the actor so the modules that send it commands (app/room.py, app/strategies.py) need not import
the actor itself.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from app.instance import InstanceConfig, Phase

SUPERSEDED = "superseded by a later request"


class InstanceError(Exception):
    """A request that cannot be carried out: the HTTP status and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Runtime:
    """What is known beyond the saved config. Written by the instance's actor only."""
    phase: Phase = Phase.STOPPED
    reason: str | None = None
    since: float = field(default_factory=time.time)
    restarts: int = 0
    pid: int = 0


@dataclass
class Command:
    kind: str  # swap, policy (a swap that changes only policy fields), start, stop, restart, delete, yield
    config: InstanceConfig | None = None  # swap, policy: the new config; yield: the config of the one making room
    rollback: bool = True
    timeout: float = 1800.0
    strategy: str = "restart"  # swap: restart, blue_green or sleep (app/strategies.py)
    seq: int = 0
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Observation:
    info: dict | None  # supervisor's process info of the instance's program (None: supervisor has no such program)
    taken_at: float  # time.monotonic() before supervisor was read
    waiting: bool = False  # held back until provisioning ends


@dataclass
class HubRetry:
    """An internal message: ask the Hub again."""
