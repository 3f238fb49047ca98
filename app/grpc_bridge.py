"""vllm-bootstrap's gRPC InferenceService on the API port + 1: each call becomes the engine's own OpenAI requests.

The published client dials <API port + 1> in plaintext HTTP/2 (it cannot do TLS), so this server listens there
itself, on every address (docs/security.md; BOOTSTRAP_GRPC=false turns it off). It runs in the manager's process
(app/main.py starts it; one Python interpreter less in the control plane). It authenticates each call like
Caddy does the API port: `authorization: Bearer <admin token or an API_KEYS key>`. It asks the manager's REST
API (on loopback, like any client of it) which instance a launch is and whether it is ready, then calls that
engine on its loopback port: /v1/embeddings for Embed, /v1/completions for Complete, a batch sent as concurrent
requests. A stream sends one whole result per input, in input order.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import sys
import time
from collections.abc import AsyncIterator

import grpc
import httpx

from app import caddy_config, credentials
from app.portal_config import Ports
from app.proto import inference_pb2 as pb
from app.settings import Settings

SERVICE = "vllm_bootstrap.InferenceService"
EMBED_BATCH = 64  # texts per /v1/embeddings request
CONCURRENT = 32  # engine requests in flight per call
MAX_REQUEST = 256 * 1024 * 1024  # bytes of one request: read before its key is checked (docs/security.md)
KEYS_TTL = 5.0  # seconds the accepted keys are remembered (a key change in /etc/environment is seen after this)


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _say(message: str) -> None:
    print(f"grpc bridge: {message}", file=sys.stderr, flush=True)


class Bridge:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.manager = f"http://127.0.0.1:{Ports.read(settings.portal_yaml).manager_port}"
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10),
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.keys: tuple[float, list[str]] = (0.0, [])

    # --- who may call ----------------------------------------------------------------------------------------
    def accepted(self) -> list[str]:
        """The admin token(s) and the inference keys, as Caddy's configuration has them now."""
        if time.monotonic() - self.keys[0] > KEYS_TTL:
            now = caddy_config.current(self.settings)
            admins = credentials.bearer_tokens(now, credentials.resolve_token(now)[0])
            self.keys = (time.monotonic(), admins + credentials.api_keys(now, admins))
        return self.keys[1]

    def authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if not self.settings.enable_auth:
            return
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        if isinstance(sent, bytes) or not sent.startswith("Bearer "):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "send `authorization: Bearer <token or API key>`")
        key = sent.removeprefix("Bearer ").encode()
        if not any(hmac.compare_digest(key, k.encode()) for k in self.accepted()):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not the admin token or an API key")

    # --- which engine ------------------------------------------------------------------------------------------
    async def engine(self, launch_id: str, task: str) -> tuple[str, str]:
        """The engine's base URL and served model name for a ready launch of this task."""
        if not launch_id:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "launch_id is empty")
        status = await self.http.get(f"{self.manager}/status/{launch_id}")
        if status.status_code == 404:
            raise Refusal(grpc.StatusCode.NOT_FOUND, f"no launch {launch_id[:80]!r}")
        status.raise_for_status()
        launch = status.json()
        if launch["task"] != task:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                          f"launch {launch_id} was launched with task {launch['task']!r}, not {task!r}")
        if launch["state"] != "ready":
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"launch {launch_id} is {launch['state']}, not ready")
        instance = (await self.http.get(f"{self.manager}/api/instances/{launch_id}")).raise_for_status().json()
        return f"http://127.0.0.1:{instance['port']}", instance["served_model_name"]

    async def post(self, url: str, body: dict) -> dict:
        try:
            answer = await self.http.post(url, json=body)
        except httpx.HTTPError as exc:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, f"the engine did not answer: {exc!r}") from None
        if answer.status_code >= 400:
            try:
                message = answer.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = answer.text[:500]
            code = grpc.StatusCode.INVALID_ARGUMENT if answer.status_code == 400 else grpc.StatusCode.INTERNAL
            raise Refusal(code, f"the engine answered {answer.status_code}: {message}")
        return answer.json()

    # --- the calls ---------------------------------------------------------------------------------------------
    async def embeddings(self, request: pb.EmbedRequest) -> list[asyncio.Task]:
        """One task per batch of texts, each giving that batch's vectors."""
        if not request.texts:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")
        base, model = await self.engine(request.launch_id, "embed")
        gate = asyncio.Semaphore(CONCURRENT)

        async def batch(texts: list[str]) -> list[pb.Embedding]:
            async with gate:
                answer = await self.post(f"{base}/v1/embeddings", {"model": model, "input": texts, **PACKED})
            return [embedding(d["embedding"]) for d in sorted(answer["data"], key=lambda d: d["index"])]
        texts = list(request.texts)
        return [asyncio.ensure_future(batch(texts[i:i + EMBED_BATCH])) for i in range(0, len(texts), EMBED_BATCH)]

    async def completions(self, request: pb.CompleteRequest) -> list[asyncio.Task]:
        """One task per prompt (the engine batches them itself), each giving its Completion."""
        if not request.prompts:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "prompts is empty")
        base, model = await self.engine(request.launch_id, "generate")
        body = sampling(request)
        gate = asyncio.Semaphore(CONCURRENT)

        async def one(prompt: str) -> pb.Completion:
            async with gate:
                answer = await self.post(f"{base}/v1/completions", {**body, "model": model, "prompt": prompt})
            usage = answer.get("usage") or {}
            return pb.Completion(text=answer["choices"][0]["text"], prompt_tokens=usage.get("prompt_tokens", 0),
                                 completion_tokens=usage.get("completion_tokens", 0))
        return [asyncio.ensure_future(one(p)) for p in request.prompts]

    async def Embed(self, request, context):  # noqa: N802 (the RPC's name)
        tasks = await self.guarded(context, self.embeddings(request))
        parts = await self.guarded(context, _all(tasks))
        return pb.EmbedResponse(embeddings=[e for part in parts for e in part])

    async def EmbedStream(self, request, context) -> AsyncIterator[pb.Embedding]:  # noqa: N802
        tasks = await self.guarded(context, self.embeddings(request))
        try:
            for task in tasks:
                for vector in await self.guarded(context, task):
                    yield vector
        finally:  # an error, or the caller gone: the rest is not wanted
            for task in tasks:
                task.cancel()

    async def Complete(self, request, context):  # noqa: N802
        tasks = await self.guarded(context, self.completions(request))
        return pb.CompleteResponse(completions=await self.guarded(context, _all(tasks)))

    async def CompleteStream(self, request, context) -> AsyncIterator[pb.Completion]:  # noqa: N802
        tasks = await self.guarded(context, self.completions(request))
        try:
            for task in tasks:
                yield await self.guarded(context, task)
        finally:
            for task in tasks:
                task.cancel()

    async def guarded(self, context, work):
        """`work` after the caller is authenticated; a Refusal becomes the call's status."""
        try:
            self.authenticate(context)
            return await work
        except Refusal as refusal:
            if asyncio.iscoroutine(work):
                work.close()
            await context.abort(refusal.code, refusal.message)
        except httpx.HTTPError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the manager did not answer: {exc!r}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"an answer this bridge cannot read: {exc!r}")


