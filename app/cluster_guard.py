"""The cluster guard: runs a multi-node engine only while the nodes it spans are in the Ray cluster.

`python -m app.cluster_guard --nodes N --gpus G -- vllm serve ...` (rendered by app/engine.py on a head):
- at its start it waits a few seconds for the cluster to hold N alive nodes and G GPUs; if not, it says which
  are missing and exits with GUARD_EXIT (supervisor leaves it stopped: the program's only expected status);
- while the engine runs it reads the cluster every POLL seconds; when a node leaves (two readings in a row) it
  says so, stops the engine and exits with GUARD_EXIT. The instance is then `failed` with that line in its log,
  and the manager's cluster watch (app/cluster.py) starts it again once the nodes are back;
- SIGTERM from supervisor is passed to the engine, and the guard exits with the engine's status.
Without the guard an engine whose worker left may hang on its next request instead of failing.

`python -m app.cluster_guard --follow HOST:PORT -- vllm serve ... --headless` (a worker's share of an `mp` engine,
app/multinode.py): the share joins the head's engine once, at its start, through the rendezvous port HOST:PORT;
it cannot join a new one. So when that port, open while the head's engine lives, closes (two readings in a row)
after it was open, the guard stops the share and exits 1: supervisor starts it again, and it waits for the head's
next engine. A restart or swap of the head's engine thus needs nothing done on the workers.
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time

from app import cluster, multinode
from app.settings import get_settings

POLL = 2.0
START_WAIT = 8.0  # longer than the program's startsecs (5): an exit after it is EXITED, not a retried BACKOFF
STOP_WAIT = 20.0


def say(message: str) -> None:
    print(f"cluster guard: {message}", flush=True)


def wait_for_cluster(settings, nodes: int, gpus: int, wait: float) -> str | None:
    """None once the cluster holds what the engine needs; else why not, after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        missing = cluster.shortfall(cluster.read(settings), nodes, gpus)
        if missing is None or time.monotonic() >= deadline:
            return missing
        time.sleep(1.0)


def stop(engine: subprocess.Popen) -> int:
    if engine.poll() is None:
        engine.terminate()
        try:
            engine.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
    return engine.returncode


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=POLL).close()
        return True
    except OSError:
        return False


def run(command: list[str], gone) -> int:
    """The engine, until it exits, supervisor stops us, or `gone()` says why it must stop (then: that line, the
    engine stopped, and GUARD_EXIT)."""
    engine = subprocess.Popen(command)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    while engine.poll() is None:
        if stopping:
            return stop(engine)
        time.sleep(POLL)
        why = gone()
        if why:
            say(f"ERROR: {why}: stopping the engine")
            stop(engine)
            say(f"ERROR: the engine was stopped: {why}")  # again, last: the engine's shutdown lines come first
            return multinode.GUARD_EXIT
    code = engine.returncode
    return code if code != multinode.GUARD_EXIT else 1  # the engine's own failure is never taken for ours


def follow(command: list[str], address: str) -> int:
    host, _, port = address.rpartition(":")
    state = {"seen": False, "closed": 0}

    def gone() -> str | None:
        if reachable(host, int(port)):
            state.update(seen=True, closed=0)
        elif state["seen"]:
            state["closed"] += 1
        return (f"the head's engine at {address} is gone (stopped or restarted); this share starts again and joins "
                "its next one") if state["closed"] >= 2 else None
    say(f"this box's share of the head's engine follows its rendezvous port {address}")
    code = run(command, gone)
    return 1 if code == multinode.GUARD_EXIT else code  # 1: supervisor starts the share again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cluster_guard")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--follow", metavar="HOST:PORT", help="a worker's share of an `mp` engine: the head's port")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.follow:
        return follow(command, args.follow)
    settings = get_settings()
    started = time.monotonic()
    missing = wait_for_cluster(settings, args.nodes, args.gpus, START_WAIT)
    if missing:
        time.sleep(max(0.0, START_WAIT - (time.monotonic() - started)))
        say(f"ERROR: not starting the engine: {missing}. It starts by itself when the nodes are back "
            "(or start it from the portal)")
        return multinode.GUARD_EXIT
    say(f"the cluster holds {args.nodes} node(s) and {args.gpus} GPU(s) for this engine; starting it")
    short = {"readings": 0}

    def gone() -> str | None:
        missing = cluster.shortfall(cluster.read(settings), args.nodes, args.gpus)
        short["readings"] = short["readings"] + 1 if missing else 0
        return f"{missing}; it starts again when the nodes are back" if short["readings"] >= 2 else None
    return run(command, gone)


if __name__ == "__main__":
    sys.exit(main())
