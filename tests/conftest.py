"""Fixtures that boot the real appliance in a temporary root (see tests/appliance.py)."""
from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import threading

import pytest

from tests.appliance import Appliance

_counter = itertools.count()


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in of the Hugging Face Hub: it answers, so the boot sees the Hub as reachable. A model's
    page (/api/models/ORG/NAME) is found unless its name contains `missing`, as the Hub answers for that."""

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if not self.path.startswith("/api/models/"):
            return self.do_HEAD()
        model = self.path.removeprefix("/api/models/").split("?")[0]
        found = "missing" not in model
        body = json.dumps({"id": model, "sha": "0" * 40} if found else {"error": "Repository not found"}).encode()
        self.send_response(200 if found else 404)
        if not found:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def hub_server(port: int = 0):
    """A Hub stand-in on 127.0.0.1:`port` (0: any free port); yields its address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session", autouse=True)
def hub():
    with hub_server() as address:
        os.environ["TEST_HF_ENDPOINT"] = address
        yield address


def _booter(tmp_path_factory):
    """Boot appliances with the given env; every one is stopped, and checked for leftovers, at teardown."""
    started: list[Appliance] = []

    def _boot(env: dict[str, str] | None = None, *, start: bool = True, wait_engine: bool | None = None,
              **kwargs) -> Appliance:
        root = tmp_path_factory.mktemp(f"appliance{next(_counter)}")
        appliance = Appliance(root, env, **kwargs)
        started.append(appliance)
        return appliance.start(wait_engine=wait_engine) if start else appliance

    yield _boot
    errors = []
    for appliance in started:
        try:
            appliance.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def boot(tmp_path_factory):
    yield from _booter(tmp_path_factory)


@pytest.fixture(scope="session")
def boot_session(tmp_path_factory):
    """`boot` for appliances shared by a whole session (stopped at its end)."""
    yield from _booter(tmp_path_factory)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    """The default appliance (HTTPS, auth) serving a stand-in model as the program `vllm`."""
    app = Appliance(tmp_path_factory.mktemp("appliance"), {"VLLM_MODEL": "acme/tiny-chat"})
    app.start()
    yield app
    app.stop()


def reset(app: Appliance, model: str = "acme/tiny-chat") -> None:
    """Put a shared appliance back in its first state: only `vllm`, serving `model` with no extra args, ready.
    Tests on one appliance then do not depend on the order they run in."""
    with app.client(timeout=120) as client:
        for instance in client.get(app.portal_url("/api/instances")).json():
            if instance["id"] != "vllm":
                client.delete(app.portal_url(f"/api/instances/{instance['id']}"))
        current = client.get(app.portal_url("/api/instances/vllm")).json()
        fresh = {"model": model, "args": [], "env": {}, "gpus": None, "share_gpus": False}
        if {k: current.get(k) for k in fresh} != fresh or current["state"] != "ready":
            answer = client.put(app.portal_url("/api/instances/vllm"), json={**fresh, "wait": True})
            assert answer.json().get("result") == "ready", answer.text


@pytest.fixture
def fresh_appliance(appliance):
    """The module's appliance, reset to its first state before the test."""
    reset(appliance)
    return appliance
