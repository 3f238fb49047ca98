"""Waiting for an instance: the bounded queue, and the on-demand start through the manager.

A request whose instance is not ready waits here, bounded by the instance's `max_queue` (requests waiting at once)
and `queue_timeout` (seconds one may wait). It does not poll: every new table, drain or release wakes the waiting
requests (State.changed), and each looks again at once. A stopped instance with `on_demand` is started by asking
the manager (`POST /api/instances/{id}/start` on its loopback port), once while that start is under way.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from app.instance import Phase
from app.routing_table import Route
from app.validation import INSTANCE_ID

from . import errors
from .choose import decide
from .peers import Peer, Peers
from .state import State

PROBE_EVERY = 0.05  # seconds between two looks at an engine this router started on demand
PROBE_GIVE_UP = 10.0  # ... given up when the manager answered and the table still does not say `starting`
NO_TABLE_WAIT = 30.0  # seconds a request waits for the first table (the router started before the manager published)


class Starter:
    """Asks the manager to start instances on demand; remembers why a start was refused."""

    def __init__(self, state: State, session: aiohttp.ClientSession, started: Callable[[str], None] | None = None):
        self.state, self.session = state, session
        self.started = started  # counts the starts asked for (the router's metrics)
        self.tasks: dict[str, asyncio.Task] = {}
        self.refused: dict[str, str] = {}  # instance id -> the manager's answer to its last start
        self.probes: dict[str, asyncio.Task] = {}

    def start(self, instance_id: str) -> None:
        task = self.tasks.get(instance_id)
        if task is None or task.done():
            self.refused.pop(instance_id, None)
            if self.started:
                self.started(instance_id)
            loop = asyncio.get_running_loop()
            self.tasks[instance_id] = loop.create_task(self._start(instance_id))
            probe = self.probes.get(instance_id)
            if probe is None or probe.done():
                self.probes[instance_id] = loop.create_task(self._probe(instance_id))

    def busy(self, instance_id: str) -> bool:
        task = self.tasks.get(instance_id)
        return task is not None and not task.done()

    async def _start(self, instance_id: str) -> None:
        table = self.state.table
        port = table.manager_port if table else 0
        url = f"http://127.0.0.1:{port}/api/instances/{instance_id}/start"
        try:
            # The manager answers only to its loopback Host, which is what the client sends here.
            async with self.session.post(url, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as answer:
                if answer.status >= 400:
                    text = await answer.text()
                    try:
                        text = json.loads(text).get("detail", text)
                    except (ValueError, AttributeError):
                        pass
                    self.refused[instance_id] = f"the manager refused to start it: {str(text)[:300]}"
        except (aiohttp.ClientError, OSError) as exc:
            self.refused[instance_id] = f"the manager could not be asked to start it ({exc.__class__.__name__})"
        self.state.changed()  # the waiting requests look again (a refusal ends their wait)

    async def _probe(self, instance_id: str) -> None:
        """Until the table says the engine this router started is ready (or no longer starting), ask the engine
        itself, every PROBE_EVERY s, as the manager does (/health, and /v1/models listing its served name): the
        queued requests go the moment it answers, not at the manager's next reading."""
        started = time.monotonic()
        while True:
            route = self.state.routes.get(instance_id)
            asked = self.tasks.get(instance_id)
            if route is None or route.phase not in (Phase.STOPPED, Phase.FAILED, Phase.STARTING) \
                    or time.monotonic() - started > route.queue_timeout or instance_id in self.refused \
                    or (route.phase != Phase.STARTING and asked is not None and asked.done()
                        and time.monotonic() - started > PROBE_GIVE_UP):
                return
            if route.phase == Phase.STARTING and await self._answers(route):
                self.state.probed_ready(instance_id)
                return
            await asyncio.sleep(PROBE_EVERY)

    async def _answers(self, route: Route) -> bool:
        base, timeout = f"http://127.0.0.1:{route.port}", aiohttp.ClientTimeout(total=1)
        try:
            async with self.session.get(f"{base}/health", timeout=timeout) as health:
                if health.status != 200:
                    return False
            async with self.session.get(f"{base}/v1/models", timeout=timeout) as listed:
                data = (await listed.json(content_type=None)).get("data", [])
            return any(isinstance(m, dict) and m.get("id") == route.names[0] for m in data)
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return False


