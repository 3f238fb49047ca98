"""Logs on the booted appliance, through Caddy: live streams (one shared tail, a cap per client, slow readers
dropped), downloads of a log being written, and offsets of thousands of digits."""
from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from app import logstream
from tests.appliance import Appliance

LINE = "x" * 90  # with "NNNNNNN " in front and its newline: 99 bytes a line


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """An appliance without an engine; tests write their own logs into its log folder."""
    app = Appliance(tmp_path_factory.mktemp("logs"), {"VLLM_MODEL": ""})
    app.start()
    yield app
    app.stop()


def log_dir(app: Appliance) -> Path:
    return app.root / "var/log/portal"


def write_lines(path: Path, first: int, count: int) -> None:
    with path.open("a") as handle:
        handle.write("".join(f"{n:07d} {LINE}\n" for n in range(first, first + count)))


def wait_for(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def read_until(lines, marker: str) -> str:
    """Read a stream's lines up to the data line holding `marker`; the last id seen before it."""
    last = ""
    for line in lines:
        if line.startswith("id: "):
            last = line[4:]
        elif line.startswith("data: ") and marker in line:
            return last
    raise AssertionError(f"the stream ended before {marker!r}")


def manager_reads(app: Appliance) -> int:
    """Bytes the manager process has read so far (files and sockets alike: /proc/PID/io rchar)."""
    pid = int(app.supervisorctl("pid", "manager").stdout.strip())
    return int(dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())["rchar"])


def open_streams(stack: contextlib.ExitStack, client: httpx.Client, url: str, count: int, **headers) -> list:
    streams = []
    for _ in range(count):
        response = stack.enter_context(client.stream("GET", url, headers=headers))
        assert response.status_code == 200, response.read()
        streams.append(response.iter_lines())
    return streams


