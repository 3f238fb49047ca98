"""Swaps under load: 16 clients send small chat requests through Caddy and the router, back to back, while the
model swaps (blue/green, then restart); failed requests and the longest gap between two answers. Then 50 requests
naming the new model, sent right after a swap is accepted: how many the new model answers.

The stand-in engine, with a 1 s start (so the restart's wait is visible next to blue/green's none).
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from bench.report import table, write_section
from tests.appliance import Appliance

CLIENTS = 16
START_DELAY = "1.0"


class Load:
    def __init__(self, app: Appliance, model: str, clients: int = CLIENTS):
        self.app, self.model, self.stop = app, model, threading.Event()
        self.done: list[tuple[float, float, int, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        body = {"model": self.model, "max_tokens": 4, "messages": [{"role": "user", "content": "one two"}]}
        with self.app.client(timeout=120) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.post(self.app.api_url("/v1/chat/completions"), json=body)
                    status, engine = answer.status_code, answer.headers.get("x-stand-in-model", "")
                except Exception as exc:  # noqa: BLE001 (counted as failed)
                    status, engine = 0, repr(exc)
                with self.lock:
                    self.done.append((started, time.monotonic(), status, engine))

    def run_during(self, action) -> tuple[int, str, float, float]:
        """(requests, failed (with their kinds), longest gap s during the action, the action's seconds)."""
        for thread in self.threads:
            thread.start()
        time.sleep(2.0)  # steady state
        begin = time.monotonic()
        action()
        took = time.monotonic() - begin
        time.sleep(2.0)
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)
        ends = sorted(d[1] for d in self.done if d[2] == 200 and begin - 1 <= d[1] <= begin + took + 1)
        gap = max((b - a for a, b in zip(ends, ends[1:], strict=False)), default=0.0)
        kinds: dict[str, int] = {}
        for d in self.done:
            if d[2] != 200:
                kind = str(d[2]) if d[2] else d[3].split("(")[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        failed = sum(kinds.values())
        said = f"{failed} ({', '.join(f'{n} {k}' for k, n in kinds.items())})" if failed else "0"
        return len(self.done), said, gap, took


def put(app: Appliance, instance: str, **body) -> dict:
    with app.client(timeout=300) as client:
        answer = client.put(app.portal_url(f"/api/instances/{instance}"), json=body)
        assert answer.status_code in (200, 202), answer.text
        return answer.json()


def fifty(app: Appliance, strategy: str, models: Path) -> tuple[int, int]:
    """50 requests naming the new model, sent as soon as the swap is accepted: (answered by it, failed)."""
    new = str(models / "fifty-2")
    put(app, "fifty", model=str(models / "fifty-1"), served_model_name="fifty-1", wait=True, strategy="restart")
    put(app, "fifty", model=new, served_model_name="fifty-2", strategy=strategy)
    answers: list[tuple[int, str]] = []

    def one() -> None:
        body = {"model": "fifty-2", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        with app.client(timeout=120) as client:
            answer = client.post(app.api_url("/v1/chat/completions"), json=body)
            answers.append((answer.status_code, answer.headers.get("x-stand-in-model", "")))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    with app.client() as client:
        client.delete(app.portal_url("/api/instances/fifty"))
    return sum(1 for a in answers if a == (200, new)), sum(1 for a in answers if a[0] != 200)


def main() -> None:
    rows, fifties = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"  # local folders: the stand-in serves them without the Hub
        for name in ("default", "chat-a", "chat-b", "fifty-1", "fifty-2"):
            (models / name).mkdir(parents=True)
        app = Appliance(Path(tmp) / "app", {"VLLM_MODEL": str(models / "default"),
                                            "FAKE_VLLM_START_DELAY": START_DELAY})
        app.start()
        try:
            for n, strategy in enumerate(("blue_green", "restart")):
                old, new = (models / "chat-a", models / "chat-b") if n == 0 else (models / "chat-b", models / "chat-a")
                put(app, "chat", model=str(old), served_model_name="chat", wait=True, strategy="restart")
                load = Load(app, "chat")
                body = {"model": str(new), "served_model_name": "chat", "strategy": strategy, "wait": True}
                requests, failed, gap, took = load.run_during(lambda body=body: put(app, "chat", **body))
                rows.append([strategy, CLIENTS, requests, failed, f"{gap:.3f}", f"{took:.2f}"])
            for strategy in ("blue_green", "restart"):
                new, failed = fifty(app, strategy, models)
                fifties.append([strategy, 50, new, failed])
        finally:
            app.stop()
    body = (f"{CLIENTS} clients send small chat requests (4 tokens) through Caddy and the router back to back, "
            f"naming the model; the stand-in engine starts in {START_DELAY} s. During the swap (`PUT` with "
            "`wait=true`, same served name, another model): requests in all, failed ones, and the longest time "
            "between two answers from 1 s before the PUT to 1 s after it answered.\n\n"
            + table(["strategy", "clients", "requests", "failed", "longest gap s", "swap s"], rows)
            + "\n\n50 requests naming the new model, sent the moment a swap to it is accepted (`wait=false`):\n\n"
            + table(["strategy", "sent", "answered by the new model", "failed"], fifties)
            + "\n\nTargets: 0 failed requests; no gap with blue/green; with restart the added wait is the engine's "
            "start; 50 of 50 from the new model.")
    write_section("swap_load", "Swaps under load (router)", body, "python -m bench swap_load")


if __name__ == "__main__":
    main()
