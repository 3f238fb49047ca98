"""What the llm-d launcher API keeps beyond the instances themselves, and its event log.

- What a client gave (`options`, `env_vars`, `annotations`, `gpu_uuids`), echoed exactly as given. It stays valid
  while the instance's config is the one it was made into: a swap through /api or the portal makes it stale, and
  the instance is then described from its config.
- A revision-numbered log of instance events (CREATED, STOPPED, DELETED) for GET /v2/vllm/instances/watch, found
  by comparing what the manager shows with what was last seen, every half second and at every llm-d request. The
  counter and what was last seen survive a restart of the manager; the buffer does not, so a `since` from before a
  restart is answered 410 (re-list, then watch from the list's revision), never with events missed.

Both are kept in `llmd.json` next to the saved state, written atomically; a deleted instance's entry goes with it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shlex
from collections import deque
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from app import validation
from app.files import write_atomic
from app.instance import OWNING, InstanceConfig, Phase

if TYPE_CHECKING:
    from app.manager import Manager
    from app.settings import Settings

EVENT_BUFFER = 1000  # events kept for `since`; an older revision is answered 410
POLL = 0.5  # seconds between two looks at the instances
KEEPALIVE = 10.0  # seconds of silence on a watch before an empty line (NDJSON parsers may skip empty lines)
FORGOTTEN_OBJECTS = 256  # last objects of deleted instances kept for DELETE's answer
NAME = re.compile(r"[A-Za-z0-9._~-]{1,128}")  # an llm-d instance id: one URL path segment of unreserved characters


class Given(BaseModel):
    """A create request's body as the client sent it (env_vars gains CUDA_VISIBLE_DEVICES with gpu_uuids, as the
    launcher's does)."""
    options: str
    gpu_uuids: list[str] | None = None
    env_vars: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class Record(BaseModel):
    name: str | None = None  # the llm-d id, where it is not a valid instance id of ours
    revision: int | None = None  # of the instance's last event
    status: str | None = None  # the launcher status last seen; None: not seen yet
    config: dict[str, Any] | None = None  # the config last seen
    given: Given | None = None
    given_for: dict[str, Any] | None = None  # the config `given` was made into


class Saved(BaseModel):
    revision: int = 0
    instances: dict[str, Record] = Field(default_factory=dict)


