"""The routing table: what the router (app/router) needs to know about each instance, and nothing more.

The manager is its only writer: it publishes a new table whenever an instance's phase, port, names or policy
change (the file, atomically, then a push over the router's control socket). The router reads the file at its
start, so it keeps routing to running engines while the manager is down or restarting.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, Field

from app.files import write_atomic
from app.instance import DEFAULT_INSTANCE, InstanceConfig, Phase
from app.settings import Settings


class Route(BaseModel):
    id: str
    names: list[str]  # the served name first, then the aliases, then the LoRA adapters (every name routed here)
    adapters: list[str] = Field(default_factory=list)  # which of `names` are LoRA adapters (/v1/models: `parent`)
    port: int  # where the engine answers now (blue/green moves it)
    phase: Phase
    on_demand: bool = True
    max_queue: int = 100
    queue_timeout: float = 600.0


def route(config: InstanceConfig, phase: Phase, adapters: list[str] | None = None) -> Route:
    """An instance's route. `adapters`: the LoRA adapters it serves now (app/lora.py); by default its static ones."""
    adapters = list(config.lora or {}) if adapters is None else adapters
    return Route(id=config.id, names=config.names + adapters, adapters=adapters, port=config.port, phase=phase,
                 on_demand=config.on_demand, max_queue=config.max_queue, queue_timeout=config.queue_timeout)


class Table(BaseModel):
    default: str = DEFAULT_INSTANCE  # the instance a request without `model` goes to
    manager_port: int  # the manager's loopback port: the router asks it to start an instance on demand
    routes: list[Route] = Field(default_factory=list)


def write(settings: Settings, table: Table) -> bool:
    """Write the table if it changed; True if it did."""
    text = table.model_dump_json(indent=1) + "\n"
    try:
        if settings.routing_table.read_text() == text:
            return False
    except OSError:
        pass
    write_atomic(settings.routing_table, text, mode=0o600)
    return True


def read(settings: Settings) -> Table | None:
    """The last published table, or None (none yet, or unreadable)."""
    try:
        return Table.model_validate(json.loads(settings.routing_table.read_text()))
    except (OSError, ValueError):
        return None
