"""POST /api/playground/chat: the portal's chat playground, relayed to the vLLM API's internal port on loopback
(where the router routes by `model`), streamed through as the engine sends it.

The browser stays on the portal's origin with its cookie (and the guard's checks, app/guard.py, as for every portal
POST); the manager adds nothing of ours upstream. Server-sent events pass chunk by chunk, unbuffered; a client that
leaves cancels the upstream request.
"""
from __future__ import annotations

from typing import Literal

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import validation

router = APIRouter(prefix="/api/playground")
UPSTREAM_TIMEOUT = httpx.Timeout(10.0, read=300.0)  # read: the longest pause between two chunks


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class ChatRequest(BaseModel):
    """What the page sends: the model's own chat template applies (/v1/chat/completions)."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=131072)
    top_p: float | None = Field(None, gt=0, le=1)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return validation.model_name(value)


@router.post("/chat")
async def chat(request: Request, body: ChatRequest):
    manager = request.app.state.manager
    payload = {**body.model_dump(exclude_none=True), "stream": True, "stream_options": {"include_usage": True}}
    http: httpx.AsyncClient = manager.fx.http
    upstream_request = http.build_request("POST", f"http://127.0.0.1:{manager.ports.api_port}/v1/chat/completions",
                                          json=payload, timeout=UPSTREAM_TIMEOUT)
    try:
        upstream = await http.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        return JSONResponse({"detail": f"the vLLM API does not answer ({type(exc).__name__}): is a model ready?"},
                            status_code=502)
    if upstream.status_code != 200:
        try:
            content = await upstream.aread()
        except httpx.HTTPError:
            content = b""
        finally:
            await upstream.aclose()
        status = upstream.status_code if 400 <= upstream.status_code < 500 else 502
        return Response(content, status_code=status,
                        media_type=upstream.headers.get("content-type", "application/json"))

    async def relay():
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            pass  # the engine went away mid-stream: the page sees the stream end without [DONE]
        finally:
            with anyio.CancelScope(shield=True):  # the client left: close the upstream request even so
                await upstream.aclose()

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
