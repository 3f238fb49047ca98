"""One actor per instance: an asyncio task that alone writes the instance's phase and runtime facts.

It takes two kinds of message from one inbox, in order:
- commands (swap, start, stop, restart, delete) from the API, each answered through a future. A command still
  queued when a newer one arrives is superseded: the last accepted request wins, none is half-applied. A swap
  waiting for its engine gives way too when a newer command arrives (a stop need not wait out a long download);
- observations from the supervisor monitor (app/manager.py), each a reading of supervisor taken at a known time.
  A reading older than the actor's last change is stale and dropped: it cannot undo what a command did.
Held back at boot because the Hub could not be reached, the actor asks the Hub again with backoff and starts the
engine when it answers (phase `waiting`, with the reason).

A swap (strategy `restart`): save the config -> write the program -> stop the old engine (with NVML: until its
GPU memory is released) -> start the new one -> wait until ready; on failure, the same with the old config.
"""
from __future__ import annotations

import asyncio
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app import metrics
from app.instance import InstanceConfig, Phase
from app.provisioning.record import WAITING_REASON

if TYPE_CHECKING:
    from app.manager import Manager

FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}
SUPERSEDED = "superseded by a later request"
HUB_BACKOFF = (2.0, 120.0)  # first and longest wait between two questions to the Hub


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
    kind: str  # swap, start, stop, restart, delete
    config: InstanceConfig | None = None  # swap: the new config
    rollback: bool = True
    timeout: float = 1800.0
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


