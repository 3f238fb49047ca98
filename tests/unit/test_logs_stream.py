"""Live log streams without a server: resumable ids, one shared tail per file, slow readers dropped, the cap."""
from __future__ import annotations

import asyncio

import pytest

from app import logstream


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch):
    monkeypatch.setattr(logstream, "POLL", 0.01)


def parse(batch: bytes) -> list[tuple[int, str]]:
    """(id, data) of each event in a batch of SSE bytes."""
    out = []
    for event in batch.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in event.splitlines() if not line.startswith(":"))
        if "id" in fields:
            out.append((int(fields["id"]), fields["data"]))
    return out


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    _left.clear()


_left: dict = {}  # the events of a batch beyond those taken, by stream


async def take(stream, count: int, timeout: float = 10) -> list[tuple[int, str]]:
    """The next `count` events of a stream, whatever its batches."""
    seen = _left.pop(stream, [])
    while len(seen) < count:
        seen += parse(await asyncio.wait_for(stream.__anext__(), timeout))
    _left[stream] = seen[count:]
    return seen[:count]


def append(path, *lines: str) -> None:
    with path.open("ab") as handle:
        handle.write("".join(f"{line}\n" for line in lines).encode())


def test_events_carry_the_offset_after_their_line_and_resume_from_it(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"one\ntwo\n")

    async def scenario():
        streams = logstream.Streams()
        stream = streams.follow(path, 0)
        assert await take(stream, 2) == [(4, "one"), (8, "two")]
        append(path, "three")
        assert await take(stream, 1) == [(14, "three")]
        await stream.aclose()
        resumed = streams.follow(path, 8)
        assert await take(resumed, 1) == [(14, "three")]
        await resumed.aclose()
    asyncio.run(scenario())


def test_without_an_offset_a_stream_starts_at_a_whole_line_near_the_end(tmp_path):
    path = tmp_path / "x.log"
    lines = [f"line {n:05d}" for n in range(2000)]  # 11 bytes each with its newline
    append(path, *lines)

    async def scenario():
        stream = logstream.Streams().follow(path, None)
        offset, data = (await take(stream, 1))[0]
        await stream.aclose()
        return offset, data
    offset, data = asyncio.run(scenario())
    assert data in lines and path.stat().st_size - offset < 4096
    assert path.read_bytes()[:offset].endswith(f"{data}\n".encode())


def test_many_streams_of_one_file_share_one_tail_and_get_the_same_bytes(tmp_path):
    path = tmp_path / "x.log"
    append(path, "old")

    async def scenario():
        streams = logstream.Streams()
        many = [streams.follow(path, path.stat().st_size) for _ in range(50)]
        starts = [asyncio.ensure_future(stream.__anext__()) for stream in many]
        await asyncio.sleep(0.05)  # every stream has joined the tail (it waits for a line)
        assert len(streams.tails) == 1 and len(streams.tails[path].readers) == 50
        append(path, "new 1", "new 2")
        batches = await asyncio.wait_for(asyncio.gather(*starts), 10)
        assert parse(batches[0]) == [(10, "new 1"), (16, "new 2")]
        assert all(batch is batches[0] for batch in batches)  # formatted once, sent to each
        for stream in many:
            await stream.aclose()
        assert not streams.tails  # the last stream closed: the tail stopped
    asyncio.run(scenario())


def test_a_reader_far_behind_the_tail_reads_the_file_then_joins_it_without_gaps(tmp_path):
    path = tmp_path / "x.log"
    append(path, *(f"line {n}" for n in range(5000)))

    async def scenario():
        streams = logstream.Streams()
        live = streams.follow(path, None)  # starts the shared tail near the end
        await take(live, 1)
        behind = streams.follow(path, 0)
        got = await take(behind, 4000)
        append(path, *(f"line {n}" for n in range(5000, 6000)))
        got += await take(behind, 2000)
        await live.aclose()
        await behind.aclose()
        return got
    got = asyncio.run(scenario())
    assert [data for _, data in got] == [f"line {n}" for n in range(6000)]
    assert got[-1][0] == path.stat().st_size


def test_a_slow_reader_is_dropped_and_resumes_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(logstream, "MAX_PENDING", 4096)
    path = tmp_path / "x.log"
    path.write_bytes(b"")

    async def scenario():
        streams = logstream.Streams()
        slow, fast = streams.follow(path, 0), streams.follow(path, 0)
        first = [asyncio.ensure_future(s.__anext__()) for s in (slow, fast)]
        await asyncio.sleep(0.05)
        append(path, "first")
        await asyncio.gather(*first)
        fast_seen = []
        for chunk in range(20):  # 20 x 1 KiB while `slow` reads nothing
            append(path, *(f"{chunk:02d} {'x' * 60}" for _ in range(16)))
            fast_seen += await take(fast, 16)
        rest = [batch async for batch in slow]  # the stream ends (what was queued for it is let go)
        assert rest == [logstream.DROPPED] and len(streams.tails[path].readers) == 1  # `fast` goes on
        last_id = 6  # the id of the last line `slow` got
        resumed = streams.follow(path, last_id)  # what an EventSource does with Last-Event-ID
        missed = await take(resumed, (path.stat().st_size - last_id) // 64)
        assert missed[-1] == fast_seen[-1]
        for stream in (fast, resumed):
            await stream.aclose()
    asyncio.run(scenario())


def test_a_rotated_log_is_followed_from_the_new_files_start(tmp_path):
    path = tmp_path / "x.log"
    append(path, "before rotation " * 10)

    async def scenario():
        streams = logstream.Streams()
        stream = streams.follow(path, path.stat().st_size)
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        path.rename(tmp_path / "x.log.1")
        append(path, "after")
        assert parse(await asyncio.wait_for(pending, 10)) == [(6, "after")]
        await stream.aclose()
        # an offset past the end comes from before a rotation: from the new file's start
        late = streams.follow(path, 10**6)
        assert await take(late, 1) == [(6, "after")]
        await late.aclose()
    asyncio.run(scenario())


def test_streams_per_client_are_capped():
    streams = logstream.Streams()
    assert all(streams.open("10.0.0.1") for _ in range(logstream.MAX_STREAMS_PER_CLIENT))
    assert not streams.open("10.0.0.1")
    assert streams.open("10.0.0.2")  # another client is not held back
    streams.close("10.0.0.1")
    assert streams.open("10.0.0.1")


def test_a_line_longer_than_a_catch_up_step_arrives_whole(tmp_path):
    path = tmp_path / "x.log"
    long = "y" * (3 * logstream.CATCH_UP)
    append(path, "short", long, "after")

    async def scenario():
        streams = logstream.Streams()
        live = streams.follow(path, path.stat().st_size)  # the tail, from the end
        pending = asyncio.ensure_future(live.__anext__())
        behind = streams.follow(path, 0)  # reads the file itself
        got = await take(behind, 3)
        append(path, long)
        assert parse(await asyncio.wait_for(pending, 10))[0][1] == long
        await live.aclose()
        await behind.aclose()
        return got
    assert [data for _, data in asyncio.run(scenario())] == ["short", long, "after"]
