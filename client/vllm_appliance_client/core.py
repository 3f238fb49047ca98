"""What the sync and async clients share: request bodies, results, retry policy, replica plans, progress."""
from __future__ import annotations

import re
import secrets
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from pydantic import BaseModel

from vllm_appliance_client.errors import ApplianceError, ServerError, StartupError, error_for, retry_after

RETRY_STATUSES = {429, 503}
DEFAULT_CONCURRENCY = 32
DEFAULT_RETRIES = 8
EMBED_BATCH = 64  # texts per /v1/embeddings request
PROGRESS_FROM = 32  # a batch of at least this many items shows a progress bar (progress=None)
Replicas = int | Literal["per_gpu"]


# --- results -------------------------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Output(BaseModel):
    """One choice of a chat or completion, with what `return_extra=True` asks for."""
    text: str
    finish_reason: str | None = None
    logprobs: Any = None  # the engine's logprobs object of this choice, as sent (None unless asked for)
    index: int = 0


class Result(BaseModel):
    """One batch item's answer: its choices (more than one with `n`), token usage and the model that answered."""
    outputs: list[Output]
    usage: Usage | None = None
    model: str | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text if self.outputs else ""

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason if self.outputs else None

    @property
    def logprobs(self) -> Any:
        return self.outputs[0].logprobs if self.outputs else None


def chat_body(model: str, conversation: list[dict] | str, sampling: dict) -> dict:
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    return {**sampling, "model": model, "messages": messages}


def completion_body(model: str, prompt: str, sampling: dict) -> dict:
    return {**sampling, "model": model, "prompt": prompt}


def parse_result(body: dict, chat: bool) -> Result:
    outputs = []
    for choice in sorted(body.get("choices") or [], key=lambda c: c.get("index", 0)):
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        outputs.append(Output(text=text or "", finish_reason=choice.get("finish_reason"),
                              logprobs=choice.get("logprobs"), index=choice.get("index", 0)))
    usage = body.get("usage")
    return Result(outputs=outputs, usage=Usage(**{k: usage.get(k) or 0 for k in Usage.model_fields})
                  if isinstance(usage, dict) else None, model=body.get("model"))


def plain(result: Result) -> str | list[str]:
    """What a batch returns without return_extra: the text, or every choice's text when there are several."""
    return result.text if len(result.outputs) <= 1 else [o.text for o in result.outputs]


def embeddings_of(body: dict) -> list[list[float]]:
    return [d["embedding"] for d in sorted(body.get("data") or [], key=lambda d: d.get("index", 0))]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --- retries -------------------------------------------------------------------------------------------------------
@dataclass
class RetryPolicy:
    """503 and 429 are retried after the server's Retry-After (else 0.5 s doubling, at most `max_wait`); so is a
    connection that failed before an answer."""
    retries: int = DEFAULT_RETRIES
    max_wait: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.retries:
            return None
        return min(self.max_wait, retry_after if retry_after is not None else 0.5 * 2 ** attempt)


