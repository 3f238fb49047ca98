"""How a swap replaces a running engine (`strategy` on PUT /api/instances/{id}), and vLLM's sleep mode.

- `restart` (app/actor.py): drain through the router, stop the old engine, start the new one, release; requests
  queue in the router meanwhile, and a failed start rolls back.
- `blue_green`: the new engine starts as a second supervisor program (`<id>_b`, or `<id>` again when the current
  one is `<id>_b`) on a port of its own while the old one serves. Once it is ready, the config is saved with the
  new port and the routing table published: the router sends new requests there at once. The old engine stops
  once the router counts none of its requests in flight (up to DRAIN_TIMEOUT). If the new engine fails, it is
  removed and nothing changed for clients.
- `sleep` (GPU boxes): the engine runs with `--enable-sleep-mode`; making room between two such instances puts
  the holder to sleep (level 1: weights to CPU memory, GPU freed) instead of stopping it, and a start wakes it.

The default (`strategy` null), `choose`: blue_green where resources allow it: always on a box without GPUs; on
GPUs when the new engine's GPUs are free (none of them held by the old engine or another instance); and only
when the request leaves the port out (blue/green moves the engine to another port) and keeps `rollback` on (a
failed blue/green swap always leaves the old engine serving). Otherwise restart.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from app.actor_messages import SUPERSEDED, Command, InstanceError
from app.engine import has_option
from app.instance import DEFAULT_INSTANCE, SLEEP_MODE, InstanceConfig, InstanceRequest, Phase, option_value

if TYPE_CHECKING:
    from app.actor import InstanceActor
    from app.manager import Manager

STRATEGIES = ("restart", "blue_green", "sleep")


def other_program(instance_id: str, program: str) -> str:
    """Blue/green alternates between two program names; `_` never appears in an instance id."""
    return f"{instance_id}_b" if program == instance_id else instance_id


def sleep_capable(config: InstanceConfig) -> bool:
    return has_option(config.args, SLEEP_MODE)


def with_sleep_mode(request: InstanceRequest) -> InstanceRequest:
    """strategy `sleep`: the engine gets --enable-sleep-mode (and so VLLM_SERVER_DEV_MODE=1, app/engine.py)."""
    if has_option(request.args, SLEEP_MODE):
        return request
    return request.model_copy(update={"args": [*request.args, SLEEP_MODE]})


def blue_green_problem(manager: Manager, new: InstanceConfig, old: InstanceConfig,
                       request: InstanceRequest) -> str | None:
    """Why blue/green cannot swap this instance here, or None."""
    if request.port is not None or option_value(request.args, "--port") is not None:
        return "the request gives a port, and blue/green moves the engine to another one"
    if not request.rollback:
        return "rollback is off, and a failed blue/green swap always leaves the old engine serving"
    if new.id == DEFAULT_INSTANCE and old.port == manager.ports.api_port:
        return "the default instance listens on the API's own port here"
    if manager.fx.gpu_count() == 0:
        return None
    from app import room
    mine = room.gpus_of(manager, old) & room.gpus_of(manager, new)
    if mine and not (old.share_gpus and new.share_gpus):
        return f"the new engine's GPU {min(mine)} is held by the old engine"
    held = room.holders(manager, new, manager.actors.get(new.id))
    if held:
        return f"the new engine's GPU {held[0][1]} is held by instance {held[0][0].id!r}"
    return None


def choose(manager: Manager, new: InstanceConfig, request: InstanceRequest) -> str:
    """The strategy for an accepted swap (the rule in the module's docstring); 409 for an impossible request."""
    actor, old = manager.actors.get(new.id), manager.store.get(new.id)
    if request.strategy == "sleep":
        if manager.fx.gpu_count() == 0:
            raise InstanceError(422, "strategy sleep needs a GPU (vLLM's sleep mode is CUDA only); "
                                     "use restart or blue_green")
        return "sleep"
    running = actor is not None and old is not None and actor.rt.phase == Phase.READY
    if request.strategy == "restart" or not running or new.same_engine(old):
        return request.strategy or "restart"
    assert old is not None
    problem = blue_green_problem(manager, new, old, request)
    if request.strategy == "blue_green" and problem:
        raise InstanceError(409, f"blue_green is not possible: {problem}; use strategy restart")
    return "restart" if problem else "blue_green"


# --- the steps, run by the instance's actor ----------------------------------------------------------------------
async def keep_engine(actor: InstanceActor, command: Command) -> dict:
    """Only policy fields changed: save and publish the table; the engine runs on untouched (one still starting is
    waited for, as a swap would be)."""
    new = command.config
    assert new is not None
    actor.save(new)
    actor.manager.publish()
    if actor.rt.phase == Phase.STARTING:
        ok, reason = await actor._wait_ready(new, command.timeout)
        if reason == SUPERSEDED:
            return actor.superseded(new)
        actor._set(Phase.READY if ok else Phase.FAILED, None if ok else reason)
    return {**actor.manager.view_of(actor, new), "result": actor.rt.phase.value, "engine": "kept"}


async def blue_green(actor: InstanceActor, command: Command, old: InstanceConfig) -> dict:
    manager, fx, new = actor.manager, actor.fx, command.config
    assert new is not None
    green = other_program(actor.id, actor.program)
    actor.rt.reason = f"blue/green: starting {new.model} on port {new.port}; {old.model} serves meanwhile"
    fx.write_program(new, name=green)
    await fx.apply({green})
    refused = await actor.start_program(green)
    ok, reason = (False, refused) if refused else await actor._wait_ready(new, command.timeout, green)
    if not ok:
        failed_log = fx.last_log(actor.id)
        await remove(actor, green)
        if reason == SUPERSEDED:
            actor.rt.reason = None
            return actor.superseded(new)
        actor._set(Phase.READY, f"blue/green swap to {new.model} failed: {reason}; {old.model} serves on")
        return {**manager.view_of(actor, old), "result": "rolled back", "error": reason, "failed_log": failed_log}
    try:
        actor.save(new)
    except InstanceError:
        await remove(actor, green)
        actor.rt.reason = None
        raise
    blue, actor.program, actor.retiring_port = actor.program, green, old.port
    info = await fx.info(green)
    actor.rt.pid = (info or {}).get("pid") or actor.rt.pid
    actor._set(Phase.READY)  # publishes the table: the router sends new requests (/instances/<id>/ too) there now
    try:
        await drain_port(actor, old.port)
        await remove(actor, blue)
    finally:
        actor.retiring_port = None
    return {**manager.view_of(actor, new), "result": "ready"}


async def drain_port(actor: InstanceActor, port: int) -> None:
    """Wait until the router counts no request in flight to the old engine's port (up to DRAIN_TIMEOUT)."""
    timeout = actor.manager.settings.drain_timeout
    deadline = time.monotonic() + timeout
    while True:
        left = await actor.manager.traffic.port_in_flight(actor.id, port)
        if left is None:
            print(f"manager: {actor.id}: router not answering; stopping the old engine (port {port}) without "
                  "waiting for its requests", flush=True)
            return
        if not left:
            return
        if time.monotonic() >= deadline:
            print(f"manager: {actor.id}: {left} requests still in flight on the old engine (port {port}) after "
                  f"{timeout:g} s (DRAIN_TIMEOUT); stopping it", flush=True)
            return
        await asyncio.sleep(0.1)


async def remove(actor: InstanceActor, program: str) -> None:
    """Stop a program and remove it from supervisor and its file."""
    await actor.fx.stop(program)
    actor.fx.remove_program(program)
    await actor.fx.apply({program})


async def put_to_sleep(actor: InstanceActor, config: InstanceConfig, reason: str) -> dict:
    """Drain, then vLLM's `POST /sleep?level=1` on loopback: the GPU is free, the engine process stays."""
    traffic = actor.manager.traffic
    await traffic.drain(actor.id)
    try:
        await actor.fx.sleep_engine(config, 1)
        actor._set(Phase.SLEEPING, reason)
    except Exception as exc:  # noqa: BLE001 (an engine that cannot sleep is stopped instead)
        print(f"manager: {actor.id}: sleep failed ({type(exc).__name__}: {exc}); stopping it", flush=True)
        actor._set(Phase.STOPPING, reason)
        await actor.fx.stop(actor.program)
        actor._set(Phase.STOPPED, reason)
    finally:
        await traffic.release(actor.id)
    return actor.manager.view_of(actor, config)


async def wake(actor: InstanceActor, config: InstanceConfig) -> dict:
    """A start of a sleeping instance: make room on its GPUs, then vLLM's `POST /wake_up`, checked with
    `/is_sleeping`."""
    from app import room
    actor.manager.check_ownership(config, actor)
    await room.make_room(actor, config)
    try:
        await actor.fx.wake_engine(config)
        asleep = await actor.fx.is_sleeping(config)
    except Exception as exc:  # noqa: BLE001 (answered as a failed start)
        asleep, why = True, f"{type(exc).__name__}: {exc}"
    else:
        why = "/is_sleeping still says true"
    if asleep:
        actor._set(Phase.FAILED, f"could not wake the engine: {why}")
        raise InstanceError(409, f"could not wake instance {actor.id!r}: {why}")
    actor._set(Phase.READY)
    return actor.manager.view_of(actor, config)
