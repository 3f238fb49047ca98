"""What the router knows: the routing table, each instance's load (requests in flight, queued, last active), the
instances held by a drain, and one change signal that wakes every queued request when any of that changes.

The table comes from the manager (pushed on the control socket) or from its file, read at start and again when the
file changes (a cheap stat once a second: the fallback when a push was lost or the manager restarted).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app import routing_table
from app.instance import Phase
from app.routing_table import Route, Table
from app.settings import Settings


@dataclass
class Load:
    in_flight: int = 0
    queued: int = 0
    sent: int = 0  # requests sent so far: the tie-break between equally busy replicas
    last_active: float = 0.0
    ports: dict[int, int] = field(default_factory=dict)  # in flight per engine port (blue/green moves the port)

    def status(self, held: bool) -> dict:
        return {"in_flight": self.in_flight, "queued": self.queued, "last_active": self.last_active, "held": held,
                "ports": {str(port): n for port, n in self.ports.items()}}


class State:
    def __init__(self, table: Table | None = None):
        self.table: Table | None = None
        self.routes: dict[str, Route] = {}
        self.by_name: dict[str, list[Route]] = {}
        self.loads: dict[str, Load] = {}
        self.held: set[str] = set()
        self.learned: dict[str, list[str]] = {}  # names only engines know (LoRA adapters) -> instance ids
        self.probed: set[str] = set()  # started on demand, answering already, the table says `starting` still
        self._changed = asyncio.Event()
        self.listeners: list[Callable[[], None]] = []  # called at every change (the fast path's map: fastpath.py)
        self._idle: dict[str, asyncio.Event] = {}  # drains waiting for an instance's last request to end
        if table is not None:
            self.apply(table)

    # --- the table --------------------------------------------------------------------------------------------------
    def apply(self, table: Table) -> None:
        """Route by this table from now on, and wake the queued requests to look again."""
        by_name: dict[str, list[Route]] = {}
        for route in table.routes:
            for name in route.names:
                by_name.setdefault(name, []).append(route)
        self.table, self.routes, self.by_name = table, {r.id: r for r in table.routes}, by_name
        self.learned = {}
        self.probed = {i for i in self.probed if i in self.routes and self.routes[i].phase == Phase.STARTING}
        self.changed()

    def probed_ready(self, instance_id: str) -> None:
        """An engine this router started answers as ready before the manager's table says so: route to it."""
        self.probed.add(instance_id)
        self.changed()

    def ready(self, route: Route) -> bool:
        return route.phase == Phase.READY or (route.id in self.probed and route.phase == Phase.STARTING)

    def names(self) -> list[str]:
        return list(self.by_name) + [n for n in self.learned if n not in self.by_name]

    def learn(self, names: dict[str, list[str]]) -> None:
        """Names the engines list beyond the table's (LoRA adapters loaded into them), with who serves each."""
        self.learned = {n: ids for n, ids in names.items() if n not in self.by_name}

    def load(self, instance_id: str) -> Load:
        load = self.loads.get(instance_id)
        if load is None:
            load = self.loads[instance_id] = Load()
        return load

    # --- the change signal ------------------------------------------------------------------------------------------
    def changed(self) -> None:
        """Wake everything waiting for a change (one event per generation: set, then replaced)."""
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            listener()

    async def wait_change(self, timeout: float) -> bool:
        """Wait for the next change; False after `timeout` seconds without one."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # --- requests in flight -----------------------------------------------------------------------------------------
    def begin(self, route: Route) -> None:
        load = self.load(route.id)
        load.in_flight += 1
        load.sent += 1
        load.ports[route.port] = load.ports.get(route.port, 0) + 1
        load.last_active = time.time()

    def end(self, route: Route) -> None:
        load = self.load(route.id)
        load.in_flight -= 1
        left = load.ports.get(route.port, 1) - 1
        if left:
            load.ports[route.port] = left
        else:
            load.ports.pop(route.port, None)
        load.last_active = time.time()
        if load.in_flight == 0 and self._idle:
            idle = self._idle.pop(route.id, None)
            if idle:
                idle.set()

    # --- drains -----------------------------------------------------------------------------------------------------
    def hold(self, instance_id: str) -> None:
        """New requests for the instance queue (a drain); the change signal tells the fast path's map too."""
        if instance_id not in self.held:
            self.held.add(instance_id)
            self.changed()

    async def drain(self, instance_id: str, timeout: float) -> int:
        """Hold the instance (new requests queue) and wait until none is in flight or `timeout` passes; the number
        still in flight."""
        self.hold(instance_id)
        load = self.load(instance_id)
        if load.in_flight:
            idle = self._idle.setdefault(instance_id, asyncio.Event())
            try:
                await asyncio.wait_for(idle.wait(), timeout)
            except TimeoutError:
                pass
        return load.in_flight

    def release(self, instance_id: str) -> None:
        self.held.discard(instance_id)
        self.changed()

    def status(self) -> dict:
        ids = set(self.routes) | set(self.loads)
        return {"instances": {i: self.load(i).status(i in self.held) for i in sorted(ids)}}


class TableFile:
    """The table's file: read when its mtime or size changed since the last look."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.seen: tuple[int, int] | None = None

    def stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.settings.routing_table.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def read_if_changed(self) -> Table | None:
        stamp = self.stamp()
        if stamp is None or stamp == self.seen:
            return None
        self.seen = stamp
        return routing_table.read(self.settings)

    async def follow(self, state: State, interval: float = 1.0) -> None:
        """Apply the file's table whenever it changes (the manager's push is the fast path; this the fallback)."""
        while True:
            table = self.read_if_changed()
            if table is not None and table != state.table:
                state.apply(table)
            await asyncio.sleep(interval)
