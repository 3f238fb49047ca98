"""Two boxes on one machine: network namespaces made by the test, each running an appliance.

    root namespace (the test) --veth 10.231.1.0/30--> head namespace --veth 10.231.2.0/24--> worker namespace

The test reaches the head's Caddy over the first link; the head and the worker talk over the second one only (the
worker has no route anywhere else). Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`; namespaces share the
filesystem, /dev/shm and the pid space, so the appliance fixtures still see every process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from tests.appliance import Appliance

NET = "10.231"  # two_boxes(net=...): another /16 for a test that may run beside this one (the root namespace's
# front address must differ between two runs at once)
CLIENT_ADDR, HEAD_FRONT = f"{NET}.1.1", f"{NET}.1.2"
HEAD_ADDR, WORKER_ADDR = f"{NET}.2.1", f"{NET}.2.2"


def addresses(net: str = NET) -> tuple[str, str, str, str]:
    """(client, head's front, head, worker) addresses in `net` (the first two octets)."""
    return f"{net}.1.1", f"{net}.1.2", f"{net}.2.1", f"{net}.2.2"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if not shutil.which("ip"):
        return "needs `ip` (iproute2)"
    probe = f"nsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


@contextmanager
def two_boxes(net: str = NET, name: str = ""):
    """Yields (head namespace, worker namespace) on addresses(net); removes them (and their links) at the end.
    `name` tells apart the namespaces and links of two calls in one process."""
    client_addr, head_front, head_addr, worker_addr = addresses(net)
    tag = name + str(os.getpid())  # the whole pid: another test process never shares it (interface names: 15 max)
    head, worker = f"head{tag}", f"worker{tag}"
    front, link = f"f{tag}", f"l{tag}"
    for ns in (head, worker):
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", ns=ns)
    try:
        ip("link", "add", f"{front}a", "type", "veth", "peer", "name", f"{front}b")
        ip("link", "set", f"{front}b", "netns", head)
        ip("addr", "add", f"{client_addr}/30", "dev", f"{front}a")
        ip("link", "set", f"{front}a", "up")
        ip("addr", "add", f"{head_front}/30", "dev", f"{front}b", ns=head)
        ip("link", "set", f"{front}b", "up", ns=head)
        ip("link", "add", f"{link}a", "netns", head, "type", "veth", "peer", "name", f"{link}b", "netns", worker)
        ip("addr", "add", f"{head_addr}/24", "dev", f"{link}a", ns=head)
        ip("link", "set", f"{link}a", "up", ns=head)
        ip("addr", "add", f"{worker_addr}/24", "dev", f"{link}b", ns=worker)
        ip("link", "set", f"{link}b", "up", ns=worker)
        yield head, worker
    finally:
        subprocess.run(["ip", "link", "del", f"{front}a"], capture_output=True)
        for ns in (head, worker):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class NsAppliance(Appliance):
    """An appliance whose processes all run in network namespace `ns`, reached at `address` from the test."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, *, ns: str, address: str | None, **kwargs):
        super().__init__(root, env, **kwargs)
        self.ns, self.address = ns, address
        self.entrypoint_argv = ["ip", "netns", "exec", ns, str(self.entrypoint)]

    def start(self, *, wait_engine: bool | None = None, timeout: float = 60) -> NsAppliance:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.entrypoint_argv, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=self.boot_log.open("ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.wait_portal(timeout)
            if wait_engine:
                self.wait_engine(timeout)
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def wait_portal(self, timeout: float = 60) -> None:
        if self.address:
            return super().wait_portal(timeout)
        # unreachable from the test (a worker): its manager answering under supervisor is enough
        self._wait(lambda: "RUNNING" in self.supervisorctl("status", "manager").stdout, timeout, "manager")

    def url(self, port: int, path: str = "/") -> str:
        return f"{'https' if self.https else 'http'}://{self.address}:{port}{path}"
