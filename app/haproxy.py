"""The fast path's HAProxy: whether it can run here, its configuration and its supervisor program.

HAProxy (Debian's package, 2.5 or later for its `json_query` converter) listens on the API's internal port and sends
a request whose `model` is in its map straight to the engine; everything else goes to the router, which then listens
on a loopback port of its own (ROUTER_PORT) and owns the map (app/router/fastpath.py). Without a usable HAProxy, or
with ROUTER_FAST_PATH=false, the router listens on the API's port itself, as before.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys

from app import render
from app.files import write_atomic
from app.settings import Settings

MIN_VERSION = (2, 5)  # json_query
SOCKET_PATH_MAX = 97  # HAProxy's limit for a unix socket's path (its "too long (max 97)")
BUFSIZE = 131072  # bytes: a JSON body up to this size (less HAProxy's reserve) is read whole for its `model`


def binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def unusable(settings: Settings) -> str | None:
    """Why the fast path is off (a boot log line), or None when HAProxy runs it."""
    if not settings.router_fast_path:
        return "ROUTER_FAST_PATH=false"
    for path in (settings.haproxy_socket, settings.haproxy_log_socket):
        if len(str(path)) > SOCKET_PATH_MAX:  # HAProxy would refuse its configuration, and the API port stay shut
            return (f"the unix socket {path} has a longer path than HAProxy takes ({SOCKET_PATH_MAX} characters); "
                    "a shorter APPLIANCE_ROOT turns the fast path on")
    found = binary()
    if found is None:
        return "no `haproxy` installed (Debian's package `haproxy`)"
    try:
        out = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{found} -v` failed ({exc.__class__.__name__})"
    version = re.search(r"version (\d+)\.(\d+)", out)
    if version is None or (int(version[1]), int(version[2])) < MIN_VERSION:
        return f"{found} is older than HAProxy {MIN_VERSION[0]}.{MIN_VERSION[1]} (json_query): {out.strip()[:60]!r}"
    return None


def prepare(settings: Settings, api_port: int, router_port: int) -> render.Program:
    """Write the configuration and the empty map; the program that runs HAProxy in the foreground."""
    write_atomic(settings.haproxy_map, "", mode=0o600)
    text = render.haproxy_config(settings, api_port=api_port, router_port=router_port, bufsize=BUFSIZE)
    write_atomic(settings.haproxy_config, text, mode=0o600)
    found = binary()
    assert found is not None
    return render.Program(name="haproxy", argv=[found, "-db", "-f", str(settings.haproxy_config)], priority=140,
                          stopwaitsecs=10)


def refused(settings: Settings) -> str | None:
    """HAProxy's own check of the written configuration (`haproxy -c`): why it would not start, or None. A
    configuration it refuses would leave the API port shut, so the boot puts the router there instead."""
    found = binary()
    assert found is not None
    try:
        done = subprocess.run([found, "-c", "-q", "-f", str(settings.haproxy_config)], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`haproxy -c` failed ({exc.__class__.__name__})"
    if done.returncode == 0:
        return None
    alerts = [line for line in (done.stderr + done.stdout).splitlines() if "ALERT" in line]
    return f"HAProxy refuses its configuration: {(alerts or [done.stderr.strip()])[0][:300]}"


def router_port(settings: Settings, taken: dict[int, str]) -> int:
    """ROUTER_PORT, or (0, or a port an app uses) a free loopback port."""
    if settings.router_port and settings.router_port not in taken:
        return settings.router_port
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in taken:
            return port


def router_argv(port: int, fast: bool) -> list[str]:
    return [sys.executable, "-m", "app.router", "--port", str(port), *(["--fast-path"] if fast else [])]