async def _all(tasks: list[asyncio.Task]) -> list:
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


# Vectors as little-endian float32 bytes in base64 (vLLM's and OpenAI's `base64` format): that is the wire form of
# a packed `repeated float`, so an Embedding is read from them without a float ever being parsed or built in Python.
PACKED = {"encoding_format": "base64", "embed_dtype": "float32", "endianness": "little"}


def embedding(value: str | list[float]) -> pb.Embedding:
    if not isinstance(value, str):  # an engine that answers with floats anyway
        return pb.Embedding(values=value)
    raw = base64.b64decode(value)
    size, length = bytearray(), len(raw)
    while True:  # the length as a protobuf varint
        size.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return pb.Embedding.FromString(b"\x0a" + bytes(size) + raw)  # field 1 (values), length-delimited


def sampling(request: pb.CompleteRequest) -> dict:
    """max_tokens, temperature, top_p and guided decoding as vLLM's /v1/completions takes them."""
    body: dict = {}
    if request.max_tokens > 0:
        body["max_tokens"] = request.max_tokens
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    if request.HasField("top_p"):
        body["top_p"] = request.top_p
    if request.HasField("guided_decoding"):
        guided = request.guided_decoding
        kind = guided.WhichOneof("kind")
        if guided.choice:
            body["structured_outputs"] = {"choice": list(guided.choice)}
        elif kind:
            body["structured_outputs"] = {{"json_schema": "json"}.get(kind, kind): getattr(guided, kind)}
    return body


def handlers(bridge: Bridge) -> grpc.GenericRpcHandler:
    def unary(call, request, reply):
        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request.FromString,
                                                   response_serializer=reply.SerializeToString)

    def stream(call, request, reply):
        return grpc.unary_stream_rpc_method_handler(call, request_deserializer=request.FromString,
                                                    response_serializer=reply.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Embed": unary(bridge.Embed, pb.EmbedRequest, pb.EmbedResponse),
        "Complete": unary(bridge.Complete, pb.CompleteRequest, pb.CompleteResponse),
        "EmbedStream": stream(bridge.EmbedStream, pb.EmbedRequest, pb.Embedding),
        "CompleteStream": stream(bridge.CompleteStream, pb.CompleteRequest, pb.Completion)})


def port(settings: Settings) -> int | None:
    """API port + 1 (where the client dials), or None without a vLLM API entry in portal.yaml."""
    api = Ports.read(settings.portal_yaml).api
    return api.external_port + 1 if api else None


async def start(settings: Settings) -> grpc.aio.Server | None:
    """The server, started on the caller's loop (the manager's: app/main.py), or None when it cannot serve (said in
    the log: the rest of the appliance comes up all the same)."""
    listen = port(settings)
    if listen is None:
        _say("no `vLLM API` entry in PORTAL_CONFIG: nothing to serve")
        return None
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1),
                                      ("grpc.max_receive_message_length", MAX_REQUEST),
                                      ("grpc.so_reuseport", 0)])  # another process on this port: an error, not a share
    server.add_generic_rpc_handlers((handlers(Bridge(settings)),))
    try:
        server.add_insecure_port(f"0.0.0.0:{listen}")
    except RuntimeError as exc:
        _say(f"ERROR: cannot listen on port {listen} (the vLLM API's port + 1, where vllm-bootstrap's client dials): "
             f"{exc}; free that port and restart the manager, or set BOOTSTRAP_GRPC=false")
        return None
    await server.start()
    _say(f"vllm-bootstrap InferenceService on port {listen} (plaintext HTTP/2)")
    return server
