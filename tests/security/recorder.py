"""An app upstream that records what it is sent (tests only)."""
from __future__ import annotations

import http.server
import time


class Recorder(http.server.BaseHTTPRequestHandler):
    """An app upstream that records every request it sees, headers included, and answers 200."""
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, list[str]]]] = []
    closed: list[float] = []  # when a client (Caddy) closed a connection, time.monotonic()

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        Recorder.seen.append((self.command, self.path, headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, *args):
        pass

    def finish(self):
        Recorder.closed.append(time.monotonic())
        super().finish()
