"""A loopback server for provisioning tests: plain files (scripts, manifests) and a stand-in of the Hugging Face Hub.

Hub endpoints used by huggingface_hub's snapshot_download: /api/models/<repo>/revision/<rev>,
/api/models/<repo>/tree/<sha>, and HEAD/GET /<repo>/resolve/<sha>/<file>.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections import Counter

import pytest

SHA = "0123456789abcdef0123456789abcdef01234567"


class Loopback(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.models: dict[str, dict[str, bytes]] = {}
        self.hits: Counter = Counter()
        self.fail_first: dict[str, int] = {}  # path -> number of 503 answers before the real one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Loopback

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type="application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        self.server.hits[(self.command, path)] += 1
        if self.server.fail_first.get(path, 0) > 0:
            self.server.fail_first[path] -= 1
            return self._send(503, b"busy")
        if path.startswith("/files/"):
            body = self.server.files.get(path[len("/files/"):])
            return self._send(200, body) if body is not None else self._send(404, b"not found")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        if m:
            repo, kind, _rev = m.groups()
            files = self.server.models.get(repo)
            if files is None:
                return self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"},
                                  "application/json")
            if kind == "revision":
                doc = {"id": repo, "modelId": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
            else:
                doc = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for f, b in files.items()]
            return self._send(200, json.dumps(doc).encode(), content_type="application/json")
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo, _rev, name = m.groups()
            body = self.server.models.get(repo, {}).get(name)
            if body is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
            return self._send(200, body, {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'})
        self._send(200 if path == "/" else 404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback():
    server = Loopback()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
