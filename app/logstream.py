"""Live log streams (SSE): one shared tail per file fanned out to its readers, a cap per client, slow readers dropped.

Each event is one complete line; its `id` is the byte offset just after that line, so a client resumes from the
file with `Last-Event-ID` (or `?offset=`). A reader starts behind the shared tail (from its offset or near the end)
and reads the file itself until it reaches the tail; from then on it gets the tail's batches, one per poll, the
same bytes object for every reader. A reader whose unsent batches pass MAX_PENDING bytes is dropped: its stream
ends, and its EventSource reconnects with the id of the last line it got and goes on from the file.
"""
from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

from app import logs
from app.logs import MAX_CHUNK

POLL = 0.25                   # seconds between two looks at a followed file
KEEPALIVE = 15.0              # an SSE comment after this long without a line, so proxies keep the stream open
MAX_PENDING = 1024 * 1024     # bytes of batches a reader may have unsent before it is dropped
MAX_STREAMS_PER_CLIENT = 20   # open streams per client address (HTTP 429 beyond)
CATCH_UP = 64 * 1024          # bytes a reader behind the tail reads at a time (short turns on the event loop)
DROPPED = b": dropped: this reader fell behind the log; reconnect with Last-Event-ID to go on from the file\n\n"


def events(data: bytes, cursor: int, *, cut: bool = False) -> tuple[bytes, int]:
    """SSE events for the complete lines of `data` (read from byte `cursor`) and how many bytes they use.

    cut: `data` is a full chunk without any newline (a line longer than MAX_CHUNK): send it as one event anyway.
    """
    out, start = [], 0
    while (end := data.find(b"\n", start)) >= 0:
        out.append(b"id: %d\ndata: %s\n\n" % (cursor + end + 1, data[start:end].decode(errors="replace").encode()))
        start = end + 1
    if cut and start == 0 and data:
        out.append(b"id: %d\ndata: %s\n\n" % (cursor + len(data), data.decode(errors="replace").encode()))
        start = len(data)
    return b"".join(out), start


def read(path: Path, start: int, end: int) -> bytes:
    """Bytes start..end (inclusive); none when the file is gone (between a rotation's rename and its new file)."""
    try:
        return logs.read(path, start, end)
    except FileNotFoundError:
        return b""


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def line_start(path: Path, size: int, window: int) -> int:
    """The offset of the first whole line in the last `window` bytes before `size` (0 for a short file)."""
    cursor = max(0, size - window)
    if cursor:
        newline = read(path, cursor - 1, size - 1).find(b"\n")
        cursor += newline if newline >= 0 else window
    return cursor


def last_line_start(path: Path, size: int) -> int:
    """Where the file's unfinished last line starts (its size when it ends with a newline), looking back 1 MiB."""
    start = max(0, size - MAX_CHUNK)
    newline = read(path, start, size - 1).rfind(b"\n")
    return start + newline + 1 if newline >= 0 else (0 if not start else size)


class Reader:
    """One stream's queue of batches from the shared tail."""

    def __init__(self):
        self.batches: deque[bytes] = deque()
        self.pending = 0
        self.dropped = False
        self.wake = asyncio.Event()

    def push(self, batch: bytes) -> bool:
        """Queue a batch; False (and the reader dropped) when it would pass MAX_PENDING."""
        if self.pending + len(batch) > MAX_PENDING:
            self.batches.clear()
            self.dropped = True
            self.wake.set()
            return False
        self.batches.append(batch)
        self.pending += len(batch)
        self.wake.set()
        return True

    async def next(self) -> bytes | None:
        """The next batch, or None once dropped."""
        while not self.batches and not self.dropped:
            self.wake.clear()
            await self.wake.wait()
        if self.dropped:
            return None
        batch = self.batches.popleft()
        self.pending -= len(batch)
        return batch


class Tail:
    """The one task that reads a followed file; `position` is where the next unsent line starts."""

    def __init__(self, path: Path):
        self.path = path
        self.position = last_line_start(path, size_of(path))
        self.readers: set[Reader] = set()
        self.users = 0  # streams on this file, catching up or subscribed
        self.task = asyncio.create_task(self.run())

    def publish(self, batch: bytes) -> None:
        for reader in list(self.readers):
            if not reader.push(batch):
                self.readers.discard(reader)

    async def run(self) -> None:
        pending, idle = b"", 0.0  # pending: the start of an unfinished line, from self.position
        while True:
            size = size_of(self.path)
            if size < self.position + len(pending):  # rotated or truncated: the new file from its start
                self.position, pending = 0, b""
            at = self.position + len(pending)
            if size > at:
                got = read(self.path, at, min(size, at + MAX_CHUNK) - 1)
                pending += got
                batch, used = events(pending, self.position, cut=len(pending) >= MAX_CHUNK)
                pending, self.position = pending[used:], self.position + used
                if batch:
                    self.publish(batch)
                    idle = 0.0
                if len(got) == MAX_CHUNK:
                    await asyncio.sleep(0)  # more to read now: let the readers send first
                    continue
            elif idle >= KEEPALIVE:
                self.publish(b": keep-alive\n\n")
                idle = 0.0
            await asyncio.sleep(POLL)
            idle += POLL


class Streams:
    """Every open log stream of one manager: the tails by file, and the count of streams by client."""

    def __init__(self):
        self.tails: dict[Path, Tail] = {}
        self.clients: dict[str, int] = {}

    def open(self, client: str) -> bool:
        """Count a new stream for `client`; False when it has MAX_STREAMS_PER_CLIENT already."""
        if self.clients.get(client, 0) >= MAX_STREAMS_PER_CLIENT:
            return False
        self.clients[client] = self.clients.get(client, 0) + 1
        return True

    def close(self, client: str) -> None:
        self.clients[client] -= 1
        if not self.clients[client]:
            del self.clients[client]

    async def follow(self, path: Path, offset: int | None):
        """The SSE bytes of `path` from `offset` (None: from the first whole line of the last 4 KiB).

        An offset past the end of the file is one from before a rotation: the stream starts at the new file's start.
        """
        if path not in self.tails:
            self.tails[path] = Tail(path)
        tail = self.tails[path]
        tail.users += 1
        reader = None
        try:
            size = size_of(path)
            cursor = line_start(path, size, 4096) if offset is None else offset if offset <= size else 0
            while True:  # from the file until this reader reaches the shared tail
                if cursor >= tail.position:  # no await between this test and joining the tail
                    reader = Reader()
                    tail.readers.add(reader)
                    break
                data = read(path, cursor, min(tail.position, cursor + CATCH_UP) - 1)
                if b"\n" not in data:  # a line longer than a step: up to MAX_CHUNK at once, as the tail reads
                    data = read(path, cursor, min(tail.position, cursor + MAX_CHUNK) - 1)
                batch, used = events(data, cursor, cut=len(data) >= MAX_CHUNK)
                if not used:  # the file shrank under us: the tail notices and starts again from 0
                    await asyncio.sleep(POLL)
                    continue
                cursor += used
                yield batch
            while (queued := await reader.next()) is not None:
                yield queued
            yield DROPPED
        finally:
            if reader is not None:
                tail.readers.discard(reader)
            tail.users -= 1
            if not tail.users:
                tail.task.cancel()
                del self.tails[path]
