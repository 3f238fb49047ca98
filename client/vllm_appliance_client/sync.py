"""The blocking client: `Appliance` and the handle `Served` that `Appliance.serve` yields (threads for batches)."""
from __future__ import annotations

import contextlib
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import httpx

from vllm_appliance_client import core
from vllm_appliance_client.core import Progress, Replicas, Result, RetryPolicy
from vllm_appliance_client.errors import ApplianceError, NotFoundError, check


class Appliance:
    """One appliance. `url`: its portal address (`https://host:1111`); `token`: the admin token; `verify`: True, False,
    a CA file (the appliance's cert.pem) or an SSLContext; `api_url`: the inference address, found from the
    appliance's report of its ports (GET /api/apps) when not given."""

    def __init__(self, url: str, token: str, *, verify: bool | str | ssl.SSLContext = True, api_url: str | None = None,
                 timeout: float = 600.0, retries: int = core.DEFAULT_RETRIES):
        self.url, self.token = url.rstrip("/"), token
        self.verify = core.ssl_verify(verify)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.seconds, self.timeout = timeout, httpx.Timeout(timeout, connect=30.0)
        self.retry = RetryPolicy(retries)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, verify=self.verify, timeout=self.timeout)
        self._api_url = api_url.rstrip("/") if api_url else None
        self._inference: httpx.Client | None = None

    # --- connection ----------------------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        if self._api_url is None:
            self._api_url = core.api_url_from(self.url, self._get("/api/apps"))
        return self._api_url

    @property
    def inference(self) -> httpx.Client:
        if self._inference is None:
            self._inference = httpx.Client(base_url=self.api_url, headers=self.headers, verify=self.verify,
                                           timeout=self.timeout, limits=httpx.Limits(max_connections=None))
        return self._inference

    def close(self) -> None:
        self.http.close()
        if self._inference is not None:
            self._inference.close()

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, path: str) -> Any:
        return check(self.http.get(path)).json()

    def client(self, model: str | None = None):
        """An `openai.OpenAI` for the appliance's inference API (pip install 'vllm-appliance-client[openai]').
        With `model`, checks first that the API serves it (NotFoundError otherwise)."""
        import openai
        if model is not None:
            self.require(model)
        return openai.OpenAI(base_url=f"{self.api_url}/v1", api_key=self.token,
                             http_client=openai.DefaultHttpxClient(verify=self.verify, timeout=self.seconds))

    def models(self) -> list[str]:
        """The names the inference API serves (GET /v1/models)."""
        return [m["id"] for m in check(self.inference.get("/v1/models")).json().get("data", [])]

    def require(self, model: str) -> None:
        names = self.models()
        if model not in names:
            raise NotFoundError(f"the appliance serves no model {model!r} (it serves {', '.join(names) or 'none'})",
                                404)

    # --- instances -----------------------------------------------------------------------------------------------
    def instances(self) -> list[dict]:
        return self._get("/api/instances")

    def instance(self, instance_id: str) -> dict:
        return self._get(f"/api/instances/{instance_id}")

    def put_instance(self, instance_id: str, body: dict) -> dict:
        return check(self.http.put(f"/api/instances/{instance_id}", json=body)).json()

    def delete_instance(self, instance_id: str) -> dict:
        return check(self.http.delete(f"/api/instances/{instance_id}")).json()

    def gpu_count(self) -> int:
        return len(self._get("/api/stats").get("gpus") or [])

    # --- LoRA ----------------------------------------------------------------------------------------------------
    def loras(self, instance_id: str) -> list[dict]:
        """The instance's adapters: name, path, static (from its `lora` field), loaded (the engine lists it)."""
        return self._get(f"/api/instances/{instance_id}/lora")["adapters"]

    def load_lora(self, instance_id: str, name: str, path: str) -> dict:
        return check(self.http.post(f"/api/instances/{instance_id}/lora", json={"name": name, "path": path})).json()

    def unload_lora(self, instance_id: str, name: str) -> dict:
        return check(self.http.delete(f"/api/instances/{instance_id}/lora/{name}")).json()

    # --- serving -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def serve(self, model: str, *, name: str | None = None, gpus: Sequence[int] | None = None,
              replicas: Replicas = 1, args: list[str] | str | None = None, env: dict[str, str] | None = None,
              lora: dict[str, str] | None = None, startup_timeout: float = 1800.0, keep: bool = False,
              progress: bool = True, id: str | None = None) -> Iterator[Served]:
        """Start `model` as `replicas` instances served under one name (`name`, default the model), wait until
        every one is ready, yield a handle; stop and delete them at the end, also on an error or Ctrl-C (unless
        `keep`). `lora`: adapters loaded at start, name -> Hub id or folder ({} for runtime loading only)."""
        served = name or model
        count = self.gpu_count() if gpus is None and replicas != 1 else 0
        plan = core.plan(model, replicas, list(gpus) if gpus is not None else None, count, id)
        created: list[str] = []
        try:
            for instance_id, share in zip(plan.ids, plan.gpus, strict=True):
                created.append(instance_id)
                self.put_instance(instance_id, core.instance_body(model, served, share, args, env, lora,
                                                                  startup_timeout))
            self._wait_ready(plan.ids, startup_timeout, progress)
            yield Served(self, served, plan.ids)
        finally:
            if not keep:
                self._remove(created, progress)

    def _wait_ready(self, ids: list[str], timeout: float, progress: bool) -> None:
        started, shown = time.monotonic(), ""
        while True:
            views = {i: self.instance(i) for i in ids}
            line = core.startup_line(views, started)
            if line.split("]", 1)[1] != shown:
                shown = line.split("]", 1)[1]
                core.say(line, progress)
            if core.startup_state(views, started, timeout):
                return
            time.sleep(0.5)

    def _remove(self, ids: list[str], progress: bool) -> None:
        for instance_id in ids:
            try:
                try:
                    self.delete_instance(instance_id)
                except httpx.TransportError:  # once more, on a fresh connection
                    self.delete_instance(instance_id)
                core.say(f"deleted instance {instance_id}", progress)
            except ApplianceError as exc:
                if exc.status != 404:
                    print(f"vllm_appliance_client: could not delete instance {instance_id}: {exc}", file=sys.stderr)
            except httpx.HTTPError as exc:
                print(f"vllm_appliance_client: could not delete instance {instance_id}: {exc}", file=sys.stderr)

    def model(self, name: str) -> Served:
        """A handle for a model the appliance already serves (no instance is created or deleted)."""
        return Served(self, name, [])

    # --- requests ------------------------------------------------------------------------------------------------
    def post(self, path: str, body: dict, index: int | None = None) -> dict:
        """POST to the inference API, retrying 503/429 after Retry-After and connections that failed."""
        attempt = 0
        while True:
            try:
                response = self.inference.post(path, json=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                delay = core.next_delay(self.retry, attempt, exc=exc, index=index)
            else:
                if response.status_code < 400:
                    return response.json()
                delay = core.next_delay(self.retry, attempt, response=response, index=index)
            time.sleep(delay)
            attempt += 1


def run_batch(count: int, call: Callable[[int], Any], concurrency: int, progress: Progress) -> list:
    """call(0..count-1) with at most `concurrency` at once; results in input order; the first error stops the rest."""
    results: list[Any] = [None] * count
    if count == 0:
        return results
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, count))) as pool:
        def one(i: int) -> None:
            results[i] = call(i)
            progress.advance()
        futures = [pool.submit(one, i) for i in range(count)]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        finally:
            for future in futures:
                future.cancel()
    return results


