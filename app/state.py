"""What the user chose (instances and their configs), saved in the workspace atomically.

supervisor's program files are rendered from this; they are never the only copy.
"""
from __future__ import annotations

import json
import os

from pydantic import BaseModel, Field, field_validator

from app import validation
from app.settings import Settings

DEFAULT_INSTANCE = "vllm"


class InstanceConfig(BaseModel):
    """One engine: a supervisor program running `vllm serve`."""
    id: str
    model: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    share_gpus: bool = False
    port: int = Field(ge=1024, le=65535)
    served_model_name: str | None = None

    _id = field_validator("id")(lambda cls, v: validation.instance_id(v))
    _model = field_validator("model")(lambda cls, v: validation.model_name(v))
    _args = field_validator("args")(lambda cls, v: validation.engine_args(v))
    _env = field_validator("env")(lambda cls, v: validation.env_vars(v))

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, value):
        return None if value is None else validation.model_name(value)

    @property
    def name_served(self) -> str:
        """The model name /v1/models lists: --served-model-name if given, else the model."""
        from app.engine import option_value
        return self.served_model_name or option_value(self.args, "--served-model-name") or self.model


class SavedState(BaseModel):
    instances: dict[str, InstanceConfig] = Field(default_factory=dict)
    # VLLM_MODEL / VLLM_ARGS seen at the last boot: when they change, the environment wins for `vllm`.
    boot_env: dict[str, str] = Field(default_factory=dict)


def path(settings: Settings):
    return settings.state_dir / "instances.json"


def load(settings: Settings) -> SavedState:
    file = path(settings)
    if not file.exists():
        return SavedState()
    return SavedState.model_validate_json(file.read_text())


def save(settings: Settings, state: SavedState) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one. Raises OSError (e.g. ENOSPC)."""
    file = path(settings)
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(json.dumps(state.model_dump(), indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(file)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
