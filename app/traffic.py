"""What the router knows about requests, for the lifecycle: counts polled once a second, drain and release.

The router (app/router, reached through app/router_client.py) counts every request it passes to an engine, so idle
and drain decisions here are exact, never guesses. Every call is best effort: with the router down nothing is in
flight through it, counts read as unknown (`None`, never 0: no idle stop on a guess), and a stop goes on without
draining (logged).
"""
from __future__ import annotations

import asyncio
import time

from app.router_client import RouterClient
from app.settings import Settings

POLL = 1.0  # seconds between two readings of the router's /status


class Traffic:
    def __init__(self, settings: Settings, client: RouterClient):
        self.settings, self.client = settings, client
        self.status: dict[str, dict] | None = None  # the router's last /status by instance; None: not answering
        self.read_at = 0.0  # time.time() of that reading
        self._failing = False

    # --- reading ---------------------------------------------------------------------------------------------------
    async def poll(self) -> dict[str, dict] | None:
        """Read /status now (the monitor calls this once a second)."""
        try:
            self.status = await self.client.status()
            self.read_at = time.time()
            if self._failing:
                print("manager: router: answers again", flush=True)
            self._failing = False
        except Exception as exc:  # noqa: BLE001 (the router may be down or not installed: counts are unknown)
            if not self._failing:
                print(f"manager: router: no status ({type(exc).__name__}: {exc}); counts unknown until it answers",
                      flush=True)
            self._failing, self.status = True, None
        return self.status

    async def watch(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(POLL)

    def of(self, instance_id: str) -> dict | None:
        """The router's counts of one instance (`{}`: it has seen no request for it); None: the router is down."""
        return None if self.status is None else self.status.get(instance_id) or {}

    def counts(self, instance_id: str) -> tuple[int | None, int | None]:
        """(in flight, queued) for the instance views; (None, None) while the router does not answer."""
        counts = self.of(instance_id)
        if counts is None:
            return None, None
        return int(counts.get("in_flight", 0)), int(counts.get("queued", 0))

    def idle_for(self, instance_id: str, ready_since: float) -> float | None:
        """Seconds with nothing in flight or queued, counted from the last request (or from `ready_since`, when it
        became ready, if later); None while busy or unknown."""
        counts = self.of(instance_id)
        if counts is None or counts.get("in_flight", 0) or counts.get("queued", 0):
            return None
        return self.read_at - max(float(counts.get("last_active") or 0), ready_since)

    async def port_in_flight(self, instance_id: str, port: int) -> int | None:
        """Requests in flight to one engine port of the instance (blue/green: the old engine's), read now."""
        status = await self.poll()
        if status is None:
            return None
        return int(((status.get(instance_id) or {}).get("ports") or {}).get(str(port), 0))

    # --- drain and release ------------------------------------------------------------------------------------------
    async def drain(self, instance_id: str, timeout: float | None = None) -> int | None:
        """New requests for the instance queue from now on; wait up to `timeout` (DRAIN_TIMEOUT) for the ones in
        flight. The number still in flight, or None if the router could not be asked (then we go on without)."""
        timeout = self.settings.drain_timeout if timeout is None else timeout
        try:
            left = await self.client.drain(instance_id, timeout)
        except Exception as exc:  # noqa: BLE001 (best effort: a stop must not wait on a router that is down)
            print(f"manager: {instance_id}: not drained (router: {type(exc).__name__}: {exc}); going on without",
                  flush=True)
            return None
        if left:
            print(f"manager: {instance_id}: {left} requests still in flight after draining {timeout:g} s "
                  "(DRAIN_TIMEOUT); going on", flush=True)
        return left

    async def release(self, instance_id: str) -> None:
        """Requests for the instance go to its engine again (queued ones leave once its route is ready)."""
        try:
            await self.client.release(instance_id)
        except Exception as exc:  # noqa: BLE001 (a router that is down holds nothing)
            print(f"manager: {instance_id}: release not sent (router: {type(exc).__name__}: {exc})", flush=True)
