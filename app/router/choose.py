"""The routing rules, as pure functions of the table and the loads (unit-tested without any server).

For a name (a served name or an alias; None: the table's default instance) the instances that answer to it are
its replicas; a per-instance request (`/instances/<id>/...`) has one candidate, that instance. `decide` says what
to do with a request now:
- `forward`: to the ready replica (not held by a drain) with the fewest requests in flight; equally busy ones take
  turns (fewest sent so far);
- `queue`: none is ready, but one is on its way (starting, waiting, stopping), or held by a drain (whatever its
  phase: the manager is working on it, so it is never started on demand meanwhile): wait for it;
- `start`: none runs and one may be started on demand: ask the manager, then wait;
- `stopped`: none runs and none starts on demand: refuse (503, saying how to start it);
- `unreachable`: the ready replicas all refused the connection for this request;
- `unknown`: no instance has that name (or that id) (404).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from app.instance import Phase
from app.routing_table import Route
from app.validation import INSTANCE_ID

from .state import State

Action = Literal["forward", "queue", "start", "stopped", "unreachable", "unknown"]
ON_ITS_WAY = {Phase.STARTING, Phase.WAITING, Phase.STOPPING}


@dataclass(frozen=True)
class Decision:
    action: Action
    route: Route | None = None  # forward: where to; queue / start: the instance waited for; stopped: which one


def replicas(state: State, name: str | None) -> list[Route]:
    if name is None:
        table = state.table
        route = state.routes.get(table.default) if table else None
        return [route] if route else []
    found = state.by_name.get(name)
    if found is None and name in state.learned:
        found = [state.routes[i] for i in state.learned[name] if i in state.routes]
    return found or []


def pick(candidates: list[Route], state: State, exclude: Collection[str] = ()) -> Route | None:
    """The ready replica, not held and not excluded, with the fewest requests in flight (then the fewest sent)."""
    best, best_key = None, None
    for route in candidates:
        if not state.ready(route) or route.id in state.held or route.id in exclude:
            continue
        load = state.load(route.id)
        key = (load.in_flight, load.sent)
        if best_key is None or key < best_key:
            best, best_key = route, key
    return best


def decide(state: State, name: str | None, exclude: Collection[str] = (), instance: str | None = None) -> Decision:
    """What to do with a request for `name`, or, when `instance` is given, for that instance whatever its names."""
    if instance is not None:
        route = state.routes.get(instance) if INSTANCE_ID.fullmatch(instance) else None  # never a `<id>_green`
        candidates = [route] if route else []
    else:
        candidates = replicas(state, name)
    if not candidates:
        return Decision("unknown")
    route = pick(candidates, state, exclude)
    if route is not None:
        return Decision("forward", route)
    for route in candidates:
        if route.phase in ON_ITS_WAY or route.id in state.held:  # held: the manager works on it; never start it
            return Decision("queue", route)
    if any(state.ready(r) for r in candidates):
        return Decision("unreachable", next(r for r in candidates if state.ready(r)))
    for route in candidates:
        if route.on_demand:
            return Decision("start", route)
    return Decision("stopped", candidates[0])
