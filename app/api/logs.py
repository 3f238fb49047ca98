"""/api/logs and /api/instances/{id}/logs: list, read by Range or offset, download, and stream a log."""
from __future__ import annotations

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from app import logs
from app.api.instances import error

router = APIRouter(prefix="/api")


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
                  offset: int | None = Query(None, ge=0)):
    path = logs.find(request.app.state.settings.log_dir, instance_id)
    if instance_id not in request.app.state.manager.known():
        return error(404, f"no instance {instance_id!r}")
    return log_response(path or request.app.state.settings.log_dir / f"{instance_id}.log", range, offset)


@router.get("/logs")
def list_logs(request: Request) -> list[dict]:
    return logs.listing(request.app.state.settings.log_dir)


@router.get("/logs/{name}")
def get_log(request: Request, name: str, range: str | None = Header(None), offset: int | None = Query(None, ge=0)):
    path = logs.find(request.app.state.settings.log_dir, name)
    return log_response(path, range, offset) if path else error(404, f"no log {name!r}")


@router.get("/logs/{name}/download")
def download_log(request: Request, name: str):
    path = logs.find(request.app.state.settings.log_dir, name)
    return FileResponse(path, filename=path.name, media_type="text/plain") if path else error(404, f"no log {name!r}")


@router.get("/logs/{name}/stream")
def stream_log(request: Request, name: str, offset: int | None = Query(None, ge=0),
               last_event_id: str | None = Header(None)):
    """Live tail over SSE; each event's id is the byte offset after its line (resume with ?offset= or Last-Event-ID).

    Last-Event-ID wins: a browser's EventSource reconnects to the same URL, `?offset=` included, and sends the
    id of the last event it got, so the stream goes on from there instead of repeating lines."""
    path = logs.find(request.app.state.settings.log_dir, name)
    if path is None:
        return error(404, f"no log {name!r}")
    if last_event_id and last_event_id.isdigit():
        offset = int(last_event_id)
    return StreamingResponse(logs.follow(path, offset), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
