"""Our credentials never reach an upstream app; inference keys pass on the inference routes only (issue 12, 2-3)."""
from __future__ import annotations

import base64
import ssl

import httpx
import openai
import pytest

from app.credentials import session_value
from app.render import COOKIE
from tests.security.conftest import KEY, OTHER_KEY
from tests.security.recorder import Recorder


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def seen_headers(app, port: int, **kwargs) -> dict[str, list[str]]:
    Recorder.seen.clear()
    with app.client(auth=False) as client:
        response = client.get(app.url(port, "/page"), **kwargs)
    assert response.status_code == 200, response.text
    assert len(Recorder.seen) == 1
    return Recorder.seen[0][2]


@pytest.mark.parametrize("port_name", ["app_port", "open_port"])
def test_our_token_basic_credentials_and_cookie_are_removed_before_an_app(secured, port_name):
    port = getattr(secured, port_name)
    headers = seen_headers(secured, port, headers=bearer(secured.token))
    assert "authorization" not in headers
    headers = seen_headers(secured, port, auth=("vastai", secured.token))
    assert "authorization" not in headers
    cookie = f"theme=dark; {COOKIE}={session_value(secured.token)}; lang=en"
    headers = seen_headers(secured, port, headers={"Cookie": cookie})
    assert headers["cookie"] == ["theme=dark; lang=en"]
    headers = seen_headers(secured, port, headers={"Cookie": f"{COOKIE}={session_value(secured.token)}"})
    assert COOKIE not in str(headers.get("cookie"))
    assert secured.token not in str(headers) and session_value(secured.token) not in str(headers)


def test_an_apps_own_authorization_and_cookies_pass(secured):
    own = {"Authorization": "Bearer the-apps-own-token", "Cookie": f"{COOKIE}={session_value(secured.token)}; sid=42"}
    headers = seen_headers(secured, secured.app_port, headers=own)
    assert headers["authorization"] == ["Bearer the-apps-own-token"]
    assert headers["cookie"] == ["sid=42"]
    headers = seen_headers(secured, secured.open_port, headers={"Authorization": "token jupyter", "Cookie": "a=1"})
    assert headers["authorization"] == ["token jupyter"] and headers["cookie"] == ["a=1"]


def test_an_inference_key_sent_to_an_excluded_port_is_removed_too(secured):
    assert "authorization" not in seen_headers(secured, secured.open_port, headers=bearer(KEY))


@pytest.mark.parametrize("spoofed", ["X-Real-IP", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
                                     "X-Forwarded-Port", "X-Appliance-Auth"])
def test_client_sent_forwarding_headers_do_not_reach_an_app_as_sent(secured, spoofed):
    value = "for=6.6.6.6" if spoofed == "Forwarded" else "6.6.6.6"
    headers = seen_headers(secured, secured.app_port, headers={**bearer(secured.token), spoofed: value})
    assert value not in str(headers.get(spoofed.lower(), [])), headers


def test_a_key_passes_with_the_openai_client_on_the_inference_routes(secured):
    for key in (KEY, OTHER_KEY):
        client = openai.OpenAI(base_url=secured.api_url("/v1"), api_key=key,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(secured.cert))))
        assert [m.id for m in client.models.list()] == ["acme/tiny-chat"]
        reply = client.chat.completions.create(model="acme/tiny-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    with secured.client(auth=False) as client:
        assert client.get(secured.api_url("/instances/vllm/v1/models"), headers=bearer(KEY)).status_code == 200


@pytest.mark.parametrize("where", ["portal-health", "portal-stop", "api-metrics", "api-docs", "api-dotdot", "app",
                                   "lora", "instance-metrics", "instance-dotdot"])
def test_a_key_is_refused_everywhere_else(secured, where):
    port, method, path = {
        "portal-health": (secured.portal_port, "GET", "/api/health"),
        "portal-stop": (secured.portal_port, "POST", "/api/instances/vllm/stop"),
        "api-metrics": (secured.api_port, "GET", "/metrics"),
        "api-docs": (secured.api_port, "GET", "/docs"),
        "api-dotdot": (secured.api_port, "GET", "/v1/../metrics"),
        "app": (secured.app_port, "GET", "/page"),
        "lora": (secured.api_port, "POST", "/v1/load_lora_adapter"),
        "instance-metrics": (secured.api_port, "GET", "/instances/vllm/metrics"),
        "instance-dotdot": (secured.api_port, "GET", "/instances/vllm/v1/../metrics"),
    }[where]
    Recorder.seen.clear()
    with secured.client(auth=False) as client:
        response = client.request(method, secured.url(port, path), headers=bearer(KEY))
    assert response.status_code == 401, response.text
    assert Recorder.seen == []
    assert secured.client().get(secured.portal_url("/api/instances/vllm")).json()["state"] == "ready"


def test_the_admin_token_and_basic_credentials_pass_everywhere(secured):
    with secured.client() as client:
        for url in (secured.portal_url("/api/health"), secured.api_url("/metrics"), secured.api_url("/v1/models"),
                    secured.url(secured.app_port, "/page")):
            assert client.get(url).status_code == 200, url
            assert client.get(url, headers={"Authorization": "Basic " + base64.b64encode(
                f"vastai:{secured.token}".encode()).decode()}).status_code == 200, url
