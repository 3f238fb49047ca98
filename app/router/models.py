"""GET /v1/models on the API port: every instance's names (the served name and each alias as an entry) with its
state, and what each ready engine lists itself (LoRA adapters loaded into it included).

Entries carry two fields OpenAI's list does not: `state` (the instance's phase: ready, starting, stopped, ...) and
`instance` (its id; `instances` when several replicas answer to the name). Ready engines are asked concurrently with
a short timeout; one that does not answer is left out of the extra entries, never failing the list. The peers'
models (app/router/peers.py, their last reading) follow the local ones, each with a `peer` field.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from app.instance import Phase
from app.routing_table import Route

from .peers import LOOP_HEADER, Peers
from .state import State

ENGINE_TIMEOUT = 1.0
STATE_ORDER = [Phase.READY, Phase.STARTING, Phase.WAITING, Phase.STOPPING, Phase.STOPPED, Phase.FAILED]


async def _engine_models(session: aiohttp.ClientSession, route: Route) -> list[dict]:
    try:
        async with session.get(f"http://127.0.0.1:{route.port}/v1/models",
                               timeout=aiohttp.ClientTimeout(total=ENGINE_TIMEOUT)) as answer:
            if answer.status != 200:
                return []
            data = (await answer.json(content_type=None)).get("data")
            return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)] \
                if isinstance(data, list) else []
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        return []


async def engines(state: State, session: aiohttp.ClientSession) -> dict[str, list[dict]]:
    """What each ready engine lists (concurrently); the names only engines know are learned for routing."""
    routes = state.table.routes if state.table else []
    ready = [r for r in routes if r.phase == Phase.READY]
    listed = await asyncio.gather(*(_engine_models(session, r) for r in ready))
    from_engines = {r.id: entries for r, entries in zip(ready, listed, strict=True)}
    learned: dict[str, list[str]] = {}
    for instance_id, entries in from_engines.items():
        for entry in entries:
            learned.setdefault(entry["id"], []).append(instance_id)
    state.learn(learned)
    return from_engines


async def listing(state: State, session: aiohttp.ClientSession) -> dict:
    routes = state.table.routes if state.table else []
    from_engines = await engines(state, session)
    now = int(time.time())
    entries: dict[str, dict] = {}
    for route in routes:
        own = {e["id"]: e for e in from_engines.get(route.id, [])}
        for name in [*route.names, *(i for i in own if i not in route.names)]:
            entry = entries.get(name)
            if entry is None:
                base = own.get(name) or {"id": name, "object": "model", "created": now, "owned_by": "vllm",
                                         "root": own.get(route.names[0], {}).get("root", name), "parent": None}
                entry = entries[name] = {**base, "state": route.phase.value, "instance": route.id}
                if name != route.names[0] and name in route.names and name not in route.adapters:  # an alias
                    entry["alias_of"] = route.names[0]
                continue
            # a replica: one entry, the best state among them, every instance named
            instances = entry.pop("instances", [entry["instance"]]) + [route.id]
            entry["instances"] = instances
            if STATE_ORDER.index(route.phase) < STATE_ORDER.index(Phase(entry["state"])):
                entry["state"] = route.phase.value
    return {"object": "list", "data": list(entries.values())}


async def handle(request: web.Request, state: State, session: aiohttp.ClientSession,
                 peers: Peers | None = None) -> web.Response:
    """The local list, then the peers' models (never for a request from a peer: LOOP_HEADER)."""
    listed = await listing(state, session)
    if peers is not None and LOOP_HEADER not in request.headers:
        listed["data"].extend(peers.entries({e["id"] for e in listed["data"]}))
    return web.json_response(listed)
