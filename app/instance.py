"""An instance: one `vllm serve` engine under supervisor. Its saved configuration, validated here once, and its phases.

Every way an instance is made (VLLM_MODEL / VLLM_ARGS at boot, PUT /api/instances, the llm-d /v2 API, saved state)
goes through `InstanceConfig`, so the same rules hold everywhere: the engine listens on loopback only, its port is
the instance's `port`, the model is a Hugging Face id or a local folder, and sizes are bounded.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app import validation

DEFAULT_INSTANCE = "vllm"
MAX_ARGS = 256
MAX_ENV = 128
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A Hub repository id: `name` or `org/name`; letters, digits, `-`, `_`, `.`; at most 96 characters each part.
HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class Phase(StrEnum):
    """What an instance is doing. Its actor is the only writer (app/actor.py)."""
    STOPPED = "stopped"
    WAITING = "waiting"    # held back: provisioning runs, or the Hub cannot be reached yet
    STARTING = "starting"
    READY = "ready"        # /health answers and /v1/models lists the model
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"  # the engine runs with its weights off the GPU (vLLM's sleep mode, level 1)


OWNING = {Phase.STARTING, Phase.READY, Phase.STOPPING}  # an instance in these phases holds its GPUs
SLEEP_MODE = "--enable-sleep-mode"  # vLLM's flag: the engine can be put to sleep and woken (strategy `sleep`)


def option_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def without_option(args: list[str], name: str) -> list[str]:
    """`args` less `name VALUE` / `name=VALUE`."""
    rest, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            rest.append(arg)
    return rest


def model_reference(value: str, *, check_folder: bool = True) -> str:
    """A Hugging Face id (`name` or `org/name`) or a local folder (an absolute path, or one starting with `.`)."""
    validation.model_name(value)
    if value.startswith(("/", "./", "../")):
        if check_folder and not Path(value).is_dir():
            raise ValueError(f"model {value!r} is not an existing local folder")
        return value
    if not HUB_ID.fullmatch(value) or ".." in value:
        raise ValueError(f"model {value!r} is neither a Hugging Face id (`name` or `org/name` of letters, digits, "
                         "`-`, `_`, `.`) nor a local folder (an absolute path)")
    return value


MAX_ALIASES = 16
MAX_LORA = 64
# A LoRA adapter's name: what a request's `model` names; plain, so it fits vLLM's `--lora-modules name=path`.
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def lora_adapter(name: str, path: str, *, taken: Sequence[str] = (), check_folder: bool = True) -> None:
    """One adapter: a plain name no other model of the instance has, a path like a model (a Hub id or a folder)."""
    if not LORA_NAME.fullmatch(name):
        raise ValueError(f"LoRA adapter name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    if name in taken:
        raise ValueError(f"LoRA adapter name {name!r} is already a name of the instance's model")
    if "," in path:  # vLLM reads `name=path` only without a comma (else JSON)
        raise ValueError(f"LoRA adapter {name!r}: the path must not contain ','")
    try:
        model_reference(path, check_folder=check_folder)
    except ValueError as exc:
        raise ValueError(f"LoRA adapter {name!r}: {str(exc).replace('model ', 'path ', 1)}") from None


def _lora_module(value: str) -> dict[str, str]:
    """One value of vLLM's --lora-modules: `name=path`, or JSON with `name` and `path`."""
    if "=" in value and "," not in value:
        name, path = value.split("=", 1)
        return {name: path}
    try:
        module = json.loads(value)
        return {str(module["name"]): str(module["path"])}
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--lora-modules {value[:80]!r} is neither name=path nor JSON with name and path") from None


def lora_adapters(adapters: dict[str, str], *, taken: list[str], check_folder: bool = True) -> None:
    if len(adapters) > MAX_LORA:
        raise ValueError(f"at most {MAX_LORA} LoRA adapters")
    for name, path in adapters.items():
        lora_adapter(name, path, taken=taken, check_folder=check_folder)


