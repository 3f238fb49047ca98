"""All access to supervisord, through its own XML-RPC interface over the unix socket (never a TCP port).

The calls block; async code runs them with asyncio.to_thread. A new proxy is made
per call: supervisor's transport is not thread-safe, and a unix socket is cheap.
"""
from __future__ import annotations

import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from app.settings import Settings

# supervisor's process states (supervisor.states.ProcessStates names)
RUNNING_STATES = {"STARTING", "RUNNING", "BACKOFF", "STOPPING"}


class Supervisor:
    def __init__(self, socket: Path):
        self.socket = socket

    @classmethod
    def of(cls, settings: Settings) -> Supervisor:
        return cls(settings.supervisor_socket)

    def _rpc(self):
        return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                         transport=SupervisorTransport(None, None, f"unix://{self.socket}")).supervisor

    def info(self, name: str) -> dict | None:
        """getProcessInfo, or None when supervisor has no such program."""
        try:
            return self._rpc().getProcessInfo(name)
        except xmlrpc.client.Fault as fault:
            if "BAD_NAME" in fault.faultString:
                return None
            raise

    def explain(self, exc: Exception) -> str:
        """A log line for a failed call; supervisord not answering on its socket is said plainly."""
        if isinstance(exc, OSError):
            return f"cannot reach supervisord at {self.socket}: {exc.strerror or exc}"
        return repr(exc)

    def all(self) -> list[dict]:
        return self._rpc().getAllProcessInfo()

    def start(self, name: str, wait: bool = False) -> None:
        try:
            self._rpc().startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop(self, name: str) -> None:
        """Stop a program and wait until its whole process group is gone (stopasgroup/killasgroup)."""
        try:
            self._rpc().stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString and "BAD_NAME" not in fault.faultString:
                raise

    def apply_config(self, names: set[str] | None = None) -> tuple[list[str], list[str], list[str]]:
        """Re-read the program files and add, replace or remove process groups accordingly
        (like `supervisorctl update`), for the groups in `names` only when given (so the manager never replaces
        itself or Caddy by accident).

        A changed or removed group is stopped first; an added group starts if its autostart is on.
        """
        rpc = self._rpc()
        [[added, changed, removed]] = rpc.reloadConfig()
        if names is not None:
            added, changed, removed = ([n for n in group if n in names] for group in (added, changed, removed))
        for name in changed + removed:
            self.stop(name)
            rpc.removeProcessGroup(name)
        for name in changed + added:
            rpc.addProcessGroup(name)
        return added, changed, removed

    def tail(self, name: str, length: int = 4000) -> str:
        text, _offset, _overflow = self._rpc().tailProcessStdoutLog(name, 0, length)
        return text
