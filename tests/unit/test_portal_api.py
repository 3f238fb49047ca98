"""The portal's endpoints without processes: the router's activity (router up, down, garbled; filters) and the
playground relay (streamed through, errors passed on, nothing of ours sent upstream, bad input refused)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import activity, playground

REQUESTS = [
    {"time": 3.0, "model": "a", "status": 200, "duration": 0.5, "ttft": 0.1, "prompt_tokens": 3,
     "completion_tokens": 5},
    {"time": 2.0, "model": "b", "status": 503, "duration": 30.0, "ttft": None},
    {"time": 1.0, "model": "a", "status": None, "duration": 2.0, "ttft": 0.1},
]


class Router:
    def __init__(self, answer=None, error: Exception | None = None):
        self.answer, self.error, self.limits = answer, error, []

    async def activity(self, limit: int = 200):
        self.limits.append(limit)
        if self.error:
            raise self.error
        return self.answer


def client_with(**state) -> TestClient:
    app = FastAPI()
    app.include_router(activity.router)
    app.include_router(playground.router)
    for name, value in state.items():
        setattr(app.state, name, value)
    return TestClient(app)


def test_activity_passes_the_routers_list_with_the_models_in_it():
    router = Router(REQUESTS)
    answer = client_with(manager=SimpleNamespace(router=router)).get("/api/router/activity?limit=50")
    assert answer.status_code == 200
    assert answer.json() == {"requests": REQUESTS, "models": ["a", "b"], "note": None}
    assert router.limits == [50]


@pytest.mark.parametrize(("query", "times"), [("model=a", [3.0, 1.0]), ("status=5xx", [2.0]), ("status=200", [3.0]),
                                              ("status=error", [2.0, 1.0]), ("model=b&status=2xx", [])])
def test_activity_filters_by_model_and_status(query, times):
    answer = client_with(manager=SimpleNamespace(router=Router(REQUESTS))).get(f"/api/router/activity?{query}")
    assert [r["time"] for r in answer.json()["requests"]] == times
    assert answer.json()["models"] == ["a", "b"]  # the filter menu keeps every model


@pytest.mark.parametrize("router", [Router(error=httpx.ConnectError("no socket")), Router({"not": "a list"}),
                                    Router(error=ValueError("bad json")), Router(error=KeyError("requests"))])
def test_activity_with_the_router_down_or_garbled_is_an_empty_list_and_a_note(router):
    answer = client_with(manager=SimpleNamespace(router=router)).get("/api/router/activity")
    assert answer.status_code == 200
    assert answer.json()["requests"] == [] and "router does not answer" in answer.json()["note"]


@pytest.mark.parametrize("query", ["limit=0", "limit=100000", "status=teapot", "limit=x"])
def test_activity_refuses_bad_queries_clearly(query):
    answer = client_with(manager=SimpleNamespace(router=Router(REQUESTS))).get(f"/api/router/activity?{query}")
    assert answer.status_code == 422 and answer.json()["detail"]


def playground_client(handler) -> TestClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    manager = SimpleNamespace(fx=SimpleNamespace(http=http), ports=SimpleNamespace(api_port=18000))
    return client_with(manager=manager)


CHAT = {"model": "acme/tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5,
        "max_tokens": 4}


def test_playground_streams_the_engines_events_through_and_sends_nothing_of_ours():
    seen = []
    events = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
              b'data: {"choices":[{"delta":{"content":" b"}}]}\n\n', b"data: [DONE]\n\n"]

    async def stream():
        for event in events:
            yield event

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())
    client = playground_client(handler)
    with client.stream("POST", "/api/playground/chat", json=CHAT,
                       headers={"Authorization": "Bearer secret", "Cookie": "appliance_session=s"}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        body = b"".join(answer.iter_raw())
    assert body == b"".join(events)
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:18000/v1/chat/completions"
    assert "authorization" not in request.headers and "cookie" not in request.headers
    assert json.loads(request.content) == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def test_playground_passes_the_engines_client_errors_and_hides_its_server_errors():
    not_found = {"error": {"message": "The model `x` does not exist.", "code": 404}}
    client = playground_client(lambda request: httpx.Response(404, json=not_found))
    answer = client.post("/api/playground/chat", json=CHAT)
    assert answer.status_code == 404 and answer.json() == not_found
    answer = playground_client(lambda request: httpx.Response(500, text="boom")).post("/api/playground/chat", json=CHAT)
    assert answer.status_code == 502


def test_playground_without_an_engine_is_a_502_with_a_message():
    def refuse(request):
        raise httpx.ConnectError("connection refused")
    answer = playground_client(refuse).post("/api/playground/chat", json=CHAT)
    assert answer.status_code == 502 and "does not answer" in answer.json()["detail"]


@pytest.mark.parametrize("change", [{"temperature": 5}, {"max_tokens": 0}, {"top_p": 0}, {"messages": []},
                                    {"model": "-x"}, {"model": ""}, {"stream": False},
                                    {"messages": [{"role": "tool", "content": "x"}]}])
def test_playground_refuses_bad_input_before_the_engine(change):
    seen = []
    client = playground_client(lambda request: seen.append(request) or httpx.Response(200))
    answer = client.post("/api/playground/chat", json={**CHAT, **change})
    assert answer.status_code == 422 and answer.json()["detail"] and not seen
