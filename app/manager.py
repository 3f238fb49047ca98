"""The manager: the saved instances, one actor for each, and the checks that involve more than one instance.

It validates a request into an `InstanceConfig` and checks its claims (a port, GPUs) against every other
instance in the same step, with no await in between, so two requests in flight cannot be given the same port or
GPU; then it hands the command to the instance's actor (app/actor.py), the only writer of that instance's phase.
A one-second monitor reads supervisor once for all programs and sends each actor its reading.

At its start the manager reconciles supervisor and Caddy with the saved state (the truth), so a manager killed
between saving and applying a change finishes it when supervisor brings it back.
"""
from __future__ import annotations

import asyncio
import socket
import time

from app import boot_record, cluster, engine, lora, provisioning, room, routing_table, strategies
from app.actor import Command, InstanceActor, InstanceError, Observation
from app.effects import Effects
from app.instance import InstanceConfig, InstanceRequest, Phase, error_message, option_value
from app.portal_config import Ports
from app.router_client import RouterClient
from app.settings import Settings
from app.state import Store
from app.traffic import Traffic

__all__ = ["InstanceError", "Manager"]


class Manager:
    def __init__(self, settings: Settings, fx: Effects | None = None, router: RouterClient | None = None):
        self.settings = settings
        self.fx = fx or Effects(settings)
        self.store = Store(settings)
        self.actors: dict[str, InstanceActor] = {}
        self.held = boot_record.held(settings)  # engines the boot held back until the Hub answers
        self.router = router or RouterClient(settings)
        self.traffic = Traffic(settings, self.router)  # the router's counts, drain and release
        self.lora = lora.Runtime()  # LoRA adapters loaded and unloaded at runtime (app/api/lora.py)
        self._publishing: asyncio.Task | None = None
        self._dirty = False  # a change not published yet

    @property
    def ports(self) -> Ports:
        """portal.yaml's apps: which port is the API's, and the ports no engine may take."""
        return Ports.current(self.settings.portal_yaml)

    # --- actors ------------------------------------------------------------------------------------------------
    def actor(self, instance_id: str) -> InstanceActor:
        if instance_id not in self.actors:
            self.actors[instance_id] = InstanceActor(instance_id, self, held=self.held.pop(instance_id, None))
        return self.actors[instance_id]

    def forget(self, actor: InstanceActor) -> None:
        """A deleted instance's actor, with nothing more to do, ends."""
        if self.actors.get(actor.id) is actor:
            del self.actors[actor.id]
            actor.task.cancel()

    def released(self, instance_id: str) -> None:
        """The boot's hold on an engine is over (the Hub answered, or a command took over)."""
        boot_record.release(self.settings, instance_id)

    # --- reading -----------------------------------------------------------------------------------------------
    def known(self) -> dict[str, InstanceConfig]:
        """The saved instances, and the latest accepted config of each with a swap on its way (it claims its port
        and GPUs already)."""
        pending = {i: a.desired for i, a in self.actors.items() if a.desired is not None}
        return {**self.store.instances, **pending}

    def get(self, instance_id: str) -> InstanceConfig:
        config = self.known().get(instance_id)
        if not config:
            raise InstanceError(404, f"no instance {instance_id!r}")
        return config

    def program_of(self, instance_id: str) -> str:
        """The supervisor program that runs the instance's engine (`<id>`, or `<id>_b` after a blue/green swap)."""
        actor = self.actors.get(instance_id)
        return actor.program if actor else instance_id

    def view(self, config: InstanceConfig) -> dict:
        return self.view_of(self.actors.get(config.id), config)

    def view_of(self, actor: InstanceActor | None, config: InstanceConfig | None) -> dict:
        if config is None:
            config = self.get(actor.id) if actor else None
            assert config is not None
        rt = actor.rt if actor else None
        phase = actor.shown_phase() if actor else Phase.STOPPED
        owning = phase in (Phase.STARTING, Phase.READY, Phase.STOPPING)
        view = {**config.model_dump(), "served_model_name": config.name_served, "state": phase.value,
                "reason": rt.reason if rt else None, "since": rt.since if rt else None,
                "restarts": rt.restarts if rt else 0, "pid": rt.pid if rt and rt.pid and owning else None,
                "uptime": round(time.time() - rt.since, 1) if rt and phase == Phase.READY else None,
                "command": engine.program(self.settings, config, gpu_count=self.fx.gpu_count()).argv}
        view["in_flight"], view["queued"] = self.traffic.counts(config.id)  # the router's; null while it is down
        if phase in (Phase.STARTING, Phase.FAILED):
            view["last_log"] = self.fx.last_log(config.id)
        return view

    def phase(self, instance_id: str) -> Phase:
        actor = self.actors.get(instance_id)
        return actor.shown_phase() if actor else Phase.STOPPED

    def pid(self, instance_id: str) -> int | None:
        actor = self.actors.get(instance_id)
        return actor.rt.pid if actor else None

    def engine_pids(self) -> dict[int, str]:
        return {a.rt.pid: i for i, a in self.actors.items() if a.rt.pid}

    def gpu_holders(self) -> dict[int, str]:
        """GPU index -> the running instance that holds it alone (not shared): the owner of its processes whose
        pids NVML gives from another pid namespace (a container)."""
        count, holders = self.fx.gpu_count(), {}
        for config in self.store.instances.values():
            if self.phase(config.id) in (Phase.STARTING, Phase.READY, Phase.STOPPING) and not config.share_gpus:
                for index in (config.gpus if config.gpus is not None else range(count)):
                    holders[index] = config.id
        return holders

    # --- validating and claiming -----------------------------------------------------------------------------------
    def build(self, instance_id: str, request: InstanceRequest, *, make_room: bool = True) -> InstanceConfig:
        """A request as a config (ValueError: bad input; InstanceError 409: a port is taken, or a GPU by a pinned
        instance, or by any other one without `make_room`)."""
        claims = self.known()
        port = request.port
        if port is None and option_value(request.args, "--port") is None:
            port = claims[instance_id].port if instance_id in claims else self.free_port(claims)
        config = InstanceConfig(id=instance_id, model=request.model, args=request.args, env=request.env,
                                gpus=request.gpus, share_gpus=request.share_gpus,
                                served_model_name=request.served_model_name, port=port, lora=request.lora,
                                **request.policy(claims.get(instance_id)))
        engine.check_environment(self.settings, config)  # what supervisor could not carry
        self.check_gpus_exist(config)
        cluster.check(self, config)  # a worker runs no engine; more GPUs than the cluster has: 409
        self.check_ownership(config, self.actors.get(instance_id), claims, make_room=make_room)
        return config

    def free_port(self, claims: dict[str, InstanceConfig]) -> int:
        """The first port of ENGINE_PORTS that no instance claims, the appliance does not use and nothing listens on."""
        taken = {c.port for c in claims.values()} | set(self.ports.taken()) | self.busy_ports()
        for port in self.settings.engine_port_range:
            if port in taken:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise InstanceError(409, f"no free port left in ENGINE_PORTS ({self.settings.engine_ports})")

    def busy_ports(self) -> set[int]:
        """Ports of engines that run still, beyond the claims: saved ports, and blue/green's old engines."""
        return {c.port for c in self.store.instances.values()} | {
            a.retiring_port for a in self.actors.values() if a.retiring_port}

    def check_gpus_exist(self, config: InstanceConfig) -> None:
        if not config.gpus:
            return
        count = self.fx.gpu_count()
        if count == 0:
            raise ValueError(f"gpus {config.gpus} given, but there is no NVIDIA GPU here ({self.fx.gpu_reason()}); "
                             "leave gpus out (null)")
        missing = [g for g in config.gpus if g >= count]
        if missing:
            raise ValueError(f"GPU {missing[0]} does not exist: there are {count} GPUs (0-{count - 1})")

    def check_ownership(self, config: InstanceConfig, mine: InstanceActor | None,
                        claims: dict[str, InstanceConfig] | None = None, *, make_room: bool = True) -> list[str]:
        """409 if another instance has this port, or (while it runs or is about to) one of these GPUs and they do
        not both share, and it is pinned or making room is not asked for. Returns the instances to stop to make
        room (app/room.py)."""
        claims = self.known() if claims is None else claims
        taken = self.ports.taken()
        if config.port in taken:  # `vllm` too: the router listens on the API's internal port
            raise InstanceError(409, f"port {config.port} is {taken[config.port]}; choose another or leave it out")
        for other in claims.values():
            if other.id != config.id and other.port == config.port:
                raise InstanceError(409, f"port {config.port} is used by instance {other.id!r}")
        for actor in self.actors.values():
            if actor.id != config.id and actor.retiring_port == config.port:
                raise InstanceError(409, f"port {config.port} is used by instance {actor.id!r} (its old engine)")
        return room.check(self, config, mine, claims, make_room=make_room)

    # --- commands ------------------------------------------------------------------------------------------------
    async def swap(self, instance_id: str, request: InstanceRequest, *, make_room: bool = True) -> dict:
        """Create or swap. `make_room`: stop the instances holding its GPUs (the llm-d and vllm-bootstrap APIs
        answer 409 instead, as those clients expect)."""
        if request.strategy == "sleep":
            request = strategies.with_sleep_mode(request)
        try:
            config = self.build(instance_id, request, make_room=make_room)
        except ValueError as exc:
            raise InstanceError(422, error_message(exc)) from None
        strategy = strategies.choose(self, config, request)
        if strategy == "blue_green":  # the new engine gets a port of its own; the old one keeps its port meanwhile
            config = config.model_copy(update={"port": self.free_port(self.known())})
        actor = self.actor(instance_id)
        kind = "policy" if config.same_engine(self.store.get(instance_id)) and actor.rt.phase in (
            Phase.STARTING, Phase.READY, Phase.SLEEPING) else "swap"
        command = Command(kind, config, rollback=request.rollback, timeout=request.timeout, strategy=strategy)
        done = actor.submit(command, post=False)  # accepted: its claims hold from here
        accepted = {**self.view_of(actor, config), "accepted": actor.seq}
        try:  # the router knows before the engine is touched and before the answer: requests for the new model
            await self.published()  # queue instead of getting 404
        finally:
            actor.post(command)
        if request.wait:
            try:
                return await asyncio.shield(done)
            finally:  # the answer comes once the router routes by the outcome (a failed swap's new name is gone)
                await self.published()
        done.add_done_callback(_quiet)
        return accepted

    async def published(self, timeout: float = 5.0) -> None:
        """Publish the table and wait (a while at most) until the router has it."""
        try:
            await asyncio.wait_for(asyncio.shield(self.publish()), timeout)
        except TimeoutError:
            pass

    async def command(self, instance_id: str, kind: str) -> dict:
        """start, stop, restart or delete; answered once the actor carried it out (or superseded it). A start or
        restart onto GPUs held by a pinned instance is refused here, before it is accepted."""
        config = self.get(instance_id)
        if kind in ("start", "restart"):
            self.check_ownership(config, self.actors.get(instance_id))
        return await asyncio.shield(self.actor(instance_id).submit(Command(kind)))

    async def start(self, instance_id: str) -> dict:
        return await self.command(instance_id, "start")

    async def stop(self, instance_id: str) -> dict:
        return await self.command(instance_id, "stop")

    async def restart(self, instance_id: str) -> dict:
        return await self.command(instance_id, "restart")

    async def delete(self, instance_id: str) -> dict:
        return await self.command(instance_id, "delete")

    # --- the router's table -------------------------------------------------------------------------------------
    def table(self) -> routing_table.Table:
        """A route per instance. An accepted swap shows at once: with `restart`, the new names, `starting` (requests
        for it queue); with `blue_green`, the old engine's route as it is (it serves on) beside one for the new
        engine (`<id>_green`, starting, never started on demand), so requests naming the new model queue for it."""
        routes = []
        for config in self.known().values():
            saved, actor = self.store.get(config.id), self.actors.get(config.id)
            phase = actor.rt.phase if actor else Phase.STOPPED
            if actor is None or actor.desired is None or config.same_engine(saved):
                routes.append(_route(config, config.id, phase, adapters=self.lora.names(config, self.pid(config.id))))
            elif actor.desired_strategy == "blue_green" and saved is not None:
                routes += [_route(saved, config.id, phase), _route(config, f"{config.id}_green", Phase.STARTING,
                                                                   on_demand=False)]
            else:
                routes.append(_route(config, config.id, Phase.STARTING))
        return routing_table.Table(manager_port=self.ports.manager_port, routes=routes)

    def publish(self) -> asyncio.Task:
        """Something the router routes by may have changed: publish the table soon (coalesced; actors call this
        on every phase change and must not wait for it). The task ends once the router has the latest table."""
        self._dirty = True
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.get_running_loop().create_task(self._publish())
        return self._publishing

    async def _publish(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(0)  # let the changes of this turn of the loop land first
            table = self.table()
            try:
                changed = routing_table.write(self.settings, table)
            except OSError as exc:
                print(f"manager: router: cannot write {self.settings.routing_table} ({exc.strerror})", flush=True)
                changed = True
            if changed:
                try:
                    await self.router.push(table)
                except Exception as exc:  # noqa: BLE001 (the router reads the file when it comes back)
                    print(f"manager: router: table not pushed ({self.fx.explain(exc)}); it reads the file at its "
                          "start", flush=True)

    # --- following supervisor ----------------------------------------------------------------------------------
    async def monitor(self, interval: float = 1.0) -> None:
        """Read supervisor once a second and send every actor its reading. A failure is logged once, not every round,
        and so is the recovery from it."""
        failing = None
        watching = asyncio.get_running_loop().create_task(self.traffic.watch())  # the router's counts, each second
        try:
            await self._monitor(interval, failing)
        finally:
            watching.cancel()

    async def _monitor(self, interval: float, failing: str | None) -> None:
        while True:
            try:
                await self.observe()
                if failing:
                    print("manager: monitor: supervisord answers again", flush=True)
                failing = None
            except Exception as exc:  # noqa: BLE001 (keep monitoring through a supervisor hiccup)
                reason = self.fx.explain(exc)
                if reason != failing:
                    print(f"manager: monitor: {reason}", flush=True)
                failing = reason
            await asyncio.sleep(interval)

    async def observe(self) -> None:
        taken_at = time.monotonic()
        infos = await self.fx.processes()
        waiting = provisioning.waiting(self.settings)  # engines held back until provisioning ends
        for instance_id in self.store.instances:
            actor = self.actor(instance_id)
            actor.observe(Observation(infos.get(actor.program), taken_at, instance_id in waiting))

    async def reconcile(self) -> None:
        """At the manager's start: make supervisor's programs and Caddy's routes match the saved state again.

        If a previous manager died between saving a config and applying it, the program file is rewritten and the
        process group replaced; unchanged programs are left alone; programs of deleted instances are removed.
        """
        saved = self.store.instances
        if saved and self.settings.appliance_role == "worker":  # a box that was `single` or `head` before
            print(f"manager: this box is a worker: its saved instances ({', '.join(sorted(saved))}) are kept but not "
                  "started; they run again when APPLIANCE_ROLE is single or head", flush=True)
            saved = {}
        programs = {}  # instance -> its program: after a blue/green swap `<id>_b`, the file that runs the saved config
        for config in saved.values():
            slots = (config.id, strategies.other_program(config.id, config.id))
            programs[config.id] = self.fx.current_program(config, slots) or config.id
        names = set(programs.values())
        for name in self.fx.rendered_engines() - names:
            self.fx.remove_program(name)
            names.add(name)
        for config in saved.values():
            self.actor(config.id).program = programs[config.id]
            self.fx.write_program(config, autostart=config.id not in self.held, name=programs[config.id])
        added, changed, removed = await self.fx.apply(names)
        if added or changed or removed:
            print(f"manager: reconciled programs with the saved state: added {added}, replaced {changed}, "
                  f"removed {removed}", flush=True)
        for instance_id in saved:
            self.actor(instance_id)
        await self.observe()
        self.publish()

    async def aclose(self) -> None:
        for actor in self.actors.values():
            actor.task.cancel()
        await self.router.aclose()
        await self.fx.aclose()


def _route(config: InstanceConfig, route_id: str, phase: Phase, on_demand: bool | None = None,
           adapters: list[str] | None = None) -> routing_table.Route:
    route = routing_table.route(config, phase, adapters)
    return route.model_copy(update={"id": route_id, "on_demand": config.on_demand if on_demand is None else on_demand})


def _quiet(done: asyncio.Future) -> None:
    """A swap nobody waits for: its failure is in the instance's reason already; log it, do not raise it."""
    if not done.cancelled() and done.exception() is not None:
        print(f"manager: swap: {done.exception()!r}", flush=True)

