"""The running cluster as Ray sees it: its nodes and their GPUs, read from the Ray dashboard's state API on loopback
(with Ray's token), the GPU check of a new instance against them, and the watch that starts a multi-node engine
again once the nodes it lost are back.

The manager keeps the latest reading (`Watch.snapshot`, refreshed every WATCH_INTERVAL seconds) so that the
check in `Manager.build` reads memory and never awaits: claims are checked in one step (app/manager.py).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from app import engine, multinode
from app.actor import InstanceError
from app.instance import Phase
from app.settings import Settings

if TYPE_CHECKING:
    from app.manager import Manager

WATCH_INTERVAL = 2.0
TIMEOUT = 3.0


@dataclass
class Node:
    id: str
    ip: str
    head: bool
    alive: bool
    gpus: int
    cpus: int


@dataclass
class Snapshot:
    """One reading of the cluster; `error` says why there is none (Ray not running, or not answering)."""
    nodes: list[Node] = field(default_factory=list)
    error: str | None = "not read yet"
    taken: float = 0.0

    @property
    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.alive)


def dashboard_url(settings: Settings, path: str) -> str:
    return f"http://127.0.0.1:{multinode.dashboard_port(settings)}{path}"


def token(settings: Settings) -> str:
    try:
        return settings.ray_token_file.read_text().strip()
    except OSError:
        return ""


def parse_nodes(answer: dict) -> list[Node]:
    """Nodes from the state API's answer (GET /api/v0/nodes)."""
    rows = answer.get("data", {}).get("result", {}).get("result", [])
    return [Node(id=r.get("node_id", ""), ip=r.get("node_ip", ""), head=bool(r.get("is_head_node")),
                 alive=r.get("state") == "ALIVE", gpus=int((r.get("resources_total") or {}).get("GPU", 0)),
                 cpus=int((r.get("resources_total") or {}).get("CPU", 0)))
            for r in rows]


def _request(settings: Settings) -> dict:
    return {"url": dashboard_url(settings, "/api/v0/nodes?limit=1000"),
            "headers": {"Authorization": f"Bearer {token(settings)}"}}


def _explain(settings: Settings, exc: Exception) -> str:
    port = multinode.dashboard_port(settings)
    if isinstance(exc, httpx.ConnectError):
        return f"Ray is not running here (nothing answers on its dashboard port {port}; see the `ray` program's log)"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"the Ray dashboard answered {exc.response.status_code} (is RAY_AUTH_TOKEN the cluster's?)"
    return f"the Ray dashboard on port {port} did not answer: {type(exc).__name__}: {exc}"


def read(settings: Settings) -> Snapshot:
    """The cluster now (blocking; for the cluster guard)."""
    try:
        response = httpx.get(**_request(settings), timeout=TIMEOUT)
        response.raise_for_status()
        return Snapshot(parse_nodes(response.json()), None, time.time())
    except (httpx.HTTPError, ValueError) as exc:
        return Snapshot([], _explain(settings, exc), time.time())


async def aread(settings: Settings, client: httpx.AsyncClient) -> Snapshot:
    try:
        response = await client.get(**_request(settings), timeout=TIMEOUT)
        response.raise_for_status()
        return Snapshot(parse_nodes(response.json()), None, time.time())
    except (httpx.HTTPError, ValueError) as exc:
        return Snapshot([], _explain(settings, exc), time.time())


def shortfall(snapshot: Snapshot, nodes: int, gpus: int) -> str | None:
    """Why the cluster cannot hold an engine that needs `nodes` nodes and `gpus` GPUs, or None."""
    if snapshot.error:
        return snapshot.error
    alive = snapshot.alive
    if len(alive) < nodes:
        gone = [n.ip for n in snapshot.nodes if not n.alive]
        return (f"the engine spans {nodes} nodes and the Ray cluster has {len(alive)} alive"
                + (f" ({', '.join(gone)} left)" if gone else ""))
    if snapshot.gpus < gpus:
        return f"the engine needs {gpus} GPUs and the Ray cluster's alive nodes have {snapshot.gpus}"
    return None