# --- progress ------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """A one-line progress bar on stderr: `chat  40/64 [#########.....] 3.1 it/s`. Thread-safe enough: each update
    writes one whole line."""
    label: str
    total: int
    enabled: bool
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    @classmethod
    def maybe(cls, label: str, total: int, progress: bool | None) -> Progress:
        return cls(label, total, enabled=total >= PROGRESS_FROM if progress is None else bool(progress))

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (self.done >= self.total or now - self._last >= 0.2):
            self._last = now
            width = 30
            filled = int(width * self.done / max(1, self.total))
            rate = self.done / max(1e-6, now - self.started)
            end = "\n" if self.done >= self.total else ""
            self.stream.write(f"\r{self.label} {self.done}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{rate:.1f} it/s{end}")
            self.stream.flush()


def say(line: str, enabled: bool, stream: TextIO | None = None) -> None:
    if enabled:
        print(line, file=stream or sys.stderr, flush=True)


# --- serving -------------------------------------------------------------------------------------------------------
def slug(model: str) -> str:
    """An instance id prefix from a model name: `Qwen/Qwen2.5-0.5B` -> `qwen2-5-0-5b`."""
    tail = model.rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9]+", "-", tail).strip("-")[:18] or "model"


@dataclass
class Plan:
    """The instances `serve` creates: their ids and GPUs."""
    ids: list[str]
    gpus: list[list[int] | None]


def plan(model: str, replicas: Replicas, gpus: list[int] | None, gpu_count: int, prefix: str | None = None) -> Plan:
    """One instance per replica. `per_gpu`: one per GPU of `gpus` (all GPUs if None). N replicas with GPUs: the
    GPUs (given, or all) split evenly, each replica running on its share; on a machine without GPUs, none."""
    base = prefix or f"{slug(model)}-{secrets.token_hex(2)}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,28}", base):
        raise ValueError(f"instance id prefix {base!r} must match [a-z0-9][a-z0-9-]{{0,28}}")
    available = list(gpus) if gpus is not None else list(range(gpu_count))
    if replicas == "per_gpu":
        if not available:
            raise ValueError("replicas='per_gpu' needs GPUs, and the appliance has none: give replicas=N")
        shares: list[list[int] | None] = [[g] for g in available]
    elif isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 1:
        if available:
            if len(available) % replicas:
                raise ValueError(f"{len(available)} GPUs cannot be split evenly over {replicas} replicas")
            size = len(available) // replicas
            shares = [available[i * size:(i + 1) * size] for i in range(replicas)]
        else:
            shares = [gpus if gpus is not None else None] * replicas
    else:
        raise ValueError(f"replicas must be a positive number or 'per_gpu', not {replicas!r}")
    return Plan(ids=[f"{base}-{i}" for i in range(len(shares))], gpus=shares)


def instance_body(model: str, name: str, gpus: list[int] | None, args: list[str] | str | None,
                  env: dict[str, str] | None, lora: dict[str, str] | None, timeout: float) -> dict:
    body: dict[str, Any] = {"model": model, "served_model_name": name, "gpus": gpus, "args": args or [],
                            "env": env or {}, "timeout": timeout, "rollback": False}
    if lora is not None:
        body["lora"] = lora
    return body


def startup_state(views: dict[str, dict], started: float, timeout: float) -> bool:
    """True once every instance is ready; StartupError for one that failed, or when time is up."""
    for instance_id, view in views.items():
        if view.get("state") == "failed":
            raise StartupError(f"instance {instance_id} failed: {view.get('reason')}", instance=instance_id,
                               last_log=view.get("last_log"))
    if all(v.get("state") == "ready" for v in views.values()):
        return True
    if time.monotonic() - started > timeout:
        slow = next(i for i, v in views.items() if v.get("state") != "ready")
        raise StartupError(f"instance {slow} not ready after {timeout:.0f} s (it is {views[slow].get('state')})",
                           instance=slow, last_log=views[slow].get("last_log"))
    return False


def startup_line(views: dict[str, dict], started: float) -> str:
    states = ", ".join(f"{i}: {v.get('state')}" for i, v in views.items())
    last = next((v["last_log"][-1] for v in views.values() if v.get("last_log")), "")
    return f"[{time.monotonic() - started:5.0f} s] {states}" + (f" | {last.strip()[:120]}" if last else "")


# --- connecting ----------------------------------------------------------------------------------------------------
def ssl_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """`verify` as httpx takes it: a path is a CA file (the appliance's self-signed cert.pem)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def api_url_from(url: str, apps: dict) -> str:
    """The inference API's address from the appliance's report of its ports (GET /api/apps)."""
    port = apps.get("api_port")
    if not port:
        raise ApplianceError("the appliance reports no vLLM API port (PORTAL_CONFIG has no `vLLM` entry); "
                             "give api_url")
    parts = urlsplit(url)
    scheme = "https" if apps.get("https", parts.scheme == "https") else "http"
    host = parts.hostname or "localhost"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def next_delay(policy: RetryPolicy, attempt: int, *, response=None, exc: Exception | None = None,
               index: int | None = None) -> float:
    """How long to wait before trying a failed request again; raises the typed error when it is not retried."""
    if exc is not None:
        wait = policy.delay(attempt, None)
        if wait is None:
            raise ServerError(f"no answer: {type(exc).__name__}: {exc}", None, index=index) from exc
        return wait
    assert response is not None
    wait = policy.delay(attempt, retry_after(response)) if response.status_code in RETRY_STATUSES else None
    if wait is None:
        raise error_for(response, index)
    return wait
