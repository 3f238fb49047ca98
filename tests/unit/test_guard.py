"""app/guard.py: which requests the manager refuses before any route runs (pure functions and the ASGI wrapper)."""
from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app import credentials, guard

FORM = {"content-type": "application/x-www-form-urlencoded"}
PORTAL = {"x-forwarded-host": "box:1111", "x-forwarded-proto": "https", "host": "127.0.0.1:11111"}


@pytest.mark.parametrize("host", ["127.0.0.1:11111", "localhost:11111", "[::1]:11111", "127.0.0.1:2222", "LOCALHOST:1"])
def test_loopback_hosts_pass(host):
    assert guard.host_refusal(host) is None


@pytest.mark.parametrize("host", [None, "", "evil.example:11111", "evil.example", "127.0.0.1.evil.example:11111",
                                  "localhost.evil.example", "10.0.0.5:11111"])
def test_other_hosts_are_refused(host):
    assert guard.host_refusal(host)


@pytest.mark.parametrize("headers", [
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "same-site", **FORM},  # a form on another port
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "cross-site", "content-type": "application/json"},
    {**PORTAL, "x-appliance-auth": "basic", "origin": "https://box:8888", **FORM},  # an older browser: Origin only
    {**PORTAL, "x-appliance-auth": "cookie", "origin": "null", "content-type": "application/json"},
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "same-origin", **FORM},  # same origin, but a form
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "same-origin"},  # body-less, no marker
    {**PORTAL, "x-appliance-auth": "none", "sec-fetch-site": "same-site", "x-portal-request": "1"},
    {"host": "127.0.0.1:11111", "origin": "http://box:8888", "content-type": "text/plain"},  # a page, locally
])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_requests_a_browser_could_forge_are_refused(method, headers):
    assert guard.csrf_refusal(method, headers, "http")


@pytest.mark.parametrize("headers", [
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "same-origin", "content-type": "application/json"},
    {**PORTAL, "x-appliance-auth": "cookie", "sec-fetch-site": "same-origin", "x-portal-request": "1"},
    {**PORTAL, "x-appliance-auth": "basic", "origin": "https://box:1111", "content-type": "application/json"},
    {**PORTAL, "x-appliance-auth": "basic", "content-type": "application/json; charset=utf-8"},  # curl -u, JSON
    {**PORTAL, "x-appliance-auth": "bearer", **FORM},  # a browser never sends our bearer token by itself
    {**PORTAL, "x-appliance-auth": "bearer", "sec-fetch-site": "cross-site"},
    {**PORTAL, "x-appliance-auth": "none"},  # ENABLE_AUTH=false: an llm-d client's body-less DELETE
    {"host": "127.0.0.1:11111"},  # a script on the box, straight to the manager
])
def test_the_portal_and_scripted_clients_pass(headers):
    assert guard.csrf_refusal("POST", headers, "http") is None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_reads_are_never_refused_as_forged(method):
    assert guard.csrf_refusal(method, {"sec-fetch-site": "cross-site", **FORM}) is None


def app_with_guard() -> TestClient:
    async def hello(request):
        return PlainTextResponse(f"{request.method} {request.headers['host']}")
    app = Starlette(routes=[Route("/x", hello, methods=["GET", "POST"])])
    app.add_middleware(guard.Guard)
    return TestClient(app, base_url="http://127.0.0.1:11111")


def test_the_middleware_refuses_with_a_message_and_sets_security_headers():
    client = app_with_guard()
    ok = client.get("/x", headers={"x-forwarded-host": "box:1111"})
    assert ok.text == "GET box:1111"  # the app sees the public Host again (links, redirects)
    for name in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"):
        assert ok.headers[name] == guard.SECURITY_HEADERS[name]
    assert "unsafe-inline" not in ok.headers["content-security-policy"].split("script-src", 1)[1].split(";")[0]
    forged = client.post("/x", headers={"x-appliance-auth": "cookie", "sec-fetch-site": "same-site", **FORM})
    assert forged.status_code == 403 and "Sec-Fetch-Site" in forged.json()["detail"]
    assert client.post("/x", headers={"x-appliance-auth": "bearer"}).status_code == 200
    rebound = client.get("/x", headers={"host": "evil.example:11111"})
    assert rebound.status_code == 421 and "loopback" in rebound.json()["detail"]


def test_session_value_is_not_the_token_and_changes_with_it():
    token = "a" * 32
    assert token not in credentials.session_value(token)
    assert credentials.session_value(token) == credentials.session_value(token)
    assert credentials.session_value(token) != credentials.session_value("b" * 32)


@pytest.mark.parametrize("password", ["short", "a" * 20, "password1234", "hunter2hunter2", "abcdefghijkl"])
def test_weak_web_passwords_are_refused_naming_the_setting(password):
    with pytest.raises(ValueError, match="WEB_PASSWORD is too weak"):
        credentials.strong_password(password)


@pytest.mark.parametrize("password", ["correct-horse-battery", "Tr0ub4dor&3xyzQ", "kT9vQ2xL7pR4wZ8m"])
def test_strong_web_passwords_pass(password):
    assert credentials.strong_password(password) == password
