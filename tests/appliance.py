"""Boot the real appliance (entrypoint.sh -> supervisord -> Caddy, manager, engines) in a temporary root."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
FAKES = REPO / "tests" / "fakes" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with_env(marker: bytes) -> list[int]:
    """Pids of live processes whose environment holds `marker` (e.g. APPLIANCE_ROOT=<root>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


class Appliance:
    """One appliance, with its own root folder and ports."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, *, path_prefix: list[Path] | None = None,
                 entrypoint: Path = REPO / "entrypoint.sh"):
        self.root = root
        self.portal_port, self.api_port = free_port(), free_port()
        self.portal_internal, self.api_internal = free_port(), free_port()
        self.entrypoint = entrypoint
        path = os.pathsep.join(str(p) for p in (path_prefix if path_prefix is not None else [FAKES]))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PORTAL_", "OPEN_BUTTON"))},
            "PATH": f"{path}{os.pathsep}{os.environ['PATH']}" if path else os.environ["PATH"],
            "APPLIANCE_ROOT": str(root),
            "PORTAL_CONFIG": (f"localhost:{self.portal_port}:{self.portal_internal}:/:Instance Portal|"
                              f"localhost:{self.api_port}:{self.api_internal}:/docs:vLLM API"),
            "HF_ENDPOINT": os.environ.get("TEST_HF_ENDPOINT", "http://127.0.0.1:9"),
            # Engine ports of its own, below the kernel's ephemeral range: appliances booted side by side (other
            # test runs on this machine) do not hand out the same engine port.
            "ENGINE_PORTS": f"{(base := random.randrange(10000, 32000, 50))}-{base + 49}",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.boot_log = root / "boot.out"

    # --- life cycle ----------------------------------------------------------
    def start(self, *, wait_engine: bool | None = None, timeout: float = 60) -> Appliance:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([str(self.entrypoint)], env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=self.boot_log.open("ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.wait_portal(timeout)
            if wait_engine if wait_engine is not None else bool(self.env.get("VLLM_MODEL")):
                self.wait_engine(timeout)
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def wait_portal(self, timeout: float = 60) -> None:
        self._wait(lambda: self.client().get(self.portal_url("/api/health")).status_code == 200, timeout, "portal")

    def wait_engine(self, timeout: float = 60, instance: str = "vllm") -> None:
        """Until the router lists the instance's served name as ready."""
        def ready() -> bool:
            answer = self.client().get(self.api_url("/v1/models"))
            return answer.status_code == 200 and any(
                m.get("instance") == instance and m.get("state") == "ready" for m in answer.json()["data"])
        self._wait(ready, timeout, "engine")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"appliance exited with {self.process.returncode}:\n{self.output()}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 60, *, check: bool = True) -> None:
        """SIGTERM the entrypoint (supervisord), as `docker stop` does, and check nothing is left."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise
        leftovers = self.leftover_processes()
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not check or not leftovers, f"processes left behind after stop: {leftovers}"

    def leftover_processes(self, grace: float = 5) -> list[int]:
        deadline = time.monotonic() + grace
        while True:
            pids = processes_with_env(f"APPLIANCE_ROOT={self.root}".encode())
            if not pids or time.monotonic() > deadline:
                return pids
            time.sleep(0.1)

    # --- reading it ----------------------------------------------------------
    @property
    def https(self) -> bool:
        return self.env.get("ENABLE_HTTPS", "true").lower() not in ("false", "0", "no")

    @property
    def token(self) -> str:
        return self.env.get("OPEN_BUTTON_TOKEN") or (self.workspace / ".appliance/token").read_text().strip()

    @property
    def workspace(self) -> Path:
        return Path(self.env["WORKSPACE"]) if self.env.get("WORKSPACE") else self.root / "workspace"

    @property
    def cert(self) -> Path:
        if self.env.get("TLS_CERT"):
            return Path(self.env["TLS_CERT"])
        return self.workspace / ".appliance/tls/cert.pem"

    def url(self, port: int, path: str = "/") -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{port}{path}"

    def portal_url(self, path: str = "/") -> str:
        return self.url(self.portal_port, path)

    def api_url(self, path: str = "/") -> str:
        return self.url(self.api_port, path)

    def engine_port(self, instance: str = "vllm") -> int:
        """Where an instance's engine listens (the router's table)."""
        routes = json.loads((self.root / "run/appliance/routes.json").read_text())["routes"]
        return next(r["port"] for r in routes if r["id"] == instance)

    def client(self, *, auth: bool = True, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        verify = ssl.create_default_context(cafile=str(self.cert)) if self.https else False
        return httpx.Client(verify=verify, headers=headers,
                            timeout=kwargs.pop("timeout", 10), **kwargs)

    def output(self) -> str:
        return self.boot_log.read_text(errors="replace") if self.boot_log.exists() else ""

    def log(self, name: str) -> str:
        path = self.root / "var/log/portal" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / ".venv/bin/supervisorctl"), "-c",
                               str(self.root / "etc/supervisor/supervisord.conf"), *args],
                              capture_output=True, text=True, timeout=60)
