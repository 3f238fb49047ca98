"""Caddy's auth on every public port: who gets in, who gets a 401 with the Basic challenge."""
from __future__ import annotations

import base64
import socket
import ssl
import time

import httpx
import pytest

from app.credentials import session_value
from app.render import COOKIE


def raw_request(appliance, port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side normalisation of the path); return status and raw head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if appliance.https:
        context = ssl.create_default_context(cafile=str(appliance.cert))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    return int(head.split(b" ", 2)[1]), head


def ports(appliance):
    return [appliance.portal_port, appliance.api_port]


def assert_challenged(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("which", ["portal", "api"])
@pytest.mark.parametrize("credentials", ["none", "wrong-bearer", "wrong-basic", "forged-cookie", "wrong-token-query",
                                          "token-as-basic-user"])
def test_without_valid_credentials_every_port_answers_401(appliance, which, credentials):
    port = appliance.portal_port if which == "portal" else appliance.api_port
    headers = {
        "none": {},
        "wrong-bearer": {"Authorization": "Bearer " + "x" * 43},
        "wrong-basic": {"Authorization": "Basic " + base64.b64encode(b"vastai:not-the-password").decode()},
        "forged-cookie": {"Cookie": f"{COOKIE}=forged-{appliance.token[:10]}"},
        "wrong-token-query": {},
        "token-as-basic-user": {"Authorization": "Basic " + base64.b64encode(f"{appliance.token}:x".encode()).decode()},
    }[credentials]
    path = "/v1/models?token=wrong" if credentials == "wrong-token-query" else "/v1/models"
    with appliance.client(auth=False) as client:
        assert_challenged(client.get(appliance.url(port, path), headers=headers))


@pytest.mark.parametrize("which", ["portal", "api"])
def test_bearer_and_basic_pass(appliance, which):
    port = appliance.portal_port if which == "portal" else appliance.api_port
    path = "/api/health" if which == "portal" else "/v1/models"
    with appliance.client(auth=False) as client:
        assert client.get(appliance.url(port, path),
                          headers={"Authorization": f"Bearer {appliance.token}"}).status_code == 200
        assert client.get(appliance.url(port, path), auth=("vastai", appliance.token)).status_code == 200


def test_token_query_sets_cookie_and_redirects_without_the_token(appliance):
    with appliance.client(auth=False) as client:
        response = client.get(appliance.portal_url(f"/api/health?x=1&token={appliance.token}"))
        assert response.status_code == 302
        assert response.headers["location"] == "/api/health?x=1"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={session_value(appliance.token)};")  # a session value, not the token
        assert appliance.token not in cookie
        for attribute in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/"):
            assert attribute in cookie
        # The browser now holds the cookie: the same client follows up without any other credential,
        # on this port and on the API port (cookies are per host, not per port).
        assert client.get(appliance.portal_url("/api/health")).status_code == 200
        assert client.get(appliance.api_url("/v1/models")).status_code == 200


def test_plain_http_on_the_https_port_redirects_to_https(appliance):
    host = f"localhost:{appliance.portal_port}".encode()
    status, head = raw_request_plain(appliance.portal_port, b"GET /api/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert status in (301, 302, 307, 308)
    assert f"https://localhost:{appliance.portal_port}/api/health".encode() in head


def raw_request_plain(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


ODD_REQUESTS = [
    b"GET //api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /%2e%2e/api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/%2e%2e/api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /API/HEALTH HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /./api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api%2fhealth HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"HEAD /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"OPTIONS /api/health HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\n"
    b"Access-Control-Request-Method: GET\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"TRACE /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET https://localhost/api/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:11111\r\n\r\n",
    b"GET /api/health HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n",
    b"GET /api/health?token= HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/health?TOKEN=x&token HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/health HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", ODD_REQUESTS, ids=lambda r: r.split(b"\r\n")[0].decode())
def test_odd_paths_methods_and_hosts_never_reach_the_upstream(appliance, request_bytes):
    before = {name: len(appliance.log(name)) for name in ("manager", "vllm")}
    for port in ports(appliance):
        status, head = raw_request(appliance, port, request_bytes)
        if request_bytes.startswith(b"OPTIONS * "):
            # Go's HTTP server answers `OPTIONS *` itself, empty, before any handler (auth or proxy) runs.
            assert status == 200 and b"Content-Length: 0" in head and b"Server: Caddy" not in head
            continue
        assert status in (400, 401, 405), (port, head)
        if status == 401:
            assert b"Www-Authenticate: Basic" in head
    time.sleep(0.3)
    for name, size in before.items():
        assert appliance.log(name)[size:].count('HTTP/1.') == 0, appliance.log(name)[size:]


def test_oversize_headers_are_refused(appliance):
    status, _ = raw_request(appliance, appliance.portal_port,
                            b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n")
    assert 400 <= status < 500


def test_auth_exclude_leaves_that_port_open_and_others_closed(boot):
    app = boot(start=False)
    app.env["AUTH_EXCLUDE"] = str(app.api_port)
    app.env["VLLM_MODEL"] = "acme/open-model"
    app.start()
    with app.client(auth=False) as client:
        assert client.get(app.api_url("/v1/models")).status_code == 200
        assert_challenged(client.get(app.portal_url("/api/health")))


def test_enable_auth_false_opens_every_port_and_plain_http_works(boot):
    app = boot({"ENABLE_AUTH": "false", "ENABLE_HTTPS": "false", "VLLM_MODEL": "acme/open-model"})
    with app.client(auth=False) as client:
        assert client.get(app.portal_url("/api/health")).status_code == 200
        assert client.get(app.api_url("/v1/models")).json()["data"][0]["id"] == "acme/open-model"


def test_web_password_works_for_basic_and_bearer(boot):
    app = boot({"WEB_USERNAME": "alice", "WEB_PASSWORD": "correct-horse-battery", "OPEN_BUTTON_TOKEN": "t" * 32})
    with app.client(auth=False) as client:
        assert client.get(app.portal_url("/api/health"), auth=("alice", "correct-horse-battery")).status_code == 200
        assert client.get(app.portal_url("/api/health"),
                          headers={"Authorization": "Bearer correct-horse-battery"}).status_code == 200
        assert client.get(app.portal_url("/api/health"),
                          headers={"Authorization": "Bearer " + "t" * 32}).status_code == 200
        assert_challenged(client.get(app.portal_url("/api/health"), auth=("vastai", "correct-horse-battery")))
        assert_challenged(client.get(app.portal_url("/api/health"), auth=("alice", "t" * 32)))
