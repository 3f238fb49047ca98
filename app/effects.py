"""The lifecycle's outside world, behind one small interface: supervisor, the engine's HTTP API, program files,
GPUs (NVML), logs and the Hugging Face Hub.

`Effects` is what the actors and the manager call; unit tests give them `tests/unit/fakes.py` instead, so every
transition can be driven without processes. The blocking calls (XML-RPC, NVML, files) run in threads.
"""
from __future__ import annotations

import asyncio

import httpx

from app import engine, gpu, hub, logs, render, stats
from app.instance import InstanceConfig
from app.settings import Settings
from app.supervisor import Supervisor


class Effects:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.supervisor = Supervisor.of(settings)
        self.http = httpx.AsyncClient(timeout=2.0)

    # --- supervisor --------------------------------------------------------------------------------------------
    async def processes(self) -> dict[str, dict]:
        """supervisor's getAllProcessInfo, by program name."""
        return {p["name"]: p for p in await asyncio.to_thread(self.supervisor.all)}

    async def info(self, name: str) -> dict | None:
        return await asyncio.to_thread(self.supervisor.info, name)

    async def start(self, name: str) -> None:
        await asyncio.to_thread(self.supervisor.start, name)

    async def stop(self, name: str) -> None:
        await asyncio.to_thread(self.supervisor.stop, name)

    async def apply(self, names: set[str]) -> tuple[list[str], list[str], list[str]]:
        return await asyncio.to_thread(self.supervisor.apply_config, names)

    def explain(self, exc: Exception) -> str:
        return self.supervisor.explain(exc)

    # --- program files -------------------------------------------------------------------------------------------
    def write_program(self, config: InstanceConfig, autostart: bool = True, name: str | None = None) -> bool:
        """Render the instance's program file (`name`: blue/green's other program); False when the file already
        runs this command and environment."""
        program = engine.program(self.settings, config, gpu_count=gpu.gpu_count(), autostart=autostart, name=name)
        path = render.program_path(self.settings, program.name)
        current = path.read_text() if path.exists() else None
        if current is not None and render.same_program(current, program):
            return False
        render.write_program(self.settings, program)
        return True

    def current_program(self, config: InstanceConfig, names: tuple[str, ...]) -> str | None:
        """Which of these program files runs this config (after a blue/green swap it may be `<id>_b`)."""
        for name in names:
            path = render.program_path(self.settings, name)
            program = engine.program(self.settings, config, gpu_count=gpu.gpu_count(), name=name)
            if path.exists() and render.same_program(path.read_text(), program):
                return name
        return None

    def remove_program(self, name: str) -> None:
        render.program_path(self.settings, name).unlink(missing_ok=True)

    def rendered_engines(self) -> set[str]:
        """Engine programs that have a file (rendered from the saved state at some point)."""
        return render.engine_program_names(self.settings)

    # --- the engine's HTTP API -----------------------------------------------------------------------------------
    async def healthy(self, config: InstanceConfig) -> bool:
        """/health answers 200 and /v1/models lists the model."""
        base = f"http://127.0.0.1:{config.port}"
        try:
            if (await self.http.get(f"{base}/health")).status_code != 200:
                return False
            models = (await self.http.get(f"{base}/v1/models")).json()
            return any(m.get("id") == config.name_served for m in models.get("data", []))
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async def sleep_engine(self, config: InstanceConfig, level: int = 1) -> None:
        """vLLM's sleep mode on loopback (the engine runs with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1)."""
        answer = await self.http.post(f"http://127.0.0.1:{config.port}/sleep", params={"level": level}, timeout=120)
        answer.raise_for_status()

    async def wake_engine(self, config: InstanceConfig) -> None:
        answer = await self.http.post(f"http://127.0.0.1:{config.port}/wake_up", timeout=300)
        answer.raise_for_status()

    async def is_sleeping(self, config: InstanceConfig) -> bool | None:
        """vLLM's /is_sleeping; None when the engine does not answer it."""
        try:
            answer = await self.http.get(f"http://127.0.0.1:{config.port}/is_sleeping")
            return bool(answer.json()["is_sleeping"]) if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    # --- GPUs ----------------------------------------------------------------------------------------------------
    def gpu_count(self) -> int:
        return gpu.gpu_count()

    def gpu_reason(self) -> str | None:
        return gpu.reason()

    async def engine_gpu_pids(self, name: str, config: InstanceConfig | None) -> set[int]:
        """The GPU processes of this instance's running engine (its process tree), by NVML."""
        return await asyncio.to_thread(self._engine_gpu_pids, name, config)

    def _engine_gpu_pids(self, name: str, config: InstanceConfig | None) -> set[int]:
        info = self.supervisor.info(name)
        root = info["pid"] if info else 0
        if not root or config is None:
            return set()
        on_gpus = gpu.engine_pids(config.gpus)
        mine = {pid for pid in on_gpus if stats.owner(pid, {root: name})}
        if mine or config.share_gpus:
            return mine
        # In a container NVML reports the host's pids, which /proc here does not know. On GPUs this engine held
        # alone (no other running instance may hold them), such processes are its own.
        return {pid for pid in on_gpus if stats.foreign(pid)}

    async def wait_gpus_released(self, pids: set[int]) -> bool:
        return await asyncio.to_thread(gpu.wait_released, pids, self.settings.gpu_release_timeout)

    # --- logs and the Hub ----------------------------------------------------------------------------------------
    def last_log(self, name: str, count: int = 20) -> list[str]:
        return logs.tail_lines(self.settings.log_dir / f"{name}.log", count)

    def remove_log(self, name: str) -> None:
        """A deleted instance's log and its rotated parts: a new instance of that id starts with an empty log."""
        logs.remove(self.settings.log_dir, name)

    async def hub_check(self, model: str) -> hub.Answer:
        return await asyncio.to_thread(hub.check, self.settings, model)

    async def aclose(self) -> None:
        await self.http.aclose()
