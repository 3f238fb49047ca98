"""The fast path's map, owned by the router: which names HAProxy sends straight to an engine, and its counts.

HAProxy (haproxy/haproxy.cfg.j2) sends a JSON POST whose `model` is a key of its map to the port the key maps to,
and everything else here. The router keeps that map equal to `wanted(state)`: a name is in it only while exactly one
engine serves it, that engine is ready and not held by a drain, and the name reaches the engine as it is (a served
name or a LoRA adapter; never an alias, which the router rewrites in the body). Every change of the state (a new
table, a hold, a release) updates the map over HAProxy's runtime socket; a drain awaits that update before it counts
(control.py), so a held instance gets no new request through HAProxy.

HAProxy counts its requests in flight per engine port (a stick table: the map lookup and the count are one rule list
on its one thread, so a request that passed the lookup before an entry was removed is counted when the removal is
answered). `owners` remembers which instance each port was mapped for, so the counts add to the right instance's
in flight, its ports (blue/green's old port) and its drain.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

from app.routing_table import Route

from .choose import replicas
from .runtime_api import HAProxyError, RuntimeAPI
from .state import State

TABLE = "fast"  # HAProxy's stick table of requests in flight per engine port
RESYNC = 1.0  # seconds between two readings of HAProxy's map when nothing changed (HAProxy restarted: refilled)
DRAIN_POLL = 0.05  # seconds between two readings of HAProxy's counts while a drain waits
# A name HAProxy's runtime API carries as one word: printable ASCII, none of its separators or quotes.
SAFE_NAME = re.compile(r"[!-~]{1,512}")
UNSAFE = set(";\\'\"#")


def safe(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name)) and not UNSAFE.intersection(name)


def sent_as_is(route: Route, name: str) -> bool:
    """Whether the engine answers to the name as it is (the served name, a LoRA adapter) rather than an alias."""
    return name == route.names[0] or name in route.adapters or name not in route.names


def wanted(state: State) -> dict[str, Route]:
    """The names HAProxy may send straight to an engine, with that engine's route."""
    out: dict[str, Route] = {}
    for name in state.names():
        if not safe(name):
            continue
        candidates = replicas(state, name)
        ready = [r for r in candidates if state.ready(r) and r.id not in state.held]
        if len(ready) == 1 and sent_as_is(ready[0], name):
            out[name] = ready[0]
    return out


class FastPath:
    def __init__(self, state: State, api: RuntimeAPI, map_path: Path, log: Callable[[str], None]):
        self.state, self.api, self.map_path, self.log = state, api, map_path, log
        self.current: dict[str, int] | None = None  # HAProxy's map as last written or read; None: unknown
        self.owners: dict[int, str] = {}  # engine port -> the route it was mapped for
        self.counts: dict[int, int] = {}  # HAProxy's in flight per engine port, last reading
        self.dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failing = False
        state.listeners.append(self.dirty.set)

    async def sync(self) -> None:
        """Make HAProxy's map what the state wants now; answered once HAProxy applied it."""
        async with self._lock:
            self.dirty.clear()
            want = wanted(self.state)
            if self.current is None:
                await self.api.change([f"clear map {self.map_path}"])
                self.current = {}
            commands = [f"del map {self.map_path} {name}" for name in self.current if name not in want]
            for name, route in want.items():
                self.owners[route.port] = route.id
                if name not in self.current:
                    commands.append(f"add map {self.map_path} {name} {route.port}")
                elif self.current[name] != route.port:
                    commands.append(f"set map {self.map_path} {name} {route.port}")
            try:
                await self.api.change(commands)
            except HAProxyError:
                self.current = None  # read back and cleared at the next try
                raise
            self.current = {name: route.port for name, route in want.items()}

    async def check(self) -> None:
        """Read HAProxy's map; one that differs (HAProxy restarted with its empty file) is filled again."""
        async with self._lock:
            if self.current is not None and await self.api.show_map(self.map_path) != self.current:
                self.log("fast path: HAProxy's map differs from the router's (HAProxy restarted?): filled again")
                self.current = None
        if self.current is None:
            self.dirty.set()

    async def follow(self) -> None:
        """Keep the map up to date: at every change of the state, and checked once a second."""
        while True:
            try:
                if self.dirty.is_set() or self.current is None:
                    await self.sync()
                else:
                    await self.check()
                if self._failing:
                    self.log("fast path: HAProxy answers again; its map is up to date")
                self._failing = False
            except HAProxyError as exc:
                if not self._failing:
                    self.log(f"fast path: {exc}; every request takes the router's path until HAProxy answers")
                self._failing = True
            try:
                await asyncio.wait_for(self.dirty.wait(), RESYNC)
            except TimeoutError:
                pass

    # --- counts -----------------------------------------------------------------------------------------------------
    async def read_counts(self) -> dict[int, int]:
        """HAProxy's requests in flight per engine port, read now (the last reading if HAProxy does not answer)."""
        try:
            self.counts = await self.api.in_flight(TABLE)
        except HAProxyError:
            pass
        return self.counts

    def of(self, instance_id: str) -> dict[int, int]:
        """The last reading's in flight per port of one instance."""
        return {port: n for port, n in self.counts.items() if self.owners.get(port) == instance_id}

    async def wait_idle(self, instance_id: str, timeout: float) -> int:
        """Wait until HAProxy has nothing in flight for the instance, or `timeout` passes; the number left."""
        deadline = time.monotonic() + timeout
        while True:
            await self.read_counts()
            left = sum(self.of(instance_id).values())
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, deadline - time.monotonic())))

    def by_instance(self) -> dict[str, int]:
        """The last reading's in flight by instance (the router's metrics)."""
        out: dict[str, int] = {}
        for port, n in self.counts.items():
            owner = self.owners.get(port)
            if owner is not None and n:
                out[owner] = out.get(owner, 0) + n
        return out

    def merge(self, status: dict) -> dict:
        """The router's /status with HAProxy's requests added (in flight, per port, last active: now)."""
        instances = status["instances"]
        now = time.time()
        for port, n in self.counts.items():
            owner = self.owners.get(port)
            if owner is None or not n:
                continue
            entry = instances.setdefault(owner, {"in_flight": 0, "queued": 0, "last_active": 0.0,
                                                 "held": owner in self.state.held, "ports": {}})
            entry["in_flight"] += n
            entry["ports"][str(port)] = entry["ports"].get(str(port), 0) + n
            entry["last_active"] = now
        return status
