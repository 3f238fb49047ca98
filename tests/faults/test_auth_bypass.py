"""Auth bypass attempts against an app port from PORTAL_CONFIG, whose upstream records every request it sees."""
from __future__ import annotations

import http.server
import threading

import pytest

from tests.appliance import free_port
from tests.test_auth import ODD_REQUESTS, raw_request


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def _any(self):
        Recorder.seen.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"secret")

    do_GET = do_HEAD = do_POST = do_OPTIONS = do_TRACE = do_PUT = do_DELETE = _any

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def app_port_appliance(tmp_path_factory):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    from tests.appliance import Appliance
    app = Appliance(tmp_path_factory.mktemp("bypass"))
    app.app_port = free_port()
    app.env["PORTAL_CONFIG"] += f"|localhost:{app.app_port}:{upstream.server_address[1]}:/:Notebook"
    app.start()
    yield app
    app.stop()
    upstream.shutdown()


@pytest.mark.parametrize("request_bytes", ODD_REQUESTS + [
    b"GET /\\..\\ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /?token=%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nX-HTTP-Method-Override: GET\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Og==\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nCookie: appliance_token=\r\n\r\n",
], ids=lambda r: r.split(b"\r\n")[0].decode(errors="replace"))
def test_no_trick_reaches_the_app_upstream(app_port_appliance, request_bytes):
    Recorder.seen.clear()
    status, head = raw_request(app_port_appliance, app_port_appliance.app_port, request_bytes)
    if request_bytes.startswith(b"OPTIONS * "):
        assert status == 200 and b"Server: Caddy" not in head  # Go answers it itself; see docs/security.md
    else:
        assert 400 <= status < 500, head
    assert Recorder.seen == []


def test_the_app_port_serves_with_credentials(app_port_appliance):
    Recorder.seen.clear()
    with app_port_appliance.client() as client:
        response = client.get(app_port_appliance.url(app_port_appliance.app_port, "/notebook?x=1"))
    assert response.text == "secret"
    assert Recorder.seen == ["GET /notebook?x=1"]
