"""Tests of the stand-in `vllm` executable itself (tests/fakes/bin/vllm); stdlib + pytest only."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE = Path(__file__).parent / "bin" / "vllm"
KEY = "sk-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake:
    """One `vllm serve ...` subprocess on a free port; stdout/stderr go to files."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None, port: int | None = None):
        self.port = port or free_port()
        self.out, self.err = tmp_path / f"out-{self.port}.log", tmp_path / f"err-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_VLLM_")}
        full_env.update(env or {})
        cmd = [sys.executable, str(FAKE), "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def request(self, method, path, body=None, headers=None, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        raw = r.read()
        if conn is None:
            c.close()
        return r.status, r, raw

    def wait_healthy(self, timeout=5.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc.poll() is None, self.stdout() + self.stderr()
            try:
                if self.request("GET", "/health")[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("stand-in never became healthy")

    def stop(self) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=5)
        return rc, time.monotonic() - start


@pytest.fixture
def fake(tmp_path):
    started = []

    def _start(*args, env=None, port=None):
        f = Fake(tmp_path, *args, env=env, port=port)
        started.append(f)
        return f

    yield _start
    for f in started:
        if f.proc.poll() is None:
            f.proc.kill()
            f.proc.wait()


def test_cli_version_bad_args_and_missing_path(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(FAKE), *args], capture_output=True, text=True, timeout=10)

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == "0.32.0"
    r = run("serve", "m", "--no-such-option", "1")
    assert r.returncode == 2
    assert "vllm serve: error: unrecognized arguments: --no-such-option 1" in r.stderr
    r = run("serve", str(tmp_path / "missing-model"))
    assert r.returncode == 1
    assert "missing-model" in r.stderr and "ValueError" in r.stderr
    assert os.access(FAKE, os.X_OK) and FAKE.read_text().startswith("#!/usr/bin/env python3\n")


def test_http_surface(fake):
    f = fake("acme/tiny-chat", "--served-model-name", "tiny", "tiny-alias", "--api-key", KEY,
             "--max_model_len", "2048", "-tp", "1", "--enforce-eager", "--seed", "0")
    f.wait_healthy()
    auth = {"Authorization": f"Bearer {KEY}"}
    status, r, body = f.request("GET", "/health")
    assert (status, body) == (200, b"")
    assert f.request("GET", "/ping")[0] == 200
    assert json.loads(f.request("GET", "/version")[2]) == {"version": "0.32.0"}

    status, _, body = f.request("GET", "/v1/models")
    assert status == 401 and json.loads(body) == {"error": "Unauthorized"}
    status, _, body = f.request("GET", "/v1/models", headers=auth)
    models = json.loads(body)
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    assert models["data"][0] | {"created": 0} == {
        "id": "tiny", "object": "model", "created": 0, "owned_by": "vllm", "root": "acme/tiny-chat",
        "parent": None, "max_model_len": 2048}

    # Several requests on one keep-alive connection, streaming included.
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=5)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there, how are you?"}]}
    status, r, body = f.request("POST", "/v1/chat/completions", chat | {"max_tokens": 6}, auth, conn)
    reply = json.loads(body)
    assert status == 200 and r.getheader("Content-Type") == "application/json"
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny"
    assert reply["choices"][0]["message"]["content"] == "stand-in reply from tiny: hello there"
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 6

    stream = chat | {"model": "tiny-alias", "stream": True, "stream_options": {"include_usage": True}}
    status, r, body = f.request("POST", "/v1/chat/completions", stream, auth, conn)
    assert status == 200 and r.getheader("Transfer-Encoding") == "chunked"
    assert r.getheader("Content-Type").startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "stand-in reply from tiny-alias: hello there how are you"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9

    status, _, body = f.request("POST", "/v1/completions",
                                {"model": "tiny", "prompt": "Once upon a time", "stream": True}, auth, conn)
    pieces = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e and e != "data: [DONE]"]
    assert {p["object"] for p in pieces} == {"text_completion"}
    assert "".join(p["choices"][0]["text"] for p in pieces) == "stand-in reply from tiny: once upon a time"
    status, _, body = f.request("POST", "/v1/completions", {"model": "tiny", "prompt": "x y"}, auth, conn)
    assert json.loads(body)["choices"][0]["text"] == "stand-in reply from tiny: x y"

    status, _, body = f.request("POST", "/v1/embeddings", {"model": "tiny", "input": ["a", "b"]}, auth, conn)
    emb = json.loads(body)
    assert status == 200 and len(emb["data"]) == 2 and len(emb["data"][0]["embedding"]) == 8
    conn.close()

    status, _, body = f.request("POST", "/v1/chat/completions", chat | {"model": "nope"}, auth)
    assert status == 404 and json.loads(body) == {"error": {
        "message": "The model `nope` does not exist.", "type": "NotFoundError", "param": None, "code": 404}}
    status, _, body = f.request("POST", "/v1/chat/completions", b"{not json", auth)
    assert status == 400 and json.loads(body)["error"]["code"] == 400
    status, _, body = f.request("GET", "/no/such/path")
    assert status == 404 and json.loads(body) == {"detail": "Not Found"}
    status, _, body = f.request("GET", "/metrics")
    assert status == 200 and b"vllm:num_requests_running" in body

    out = f.stdout()
    assert "vLLM API server version 0.32.0" in out
    assert "model-00001-of-00002.safetensors:  50%|█████     |" in out  # HF id -> download lines
    assert f"Starting vLLM API server on http://127.0.0.1:{f.port}" in out
    assert "INFO:     Application startup complete." in out
    assert '- "POST /v1/chat/completions HTTP/1.1" 200 OK' in out
    assert '- "GET /v1/models HTTP/1.1" 401 Unauthorized' in out
    rc, took = f.stop()
    assert rc == 0 and took < 1.0
    assert "INFO:     Shutting down" in f.stdout()


