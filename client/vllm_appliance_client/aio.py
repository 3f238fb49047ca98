"""The asyncio twin of sync.py: `AsyncAppliance` and `AsyncServed`, the same methods awaited."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx

from vllm_appliance_client import core
from vllm_appliance_client.core import Progress, Replicas, Result, RetryPolicy
from vllm_appliance_client.errors import ApplianceError, NotFoundError, check


class AsyncAppliance:
    """See `Appliance`: the same arguments and methods, as coroutines; `serve` is an async context manager."""

    def __init__(self, url: str, token: str, *, verify: bool | str | ssl.SSLContext = True, api_url: str | None = None,
                 timeout: float = 600.0, retries: int = core.DEFAULT_RETRIES):
        self.url, self.token = url.rstrip("/"), token
        self.verify = core.ssl_verify(verify)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.seconds, self.timeout = timeout, httpx.Timeout(timeout, connect=30.0)
        self.retry = RetryPolicy(retries)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, verify=self.verify,
                                      timeout=self.timeout)
        self._api_url = api_url.rstrip("/") if api_url else None
        self._inference: httpx.AsyncClient | None = None

    # --- connection ----------------------------------------------------------------------------------------------
    async def api_url(self) -> str:
        if self._api_url is None:
            self._api_url = core.api_url_from(self.url, await self._get("/api/apps"))
        return self._api_url

    async def inference(self) -> httpx.AsyncClient:
        if self._inference is None:
            self._inference = httpx.AsyncClient(base_url=await self.api_url(), headers=self.headers,
                                                verify=self.verify, timeout=self.timeout,
                                                limits=httpx.Limits(max_connections=None))
        return self._inference

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._inference is not None:
            await self._inference.aclose()

    async def __aenter__(self) -> AsyncAppliance:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _get(self, path: str) -> Any:
        return check(await self.http.get(path)).json()

    async def client(self, model: str | None = None):
        """An `openai.AsyncOpenAI` for the appliance's inference API; with `model`, checks first that it is served."""
        import openai
        if model is not None:
            await self.require(model)
        return openai.AsyncOpenAI(base_url=f"{await self.api_url()}/v1", api_key=self.token,
                                  http_client=openai.DefaultAsyncHttpxClient(verify=self.verify,
                                                                                            timeout=self.seconds))

    async def models(self) -> list[str]:
        answer = check(await (await self.inference()).get("/v1/models"))
        return [m["id"] for m in answer.json().get("data", [])]

    async def require(self, model: str) -> None:
        names = await self.models()
        if model not in names:
            raise NotFoundError(f"the appliance serves no model {model!r} (it serves {', '.join(names) or 'none'})",
                                404)

    # --- instances -----------------------------------------------------------------------------------------------
    async def instances(self) -> list[dict]:
        return await self._get("/api/instances")

    async def instance(self, instance_id: str) -> dict:
        return await self._get(f"/api/instances/{instance_id}")

    async def put_instance(self, instance_id: str, body: dict) -> dict:
        return check(await self.http.put(f"/api/instances/{instance_id}", json=body)).json()

    async def delete_instance(self, instance_id: str) -> dict:
        return check(await self.http.delete(f"/api/instances/{instance_id}")).json()

    async def gpu_count(self) -> int:
        return len((await self._get("/api/stats")).get("gpus") or [])

    # --- LoRA ----------------------------------------------------------------------------------------------------
    async def loras(self, instance_id: str) -> list[dict]:
        return (await self._get(f"/api/instances/{instance_id}/lora"))["adapters"]

    async def load_lora(self, instance_id: str, name: str, path: str) -> dict:
        answer = await self.http.post(f"/api/instances/{instance_id}/lora", json={"name": name, "path": path})
        return check(answer).json()

    async def unload_lora(self, instance_id: str, name: str) -> dict:
        return check(await self.http.delete(f"/api/instances/{instance_id}/lora/{name}")).json()

    # --- serving -------------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serve(self, model: str, *, name: str | None = None, gpus: Sequence[int] | None = None,
                    replicas: Replicas = 1, args: list[str] | str | None = None, env: dict[str, str] | None = None,
                    lora: dict[str, str] | None = None, startup_timeout: float = 1800.0, keep: bool = False,
                    progress: bool = True, id: str | None = None) -> AsyncIterator[AsyncServed]:
        """See `Appliance.serve`. The instances are deleted also when the task is cancelled."""
        served = name or model
        count = await self.gpu_count() if gpus is None and replicas != 1 else 0
        plan = core.plan(model, replicas, list(gpus) if gpus is not None else None, count, id)
        created: list[str] = []
        try:
            for instance_id, share in zip(plan.ids, plan.gpus, strict=True):
                created.append(instance_id)
                await self.put_instance(instance_id, core.instance_body(model, served, share, args, env, lora,
                                                                        startup_timeout))
            await self._wait_ready(plan.ids, startup_timeout, progress)
            yield AsyncServed(self, served, plan.ids)
        finally:
            if not keep:
                await asyncio.shield(self._remove(created, progress))

    async def _wait_ready(self, ids: list[str], timeout: float, progress: bool) -> None:
        started, shown = time.monotonic(), ""
        while True:
            views = dict(zip(ids, await asyncio.gather(*(self.instance(i) for i in ids)), strict=True))
            line = core.startup_line(views, started)
            if line.split("]", 1)[1] != shown:
                shown = line.split("]", 1)[1]
                core.say(line, progress)
            if core.startup_state(views, started, timeout):
                return
            await asyncio.sleep(0.5)

    async def _remove(self, ids: list[str], progress: bool) -> None:
        for instance_id in ids:
            try:
                try:
                    await self.delete_instance(instance_id)
                except httpx.TransportError:  # once more, on a fresh connection
                    await self.delete_instance(instance_id)
                core.say(f"deleted instance {instance_id}", progress)
            except ApplianceError as exc:
                if exc.status != 404:
                    print(f"vllm_appliance_client: could not delete instance {instance_id}: {exc}", file=sys.stderr)
            except httpx.HTTPError as exc:
                print(f"vllm_appliance_client: could not delete instance {instance_id}: {exc}", file=sys.stderr)

    def model(self, name: str) -> AsyncServed:
        return AsyncServed(self, name, [])

    # --- requests ------------------------------------------------------------------------------------------------
    async def post(self, path: str, body: dict, index: int | None = None) -> dict:
        client, attempt = await self.inference(), 0
        while True:
            try:
                response = await client.post(path, json=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                delay = core.next_delay(self.retry, attempt, exc=exc, index=index)
            else:
                if response.status_code < 400:
                    return response.json()
                delay = core.next_delay(self.retry, attempt, response=response, index=index)
            await asyncio.sleep(delay)
            attempt += 1


async def run_batch(count: int, call: Callable[[int], Awaitable[Any]], concurrency: int, progress: Progress) -> list:
    """call(0..count-1) with at most `concurrency` at once; results in input order; the first error cancels the rest."""
    results: list[Any] = [None] * count
    if count == 0:
        return results
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int) -> None:
        async with gate:
            results[i] = await call(i)
        progress.advance()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t in done and not t.cancelled() and t.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


