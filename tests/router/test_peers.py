"""Several boxes, one endpoint: box A lists box B as a peer (ROUTER_PEERS, B's inference key, B's self-signed
certificate as the CA to trust) and answers requests for B's model through B, streaming included; a recording peer
(a plain HTTP server in this test) shows what a peer receives. Two real appliances on loopback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.appliance import REPO, Appliance, processes_with_env
from tests.router.conftest import control

A_TOKEN = "box-a-admin-token-0123456789"
B_TOKEN = "box-b-admin-token-0123456789"
B_KEY = "box-b-key-for-box-a-0123456789"  # one of B's API_KEYS: an inference key, never B's admin token
REC_KEY = "recorder-key-0123456789abcdef"
CHAT, CODER = "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # A's model, B's (as in the docs)


class Recorder(BaseHTTPRequestHandler):
    """A peer that lists `rec/model` and records the headers of every request it gets."""
    seen: list[dict] = []

    def _answer(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        Recorder.seen.append({"path": self.path, **dict(self.headers)})
        self._answer({"object": "list", "data": [{"id": "rec/model", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append({"path": self.path, **dict(self.headers)})
        self._answer({"object": "chat.completion", "model": "rec/model", "choices": []})

    def log_message(self, *args):
        pass


def wait_for(condition, timeout: float, what: str):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"{what} not after {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    b = Appliance(tmp_path_factory.mktemp("box-b"), {"VLLM_MODEL": CODER, "OPEN_BUTTON_TOKEN": B_TOKEN,
                                                     "API_KEYS": B_KEY, "FAKE_VLLM_TOKEN_DELAY": "0.02"})
    a = None
    try:
        b.start()
        peers = (f"https://127.0.0.1:{b.api_port}={B_KEY};ca={b.cert}, "
                 f"http://127.0.0.1:{recorder.server_address[1]}={REC_KEY}, ftp://nowhere=not-a-good-key")
        a = Appliance(tmp_path_factory.mktemp("box-a"), {"VLLM_MODEL": CHAT, "OPEN_BUTTON_TOKEN": A_TOKEN,
                                                         "ROUTER_PEERS": peers, "ROUTER_PEERS_INTERVAL": "1"})
        a.start()
        yield a, b
    finally:
        for box in (a, b):
            if box is not None:
                box.stop()
        recorder.shutdown()


def listing_with(app: Appliance, name: str, present: bool = True) -> list[dict] | None:
    """A's list once `name` is in it (or, present=False, once it is not)."""
    listed = models(app)
    return listed if any(e["id"] == name for e in listed) == present else None


def models(app: Appliance) -> list[dict]:
    with app.client() as client:
        answer = client.get(app.api_url("/v1/models"))
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def test_box_a_lists_box_bs_model_with_its_peer_after_its_own(boxes):
    a, b = boxes
    listed = wait_for(lambda: listing_with(a, CODER), 20, "B's model in A's list")
    assert listed[0]["id"] == CHAT and "peer" not in listed[0] and listed[0]["instance"] == "vllm"
    remote = next(e for e in listed if e["id"] == CODER)
    assert remote["peer"] == f"127.0.0.1:{b.api_port}" and remote["instance"] == f"peer:127.0.0.1:{b.api_port}"
    assert remote["state"] == "ready"
    assert [e["id"] for e in models(b)] == [CODER]  # B lists its own only (A is no peer of B)


