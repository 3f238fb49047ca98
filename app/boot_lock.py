"""One appliance per root: a boot refuses while one runs there, and stops what a dead one left behind.

supervisord is the entrypoint's own process (it `exec`s), so the entrypoint passes its pid to the boot, which
records it with the process's start time (a recycled pid does not match). Every program supervisord starts
carries `SUPERVISOR_SERVER_URL=unix://<this root's socket>` in its environment, and so do their children: after a
`kill -9` of supervisord, those are the processes it left (Caddy, the manager, engines and their workers).
A file lock keeps two boots of one root from doing this at the same moment.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings

STOP_GRACE = 10.0  # seconds a leftover gets to exit on SIGTERM before SIGKILL


class AlreadyRunning(RuntimeError):
    """A live appliance (or another boot) holds this root."""


@dataclass
class Leftover:
    pid: int
    program: str  # its supervisor program (SUPERVISOR_PROCESS_NAME), or "?"


def _lock_file(settings: Settings) -> Path:
    return settings.run_dir / "boot.lock"


def _pid_file(settings: Settings) -> Path:
    return settings.run_dir / "appliance.pid"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 0:  # up to and including pid 1 (the entrypoint, in a container)
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def leftovers(settings: Settings) -> list[Leftover]:
    """Live processes started by a supervisord of this root (found by the socket URL in their environment)."""
    marker = f"SUPERVISOR_SERVER_URL=unix://{settings.supervisor_socket}".encode()
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and _start_time(int(entry.name)):
            name = next((v.split(b"=", 1)[1].decode(errors="replace") for v in environ
                         if v.startswith(b"SUPERVISOR_PROCESS_NAME=")), "?")
            found.append(Leftover(int(entry.name), name))
    return found


def running_pid(settings: Settings) -> int | None:
    """The pid of the live appliance recorded for this root, or None."""
    try:
        pid, started = _pid_file(settings).read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if pid.isdigit() and _start_time(int(pid)) == started and int(pid) not in _ancestors() else None


def stop(processes: list[Leftover], grace: float = STOP_GRACE) -> list[int]:
    """SIGTERM, then SIGKILL after `grace` seconds; the pids that had to be killed."""
    def alive() -> list[Leftover]:
        return [p for p in processes if _start_time(p.pid)]

    for p in processes:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = [p.pid for p in alive()]
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


@contextmanager
def claim(settings: Settings, pid: int | None, log) -> Iterator[None]:
    """Hold the root for this boot: refuse if an appliance runs on it, stop what a dead one left, record `pid`
    (the entrypoint's, which becomes supervisord). Raises AlreadyRunning."""
    lock = os.open(_lock_file(settings), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another boot of {settings.root} is under way") from None
        live = running_pid(settings)
        if live or _socket_answers(settings.supervisor_socket):
            raise AlreadyRunning(
                f"an appliance is already running on {settings.root} (supervisord pid {live or '?'}, socket "
                f"{settings.supervisor_socket}); stop it first (`docker stop`, or SIGTERM to that pid), "
                "or give this one another APPLIANCE_ROOT")
        left = leftovers(settings)
        if left:
            names = ", ".join(f"{p.program} (pid {p.pid})" for p in left)
            log(f"a previous boot of {settings.root} ended without stopping its programs; stopping what it "
                f"left: {names}")
            killed = stop(left)
            if killed:
                log(f"killed {len(killed)} of them that ignored SIGTERM for {STOP_GRACE:.0f} s: {killed}")
        if pid is not None:
            started = _start_time(pid)
            if started:
                _pid_file(settings).write_text(f"{pid} {started}\n")
        yield
    finally:
        os.close(lock)