class AsyncServed:
    """See `Served`: the same batched methods, awaited."""

    def __init__(self, appliance: AsyncAppliance, model: str, instances: list[str]):
        self.appliance, self.model, self.instances = appliance, model, instances

    async def chat(self, conversations: Sequence[list[dict] | str], *, model: str | None = None,
                   concurrency: int = core.DEFAULT_CONCURRENCY, progress: bool | None = None,
                   return_extra: bool = False, **sampling) -> list:
        target = model or self.model
        async def call(i: int) -> Result:
            body = core.chat_body(target, conversations[i], sampling)
            return core.parse_result(await self.appliance.post("/v1/chat/completions", body, i), chat=True)
        results = await run_batch(len(conversations), call, concurrency,
                                  Progress.maybe("chat", len(conversations), progress))
        return results if return_extra else [core.plain(r) for r in results]

    async def generate(self, prompts: Sequence[str], *, model: str | None = None,
                       concurrency: int = core.DEFAULT_CONCURRENCY, progress: bool | None = None,
                       return_extra: bool = False, **sampling) -> list:
        target = model or self.model
        async def call(i: int) -> Result:
            body = core.completion_body(target, prompts[i], sampling)
            return core.parse_result(await self.appliance.post("/v1/completions", body, i), chat=False)
        results = await run_batch(len(prompts), call, concurrency, Progress.maybe("generate", len(prompts), progress))
        return results if return_extra else [core.plain(r) for r in results]

    async def embed(self, texts: Sequence[str], *, model: str | None = None, batch_size: int = core.EMBED_BATCH,
                    concurrency: int = 8, progress: bool | None = None) -> list[list[float]]:
        target, parts = model or self.model, core.chunks(list(texts), batch_size)
        async def call(i: int) -> list[list[float]]:
            body = {"model": target, "input": parts[i]}
            return core.embeddings_of(await self.appliance.post("/v1/embeddings", body, i))
        done = await run_batch(len(parts), call, concurrency, Progress.maybe("embed", len(parts), progress))
        return [vector for part in done for vector in part]

    async def load_lora(self, name: str, path: str) -> None:
        for instance_id in self.instances:
            await self.appliance.load_lora(instance_id, name, path)

    async def unload_lora(self, name: str) -> None:
        for instance_id in self.instances:
            await self.appliance.unload_lora(instance_id, name)

    async def client(self):
        return await self.appliance.client()