def test_a_request_to_a_for_bs_model_is_answered_by_b_streamed_too(boxes):
    a, b = boxes
    body = {"model": CODER, "messages": [{"role": "user", "content": "hello from A"}], "max_tokens": 6}
    with a.client(timeout=30) as client:
        plain = client.post(a.api_url("/v1/chat/completions"), json=body)
        with client.stream("POST", a.api_url("/v1/chat/completions"), json={**body, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
            streamed_status, stand_in = stream.status_code, stream.headers.get("x-stand-in-model")
        local = client.post(a.api_url("/v1/chat/completions"), json={**body, "model": CHAT})
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == CODER and plain.headers["x-stand-in-model"] == CODER
    assert plain.json()["choices"][0]["message"]["content"].startswith(f"stand-in reply from {CODER}:")
    assert streamed_status == 200 and stand_in == CODER and events[-1] == "data: [DONE]"
    assert len(events) >= 3 and all(json.loads(e[6:])["model"] == CODER for e in events[:-1])
    assert local.headers["x-stand-in-model"] == CHAT  # A's own model stays A's
    with control(a) as router_a, control(b) as router_b:
        on_a = router_a.get("/activity", params={"limit": 3}).json()["requests"]
        on_b = router_b.get("/activity", params={"limit": 2}).json()["requests"]
    assert [(r["model"], r["instance"], r["status"]) for r in on_a[1:]] == \
        [(CODER, f"peer:127.0.0.1:{b.api_port}", 200)] * 2
    assert [(r["model"], r["instance"], r["status"]) for r in on_b] == [(CODER, "vllm", 200)] * 2


def test_a_request_in_flight_to_a_peer_shows_in_as_gauge_under_the_peers_name(boxes):
    a, b = boxes
    gauge = f'appliance_router_in_flight{{instance="peer:127.0.0.1:{b.api_port}"}}'
    body = {"model": CODER, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}
    with a.client(timeout=30) as client, control(a) as router:
        with client.stream("POST", a.api_url("/v1/chat/completions"), json=body) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # B is answering
            during = router.get("/metrics").text
            for _ in lines:
                pass
        after = router.get("/metrics").text
        status = router.get("/status").json()["instances"]
    assert f"{gauge} 1.0" in during and f"{gauge} 0.0" in after
    assert not any(name.startswith("peer:") for name in status)  # a peer is never taken for an instance


def test_the_scale_out_docs_example_runs_as_written(boxes):
    a, b = boxes
    doc = (REPO / "docs/scale-out.md").read_text().split("## Several boxes, one endpoint", 1)[1]
    (block,) = re.findall(r"```bash\n(.*?)```", doc.split("\n## ", 1)[0], re.S)
    assert block.count("https://$BOX_A:8000/") == 2
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace(":8000/", f":{a.api_port}/")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BOX_A": "127.0.0.1", "TOKEN_A": A_TOKEN, "CURL_CA_BUNDLE": str(a.cert)})
    assert done.returncode == 0, done.stderr
    decoder, text = json.JSONDecoder(), done.stdout
    listed, at = decoder.raw_decode(text)
    answer, _ = decoder.raw_decode(text[at:].lstrip())
    assert {e["id"]: e.get("peer") for e in listed["data"]}[CODER] == f"127.0.0.1:{b.api_port}"
    assert answer["choices"][0]["message"]["content"].startswith(f"stand-in reply from {CODER}:")


def test_a_peer_gets_its_own_key_never_the_callers_credentials(boxes):
    a, _ = boxes
    Recorder.seen.clear()
    with a.client() as client:
        answer = client.post(a.api_url("/v1/chat/completions"), json={"model": "rec/model", "messages": []},
                             headers={"Cookie": "theirs=1"})
        wrong = client.post(a.api_url("/v1/chat/completions"), json={"model": "rec/model"},
                            headers={"Authorization": "Bearer not-a-token-of-a-000000"})
    assert answer.status_code == 200 and answer.json()["model"] == "rec/model", answer.text
    assert wrong.status_code == 401  # A's Caddy first: a caller without A's credentials reaches no peer
    got = [s for s in Recorder.seen if s["path"] == "/v1/chat/completions"]
    assert len(got) == 1 and got[0]["Authorization"] == f"Bearer {REC_KEY}" and got[0]["X-Appliance-Peer"] == "1"
    assert "Cookie" not in got[0] and "X-Forwarded-For" not in got[0]
    assert not any(A_TOKEN in json.dumps(s) for s in Recorder.seen)
    listing = wait_for(lambda: [s for s in Recorder.seen if s["path"] == "/v1/models"], 10, "A reading the list")
    assert all(s["Authorization"] == f"Bearer {REC_KEY}" for s in listing)


def test_the_peers_keys_reach_the_router_only_and_a_bad_entry_is_logged(boxes):
    a, _ = boxes
    holders = []
    for pid in processes_with_env(f"APPLIANCE_ROOT={a.root}".encode()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ROUTER_PEERS=" in environ:
            holders.append(argv)
    assert holders and all(b"app.router" in argv for argv in holders), holders
    log = a.log("router")
    assert "ERROR: ROUTER_PEERS entry 3 is left out: 'ftp://nowhere' must be http(s)://HOST:PORT" in log
    assert "WARNING: peer 127.0.0.1:" in log and "plain http" in log  # the recorder
    for secret in (B_KEY, REC_KEY):
        assert secret not in log and secret not in a.output() and secret not in a.log("manager")


def test_box_b_stopped_leaves_a_serving_its_own_models(boxes):
    a, b = boxes
    b.stop()
    listed = wait_for(lambda: listing_with(a, CODER, False), 20, "B's model gone from A's list")
    assert [e["id"] for e in listed] == [CHAT, "rec/model"]
    with a.client() as client:
        gone = client.post(a.api_url("/v1/chat/completions"), json={"model": CODER, "messages": []})
        local = client.post(a.api_url("/v1/chat/completions"), json={"model": CHAT, "messages": []})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert local.status_code == 200
    logged = a.log("router").count(f"peer 127.0.0.1:{b.api_port} is left out until it answers")
    assert 1 <= logged <= 3  # once per new reason, not at each reading
