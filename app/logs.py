"""The log folder: listing, byte ranges (HTTP Range, as the llm-d launcher has it) and tails."""
from __future__ import annotations

import re
from pathlib import Path

MAX_CHUNK = 1024 * 1024  # at most 1 MiB per answer
MAX_OFFSET = 10**18 - 1  # 18 digits: past any file; a longer number is past the end, not parsed
_RANGE = re.compile(r"bytes=([0-9]+)-([0-9]*)")


def offset_value(digits: str) -> int:
    """A byte offset from its decimal digits; anything over 18 digits counts as MAX_OFFSET + 1 (past any end)."""
    return int(digits) if len(digits) <= 18 else MAX_OFFSET + 1


class RangeError(Exception):
    def __init__(self, status: int, message: str, total: int):
        super().__init__(message)
        self.status, self.message, self.total = status, message, total


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"


def byte_range(header: str | None, total: int) -> tuple[int, int, bool]:
    """(start, end inclusive, partial) for a Range header; end < start means nothing to send."""
    if header is None:
        return 0, min(total, MAX_CHUNK) - 1, False
    match = _RANGE.fullmatch(header.strip())
    if not match:
        raise RangeError(400, f"unsupported Range {_short(header)}: use bytes=START-END or bytes=START-", total)
    start = offset_value(match.group(1))
    end = offset_value(match.group(2)) if match.group(2) else start + MAX_CHUNK - 1
    if match.group(2) and end < start:
        raise RangeError(400, f"Range {_short(header)} ends before it starts", total)
    if start >= total:
        where = start if start <= MAX_OFFSET else f"{match.group(1)[:6]}... ({len(match.group(1))} digits)"
        raise RangeError(416, f"Range starts at {where}, past the end of the log ({total} bytes)", total)
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