def test_start_delay_refuses_connections_then_sigterm_is_prompt(fake):
    f = fake("/", "--served-model-name", "local", env={"FAKE_VLLM_START_DELAY": "0.8"})
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        f.request("GET", "/health")
    assert "Application startup complete." not in f.stdout()
    assert 0.2 < f.wait_healthy() < 2.0
    assert "safetensors:" not in f.stdout()  # local path: no download lines

    # A stream in flight does not hold up shutdown.
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=5)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "a " * 12, "stream": True}),
                 {"Content-Type": "application/json"})
    first = conn.getresponse().readline()
    assert first.startswith(b"data: ")
    rc, took = f.stop()
    assert rc == 0 and took < 1.0


def test_streaming_is_incremental(fake):
    f = fake("m", env={"FAKE_VLLM_TOKEN_DELAY": "0.1"})
    f.wait_healthy()
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=5)
    start = time.monotonic()
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body))
    r = conn.getresponse()
    assert r.readline().startswith(b"data: ") and time.monotonic() - start < 0.3
    r.read()
    assert time.monotonic() - start >= 0.6  # 6 tokens x 0.1 s


def test_busy_port_fails_fast(fake):
    first = fake("m")
    first.wait_healthy()
    second = fake("m", env={"FAKE_VLLM_START_DELAY": "10"}, port=first.port)
    assert second.proc.wait(timeout=3) == 1
    assert "Address already in use" in second.stderr()
    assert first.stop()[0] == 0


def test_sigterm_during_startup(fake):
    f = fake("m", env={"FAKE_VLLM_START_DELAY": "10"})
    time.sleep(0.3)
    rc, took = f.stop()
    assert rc == 0 and took < 1.0


@pytest.mark.parametrize("model,env,message", [
    ("m", {"FAKE_VLLM_FAIL": "CUDA out of memory"}, "RuntimeError: CUDA out of memory"),
    ("acme/fail-load-model", {}, "RuntimeError: failed to load acme/fail-load-model"),
])
def test_fail_to_load(fake, model, env, message):
    f = fake(model, env={"FAKE_VLLM_START_DELAY": "0.3", **env})
    assert f.proc.wait(timeout=5) == 1
    assert f.stderr().rstrip().endswith(message)
    assert "Traceback (most recent call last):" in f.stderr()
    assert "Application startup complete." not in f.stdout()


@pytest.mark.parametrize("model,env,after", [
    ("m", {"FAKE_VLLM_CRASH_AFTER": "0.3"}, 0.3),
    ("crash-after-ready", {}, 1.0),
])
def test_crash_after_ready(fake, model, env, after):
    f = fake(model, env=env)
    f.wait_healthy()
    ready = time.monotonic()
    assert f.proc.wait(timeout=5) == 1
    assert time.monotonic() - ready >= after - 0.1
    assert "EngineDeadError" in f.stderr()


def test_slow_start_by_model_name_beats_env(fake):
    f = fake("slow-start-model", env={"FAKE_VLLM_START_DELAY": "0.05"})
    time.sleep(1.0)
    with pytest.raises(ConnectionRefusedError):
        f.request("GET", "/health")
    rc, took = f.stop()
    assert rc == 0 and took < 1.0


def test_log_every(fake):
    f = fake("m", env={"FAKE_VLLM_LOG_EVERY": "0.1"})
    f.wait_healthy()
    time.sleep(0.6)
    assert f.stdout().count("Avg prompt throughput: 0.0 tokens/s") >= 3
    assert f.stop()[0] == 0


def test_sleep_mode_endpoints_as_vllm_serves_them(fake):
    """vLLM attaches /sleep, /wake_up and /is_sleeping only with VLLM_SERVER_DEV_MODE=1, and can sleep only with
    --enable-sleep-mode; asleep, a request waits until the engine is woken (its scheduler is paused)."""
    plain = fake("m")
    plain.wait_healthy()
    assert plain.request("POST", "/sleep")[0] == 404 and plain.request("GET", "/is_sleeping")[0] == 404
    no_mode = fake("m", env={"VLLM_SERVER_DEV_MODE": "1"})
    no_mode.wait_healthy()
    assert no_mode.request("POST", "/sleep?level=1")[0] == 500
    f = fake("m", "--enable-sleep-mode", env={"VLLM_SERVER_DEV_MODE": "1"})
    f.wait_healthy()
    assert json.loads(f.request("GET", "/is_sleeping")[2]) == {"is_sleeping": False}
    assert f.request("POST", "/sleep?level=3")[0] == 422
    status, _, raw = f.request("POST", "/sleep?level=1")
    assert status == 200 and json.loads(raw) == {"status": "sleeping", "level": 1}
    assert json.loads(f.request("GET", "/is_sleeping")[2]) == {"is_sleeping": True}
    assert f.request("GET", "/health")[0] == 200 and f.request("GET", "/v1/models")[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=5)
    conn.request("POST", "/v1/completions", json.dumps({"model": "m", "prompt": "hi"}))
    conn.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # waits while asleep
        conn.getresponse()
    status, _, raw = f.request("POST", "/wake_up")
    assert status == 200 and json.loads(raw) == {"status": "awake", "tags": None}
    conn.sock.settimeout(5)
    assert conn.getresponse().status == 200  # ... and is served once woken
    assert json.loads(f.request("GET", "/is_sleeping")[2]) == {"is_sleeping": False}
