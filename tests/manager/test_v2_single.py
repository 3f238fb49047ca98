"""The launcher's service information on GET / (content negotiation with the portal), and its first, single-engine
design (/v1/vllm, the seed's 004 contract) on the default instance `vllm`, on the booted appliance."""
from __future__ import annotations

import pytest

from tests.manager.test_gpus import engine_process
from tests.manager.test_swap import fingerprint, wait_for

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture
def api(fresh_appliance):
    with fresh_appliance.client(timeout=60) as client:
        yield fresh_appliance, client


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_index_answers_api_clients_the_service_information(api, accept):
    """TestAPIEndpoints.test_index_endpoint"""
    app, client = api
    answer = client.get(app.portal_url("/"), headers={"Accept": accept} if accept else {})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    data = answer.json()
    assert data["name"] == "Multi-Instance vLLM Management API" and data["version"] == "2.0"
    assert len(data["endpoints"]) == 10 and data["endpoints"]["watch_instances"] == "GET /v2/vllm/instances/watch"


def test_index_still_gives_a_browser_the_portal(api):
    """Ours: the portal's overview for a browser's Accept."""
    app, client = api
    page = client.get(app.portal_url("/"), headers={"Accept": BROWSER})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


def test_one_engine_started_stopped_and_started_again(api):
    """The seed's first design: GET {status, pid}; POST while it runs is 409; DELETE {status: terminated, pid};
    POST with options and env_vars starts it again (on the API port, whatever --port says)."""
    app, client = api
    url = app.portal_url("/v1/vllm")
    running = client.get(url).json()
    assert running["status"] == "started" and isinstance(running["pid"], int)
    refused = client.post(url, json={"options": "--model acme/v1-model"})
    assert refused.status_code == 409 and "already running" in refused.json()["detail"]
    stopped = client.delete(url)
    assert stopped.status_code == 200 and stopped.json() == {"status": "terminated", "pid": running["pid"]}
    assert client.get(url).json() == {"status": "stopped", "pid": None}
    assert client.delete(url).status_code == 404
    started = client.post(url, json={"options": "--model acme/v1-model --port 8005",
                                     "env_vars": {"VLLM_LOGGING_LEVEL": "DEBUG"}})
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "started" and isinstance(started.json()["pid"], int)
    app.wait_engine()
    models = client.get(app.api_url("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["acme/v1-model"]
    argv, environ = engine_process(app, "vllm")
    assert environ["VLLM_LOGGING_LEVEL"] == "DEBUG" and "8005" not in argv
    assert client.get(url).json() == {"status": "started", "pid": started.json()["pid"]}
    # the llm-d API sees the same instance
    assert client.get(app.portal_url("/v2/vllm/instances/vllm")).json()["model"] == "acme/v1-model"


def test_v1_vllm_on_the_api_port_is_the_engines(api):
    """Ours: /v1/... on the API port is the engine's OpenAI API; the launcher's routes are on the portal port."""
    app, client = api
    assert client.get(app.api_url("/v1/vllm")).status_code == 404


@pytest.mark.parametrize("body,message", [
    ({"options": "--seed 1"}, "--model"),
    ({"options": "--model m --host 0.0.0.0"}, "127.0.0.1 only"),
    ({"options": "--model m", "env_vars": {"A B": "1"}}, "environment variable name"),
])
def test_bad_options_are_422_and_change_nothing(api, body, message):
    app, client = api
    client.delete(app.portal_url("/v1/vllm"))
    wait_for(lambda: client.get(app.portal_url("/v1/vllm")).json()["status"] == "stopped")
    before = fingerprint(app)
    answer = client.post(app.portal_url("/v1/vllm"), json=body)
    assert answer.status_code == 422 and message in answer.text
    assert fingerprint(app) == before
