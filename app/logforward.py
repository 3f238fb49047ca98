"""supervisor event listener: copies every program's output to the container's stdout.

Each program logs to its own rotated file in the log folder; supervisor emits
PROCESS_LOG events for it, and this listener writes them, prefixed with the
program name, to its stderr, which supervisord sends to /dev/stdout (docker logs).
"""
from __future__ import annotations

import sys

from supervisor import childutils  # type: ignore[attr-defined]


def main() -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"].startswith("PROCESS_LOG"):
            event, data = childutils.eventdata(payload)
            name = event["processname"]
            for line in filter(str.strip, data.splitlines()):
                sys.stderr.write(f"{name} | {line}\n")
            sys.stderr.flush()
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
