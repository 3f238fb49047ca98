"""HAProxy's line per fast-path request (haproxy/haproxy.cfg.j2's log-format, from its ring `fastlog`, sent as
octet-counted frames, `<length> <line>`, over a unix stream socket the router listens on): recorded in the router's
metrics and activity log as if the router had passed the request.

A line: `<engine port> <status> <Ta ms> <Tr ms> <bytes> <termination state> <prompt tokens> <completion tokens>
<path> <model>` (`-` for a value HAProxy does not have). The time to the first token is HAProxy's time to the
response's headers (an engine sends a stream's headers before its first event); token counts come only from JSON
answers (HAProxy reads a non-streamed answer's `usage`; a stream's events pass untouched, so its counts are None).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .state import State
from .stats import Stats


@dataclass(frozen=True)
class Line:
    port: int
    status: int
    duration: float  # seconds
    ttft: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    path: str
    model: str


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None  # `-` or -1: HAProxy has no value


def parse(data: bytes) -> Line | None:
    """One log line, or None when it is not one of ours."""
    parts = data.decode(errors="replace").strip().split(" ", 9)
    if len(parts) != 10 or _int(parts[0]) is None or _int(parts[2]) is None:
        return None
    port, status, total, response, _, state, prompt, completion, path, model = parts
    code = 499 if state.startswith("C") else _int(status) or 502  # C: the client went away before the end
    first = _int(response)
    return Line(int(port), code, int(total) / 1000, None if first is None else first / 1000, _int(prompt),
                _int(completion), path, model)


def record(line: Line, state: State, stats: Stats, owners: dict[int, str]) -> None:
    instance = owners.get(line.port)
    if instance is not None:
        load = state.load(instance)
        load.sent += 1
        load.last_active = time.time()
    stats.record_done(line.model, instance, line.path, line.status, line.duration, time.time() - line.duration,
                      line.ttft, line.prompt_tokens, line.completion_tokens, fast=True)


async def listen(path: Path, state: State, stats: Stats, owners: dict[int, str]) -> asyncio.Server:
    """Listen on the log socket (mode 0600) and record every line HAProxy sends."""
    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = await reader.readuntil(b" ")
                line = parse(await reader.readexactly(int(length)))
                if line is not None:
                    record(line, state, stats, owners)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # HAProxy went away (it connects again), or sent what is no frame of ours
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(read, str(path))
    os.chmod(path, 0o600)
    return server
