"""supervisor event listener: copies every program's output to the container's stdout.

Each program logs to its own rotated file in the log folder; supervisor emits
PROCESS_LOG events for it, and this listener writes them, prefixed with the
program name, to its stderr, which supervisord sends to /dev/stdout (docker logs).

It speaks supervisor's event listener protocol (supervisor's docs, "Events") itself: importing
supervisor.childutils for its three lines would cost this small process 13 MiB (docs/performance.md). The
header's `len` counts characters of UTF-8 text (a progress bar's `█` is one), so the pipes are read as text.
"""
from __future__ import annotations

import sys
from typing import TextIO


def fields(line: str) -> dict[str, str]:
    """`key:value key:value ...` (the event's header line, and a PROCESS_LOG payload's first line)."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def forward(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    """Until supervisord closes our stdin: READY, one event, its lines to stderr, then OK."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return
        event = fields(header)
        payload = stdin.read(int(event.get("len", "0")))
        if event.get("eventname", "").startswith("PROCESS_LOG"):
            first, _, data = payload.partition("\n")
            name = fields(first).get("processname", "?")
            stderr.write("".join(f"{name} | {line}\n" for line in data.splitlines() if line.strip()))
            stderr.flush()
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main() -> None:
    for stream in (sys.stdin, sys.stdout, sys.stderr):  # UTF-8 whatever the locale, as supervisord writes it
        stream.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]  # a TextIOWrapper
    forward(sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    main()