def name_check(name: str) -> str:
    """An llm-d instance id (ValueError if it is not one URL path segment of unreserved characters)."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"instance id {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    return name


def instance_id(name: str) -> str:
    """The instance behind an llm-d id: the same id where it is valid as ours (a supervisor program, a URL path, a
    file name), else `l` + 31 hex digits of its SHA-256 (such as the dual-pods controller's `I<base64url>i` ids)."""
    try:
        return validation.instance_id(name)
    except ValueError:
        return "l" + hashlib.sha256(name.encode()).hexdigest()[:31]


def launcher_status(phase: Phase | str) -> str:
    """`running` while the engine process is up (starting, ready, stopping, sleeping), else `stopped`."""
    return "running" if Phase(phase) in OWNING or Phase(phase) == Phase.SLEEPING else "stopped"


def options_of(config: dict[str, Any]) -> str:
    """An instance made without the llm-d API, as `options`."""
    lora = config.get("lora")
    modules = ([] if "--enable-lora" in config["args"] else ["--enable-lora"]) if lora is not None else []
    modules += ["--lora-modules", *(f"{name}={path}" for name, path in lora.items())] if lora else []
    return shlex.join(["--model", config["model"], "--port", str(config["port"]), *config["args"], *modules])


class Llmd:
    """One per manager process (app.state.llmd); its poll task runs as long as the manager."""

    def __init__(self, manager: Manager, settings: Settings) -> None:
        self.manager = manager
        self.file = settings.state_dir / "llmd.json"
        self.saved = self._read()
        self.events: deque[tuple[int, str]] = deque(maxlen=EVENT_BUFFER)
        self.lock = asyncio.Lock()
        self.forgotten: dict[str, dict] = {}
        self._wake = asyncio.Event()
        self._write_failed = False
        self.task = asyncio.get_running_loop().create_task(self._poll(), name="llmd-events")

    def _read(self) -> Saved:
        try:
            return Saved.model_validate_json(self.file.read_text())
        except FileNotFoundError:
            return Saved()
        except ValueError as exc:  # a damaged file: start over rather than refuse every llm-d request
            print(f"manager: {self.file} is not valid ({exc}); llm-d revisions start again", flush=True)
            return Saved()

    def _save(self) -> None:
        try:
            write_atomic(self.file, self.saved.model_dump_json(indent=1) + "\n", mode=0o600)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                print(f"manager: cannot save {self.file} ({exc.strerror}); llm-d state kept in memory", flush=True)
            self._write_failed = True

    # --- reading ---------------------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.saved.revision

    @property
    def oldest(self) -> int:
        """Events after this revision are in the buffer."""
        return self.saved.revision - len(self.events)

    def describe(self, config: InstanceConfig) -> dict:
        """An instance as the launcher shows it (status, instance_id, revision, what was given), and ours after."""
        view = self.manager.view(config)
        record = self.saved.instances.get(config.id) or Record()
        extra = {"state": view["state"], "ready": view["state"] == Phase.READY, "model": config.model,
                 "port": config.port, "restarts": view["restarts"], "reason": view["reason"]}
        return {**self._base(config.id, record, config.model_dump(), launcher_status(view["state"])), **extra}

    @staticmethod
    def _base(instance_id: str, record: Record, config: dict, status: str) -> dict:
        base = {"status": status, "instance_id": record.name or instance_id, "revision": record.revision}
        if record.given is not None and record.given_for == config:
            return {**base, **record.given.model_dump(exclude_none=True)}
        return {**base, "options": options_of(config), "env_vars": config["env"]}

    def forgotten_object(self, instance_id: str) -> dict | None:
        return self.forgotten.get(instance_id)

    def name(self, instance_id: str) -> str:
        """The llm-d id of an instance."""
        record = self.saved.instances.get(instance_id)
        return (record.name if record else None) or instance_id

    # --- changes ---------------------------------------------------------------------------------------------------
    def given(self, name: str, given: Given, config: InstanceConfig) -> None:
        """Remember what created the instance called `name` (call with the lock held, before `_sync`)."""
        self.saved.instances[config.id] = Record(name=name if name != config.id else None, given=given,
                                                 given_for=config.model_dump())

    async def sync(self) -> None:
        async with self.lock:
            await self._sync()

    async def _sync(self) -> None:
        """Emit an event for every difference between the instances and what was last seen."""
        known = self.manager.known()
        changed = False
        for instance_id, record in list(self.saved.instances.items()):
            if instance_id in known:
                continue
            del self.saved.instances[instance_id]
            changed = True
            if record.status is not None and record.config is not None:
                gone = {**self._base(instance_id, record, record.config, "stopped"), "state": "deleted",
                        "ready": False, "model": record.config["model"], "port": record.config["port"]}
                self._emit("DELETED", gone)
                self.forgotten[instance_id] = gone
                while len(self.forgotten) > FORGOTTEN_OBJECTS:
                    del self.forgotten[next(iter(self.forgotten))]
        for instance_id, config in known.items():
            record = self.saved.instances.setdefault(instance_id, Record())
            status, dump = launcher_status(self.manager.phase(instance_id)), config.model_dump()
            if record.status is None or (status == "running" and (record.status != status or record.config != dump)):
                kind, extra = "CREATED", {}  # new, started again, or swapped: its current object
            elif status == "stopped" and record.status == "running":
                # an exit status only if it exited by itself
                info = await self.manager.fx.info(self.manager.program_of(instance_id)) or {}
                kind, extra = "STOPPED", {"exit_code": info.get("exitstatus") if info.get("statename") == "EXITED"
                                          else None}
            else:
                if record.config != dump:
                    record.config, changed = dump, True
                continue
            record.status, record.config, changed = status, dump, True
            self.forgotten.pop(instance_id, None)
            record.revision = self._emit(kind, {**self.describe(config), **extra})
        if changed:
            self._save()

    def _emit(self, kind: str, obj: dict) -> int:
        self.saved.revision += 1
        obj["revision"] = self.saved.revision
        self.events.append((self.saved.revision, json.dumps({"type": kind, "object": obj})))
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
        return self.saved.revision

    async def _poll(self) -> None:
        failing = None
        while True:
            try:
                await self.sync()
                failing = None
            except Exception as exc:  # noqa: BLE001 (keep watching through a supervisor hiccup)
                if repr(exc) != failing:
                    print(f"manager: llm-d events: {self.manager.fx.explain(exc)}", flush=True)
                failing = repr(exc)
            await asyncio.sleep(POLL)

    # --- the watch stream ------------------------------------------------------------------------------------------
    async def watch(self, since: int | None):
        """NDJSON lines: without `since`, CREATED for every instance and then what happens; with it, every event
        after revision `since`. Ends when the client is too slow for the buffer (it re-lists, as after a 410)."""
        if since is None:
            async with self.lock:
                await self._sync()
                position = self.revision
                lines = [json.dumps({"type": "CREATED", "object": self.describe(c)})
                         for c in self.manager.known().values()]
            for line in lines:
                yield line + "\n"
        else:
            position = since
        while True:
            wake = self._wake
            if position < self.oldest:
                return
            fresh = [(revision, line) for revision, line in self.events if revision > position]
            if fresh:
                position = fresh[-1][0]
                yield "".join(line + "\n" for _, line in fresh)
                continue
            try:
                await asyncio.wait_for(wake.wait(), KEEPALIVE)
            except TimeoutError:
                yield "\n"


def get(app) -> Llmd:
    """The app's llm-d state, made (and its poll task started) on first use."""
    if getattr(app.state, "llmd", None) is None:
        app.state.llmd = Llmd(app.state.manager, app.state.settings)
    return app.state.llmd