class Policy(BaseModel):
    """How the router (app/router) treats an instance: the names it answers to, on-demand start, idle stop,
    queueing and whether it may be stopped to make room. Changing only these never restarts the engine."""
    model_config = ConfigDict(extra="forbid")

    aliases: list[str] = Field(default_factory=list, description="more names the router routes to this instance")
    on_demand: bool = Field(True, description="a request for this stopped instance starts it")
    idle_timeout: float = Field(0, ge=0, le=30 * 86400,
                                description="stop after this many seconds with no request in flight; 0: never")
    max_queue: int = Field(100, ge=0, le=10000, description="requests that may wait while it starts or swaps")
    queue_timeout: float = Field(600, gt=0, le=86400, description="seconds a request may wait in the queue")
    pinned: bool = Field(False, description="never stopped to make room for another instance")

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, aliases: list[str]) -> list[str]:
        if len(aliases) > MAX_ALIASES:
            raise ValueError(f"at most {MAX_ALIASES} aliases")
        if len(set(aliases)) != len(aliases):
            raise ValueError("aliases must be distinct")
        return [validation.model_name(a) for a in aliases]


POLICY_FIELDS = tuple(Policy.model_fields)


class InstanceConfig(Policy):
    """One engine: a supervisor program running `vllm serve`.

    Reserved options are settled here: `--model` in args is refused (the model is its own field), `--host` must be
    a loopback address (Caddy publishes engines, with auth), and `--port` in args becomes `port`.
    Validation context `{"check_folder": False}` skips the existence check of a local model folder (saved state
    and boot: a volume may be mounted, or provisioning may download the model, after this is read).
    """
    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    share_gpus: bool = False
    port: int = Field(ge=1024, le=65535)
    served_model_name: str | None = None
    lora: dict[str, str] | None = Field(None, description="LoRA adapters loaded at start, name -> Hub id or local "
                                        "folder; {} enables LoRA with none (load them at runtime); null: off")

    @model_validator(mode="before")
    @classmethod
    def _port_from_args(cls, data):
        if isinstance(data, dict) and isinstance(data.get("args"), list):
            args = [a for a in data["args"] if isinstance(a, str)]
            port = option_value(args, "--port")
            if port is None and "--port" in args:
                raise ValueError("--port needs a value")
            if port is not None:
                if not port.isdigit():
                    raise ValueError(f"--port {port!r} is not a port number")
                if data.get("port") not in (None, int(port)):
                    raise ValueError(f"--port {port} in args differs from port {data['port']}; give one of them")
                data = {**data, "port": int(port), "args": without_option(data["args"], "--port")}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validation.instance_id(value)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        return model_reference(value, check_folder=(info.context or {}).get("check_folder", True))

    @field_validator("args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        if len(args) > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments")
        validation.engine_args(args)
        for arg in args:
            name = arg.split("=", 1)[0]
            if name == "--model":
                raise ValueError("--model is not allowed in args: give the model as `model`")
        host = option_value(args, "--host")
        if host is None and "--host" in args:
            raise ValueError("--host needs a value")
        if host is not None and host not in LOOPBACK:
            raise ValueError(f"--host {host} would publish the engine without auth: engines listen on 127.0.0.1 "
                             "only, and Caddy publishes them with TLS and auth; leave --host out")
        return args

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        if len(env) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} environment variables")
        return validation.env_vars(env)

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, gpus: list[int] | None) -> list[int] | None:
        if gpus is not None and (any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus)):
            raise ValueError("gpus must be distinct GPU indices (0, 1, ...), or null for automatic")
        return gpus

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, value: str | None) -> str | None:
        return None if value is None else validation.model_name(value)

    @model_validator(mode="after")
    def _lora(self, info: ValidationInfo) -> InstanceConfig:
        if self.lora is not None:
            try:
                lora_adapters(self.lora, taken=self.names, check_folder=(info.context or {}).get("check_folder", True))
            except ValueError as exc:
                raise ValueError(f"lora: {exc}") from None
        return self

    @model_validator(mode="before")
    @classmethod
    def _lora_from_args(cls, data):
        """`--lora-modules name=path ...` in args (as the llm-d API's options may have it) becomes `lora`, checked as
        that field is; the JSON form (`{"name": ..., "path": ...}`) too."""
        if not (isinstance(data, dict) and isinstance(data.get("args"), list)
                and any(isinstance(a, str) and a.split("=", 1)[0] == "--lora-modules" for a in data["args"])):
            return data
        args, found, rest, i = data["args"], {}, [], 0
        while i < len(args):
            arg = args[i]
            if isinstance(arg, str) and arg.split("=", 1)[0] == "--lora-modules":
                values = [arg.split("=", 1)[1]] if "=" in arg else []
                i += 1
                while "=" not in arg and i < len(args) and isinstance(args[i], str) and not args[i].startswith("-"):
                    values.append(args[i])
                    i += 1
                for value in values:
                    found.update(_lora_module(value))
                continue
            rest.append(arg)
            i += 1
        if data.get("lora"):
            raise ValueError("give the adapters as `lora` or as --lora-modules in args, not both")
        return {**data, "args": rest, "lora": found}

    @property
    def name_served(self) -> str:
        """The model name /v1/models lists: --served-model-name if given, else the model."""
        return self.served_model_name or option_value(self.args, "--served-model-name") or self.model

    @property
    def names(self) -> list[str]:
        """Every name the router routes to this instance: its served name, then its aliases."""
        return [self.name_served, *(a for a in self.aliases if a != self.name_served)]

    def same_engine(self, other: InstanceConfig | None) -> bool:
        """The same engine as `other`, whatever the policy: a change of policy alone needs no restart."""
        return other is not None and self.model_dump(exclude=set(POLICY_FIELDS)) == other.model_dump(
            exclude=set(POLICY_FIELDS))