def test_many_streams_of_a_log_share_one_reader_of_its_file(box):
    path = log_dir(box) / "shared.log"
    write_lines(path, 0, 10)
    count, size = 20, 400_000
    with box.client(timeout=30) as client, contextlib.ExitStack() as stack:
        streams = open_streams(stack, client, box.portal_url("/api/logs/shared/stream"), count)
        path.open("a").write("ready\n")
        for lines in streams:  # every stream is following the file live
            read_until(lines, "ready")
        before, start = manager_reads(box), path.stat().st_size
        write_lines(path, 10, size // 99)
        path.open("a").write("done\n")
        for lines in streams:
            read_until(lines, "done")
        read, written = manager_reads(box) - before, path.stat().st_size - start
    # one shared tail reads the new bytes once; a reader per stream would read them `count` times
    assert written <= read < 4 * written, (read, written)


def test_streams_per_client_are_capped_with_a_clear_429(box):
    path = log_dir(box) / "capped.log"
    write_lines(path, 0, 10)
    url = box.portal_url("/api/logs/capped/stream")
    cap = logstream.MAX_STREAMS_PER_CLIENT
    verify = ssl.create_default_context(cafile=str(box.cert))
    headers = {"Authorization": f"Bearer {box.token}"}
    with box.client() as client, contextlib.ExitStack() as stack:
        open_streams(stack, client, url, cap)
        refused = client.get(url, headers={"X-Forwarded-For": "10.9.8.7"})  # Caddy puts the address it saw
        assert refused.status_code == 429
        assert f"at most {cap}" in refused.json()["detail"] and "127.0.0.1" in refused.json()["detail"]
        # another client (another source address) is not held back by this one's streams
        other = httpx.Client(transport=httpx.HTTPTransport(verify=verify, local_address="127.0.0.2"),
                             headers=headers, timeout=10)
        with other, other.stream("GET", url) as response:
            assert response.status_code == 200
    # the streams closed: their slots are free again (once Caddy has passed the disconnects on)
    with box.client() as client:
        def accepted():
            with client.stream("GET", url) as response:
                return response.status_code == 200
        with contextlib.ExitStack() as stack:
            open_streams(stack, client, url, cap - 1)
            wait_for(accepted)


def test_a_reader_that_falls_behind_is_dropped_and_resumes_from_the_file(box):
    path = log_dir(box) / "flood.log"
    write_lines(path, 0, 10)
    verify = ssl.create_default_context(cafile=str(box.cert))
    host, port = "127.0.0.1", box.portal_port
    # a client that reads nothing, with a small receive buffer: the manager's queue for it fills
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((host, port))
    slow = verify.wrap_socket(raw, server_hostname=host)
    slow.sendall(f"GET /api/logs/flood/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"Authorization: Bearer {box.token}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += slow.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    # much more than every buffer on the way (client, Caddy, the manager's socket) and the reader's queue hold
    total = 0
    while total < 48 * 1024 * 1024:
        write_lines(path, total // 99, 10_000)
        total += 10_000 * 99
    slow.settimeout(30)
    received, deadline = b"", time.monotonic() + 120
    with slow:
        while not received.endswith(b"0\r\n\r\n"):  # the end of the chunked body: the manager ended the stream
            assert time.monotonic() < deadline and len(received) < total, "the stream went on: not dropped"
            chunk = slow.recv(1 << 20)
            assert chunk, "connection closed before the stream ended"
            received += chunk
    assert logstream.DROPPED.strip().decode() in received.decode(errors="replace")
    ids = [int(line[4:]) for line in received.decode(errors="replace").splitlines() if line.startswith("id: ")]
    assert ids and ids[-1] < path.stat().st_size
    # as an EventSource reconnects: Last-Event-ID, and it goes on with the next line of the file
    with box.client(timeout=30) as client, client.stream(
            "GET", box.portal_url("/api/logs/flood/stream"), headers={"Last-Event-ID": str(ids[-1])}) as response:
        lines = response.iter_lines()
        first_id = next(line for line in lines if line.startswith("id: "))
        data = next(lines)
    with path.open("rb") as handle:
        handle.seek(ids[-1])
        expected = handle.readline()
    assert int(first_id[4:]) == ids[-1] + len(expected) and data == f"data: {expected.decode().rstrip()}"


def test_a_log_being_written_downloads_as_it_was_when_asked(box):
    path = log_dir(box) / "growing.log"
    write_lines(path, 0, 80_000)  # about 8 MB
    stop = threading.Event()

    def writer():
        n = 80_000
        while not stop.is_set():
            write_lines(path, n, 500)
            n += 500

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with box.client(timeout=60) as client:
            for _ in range(3):
                response = client.get(box.portal_url("/api/logs/growing/download"))
                assert response.status_code == 200
                assert len(response.content) == int(response.headers["content-length"]) >= 80_000 * 99
                assert path.read_bytes()[:len(response.content)] == response.content
                assert 'filename="growing.log"' in response.headers["content-disposition"]
    finally:
        stop.set()
        thread.join()


def test_offsets_of_thousands_of_digits_get_a_clear_4xx(box):
    path = log_dir(box) / "digits.log"
    write_lines(path, 0, 10)
    huge = "9" * 5000
    with box.client() as client:
        ranged = client.get(box.portal_url("/api/logs/digits"), headers={"Range": f"bytes={huge}-"})
        assert ranged.status_code == 416 and "past the end" in ranged.json()["detail"]
        assert ranged.headers["content-range"] == f"bytes */{path.stat().st_size}"
        resumed = client.get(box.portal_url("/api/logs/digits/stream"), headers={"Last-Event-ID": huge})
        assert resumed.status_code == 400 and "at most 18 digits" in resumed.json()["detail"]
        for url in (f"/api/logs/digits?offset={huge}", f"/api/logs/digits/stream?offset={huge}"):
            assert client.get(box.portal_url(url)).status_code == 422, url
        # an id past the end of the log is one from before a rotation: the stream starts at the file's beginning
        with client.stream("GET", box.portal_url("/api/logs/digits/stream"),
                           headers={"Last-Event-ID": str(10**12)}) as response:
            assert next(line for line in response.iter_lines() if line.startswith("id: ")) == "id: 99"
