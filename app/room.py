"""Making room: an instance that starts (or swaps) onto GPUs other instances hold (not shared) has them stop first.

Which instances stand in the way is decided by the manager together with the other claims, with no await in
between (`holders`, `check`): a pinned holder is never stopped, and the request is then refused with 409 naming
it. The stops themselves are carried out inside the starting instance's command (`make_room`): it asks each
holder's actor with a `yield` command (the holder's actor alone writes its phase), and waits for the answers.
A holder with requests in flight is drained first (DRAIN_TIMEOUT); between two engines in vLLM's sleep mode the
holder is put to sleep (level 1) instead of stopped (app/sleep.py).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from app.actor_messages import SUPERSEDED, Command, InstanceError

if TYPE_CHECKING:
    from app.actor import InstanceActor
    from app.instance import InstanceConfig
    from app.manager import Manager


def gpus_of(manager: Manager, config: InstanceConfig) -> set[int]:
    return set(config.gpus) if config.gpus is not None else set(range(manager.fx.gpu_count()))


def holders(manager: Manager, config: InstanceConfig, mine: InstanceActor | None,
            claims: dict[str, InstanceConfig] | None = None) -> list[tuple[InstanceConfig, int]]:
    """The other instances that hold (run, or are about to) one of these GPUs where they do not both share, each
    with the first GPU it holds."""
    claims = manager.known() if claims is None else claims
    wanted, found = gpus_of(manager, config), []
    for other in claims.values():
        actor = manager.actors.get(other.id)
        if other.id == config.id or actor is None or actor is mine or not actor.claims_gpus:
            continue
        shared = wanted & gpus_of(manager, other)
        if shared and not (config.share_gpus and other.share_gpus):
            found.append((other, min(shared)))
    return found


def check(manager: Manager, config: InstanceConfig, mine: InstanceActor | None,
          claims: dict[str, InstanceConfig] | None = None, *, make_room: bool = True) -> list[str]:
    """The holders to stop for this config; 409 if one of them is pinned (or making room is not asked for)."""
    found = holders(manager, config, mine, claims)
    for other, gpu in found:
        if not make_room:
            raise InstanceError(409, f"GPU {gpu} is owned by instance {other.id!r} "
                                     "(set share_gpus on both to share it)")
        if other.pinned:
            raise InstanceError(409, f"GPU {gpu} is owned by instance {other.id!r}, which is pinned (never stopped "
                                     "to make room); stop it, unpin it, or set share_gpus on both")
    return [other.id for other, _ in found]


async def make_room(actor: InstanceActor, config: InstanceConfig) -> None:
    """Ask every holder of this config's GPUs to yield them, and wait until they did. Gives way (SUPERSEDED) when a
    newer command reaches this actor meanwhile: two instances making room for each other never wait forever."""
    manager = actor.manager
    asked = check(manager, config, actor)
    if not asked:
        return
    futures = {manager.actor(i).submit(Command("yield", config)): i for i in asked}
    pending = set(futures)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if actor.pending and pending:
            raise InstanceError(409, SUPERSEDED)
    for future, holder in futures.items():
        if future.exception() is not None:
            error = future.exception()
            message = error.message if isinstance(error, InstanceError) else str(error)
            raise InstanceError(409, f"instance {holder!r} could not make room: {message}")
    left = check(manager, config, actor)  # a holder may have started again meanwhile (a newer request of its own)
    if left:
        raise InstanceError(409, f"GPUs still held by {', '.join(map(repr, left))}")
