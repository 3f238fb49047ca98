"""A fake outside world for the lifecycle (the interface of app/effects.py): supervisor, engines, files, Caddy,
GPUs, logs and the Hub, all in memory. Engines follow their model's name: `fail` never gets ready (its process
exits), `slow` is never healthy, anything else is healthy once running."""
from __future__ import annotations

import asyncio
import itertools
import xmlrpc.client

from app.hub import Answer
from app.instance import InstanceConfig
from app.manager import Manager
from app.settings import Settings


class FakeEffects:
    def __init__(self, gpus: int = 0):
        self.procs: dict[str, dict] = {}
        self.programs: dict[str, InstanceConfig] = {}
        self.autostart: dict[str, bool] = {}
        self.gpus = gpus
        self.pids = itertools.count(1000)
        self.calls: list[tuple] = []
        self.routes_reloads = 0
        self.removed_logs: list[str] = []
        self.hub_answers: list[Answer] = []
        self.spawn_errors: dict[str, str] = {}
        self.read_gate: asyncio.Event | None = None  # when set: processes() waits for it after reading

    # supervisor
    def _info(self, name: str) -> dict:
        return self.procs.setdefault(name, {"name": name, "statename": "STOPPED", "pid": 0, "description": "",
                                            "spawnerr": ""})

    async def processes(self) -> dict[str, dict]:
        reading = {name: dict(info) for name, info in self.procs.items()}
        if self.read_gate is not None:
            await self.read_gate.wait()
        return reading

    async def info(self, name: str) -> dict | None:
        return dict(self.procs[name]) if name in self.procs else None

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        if name in self.spawn_errors:
            self._info(name)["spawnerr"] = self.spawn_errors[name]
            raise xmlrpc.client.Fault(50, f"SPAWN_ERROR: {name}")
        info = self._info(name)
        model = self.programs[name].model
        info.update(statename="EXITED" if "fail" in model else "RUNNING", pid=next(self.pids),
                    description="exit status 1" if "fail" in model else "running")

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self._info(name).update(statename="STOPPED", pid=0)

    async def apply(self, names: set[str]):
        self.calls.append(("apply", tuple(sorted(names))))
        for name in names:
            if name not in self.programs:
                self.procs.pop(name, None)
        return [], [], []

    def explain(self, exc: Exception) -> str:
        return repr(exc)

    # files
    def write_program(self, config: InstanceConfig, autostart: bool = True) -> bool:
        self.programs[config.id], self.autostart[config.id] = config, autostart
        return True

    def remove_program(self, name: str) -> None:
        self.programs.pop(name, None)

    def rendered_engines(self) -> set[str]:
        return set(self.programs)

    # engines, Caddy, GPUs, logs, Hub
    async def healthy(self, config: InstanceConfig) -> bool:
        info = self.procs.get(config.id, {})
        running = self.programs.get(config.id)
        return (info.get("statename") == "RUNNING" and running is not None and running.model == config.model
                and "slow" not in config.model)

    async def reload_routes(self, configs) -> None:
        self.routes_reloads += 1

    def gpu_count(self) -> int:
        return self.gpus

    def gpu_reason(self) -> str | None:
        return None if self.gpus else "no GPU"

    async def engine_gpu_pids(self, name, config) -> set[int]:
        return set()

    async def wait_gpus_released(self, pids) -> bool:
        return True

    def last_log(self, name: str, count: int = 20) -> list[str]:
        return [f"{name}: last line"]

    def remove_log(self, name: str) -> None:
        self.removed_logs.append(name)

    async def hub_check(self, model: str) -> Answer:
        return self.hub_answers.pop(0) if self.hub_answers else Answer("ok")

    async def aclose(self) -> None:
        pass


def make_manager(tmp_path, gpus: int = 0, **settings) -> tuple[Manager, FakeEffects]:
    config = Settings(APPLIANCE_ROOT=str(tmp_path), **settings)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    fx = FakeEffects(gpus)
    return Manager(config, fx), fx  # type: ignore[arg-type]


async def settle(manager: Manager) -> None:
    """Until every actor has nothing left in its inbox."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if all(a.inbox.empty() for a in manager.actors.values()):
            await asyncio.sleep(0)
            return