class InstanceRequest(BaseModel):
    """PUT /api/instances/{id}: create or swap. `args` may be a list or one shell-quoted string (split with shlex).
    A policy field left out keeps the instance's current value (the default for a new instance)."""
    model_config = ConfigDict(extra="forbid")

    model: str
    args: list[str] = Field(default_factory=list, description="a list, or one shell-quoted string")
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    share_gpus: bool = False
    served_model_name: str | None = None
    port: int | None = None
    lora: dict[str, str] | None = Field(None, description="LoRA adapters, name -> Hub id or local folder; {}: LoRA "
                                        "on with none loaded at start; null: off")
    wait: bool = False
    rollback: bool = True
    timeout: float = Field(1800, gt=0, le=86400, description="seconds to wait for the engine to be ready")
    strategy: Literal["restart", "blue_green", "sleep"] | None = Field(
        None, description="how to swap: restart, blue_green or sleep; null: blue_green where resources allow it")
    aliases: list[str] | None = None
    on_demand: bool | None = None
    idle_timeout: float | None = None
    max_queue: int | None = None
    queue_timeout: float | None = None
    pinned: bool | None = None

    def policy(self, current: InstanceConfig | None) -> dict:
        """The policy fields for the new config: the ones given, else the current instance's, else the defaults."""
        given = {name: getattr(self, name) for name in POLICY_FIELDS if getattr(self, name) is not None}
        kept = {name: getattr(current, name) for name in POLICY_FIELDS} if current else {}
        return {**kept, **given}

    @field_validator("args", mode="before")
    @classmethod
    def _split(cls, args):
        return validation.split_args(args, "args") if isinstance(args, str) else args


def error_message(exc: Exception) -> str:
    """A pydantic error (or any ValueError) as one line naming the field."""
    errors = getattr(exc, "errors", None)
    if errors:
        parts = []
        for e in errors():
            where = ".".join(str(p) for p in e["loc"])
            message = e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    return str(exc)
