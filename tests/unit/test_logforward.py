"""The event listener that copies programs' output to the container's stdout (docker logs)."""
from __future__ import annotations

import io

from app.logforward import forward


def event(name: str, payload: str) -> str:
    return f"ver:3.0 server:supervisor serial:1 pool:logforward poolserial:1 eventname:{name} len:{len(payload)}\n" \
        + payload


def test_each_log_line_is_prefixed_with_its_program_and_every_event_is_acknowledged():
    # `len` counts characters: a progress bar's multi-byte `█` must not shift the next event
    log = "processname:vllm groupname:vllm pid:42 channel:stdout\nconfig.json: 100%|██████████|\n\nready\n"
    stdin = io.StringIO(event("PROCESS_LOG_STDOUT", log) + event("TICK_5", "when:1"))
    stdout, stderr = io.StringIO(), io.StringIO()
    forward(stdin, stdout, stderr)
    assert stderr.getvalue() == "vllm | config.json: 100%|██████████|\nvllm | ready\n"
    # ready, ok for the log, ready, ok for the tick, ready again before supervisord closed the pipe
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
