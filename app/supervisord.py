"""supervisord, run as the appliance's main process, with one change: a program's log it cannot write (a full
disk) is reported as one line a minute, not as a traceback for every line the program prints.

supervisor's file handler prints a full traceback to supervisord's stderr (`docker logs`) each time a write
fails; with an engine logging 200 lines/s onto a full disk that was about 50 tracebacks a second, which buried
everything else. supervisor has no setting for it, so its `handleError` is replaced here, before supervisord
starts; everything else is supervisor's own `main`.
"""
from __future__ import annotations

import sys
import time

from supervisor import loggers, supervisord  # type: ignore[attr-defined]

QUIET_FOR = 60.0  # seconds: at most one line per log file in this time
_last: dict[str, float] = {}


def handle_error(handler: loggers.Handler) -> None:
    """One line naming the file and the reason, then silence for QUIET_FOR seconds for that file."""
    error = sys.exc_info()[1]
    name = str(getattr(handler, "baseFilename", None) or getattr(getattr(handler, "stream", None), "name", "a log"))
    now = time.monotonic()
    if now - _last.get(name, -QUIET_FOR) < QUIET_FOR:
        return
    _last[name] = now
    reason = getattr(error, "strerror", None) or repr(error)
    print(f"supervisord: cannot write {name}: {reason} (lines are lost until it can; said again in "
          f"{QUIET_FOR:.0f} s at the earliest)", file=sys.stderr, flush=True)


def main() -> None:
    loggers.Handler.handleError = handle_error  # type: ignore[method-assign]
    supervisord.main(sys.argv[1:])


if __name__ == "__main__":
    main()
