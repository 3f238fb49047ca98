"""Fixtures that boot the real appliance in a temporary root (see tests/appliance.py)."""
from __future__ import annotations

import http.server
import itertools
import os
import threading

import pytest

from tests.appliance import Appliance

_counter = itertools.count()


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in of the Hugging Face Hub: it answers, so the boot sees the Hub as reachable."""

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session", autouse=True)
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["TEST_HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield os.environ["TEST_HF_ENDPOINT"]
    server.shutdown()


@pytest.fixture
def boot(tmp_path_factory):
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


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    """The default appliance (HTTPS, auth) serving a stand-in model as the program `vllm`."""
    app = Appliance(tmp_path_factory.mktemp("appliance"), {"VLLM_MODEL": "acme/tiny-chat"})
    app.start()
    yield app
    app.stop()