class Served:
    """A model the appliance serves (one name, any number of replicas): batched requests to it."""

    def __init__(self, appliance: Appliance, model: str, instances: list[str]):
        self.appliance, self.model, self.instances = appliance, model, instances

    def chat(self, conversations: Sequence[list[dict] | str], *, model: str | None = None,
             concurrency: int = core.DEFAULT_CONCURRENCY, progress: bool | None = None, return_extra: bool = False,
             **sampling) -> list:
        """One chat completion per conversation (a list of messages, or one user message as a string), in input
        order. `model`: another name to ask, e.g. a LoRA adapter. With return_extra: `Result`s."""
        target = model or self.model
        def call(i: int) -> Result:
            body = core.chat_body(target, conversations[i], sampling)
            return core.parse_result(self.appliance.post("/v1/chat/completions", body, i), chat=True)
        results = run_batch(len(conversations), call, concurrency, Progress.maybe("chat", len(conversations), progress))
        return results if return_extra else [core.plain(r) for r in results]

    def generate(self, prompts: Sequence[str], *, model: str | None = None,
                 concurrency: int = core.DEFAULT_CONCURRENCY, progress: bool | None = None,
                 return_extra: bool = False, **sampling) -> list:
        """One completion per prompt, in input order (see `chat`)."""
        target = model or self.model
        def call(i: int) -> Result:
            body = core.completion_body(target, prompts[i], sampling)
            return core.parse_result(self.appliance.post("/v1/completions", body, i), chat=False)
        results = run_batch(len(prompts), call, concurrency, Progress.maybe("generate", len(prompts), progress))
        return results if return_extra else [core.plain(r) for r in results]

    def embed(self, texts: Sequence[str], *, model: str | None = None, batch_size: int = core.EMBED_BATCH,
              concurrency: int = 8, progress: bool | None = None) -> list[list[float]]:
        """One vector per text, in input order; texts go `batch_size` to a request."""
        target, parts = model or self.model, core.chunks(list(texts), batch_size)
        bar = Progress.maybe("embed", len(parts), progress)
        def call(i: int) -> list[list[float]]:
            return core.embeddings_of(self.appliance.post("/v1/embeddings", {"model": target, "input": parts[i]}, i))
        return [vector for part in run_batch(len(parts), call, concurrency, bar) for vector in part]

    def load_lora(self, name: str, path: str) -> None:
        """Load an adapter into every replica; requests naming `name` (model=name) then use it."""
        for instance_id in self.instances:
            self.appliance.load_lora(instance_id, name, path)

    def unload_lora(self, name: str) -> None:
        for instance_id in self.instances:
            self.appliance.unload_lora(instance_id, name)

    def client(self):
        """An `openai.OpenAI` for the appliance (ask it for `model=served.model`)."""
        return self.appliance.client()


__all__ = ["Appliance", "Served", "run_batch"]
