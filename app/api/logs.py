"""/api/logs and /api/instances/{id}/logs: list, read by Range or offset, download, and stream a log."""
from __future__ import annotations

import os
import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from app import logs, logstream
from app.api.instances import error

router = APIRouter(prefix="/api")
Offset = Annotated[int | None, Query(ge=0, le=logs.MAX_OFFSET, description="a byte offset (at most 18 digits)")]


def log_response(path, range_header: str | None, offset: int | None, *, empty_416: bool = False) -> Response:
    """A log's bytes: all of it (at most 1 MiB, 200), or a Range / offset (206); a log not written yet is empty."""
    total = path.stat().st_size if path.exists() else 0
    if offset is not None:
        range_header = f"bytes={offset}-"
    try:
        start, end, partial = logs.byte_range(range_header, total)
    except logs.RangeError as exc:
        headers = {"Content-Range": f"bytes */{exc.total}"} if exc.status == 416 else {}
        if empty_416 and exc.status == 416:  # the llm-d contract: an empty body
            return Response(b"", status_code=416, headers=headers)
        return error(exc.status, exc.message, **headers)
    headers = {"Accept-Ranges": "bytes", "X-Log-Size": str(total)}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    return Response(logs.read(path, start, end), status_code=206 if partial else 200,
                    media_type="application/octet-stream", headers=headers)


@router.get("/instances/{instance_id}/logs")
def instance_logs(request: Request, instance_id: str, range: str | None = Header(None),
                  offset: Offset = None):
    path = logs.find(request.app.state.settings.log_dir, instance_id)
    if instance_id not in request.app.state.manager.known():
        return error(404, f"no instance {instance_id!r}")
    return log_response(path or request.app.state.settings.log_dir / f"{instance_id}.log", range, offset)


@router.get("/logs")
def list_logs(request: Request) -> list[dict]:
    return logs.listing(request.app.state.settings.log_dir)


@router.get("/logs/{name}")
def get_log(request: Request, name: str, range: str | None = Header(None), offset: Offset = None):
    path = logs.find(request.app.state.settings.log_dir, name)
    return log_response(path, range, offset) if path else error(404, f"no log {name!r}")


@router.get("/logs/{name}/download")
def download_log(request: Request, name: str):
    """The whole file as it was when the request came: a log still being written does not outgrow its length."""
    path = logs.find(request.app.state.settings.log_dir, name)
    if path is None:
        return error(404, f"no log {name!r}")
    handle = path.open("rb")
    size = os.fstat(handle.fileno()).st_size

    def chunks():
        with handle:
            left = size
            while left and (chunk := handle.read(min(65536, left))):
                left -= len(chunk)
                yield chunk

    return StreamingResponse(chunks(), media_type="text/plain", headers={
        "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{path.name}"'})


def client_key(request: Request) -> str:
    """Who opened a stream, for the cap: the address Caddy saw (the last entry of the X-Forwarded-For it sets)."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"


class EventStream(StreamingResponse):
    """An SSE response that gives its client's slot back when it ends, however it ends."""

    def __init__(self, content, release):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


@router.get("/logs/{name}/stream", responses={429: {"description": "this client has too many open streams"}})
async def stream_log(request: Request, name: str, offset: Offset = None, last_event_id: str | None = Header(None)):
    """Live tail over SSE; each event's id is the byte offset after its line (resume with ?offset= or Last-Event-ID).

    Last-Event-ID wins: a browser's EventSource reconnects to the same URL, `?offset=` included, and sends the
    id of the last event it got, so the stream goes on from there instead of repeating lines. An offset past the
    end of the log is one from before a rotation: the stream starts at the current file's beginning."""
    path = logs.find(request.app.state.settings.log_dir, name)
    if path is None:
        return error(404, f"no log {name!r}")
    if last_event_id and last_event_id.strip():
        if not re.fullmatch(r"[0-9]{1,18}", last_event_id.strip()):
            return error(400, "Last-Event-ID must be the id of an event of this stream: a byte offset of at most "
                              "18 digits")
        offset = int(last_event_id)
    state = request.app.state
    if not hasattr(state, "log_streams"):
        state.log_streams = logstream.Streams()
    streams, client = state.log_streams, client_key(request)
    if not streams.open(client):
        return error(429, f"too many log streams from {client}: at most {logstream.MAX_STREAMS_PER_CLIENT} at once; "
                          "close one (a browser tab on a log page) and try again")
    return EventStream(streams.follow(path, offset), lambda: streams.close(client))
