"""The log folder: listing, byte ranges (HTTP Range, as the llm-d launcher has it), tails and live streams."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

MAX_CHUNK = 1024 * 1024  # at most 1 MiB per answer
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeError(Exception):
    def __init__(self, status: int, message: str, total: int):
        super().__init__(message)
        self.status, self.message, self.total = status, message, total


def byte_range(header: str | None, total: int) -> tuple[int, int, bool]:
    """(start, end inclusive, partial) for a Range header; end < start means nothing to send."""
    if header is None:
        return 0, min(total, MAX_CHUNK) - 1, False
    match = _RANGE.fullmatch(header.strip())
    if not match:
        raise RangeError(400, f"unsupported Range {header!r}: use bytes=START-END or bytes=START-", total)
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else start + MAX_CHUNK - 1
    if match.group(2) and end < start:
        raise RangeError(400, f"Range {header!r} ends before it starts", total)
    if start >= total:
        raise RangeError(416, f"Range starts at {start}, past the end of the log ({total} bytes)", total)
    return start, min(end, total - 1, start + MAX_CHUNK - 1), True


def read(path: Path, start: int, end: int) -> bytes:
    if end < start:
        return b""
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start + 1)


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines (reads only the last 64 KiB, whatever the file's size)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-count:]


ROTATED = re.compile(r".+\.log\.[0-9]+")  # supervisor's older parts: vllm.log.1 (newest) .. vllm.log.3


def listing(folder: Path) -> list[dict]:
    """Every log: `vllm` for vllm.log, then its rotated parts by their file names (`vllm.log.1`, ...)."""
    def part(path: Path) -> tuple[str, int]:
        base, number = path.name.rsplit(".", 1)
        return base, int(number)

    files = sorted(folder.glob("*.log")) + sorted((p for p in folder.iterdir() if ROTATED.fullmatch(p.name)), key=part)
    return [{"name": p.stem if p.suffix == ".log" else p.name, "file": p.name, "size": p.stat().st_size,
             "modified": p.stat().st_mtime} for p in files]


def remove(folder: Path, name: str) -> None:
    """A program's log and its rotated parts (`name.log`, `name.log.1`, ...)."""
    for path in [folder / f"{name}.log", *folder.glob(f"{name}.log.*")]:
        if path.name == f"{name}.log" or ROTATED.fullmatch(path.name):
            path.unlink(missing_ok=True)


def find(folder: Path, name: str) -> Path | None:
    """The log called `name` (program name or file name) in the folder; never a path outside it."""
    for candidate in (f"{name}.log", name):
        if "/" not in candidate and candidate not in (".", "..") and (folder / candidate).is_file():
            return folder / candidate
    return None


async def follow(path: Path, offset: int | None, poll: float = 0.25, keepalive: float = 15.0):
    """Server-sent events with each new complete line; its `id` is the byte offset just after it, to resume from.

    offset None: start at the first whole line of the last 4 KiB of the file. A file that shrinks (rotation) is read from its start.
    """
    cursor = max(0, path.stat().st_size - 4096) if offset is None else offset  # start of `pending`
    if offset is None and cursor:  # the tail starts at a line's beginning, not halfway through one
        newline = read(path, cursor - 1, cursor + 4095).find(b"\n")
        cursor += newline if newline >= 0 else 4096
    pending, idle = b"", 0.0
    while True:
        size = path.stat().st_size if path.exists() else 0
        if size < cursor + len(pending):
            cursor, pending = 0, b""
        position = cursor + len(pending)
        if size > position:
            pending += read(path, position, min(size, position + MAX_CHUNK) - 1)
            *lines, pending = pending.split(b"\n")
            for line in lines:
                cursor += len(line) + 1
                yield f"id: {cursor}\ndata: {line.decode(errors='replace')}\n\n"
            idle = 0.0
        else:
            if idle >= keepalive:
                yield ": keep-alive\n\n"
                idle = 0.0
            await asyncio.sleep(poll)
            idle += poll
