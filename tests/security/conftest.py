"""An appliance with inference keys and two recording apps from PORTAL_CONFIG: one behind auth, one AUTH_EXCLUDE'd."""
from __future__ import annotations

import http.server
import threading

import pytest

from tests.appliance import Appliance, free_port
from tests.security.recorder import Recorder

KEY = "inference-key-0123456789"
OTHER_KEY = "second-key-abcdefghijkl"


@pytest.fixture(scope="package")
def secured(tmp_path_factory):
    upstreams = [http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder) for _ in range(2)]
    for upstream in upstreams:
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
    app = Appliance(tmp_path_factory.mktemp("secured"), {"VLLM_MODEL": "acme/tiny-chat",
                                                         "API_KEYS": f"{KEY},{OTHER_KEY}"})
    app.app_port, app.open_port = free_port(), free_port()
    app.env["PORTAL_CONFIG"] += (f"|localhost:{app.app_port}:{upstreams[0].server_address[1]}:/:Notebook"
                                 f"|localhost:{app.open_port}:{upstreams[1].server_address[1]}:/:Demo")
    app.env["AUTH_EXCLUDE"] = str(app.open_port)
    app.start()
    yield app
    app.stop()
    for upstream in upstreams:
        upstream.shutdown()
