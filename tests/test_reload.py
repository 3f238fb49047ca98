"""Changing a running box the Vast.ai way (issue 20): edit portal.yaml or /etc/environment, restart the program
`caddy` (or apply from the portal), and it takes effect; the engine is not touched."""
from __future__ import annotations

import concurrent.futures
import http.server
import ssl
import threading

import httpx
import pytest
import yaml

from tests.appliance import free_port
from tests.manager.test_swap import put, wait_for

PASSWORD = "correct-horse-battery-staple-42"


class _App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"notes app"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    from tests.appliance import Appliance
    app = Appliance(tmp_path_factory.mktemp("reload"), {"VLLM_MODEL": "acme/tiny-chat"})
    servers = []

    def upstream() -> int:
        """A new little app on its own port (two entries of portal.yaml may not share an internal port)."""
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    app.start()
    yield app, upstream
    for server in servers:
        server.shutdown()
    app.stop()


def add_app(app, name: str, external: int, internal: int) -> None:
    path = app.root / "etc/portal.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["applications"][name] = {"host": "localhost", "external_port": external, "internal_port": internal,
                                 "path": "/", "name": name}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def restart_caddy(app) -> None:
    done = app.supervisorctl("restart", "caddy")
    assert "started" in done.stdout, done


def engine_pid(app) -> str:
    return app.supervisorctl("pid", "vllm").stdout.strip()


def status(url: str, *, https: bool = True, cert=None, **kwargs) -> int:
    verify = ssl.create_default_context(cafile=str(cert)) if https else False
    try:
        with httpx.Client(verify=verify, timeout=10) as client:
            return client.get(url, **kwargs).status_code
    except httpx.HTTPError:
        return 0  # Caddy restarting: not listening yet


def test_an_app_added_to_portal_yaml_gets_its_site_with_auth_and_the_engine_keeps_running(box):
    app, upstream = box
    pid, external = engine_pid(app), free_port()
    add_app(app, "Notes", external, upstream())
    restart_caddy(app)
    url = app.url(external, "/")
    wait_for(lambda: status(url, cert=app.cert) == 401)
    assert status(url, cert=app.cert, headers={"Authorization": f"Bearer {app.token}"}) == 200
    with app.client() as client:
        assert "Notes" in client.get(app.portal_url("/apps")).text
    assert engine_pid(app) == pid


def test_environment_file_settings_take_effect_and_reverting_restores_them(box):
    app, upstream = box
    pid, external = engine_pid(app), free_port()
    add_app(app, "Open", external, upstream())
    env = app.root / "etc/environment"
    env.write_text(f'WEB_USERNAME=alice\nexport WEB_PASSWORD="{PASSWORD}"\nAUTH_EXCLUDE={external}\n')
    restart_caddy(app)
    health = app.portal_url("/api/health")
    wait_for(lambda: status(health, cert=app.cert, auth=("alice", PASSWORD)) == 200)
    assert status(health, cert=app.cert, auth=("vastai", app.token)) == 401  # the old user no longer
    assert status(app.url(external, "/"), cert=app.cert) == 200  # excluded: open
    env.write_text(env.read_text() + "ENABLE_HTTPS=false\n")
    restart_caddy(app)
    plain = f"http://127.0.0.1:{app.portal_port}/api/health"
    wait_for(lambda: status(plain, https=False, headers={"Authorization": f"Bearer {app.token}"}) == 200)
    env.unlink()
    restart_caddy(app)
    wait_for(lambda: status(health, cert=app.cert, auth=("vastai", app.token)) == 200)
    assert status(health, cert=app.cert, auth=("alice", PASSWORD)) == 401
    assert status(app.url(external, "/"), cert=app.cert) == 401  # no longer excluded
    assert engine_pid(app) == pid


def test_a_broken_portal_yaml_keeps_the_previous_configuration_and_says_why(box):
    app, _ = box
    path = app.root / "etc/portal.yaml"
    good = path.read_text()
    caddyfile = (app.root / "etc/caddy/Caddyfile").read_text()
    try:
        path.write_text(good + "  Broken:\n    host: 'no spaces allowed'\n    external_port: 7\n")
        restart_caddy(app)
        with app.client() as client:
            wait_for(lambda: client.get(app.portal_url("/api/health")).status_code == 200)
        assert (app.root / "etc/caddy/Caddyfile").read_text() == caddyfile
        assert "Caddy keeps the previous configuration" in app.log("caddy")
        with app.client() as client:
            answer = client.post(app.portal_url("/api/caddy/reload"))
        assert answer.status_code == 422 and "previous configuration keeps serving" in answer.json()["detail"]
    finally:
        path.write_text(good)


def test_a_stream_in_flight_survives_a_reload_from_the_portal(box):
    app, upstream = box
    with app.client(timeout=120) as client:
        assert put(app, client, "vllm", model="acme/tiny-chat", env={"FAKE_VLLM_TOKEN_DELAY": "0.3"},
                   wait=True).json()["result"] == "ready"
        body = {"model": "acme/tiny-chat", "stream": True, "max_tokens": 20,
                "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            def stream():
                with client.stream("POST", app.api_url("/v1/chat/completions"), json=body) as response:
                    return response.status_code, [line for line in response.iter_lines() if line.startswith("data:")]
            future = pool.submit(stream)
            add_app(app, "Later", free_port(), upstream())
            assert client.post(app.portal_url("/api/caddy/reload")).json() == {"result": "reloaded"}
            assert not future.done()
            code, events = future.result(timeout=60)
        assert code == 200 and events[-1] == "data: [DONE]" and len(events) >= 16
        assert client.post(app.portal_url("/api/caddy/reload")).json() == {"result": "unchanged"}
