"""LoRA adapters of running engines: the ones loaded at runtime, and vLLM's own load/unload/list calls.

vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` are reached here only, on the engine's loopback port:
Caddy refuses them on every public port (app/render.py ENGINE_ONLY_PATHS). An adapter loaded at runtime lives as
long as the engine process that loaded it: `Runtime` keeps it with that engine's pid, so a restarted engine (which
forgot it) no longer has it routed to it. Adapters meant to survive restarts belong in the instance's `lora` field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from app.engine import lora_enabled
from app.instance import InstanceConfig

ENGINE_TIMEOUT = 600.0  # loading an adapter from the Hub downloads it first


class EngineError(Exception):
    """The engine refused or failed a LoRA call: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Changes:
    """What the API changed in one engine process: adapters loaded, and adapters (static ones too) unloaded."""
    pid: int | None
    added: dict[str, str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


@dataclass
class Runtime:
    """Adapters loaded and unloaded through the API, per instance, kept with the pid of the engine they were
    loaded into: a new engine process starts again from the instance's static adapters."""
    changes: dict[str, Changes] = field(default_factory=dict)

    def _of(self, instance_id: str, pid: int | None) -> Changes:
        current = self.changes.get(instance_id)
        if current is None or current.pid != pid:
            current = self.changes[instance_id] = Changes(pid)
        return current

    def add(self, instance_id: str, pid: int | None, name: str, path: str) -> None:
        changes = self._of(instance_id, pid)
        changes.added[name] = path
        changes.removed.discard(name)

    def remove(self, instance_id: str, pid: int | None, name: str) -> None:
        changes = self._of(instance_id, pid)
        changes.added.pop(name, None)
        changes.removed.add(name)

    def names(self, config: InstanceConfig, pid: int | None) -> list[str]:
        """The adapter names the instance answers to: its static ones (also while it is stopped, so a request
        naming one may start it on demand), less those unloaded, plus those loaded into its engine `pid`."""
        if not lora_enabled(config):
            return []
        static = list(config.lora or {})
        changes = self.changes.get(config.id)
        if changes is None or pid is None or changes.pid != pid:
            return static
        return [n for n in static if n not in changes.removed] + [n for n in changes.added if n not in static]


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip() or answer.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(body.get("detail") or body) if isinstance(body, dict) else str(body)


async def _call(port: int, path: str, payload: dict, timeout: float = ENGINE_TIMEOUT) -> str:
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            answer = await client.post(path, json=payload)
    except httpx.HTTPError as exc:
        raise EngineError(502, f"the engine did not answer ({type(exc).__name__}: {exc})") from None
    if answer.status_code == 404 and "Not Found" == _message(answer):
        raise EngineError(409, "the engine has no runtime LoRA endpoints (VLLM_ALLOW_RUNTIME_LORA_UPDATING is off); "
                               "restart the instance with `lora` set")
    if answer.status_code >= 400:
        raise EngineError(answer.status_code, _message(answer))
    return answer.text


async def load(port: int, name: str, path: str) -> str:
    return await _call(port, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})


async def unload(port: int, name: str) -> str:
    return await _call(port, "/v1/unload_lora_adapter", {"lora_name": name})


async def listed(port: int, timeout: float = 5.0) -> dict[str, str]:
    """The adapters the engine lists in /v1/models (entries with a `parent`): name -> path."""
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            answer = await client.get("/v1/models")
        answer.raise_for_status()
        return {m["id"]: m.get("root") or "" for m in answer.json().get("data", []) if m.get("parent")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EngineError(502, f"the engine's /v1/models did not answer ({type(exc).__name__})") from None
