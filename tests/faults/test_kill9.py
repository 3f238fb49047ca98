"""kill -9 of each program under steady request load: it comes back by itself, no request hangs,
nothing saved is lost."""
from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import httpx
import pytest

REQUEST_TIMEOUT = 5.0


def saved_files(appliance) -> dict[str, str]:
    """Digests of what must survive a crash: program files, portal.yaml, token, certificate, saved state."""
    roots = [appliance.root / "etc/supervisor/conf.d", appliance.root / "workspace/.appliance",
             appliance.root / "etc/portal.yaml"]
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if not p.name.startswith(".")}


class Load:
    """Steady requests to both public ports from two threads; records each request's outcome and duration."""

    def __init__(self, appliance):
        self.appliance, self.stop, self.results = appliance, threading.Event(), []
        self.threads = [threading.Thread(target=self._run, args=(url,), daemon=True)
                        for url in (appliance.api_url("/v1/models"), appliance.portal_url("/api/health"))]

    def _run(self, url: str) -> None:
        with self.appliance.client(timeout=REQUEST_TIMEOUT) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    outcome = client.get(url).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.results.append((url, outcome, time.monotonic() - started))
                time.sleep(0.02)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT + 2)


def pid_of(appliance, program: str) -> int:
    return int(appliance.supervisorctl("pid", program).stdout.strip())


def wait_back(appliance, program: str, old_pid: int, timeout: float = 30) -> float:
    """Seconds until `program` runs again under a new pid and both ports answer 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = appliance.supervisorctl("status", program).stdout
        if "RUNNING" in status and pid_of(appliance, program) != old_pid:
            try:
                with appliance.client(timeout=2) as client:
                    if (client.get(appliance.api_url("/v1/models")).status_code == 200
                            and client.get(appliance.portal_url("/api/health")).status_code == 200):
                        return time.monotonic() - started
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"{program} did not come back within {timeout}s: {appliance.supervisorctl('status').stdout}")


@pytest.mark.parametrize("program", ["vllm", "manager", "caddy", "router"])
def test_kill9_under_load_recovers_by_itself(appliance, program):
    before = saved_files(appliance)
    with Load(appliance) as load:
        time.sleep(0.5)
        victim = pid_of(appliance, program)
        os.kill(victim, signal.SIGKILL)
        recovery = wait_back(appliance, program, victim)
        time.sleep(0.5)
    assert load.results, "the load generator sent nothing"
    slowest = max(duration for _, _, duration in load.results)
    assert slowest < REQUEST_TIMEOUT + 1, f"a request hung for {slowest:.1f}s"
    # After recovery every request succeeds again.
    assert all(outcome == 200 for _, outcome, _ in load.results[-4:]), load.results[-4:]
    assert saved_files(appliance) == before
    print(f"{program}: back in {recovery:.2f}s; {len(load.results)} requests, slowest {slowest:.2f}s")
