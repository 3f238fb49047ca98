"""Smaller holes (issue 12, 11): off-site login redirects, security headers, DNS rebinding; weak settings at boot."""
from __future__ import annotations

import httpx
import pytest

from tests.test_auth import raw_request


@pytest.mark.parametrize("path", ["//evil.example/", "/\\evil.example/", "//evil.example/x?y=1"])
def test_the_token_login_never_redirects_off_site(secured, path):
    status, head = raw_request(secured, secured.portal_port,
                               f"GET {path}{'&' if '?' in path else '?'}token={secured.token} HTTP/1.1\r\n"
                               "Host: localhost\r\n\r\n".encode())
    assert status == 302
    location = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"location:"))
    assert location.split(b":", 1)[1].strip() == b"/"


def test_the_token_login_keeps_an_ordinary_path(secured):
    status, head = raw_request(secured, secured.portal_port,
                               f"GET /models?token={secured.token}&x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 302 and b"\r\nLocation: /models?x=1" in head


@pytest.mark.parametrize("path", ["/", "/models", "/api/instances", "/api/docs", "/static/portal.js", "/nowhere"])
def test_portal_responses_carry_security_headers(secured, path):
    with secured.client() as client:
        response = client.get(secured.portal_url(path))
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy


def test_api_docs_load_nothing_from_elsewhere(secured):
    with secured.client() as client:
        page = client.get(secured.portal_url("/api/docs")).text
        assert "swagger-ui-bundle.js" in page and "http://" not in page and "https://" not in page
        assert client.get(secured.portal_url("/static/swagger/swagger-ui-bundle.js")).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}"])
def test_the_manager_refuses_a_foreign_host_on_its_internal_port(secured, host):
    url = f"http://127.0.0.1:{secured.portal_internal}/api/instances"
    answer = httpx.get(url, headers={"Host": host.format(port=secured.portal_internal)})
    assert answer.status_code == 421 and "loopback" in answer.json()["detail"]
    stop = httpx.post(f"http://127.0.0.1:{secured.portal_internal}/api/instances/vllm/stop", json={},
                      headers={"Host": host.format(port=secured.portal_internal)})
    assert stop.status_code == 421
    assert httpx.get(url).status_code == 200  # its own address (local tools, SSH forwards) still works
    with secured.client() as client:  # and through Caddy, whatever name the browser used
        assert client.get(secured.portal_url("/api/instances"), headers={"Host": "box.example"}).status_code == 200


@pytest.mark.parametrize("env,message", [
    ({"WEB_PASSWORD": "password1234"}, "WEB_PASSWORD is too weak"),
    ({"WEB_PASSWORD": "aaaaaaaaaaaaaaaaaaaaaaaa"}, "WEB_PASSWORD is too weak"),
    ({"API_KEYS": "short"}, "each key of API_KEYS must be 16-256 characters"),
    ({"API_KEYS": "t" * 32, "OPEN_BUTTON_TOKEN": "t" * 32}, "API_KEYS must not contain the admin token"),
])
def test_weak_or_malformed_credentials_stop_the_boot(boot, env, message):
    app = boot(env, start=False)
    with pytest.raises(RuntimeError, match="appliance exited with 1"):
        app.start(timeout=20)
    assert message in app.output()