class InstanceActor:
    def __init__(self, instance_id: str, manager: Manager, *, held: str | None = None):
        self.id = instance_id
        self.manager, self.fx = manager, manager.fx
        self.rt = Runtime()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.seq = 0  # the last accepted command
        self.queued: dict[str, int] = {}  # commands in the inbox, by kind
        self.desired: InstanceConfig | None = None  # the config of an accepted swap not finished yet (claims)
        self.changed_at = 0.0  # monotonic time of the last phase change
        self.latest: Observation | None = None
        self.hub_wait = HUB_BACKOFF[0]
        self.hub_held = bool(held)  # held back at boot until the Hub answers
        if held:
            self._set(Phase.WAITING, held)
            self._schedule_hub_retry(0.0)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"actor:{instance_id}")

    # --- what others may do: send messages, read ------------------------------------------------------------------
    def submit(self, command: Command) -> asyncio.Future:
        self.seq += 1
        command.seq = self.seq
        if command.kind == "swap":
            self.desired = command.config
        self.queued[command.kind] = self.queued.get(command.kind, 0) + 1
        self.inbox.put_nowait(command)
        return command.done

    def observe(self, observation: Observation) -> None:
        self.latest = observation
        self.inbox.put_nowait(observation)

    @property
    def pending(self) -> int:
        return sum(self.queued.values())

    @property
    def claims_gpus(self) -> bool:
        """Holds its GPUs: its engine runs, or an accepted start or swap is on its way."""
        return self.rt.phase in {Phase.STARTING, Phase.READY, Phase.STOPPING} or any(
            self.queued.get(k) for k in ("swap", "start", "restart"))

    def shown_phase(self) -> Phase:
        """The phase to show: `starting` as soon as a swap is accepted, before the actor takes it up."""
        return Phase.STARTING if self.queued.get("swap") else self.rt.phase

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
                result: Any = {**self.manager.view_of(self, command.config), "result": SUPERSEDED}
            else:
                result = await getattr(self, f"_{command.kind}")(command)
        except InstanceError as exc:
            command.done.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 (answered, not raised into the loop)
            command.done.set_exception(InstanceError(500, f"{command.kind} failed: {self.fx.explain(exc)}"))
        else:
            command.done.set_result(result)
        finally:
            if command.kind == "swap" and self.desired is command.config:
                self.desired = None
            if command.kind == "delete" and not self.pending and self.manager.store.get(self.id) is None:
                self.manager.forget(self)

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
        if answer["result"] != SUPERSEDED:
            metrics.swap_done(self.id, answer["result"], time.monotonic() - started)
        return answer

    async def _swap_steps(self, command: Command) -> dict:
        new, old = command.config, self.manager.store.get(self.id)
        assert new is not None
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
            return {**self.manager.view_of(self, new), "result": SUPERSEDED}
        failed_log = self.fx.last_log(self.id)
        if command.rollback and old and old != new:
            await self._apply(old, new)
            back, _ = await self._wait_ready(old, max(command.timeout, 600))
            self._set(Phase.READY if back else Phase.FAILED,
                      f"swap to {new.model} failed: {reason}; rolled back to {old.model}")
            return {**self.manager.view_of(self, old), "result": "rolled back", "error": reason,
                    "failed_log": failed_log}
        await self.fx.stop(self.id)
        self._set(Phase.FAILED, reason)
        return {**self.manager.view_of(self, new), "result": "failed", "error": reason, "failed_log": failed_log}

    async def _apply(self, config: InstanceConfig, previous: InstanceConfig | None) -> str | None:
        """Save the config, write its program, stop the old engine (GPU memory released), start the new one.
        Returns why supervisor refused to start it, if it did."""
        try:
            self.manager.store.put(config)
        except OSError as exc:
            raise InstanceError(507, f"cannot save the new configuration ({exc.strerror}); "
                                     "the previous configuration and model are untouched") from None
        self.fx.write_program(config)
        gpu_pids = await self.fx.engine_gpu_pids(self.id, previous)
        await self.fx.stop(self.id)
        if gpu_pids and not await self.fx.wait_gpus_released(gpu_pids):
            print(f"manager: {self.id}: the old engine's GPU processes {sorted(gpu_pids)} still hold GPU memory "
                  f"after {self.manager.settings.gpu_release_timeout:.0f} s; starting the new engine anyway",
                  flush=True)
        await self.fx.apply({self.id})
        refused = await self._start_program()
        if previous is None or previous.port != config.port:
            await self.manager.routes_changed()
        return refused

    async def _start_program(self) -> str | None:
        """supervisor starts the program; returns why supervisor refused (e.g. the `vllm` command not found)."""
        try:
            await self.fx.start(self.id)
        except xmlrpc.client.Fault as fault:
            info = await self.fx.info(self.id)
            return f"supervisor could not start the engine: {(info or {}).get('spawnerr') or fault.faultString}"
        info = await self.fx.info(self.id)
        self.rt.pid = (info or {}).get("pid") or self.rt.pid  # a start we asked for is no restart
        return None

    async def _wait_ready(self, config: InstanceConfig, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending:
                return False, SUPERSEDED
            info = await self.fx.info(self.id)
            if info and info["statename"] in FAILED_STATES:
                return False, f"the engine exited ({info.get('spawnerr') or info['description']})"
            if info and info["pid"]:
                self.rt.pid = info["pid"]
            if await self.fx.healthy(config):
                return True, ""
            await asyncio.sleep(0.25)
        return False, f"not ready after {timeout:g} s"

    async def _start(self, command: Command) -> dict:
        config = self._config()
        self.manager.check_ownership(config, self)
        self._set(Phase.STARTING)
        refused = await self._start_program()
        if refused:
            self._set(Phase.FAILED, refused)
            raise InstanceError(409, refused)
        return self.manager.view_of(self, config)

    async def _stop(self, command: Command) -> dict:
        config = self._config()
        self._set(Phase.STOPPING)
        await self.fx.stop(self.id)
        self._set(Phase.STOPPED)
        return self.manager.view_of(self, config)

    async def _restart(self, command: Command) -> dict:
        await self._stop(command)
        return await self._start(command)

    async def _delete(self, command: Command) -> dict:
        config = self._config()
        self._set(Phase.STOPPING)
        await self.fx.stop(self.id)
        self.manager.store.remove(self.id)
        self.fx.remove_program(self.id)
        await self.fx.apply({self.id})
        self.fx.remove_log(self.id)
        await self.manager.routes_changed()
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
            if self.rt.phase == Phase.READY and not restarted:
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
            refused = await self._start_program()
            if refused:
                self._set(Phase.FAILED, refused)
        elif answer.status == "missing":
            self._set(Phase.FAILED, answer.message)
        else:
            self._set(Phase.WAITING, f"waiting for the Hugging Face Hub: {answer.message}; "
                                     f"next try in {self.hub_wait:.0f} s")
            self._schedule_hub_retry(self.hub_wait)
            self.hub_wait = min(self.hub_wait * 2, HUB_BACKOFF[1])