class Watch:
    """On a head: reads the cluster every WATCH_INTERVAL seconds; a multi-node engine its guard ended because nodes
    were missing (`failed`, exit status GUARD_EXIT) is started again once they are back."""

    def __init__(self, manager: Manager):
        self.manager, self.settings = manager, manager.settings
        self.snapshot = Snapshot()
        self.notes: dict[str, str] = {}  # instance -> the last thing the watch did about it
        self.task: asyncio.Task | None = None

    def start(self) -> Watch:
        if self.settings.appliance_role == "head":
            self.task = asyncio.get_running_loop().create_task(self._run(), name="cluster-watch")
        return self

    def stop(self) -> None:
        if self.task:
            self.task.cancel()

    def plan(self, config) -> multinode.Plan | None:
        return multinode.engine_plan(self.settings, config, self.manager.fx.gpu_count())

    async def _run(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    self.snapshot = await aread(self.settings, client)
                    await self.restart_returned()
                except Exception as exc:  # noqa: BLE001 (the watch outlives a bad round)
                    print(f"manager: cluster watch: {self.manager.fx.explain(exc)}", flush=True)
                await asyncio.sleep(WATCH_INTERVAL)

    async def restart_returned(self) -> None:
        for config in list(self.manager.store.instances.values()):
            plan = self.plan(config)
            if plan is None or self.manager.phase(config.id) != Phase.FAILED:
                continue
            info = await self.manager.fx.info(config.id)
            if not info or info.get("exitstatus") != multinode.GUARD_EXIT:
                continue  # failed for another reason: the usual rules (a user's start or swap) apply
            missing = shortfall(self.snapshot, plan.nodes, plan.gpus)
            if missing:
                self.notes[config.id] = f"waiting for the cluster: {missing}"
                continue
            self.notes[config.id] = f"the cluster is complete again: started at {time.strftime('%H:%M:%S')}"
            print(f"manager: cluster: {config.id}: its nodes are back; starting it again", flush=True)
            try:
                await self.manager.start(config.id)
            except InstanceError as exc:
                self.notes[config.id] = f"could not start it again: {exc.message}"


def check(manager: Manager, config) -> None:
    """409 before anything starts when the instance needs more GPUs than this box (single) or the cluster (head)
    has, and for any instance on a worker."""
    settings = manager.settings
    if settings.appliance_role == "worker":
        raise InstanceError(409, f"this box is a worker of the Ray head at {settings.ray_address}: it runs no engine "
                                 "of its own; create instances on the head")
    if settings.appliance_role != "head":
        return
    local = manager.fx.gpu_count()
    plan = multinode.engine_plan(settings, config, local)
    if plan is None or plan.gpus == 0:
        return
    watch: Watch | None = getattr(manager, "cluster", None)
    snapshot = watch.snapshot if watch else Snapshot()
    if snapshot.error:
        raise InstanceError(409, f"this instance needs {plan.gpus} GPUs (tensor x pipeline parallel size) and this "
                                 f"box has {local}; the cluster cannot be read: {snapshot.error}")
    if snapshot.gpus < plan.gpus:
        nodes = ", ".join(f"{n.ip}: {n.gpus}" for n in snapshot.alive)
        raise InstanceError(409, f"this instance needs {plan.gpus} GPUs (tensor x pipeline parallel size) and the "
                                 f"cluster has {snapshot.gpus} ({nodes}); add a worker or lower the parallel size")


def view(manager: Manager) -> dict:
    """GET /api/cluster: this box's role, the nodes with their GPUs, and which engine uses them."""
    settings = manager.settings
    watch: Watch | None = getattr(manager, "cluster", None)
    role = settings.appliance_role
    snapshot = watch.snapshot if watch and role == "head" else Snapshot(error=(
        "APPLIANCE_ROLE=single: this box is no cluster's (docs/scale-out.md)" if role == "single" else
        f"this box is a worker of the Ray head at {settings.ray_address}: the head's portal shows the cluster"))
    local = manager.fx.gpu_count()
    engines = []
    for config in manager.store.instances.values():
        plan = multinode.engine_plan(settings, config, local)
        engines.append({"id": config.id, "model": config.model, "state": manager.phase(config.id).value,
                        "spans_cluster": plan is not None, "nodes": plan.nodes if plan else 1,
                        "gpus": plan.gpus if plan else multinode.parallel_size(config.args, config.gpus, local),
                        "executor": ("mp" if settings.multinode_mode == "mp" else "ray") if plan else "local",
                        "note": watch.notes.get(config.id) if watch else None,
                        "command": engine.program(settings, config, gpu_count=local).argv})
    return {"role": role, "mode": settings.multinode_mode, "node_ip": settings.ray_node_ip or None,
            "head": settings.ray_address or None, "error": snapshot.error,
            "nodes": [vars(n) for n in snapshot.nodes], "gpus": snapshot.gpus, "local_gpus": local,
            "engines": engines}
