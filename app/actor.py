"""One actor per instance: an asyncio task that alone writes the instance's phase and runtime facts.

It takes two kinds of message from one inbox, in order:
- commands (swap, policy, start, stop, restart, delete, yield) from the API and from other actors, each answered
  through a future. A command still queued when a newer one arrives is superseded: the last accepted request
  wins, none is half-applied. A swap waiting for its engine (or for room on its GPUs) gives way too when a newer
  command arrives (a stop need not wait out a long download);
- observations from the supervisor monitor (app/manager.py), each a reading of supervisor taken at a known time.
  A reading older than the actor's last change is stale and dropped: it cannot undo what a command did. A ready
  instance with an `idle_timeout` is stopped here once the router's counts say it has been idle that long.
Held back at boot because the Hub could not be reached, the actor asks the Hub again with backoff and starts the
engine when it answers (phase `waiting`, with the reason).

A swap (strategy `restart`, app/strategies.py for the others): make room on its GPUs (app/room.py) -> drain the
old engine through the router -> save the config -> write the program -> stop the old engine (with NVML: until its
GPU memory is released) -> start the new one -> wait until ready; on failure, the same with the old config; then
release the router's queue. A stop, restart or delete drains first too: no request is cut by an operation of ours.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import xmlrpc.client
from typing import TYPE_CHECKING, Any

from app import metrics, room, strategies
from app.actor_messages import SUPERSEDED, Command, HubRetry, InstanceError, Observation, Runtime
from app.instance import OWNING, InstanceConfig, Phase
from app.provisioning.record import WAITING_REASON

if TYPE_CHECKING:
    from app.manager import Manager

__all__ = ["SUPERSEDED", "Command", "InstanceActor", "InstanceError", "Observation"]

FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}
HUB_BACKOFF = (2.0, 120.0)  # first and longest wait between two questions to the Hub
RUNNING = {Phase.STARTING, Phase.READY, Phase.SLEEPING}  # its engine process runs


class InstanceActor:
    def __init__(self, instance_id: str, manager: Manager, *, held: str | None = None):
        self.id = instance_id
        self.manager, self.fx = manager, manager.fx
        self.rt = Runtime()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.seq = 0  # the last accepted command
        self.queued: dict[str, int] = {}  # commands in the inbox, by kind
        self.desired: InstanceConfig | None = None  # the config of an accepted swap not finished yet (claims)
        self.desired_strategy = "restart"  # ... and its strategy (the routing table shows a blue/green apart)
        self.program = instance_id  # its supervisor program: `<id>`, or `<id>_b` after a blue/green swap
        self.retiring_port: int | None = None  # blue/green: the old engine's port, until that engine is gone
        self.changed_at = 0.0  # monotonic time of the last phase change
        self.latest: Observation | None = None
        self.hub_wait = HUB_BACKOFF[0]
        self.hub_held = bool(held)  # held back at boot until the Hub answers
        if held:
            self._set(Phase.WAITING, held)
            self._schedule_hub_retry(0.0)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"actor:{instance_id}")

    # --- what others may do: send messages, read ------------------------------------------------------------------
    def submit(self, command: Command, *, post: bool = True) -> asyncio.Future:
        """Accept a command: it claims at once (and supersedes older ones); `post=False`: put it in the inbox later
        with `post` (the manager first tells the router)."""
        self.seq += 1
        command.seq = self.seq
        if command.kind in ("swap", "policy"):
            self.desired, self.desired_strategy = command.config, command.strategy
        self.queued[command.kind] = self.queued.get(command.kind, 0) + 1
        if post:
            self.post(command)
        return command.done

    def post(self, command: Command) -> None:
        self.inbox.put_nowait(command)

    def observe(self, observation: Observation) -> None:
        self.latest = observation
        self.inbox.put_nowait(observation)

    @property
    def pending(self) -> int:
        return sum(self.queued.values())

    @property
    def claims_gpus(self) -> bool:
        """Holds its GPUs: its engine runs awake, or an accepted start or swap is on its way."""
        return self.rt.phase in OWNING or any(self.queued.get(k) for k in ("swap", "policy", "start", "restart"))

    def shown_phase(self) -> Phase:
        """The phase to show: `starting` as soon as a swap is accepted, before the actor takes it up, and while a
        blue/green swap's new engine starts (the old one serving meanwhile is the routing table's business)."""
        blue_green = self.desired is not None and self.desired_strategy == "blue_green" and \
            not self.desired.same_engine(self.manager.store.get(self.id))
        return Phase.STARTING if self.queued.get("swap") or blue_green else self.rt.phase

    # --- the loop --------------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            message = await self.inbox.get()
            try:
                if isinstance(message, Command):
                    await self._command(message)
                elif isinstance(message, Observation):
                    if message is self.latest:  # an older reading with a newer one queued is skipped
                        await self._observe(message)
                elif isinstance(message, HubRetry):
                    await self._hub_retry()
            except Exception as exc:  # noqa: BLE001 (the actor outlives any one message)
                print(f"manager: {self.id}: {type(message).__name__}: {self.fx.explain(exc)}", flush=True)

    async def _command(self, command: Command) -> None:
        self.queued[command.kind] -= 1
        try:
            if self.pending:  # a newer command is behind this one
                result: Any = self.superseded(command.config if command.kind != "yield" else None)
            else:
                result = await getattr(self, f"_{command.kind}")(command)
        except InstanceError as exc:
            if exc.message == SUPERSEDED:  # gave way while waiting for room
                command.done.set_result(self.superseded(command.config if command.kind != "yield" else None))
            else:
                command.done.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 (answered, not raised into the loop)
            command.done.set_exception(InstanceError(500, f"{command.kind} failed: {self.fx.explain(exc)}"))
        else:
            command.done.set_result(result)
        finally:
            if command.kind in ("swap", "policy") and self.desired is command.config:
                self.desired = None
                self.manager.publish()
            if command.kind == "delete" and not self.pending and self.manager.store.get(self.id) is None:
                self.manager.forget(self)

    def superseded(self, config: InstanceConfig | None) -> dict:
        return {**self.manager.view_of(self, config), "result": SUPERSEDED}

    def _set(self, phase: Phase, reason: str | None = None) -> None:
        if phase != Phase.WAITING and self.hub_held:
            self.hub_held = False
            self.manager.released(self.id)
        if phase != self.rt.phase:
            self.rt.since = time.time()
        self.rt.phase, self.rt.reason = phase, reason
        self.changed_at = time.monotonic()
        self.manager.publish()

    # --- commands ----------------------------------------------------------------------------------------------------
    async def _swap(self, command: Command) -> dict:
        started = time.monotonic()
        answer = await self._swap_steps(command)
        if answer["result"] != SUPERSEDED and answer.get("engine") != "kept":
            metrics.swap_done(self.id, answer["result"], time.monotonic() - started)
        return answer

    _policy = _swap

    async def _swap_steps(self, command: Command) -> dict:
        new, old = command.config, self.manager.store.get(self.id)
        assert new is not None
        if new.same_engine(old) and self.rt.phase in RUNNING:
            return await strategies.keep_engine(self, command)
        if command.strategy == "blue_green" and old is not None and self.rt.phase == Phase.READY:
            return await strategies.blue_green(self, command, old)
        await room.make_room(self, new)
        async with self._drained():
            return await self._restart_swap(command, new, old)

    @contextlib.asynccontextmanager
    async def _drained(self):
        """While its engine runs: the router holds new requests and lets the ones in flight finish; released after."""
        serving = self.rt.phase in RUNNING
        if serving:
            await self.manager.traffic.drain(self.id)
        try:
            yield
        finally:
            if serving:
                await self.manager.traffic.release(self.id)

    async def _restart_swap(self, command: Command, new: InstanceConfig, old: InstanceConfig | None) -> dict:
        self._set(Phase.STARTING)
        try:
            refused = await self._apply(new, old)
        except InstanceError as exc:
            self._set(Phase.READY if old and await self.fx.healthy(old) else Phase.FAILED, exc.message)
            raise
        ok, reason = (False, refused) if refused else await self._wait_ready(new, command.timeout)
        if ok:
            self._set(Phase.READY)
            return {**self.manager.view_of(self, new), "result": "ready"}
        if reason == SUPERSEDED:
            return self.superseded(new)
        failed_log = self.fx.last_log(self.id)
        if command.rollback and old and old != new:
            await self._apply(old, new)
            back, _ = await self._wait_ready(old, max(command.timeout, 600))
            self._set(Phase.READY if back else Phase.FAILED,
                      f"swap to {new.model} failed: {reason}; rolled back to {old.model}")
            return {**self.manager.view_of(self, old), "result": "rolled back", "error": reason,
                    "failed_log": failed_log}
        await self.fx.stop(self.program)
        self._set(Phase.FAILED, reason)
        return {**self.manager.view_of(self, new), "result": "failed", "error": reason, "failed_log": failed_log}

    def save(self, config: InstanceConfig) -> None:
        try:
            self.manager.store.put(config)
        except OSError as exc:
            raise InstanceError(507, f"cannot save the new configuration ({exc.strerror}); "
                                     "the previous configuration and model are untouched") from None

    async def _apply(self, config: InstanceConfig, previous: InstanceConfig | None) -> str | None:
        """Save the config, write its program, stop the old engine (GPU memory released), start the new one.
        Returns why supervisor refused to start it, if it did."""
        self.save(config)
        self.fx.write_program(config, name=self.program)
        gpu_pids = await self.fx.engine_gpu_pids(self.program, previous)
        await self.fx.stop(self.program)
        if gpu_pids and not await self.fx.wait_gpus_released(gpu_pids):
            print(f"manager: {self.id}: the old engine's GPU processes {sorted(gpu_pids)} still hold GPU memory "
                  f"after {self.manager.settings.gpu_release_timeout:.0f} s; starting the new engine anyway",
                  flush=True)
        await self.fx.apply({self.program})
        return await self.start_program()

    async def start_program(self, program: str | None = None) -> str | None:
        """supervisor starts the program; returns why supervisor refused (e.g. the `vllm` command not found)."""
        program = program or self.program
        try:
            await self.fx.start(program)
        except xmlrpc.client.Fault as fault:
            info = await self.fx.info(program)
            return f"supervisor could not start the engine: {(info or {}).get('spawnerr') or fault.faultString}"
        if program == self.program:
            info = await self.fx.info(program)
            self.rt.pid = (info or {}).get("pid") or self.rt.pid  # a start we asked for is no restart
        return None

    async def _wait_ready(self, config: InstanceConfig, timeout: float, program: str | None = None,
                          ) -> tuple[bool, str]:
        program = program or self.program
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending:
                return False, SUPERSEDED
            info = await self.fx.info(program)
            if info and info["statename"] in FAILED_STATES:
                return False, f"the engine exited ({info.get('spawnerr') or info['description']})"
            if info and info["pid"] and program == self.program:
                self.rt.pid = info["pid"]
            if await self.fx.healthy(config):
                return True, ""
            await asyncio.sleep(0.25)
        return False, f"not ready after {timeout:g} s"

    async def _start(self, command: Command) -> dict:
        config = self._config()
        if self.rt.phase == Phase.SLEEPING:
            return await strategies.wake(self, config)
        if self.rt.phase == Phase.READY:
            return self.manager.view_of(self, config)
        self.manager.check_ownership(config, self)
        await room.make_room(self, config)
        self._set(Phase.STARTING)
        refused = await self.start_program()
        if refused:
            self._set(Phase.FAILED, refused)
            raise InstanceError(409, refused)
        return self.manager.view_of(self, config)

    async def _stop(self, command: Command, reason: str | None = None) -> dict:
        config = self._config()
        async with self._drained():
            self._set(Phase.STOPPING, reason)
            await self.fx.stop(self.program)
            self._set(Phase.STOPPED, reason)
        return self.manager.view_of(self, config)

    async def _restart(self, command: Command) -> dict:
        config = self._config()
        self.manager.check_ownership(config, self)
        await room.make_room(self, config)
        async with self._drained():
            self._set(Phase.STOPPING)
            await self.fx.stop(self.program)
            self._set(Phase.STOPPED)
            return await self._start(command)

    async def _yield(self, command: Command) -> dict:
        """Another instance (command.config) needs these GPUs: sleep, or drain and stop. A pinned one refuses."""
        config, other = self._config(), command.config
        assert other is not None
        if self.rt.phase not in OWNING:
            return self.manager.view_of(self, config)
        if config.pinned:
            raise InstanceError(409, f"instance {self.id!r} is pinned (never stopped to make room)")
        if self.rt.phase == Phase.READY and strategies.sleep_capable(config) and strategies.sleep_capable(other):
            return await strategies.put_to_sleep(self, config, f"asleep to make room for {other.id!r}")
        return await self._stop(command, f"stopped to make room for {other.id!r}")

    async def _delete(self, command: Command) -> dict:
        config = self._config()
        await self._stop(command)
        self.manager.store.remove(self.id)
        self.fx.remove_program(self.program)
        await self.fx.apply({self.program})
        self.fx.remove_log(self.id)
        self._set(Phase.STOPPED)
        self.rt.restarts = 0
        return {**config.model_dump(), "state": "deleted"}

    def _config(self) -> InstanceConfig:
        config = self.manager.store.get(self.id)
        if config is None:
            raise InstanceError(404, f"no instance {self.id!r}")
        return config

    # --- observations ---------------------------------------------------------------------------------------------
    async def _observe(self, seen: Observation) -> None:
        config = self.manager.store.get(self.id)
        if seen.taken_at < self.changed_at or seen.info is None or config is None:
            return  # read before our last change: stale
        info = seen.info
        pid = info["pid"]
        restarted = bool(pid and self.rt.pid and pid != self.rt.pid)
        if restarted:
            self.rt.restarts += 1
        self.rt.pid = pid or self.rt.pid
        name = info["statename"]
        if name in ("RUNNING", "STARTING"):
            if self.rt.phase in (Phase.READY, Phase.SLEEPING) and not restarted:
                if self.rt.phase == Phase.READY and config.idle_timeout:
                    await self._idle_check(config)
                return  # ready engines are not probed (their logs would fill with health checks)
            self._set(Phase.READY if await self.fx.healthy(config) else Phase.STARTING)
        elif name == "BACKOFF":  # exited too soon; supervisor tries again
            self._set(Phase.STARTING, f"restarting: {info.get('spawnerr') or info['description']}")
        elif name in FAILED_STATES:
            keep = self.rt.phase == Phase.FAILED and self.rt.reason
            self._set(Phase.FAILED, self.rt.reason if keep else
                      f"the engine exited: {info.get('spawnerr') or info['description']}")
        elif name == "STOPPING":
            self._set(Phase.STOPPING)
        elif seen.waiting:
            self._set(Phase.WAITING, WAITING_REASON)
        elif self.rt.phase == Phase.WAITING and self.hub_held:
            return  # the Hub retry decides
        elif self.rt.phase != Phase.FAILED and self.rt.phase != Phase.STOPPED:
            self._set(Phase.STOPPED)

    async def _idle_check(self, config: InstanceConfig) -> None:
        """Stop the engine once the router's counts say nothing was in flight or queued for `idle_timeout` s (from
        its last request, or from when it became ready). Unknown counts (router down) never stop it."""
        idle = self.manager.traffic.idle_for(self.id, self.rt.since)
        if idle is None or idle < config.idle_timeout:
            return
        seen = (self.manager.traffic.of(self.id) or {}).get("last_active")
        left = await self.manager.traffic.drain(self.id, 0)  # new requests queue from here on
        now = (await self.manager.traffic.poll() or {}).get(self.id) or {}
        if left is None or left or now.get("last_active") != seen or now.get("in_flight"):
            await self.manager.traffic.release(self.id)  # a request came in meanwhile: not idle after all
            return
        reason = f"stopped after {idle:.0f} s without requests (idle_timeout {config.idle_timeout:g} s)"
        try:
            self._set(Phase.STOPPING, reason)
            await self.fx.stop(self.program)
            self._set(Phase.STOPPED, reason)
        finally:
            await self.manager.traffic.release(self.id)  # queued ones start it again (on_demand)

    # --- held back until the Hub answers ---------------------------------------------------------------------------
    def _schedule_hub_retry(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.inbox.put_nowait, HubRetry())

    async def _hub_retry(self) -> None:
        config = self.manager.store.get(self.id)
        if self.rt.phase != Phase.WAITING or config is None or not self.hub_held:
            return  # a command took over
        answer = await self.fx.hub_check(config.model)
        if answer.status != "down":
            self.hub_held = False
            self.manager.released(self.id)
        if answer.status == "ok":
            self._set(Phase.STARTING)
            refused = await self.start_program()
            if refused:
                self._set(Phase.FAILED, refused)
        elif answer.status == "missing":
            self._set(Phase.FAILED, answer.message)
        else:
            self._set(Phase.WAITING, f"waiting for the Hugging Face Hub: {answer.message}; "
                                     f"next try in {self.hub_wait:.0f} s")
            self._schedule_hub_retry(self.hub_wait)
            self.hub_wait = min(self.hub_wait * 2, HUB_BACKOFF[1])