def _wait_hint(route: Route) -> str:
    return f"instance `{route.id}` (model `{route.names[0]}`)"


async def wait_for_route(state: State, starter: Starter, name: str | None, exclude: frozenset[str] = frozenset(),
                         lookup: Callable[[], Awaitable[None]] | None = None,
                         instance: str | None = None, peers: Peers | None = None) -> Route | Peer | web.Response:
    """The route to send the request to, once there is one; or the error answer (404, 503). `lookup` asks the
    engines for names the table lacks (LoRA adapters), once, before a name is called unknown. `instance`: a
    per-instance request, for that instance by id (`name` is then ignored). `peers`: a name no local instance or
    engine knows goes to a peer that lists it (local ones always win; None for a request that came from a peer)."""
    deadline = time.monotonic() + NO_TABLE_WAIT
    while state.table is None:
        if not await state.wait_change(deadline - time.monotonic()):
            return errors.unavailable("The router has no routing table yet (the manager publishes it at its start); "
                                      "try again shortly.", 5, "no_routing_table")
    waited: Route | None = None  # the instance whose queue this request counts in
    asked: set[str] = set()
    try:
        while True:
            decision = decide(state, name, exclude, instance)
            if decision.action == "unknown":
                if instance is not None:
                    return errors.instance_not_found(instance, sorted(i for i in state.routes
                                                                      if INSTANCE_ID.fullmatch(i)))
                if lookup is not None and name is not None:
                    await lookup()
                    lookup = None
                    continue
                peer = peers.choose(name) if peers is not None and name is not None else None
                if peer is not None:
                    return peer
                known = state.names() + (peers.names() if peers else [])
                return errors.model_not_found(name, list(dict.fromkeys(known)))
            route = decision.route
            assert route is not None
            if decision.action == "forward":
                return route
            if decision.action == "unreachable":
                return errors.unavailable(f"The engine of {_wait_hint(route)} refused the connection; try again "
                                          "shortly.", 2, "engine_unreachable")
            if decision.action == "stopped":
                return errors.unavailable(
                    f"The {_wait_hint(route)} is stopped and does not start on demand. Start it in the portal or "
                    f"with `POST /api/instances/{route.id}/start` on the portal's port, or set `on_demand`.",
                    30, "model_stopped")
            if decision.action == "start":
                if route.id in asked and not starter.busy(route.id):
                    why = (starter.refused.get(route.id)
                           or f"it is {route.phase.value}; see GET /api/instances/{route.id}")
                    return errors.unavailable(f"The {_wait_hint(route)} could not be started on demand: {why}.",
                                              30, "start_failed")
                if route.id not in asked:
                    asked.add(route.id)
                    starter.start(route.id)
            if waited is None:
                load = state.load(route.id)
                if load.queued >= route.max_queue:
                    return errors.unavailable(f"The queue of {_wait_hint(route)} is full ({route.max_queue} "
                                              "requests wait already); try again later.",
                                              min(route.queue_timeout, 10), "queue_full")
                load.queued += 1
                waited, deadline = route, time.monotonic() + route.queue_timeout
            left = deadline - time.monotonic()
            if left <= 0 or not await state.wait_change(left):
                assert waited is not None
                return errors.unavailable(f"The {_wait_hint(waited)} was not ready within its queue timeout "
                                          f"({waited.queue_timeout:g} s).", 10, "queue_timeout")
    finally:
        if waited is not None:
            state.load(waited.id).queued -= 1
