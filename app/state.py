"""What the user chose (instances and their configs), kept in memory and written through to the workspace.

supervisor's program files are rendered from this; they are never the only copy. The file is read once (by the
boot, and by the manager when it starts) and rewritten atomically on every change, by `Store.save` only.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, Field

from app.files import write_atomic
from app.instance import DEFAULT_INSTANCE, InstanceConfig
from app.settings import Settings

__all__ = ["DEFAULT_INSTANCE", "InstanceConfig", "SavedState", "Store"]


class SavedState(BaseModel):
    instances: dict[str, InstanceConfig] = Field(default_factory=dict)
    # VLLM_MODEL / VLLM_ARGS seen at the last boot: when they change, the environment wins for `vllm`.
    boot_env: dict[str, str] = Field(default_factory=dict)


class Store:
    """The saved state in memory; every change is written to `instances.json` before it returns."""

    def __init__(self, settings: Settings):
        self.file = settings.state_dir / "instances.json"
        self.state = self._read()

    def _read(self) -> SavedState:
        if not self.file.exists():
            return SavedState()
        # a saved local model folder may be missing for now (a volume not mounted yet): not a reason to lose it
        return SavedState.model_validate(json.loads(self.file.read_text()), context={"check_folder": False})

    @property
    def instances(self) -> dict[str, InstanceConfig]:
        return self.state.instances

    def get(self, instance_id: str) -> InstanceConfig | None:
        return self.state.instances.get(instance_id)

    def put(self, config: InstanceConfig) -> None:
        """Save `config` (raises OSError, e.g. ENOSPC, with the memory left as it was)."""
        self._write(SavedState(instances={**self.state.instances, config.id: config}, boot_env=self.state.boot_env))

    def remove(self, instance_id: str) -> None:
        instances = {i: c for i, c in self.state.instances.items() if i != instance_id}
        self._write(SavedState(instances=instances, boot_env=self.state.boot_env))

    def save(self, state: SavedState) -> None:
        self._write(state)

    def _write(self, state: SavedState) -> None:
        write_atomic(self.file, json.dumps(state.model_dump(), indent=2) + "\n", mode=0o600)
        self.state = state
