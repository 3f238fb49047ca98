"""The lifecycle's side of the router (issue 14), with the fake outside world and a fake router: policy-only
changes, the router's counts in the views, idle stop, drain and release around stops and swaps, making room on
GPUs, blue/green and sleep."""
from __future__ import annotations

import asyncio
import time

import pytest

from app.instance import InstanceRequest, Phase
from app.manager import InstanceError, Manager
from app.settings import Settings
from tests.unit.fakes import make_manager, settle


def run(coro):
    return asyncio.run(coro)


def starts(fx, name: str | None = None) -> list:
    return [c for c in fx.calls if c[0] == "start" and (name is None or c[1] == name)]


def order(fx, *kinds: str) -> list[tuple]:
    return [c for c in fx.calls if c[0] in kinds]


# --- policy ------------------------------------------------------------------------------------------------------
def test_a_change_of_policy_alone_saves_and_publishes_without_restarting_the_engine(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        pid = manager.actors["a"].rt.pid
        answer = await manager.swap("a", InstanceRequest(model="acme/a", aliases=["chat"], idle_timeout=30,
                                                         pinned=True, wait=True))
        assert answer["engine"] == "kept" and answer["state"] == "ready" and answer["aliases"] == ["chat"]
        assert len(starts(fx)) == 1 and manager.actors["a"].rt.pid == pid  # the same engine, untouched
        saved = manager.store.get("a")
        assert (saved.aliases, saved.idle_timeout, saved.pinned) == (["chat"], 30, True)
        await asyncio.sleep(0.01)
        assert fx.router.tables[-1].routes[0].names == ["acme/a", "chat"]  # the router was told
        changed = await manager.swap("a", InstanceRequest(model="acme/b", wait=True, strategy="restart"))
        assert changed["result"] == "ready" and len(starts(fx)) == 2  # an engine change does restart
    run(scenario())


def test_views_show_the_routers_counts_and_null_while_it_is_down(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        fx.router.in_flight["a"], fx.router.queued["a"] = 3, 2
        await manager.traffic.poll()
        view = manager.view(manager.get("a"))
        assert (view["in_flight"], view["queued"]) == (3, 2) and view["on_demand"] is True
        fx.router.down = True
        await manager.traffic.poll()
        view = manager.view(manager.get("a"))
        assert (view["in_flight"], view["queued"]) == (None, None)
    run(scenario())


# --- idle stop ---------------------------------------------------------------------------------------------------
def test_an_idle_instance_is_stopped_after_its_idle_timeout_and_never_on_a_guess(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", idle_timeout=60, wait=True))
        await manager.swap("b", InstanceRequest(model="acme/b", wait=True))  # idle_timeout 0: never
        actor = manager.actors["a"]
        fx.router.in_flight["a"] = 1
        fx.router.last_active["a"] = fx.router.last_active["b"] = time.time() - 3600
        actor.rt.since -= 3600  # ready for an hour
        manager.actors["b"].rt.since -= 3600
        for _ in range(2):
            await manager.traffic.poll()
            await manager.observe()
            await settle(manager)
        assert manager.phase("a") == Phase.READY  # a request in flight: busy
        fx.router.in_flight["a"] = 0
        fx.router.last_active["a"] = time.time() - 30  # its last request ended 30 s ago
        await manager.traffic.poll()
        await manager.observe()
        await settle(manager)
        assert manager.phase("a") == Phase.READY
        fx.router.down = True  # unknown counts: no stop
        fx.router.last_active["a"] = time.time() - 600
        await manager.traffic.poll()
        await manager.observe()
        await settle(manager)
        assert manager.phase("a") == Phase.READY
        fx.router.down = False
        await manager.traffic.poll()
        await manager.observe()
        await settle(manager)
        assert manager.phase("a") == Phase.STOPPED and manager.phase("b") == Phase.READY
        assert actor.rt.reason == "stopped after 600 s without requests (idle_timeout 60 s)"
        assert order(fx, "drain", "stop", "release")[-3:] == [("drain", "a"), ("stop", "a"), ("release", "a")]
    run(scenario())


# --- drain and release ---------------------------------------------------------------------------------------
def test_a_stop_drains_the_requests_in_flight_before_the_engine_stops_then_releases(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, DRAIN_TIMEOUT="5")
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        fx.router.in_flight["a"] = 1
        stopping = asyncio.ensure_future(manager.stop("a"))
        await asyncio.sleep(0.1)
        assert not stopping.done() and fx.procs["a"]["statename"] == "RUNNING"  # its stream is still going
        fx.router.in_flight["a"] = 0  # ... and ends
        assert (await stopping)["state"] == "stopped"
        assert order(fx, "drain", "stop", "release")[-3:] == [("drain", "a"), ("stop", "a"), ("release", "a")]
    run(scenario())


def test_a_restart_swap_drains_the_old_engine_and_releases_once_the_new_one_is_up(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        answer = await manager.swap("a", InstanceRequest(model="acme/b", strategy="restart", wait=True))
        assert answer["result"] == "ready" and answer["port"] == manager.store.get("a").port
        assert order(fx, "drain", "stop", "start", "release")[-4:] == [
            ("drain", "a"), ("stop", "a"), ("start", "a"), ("release", "a")]
    run(scenario())


def test_with_the_router_down_a_stop_goes_on_without_draining(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        fx.router.down = True
        assert (await manager.stop("a"))["state"] == "stopped"
    run(scenario())


# --- making room -------------------------------------------------------------------------------------------------
def test_making_room_stops_an_idle_holder_at_once_and_drains_a_busy_one_first(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=2, DRAIN_TIMEOUT="5")
        await manager.swap("idle", InstanceRequest(model="acme/i", gpus=[0], wait=True))
        await manager.swap("busy", InstanceRequest(model="acme/b", gpus=[1], wait=True))
        fx.router.in_flight["busy"] = 2
        fx.calls.clear()
        new = asyncio.ensure_future(manager.swap("big", InstanceRequest(model="acme/big", wait=True)))  # both GPUs
        for _ in range(100):
            await asyncio.sleep(0.01)
            if manager.phase("idle") == Phase.STOPPED:
                break
        assert manager.phase("idle") == Phase.STOPPED and manager.phase("busy") == Phase.READY  # draining
        assert not new.done()
        fx.router.in_flight["busy"] = 0
        assert (await new)["result"] == "ready"
        assert manager.phase("busy") == Phase.STOPPED and "to make room for 'big'" in manager.actors["busy"].rt.reason
        assert manager.gpu_holders() == {0: "big", 1: "big"}
        at = fx.calls.index
        assert at(("drain", "busy")) < at(("stop", "busy")) < at(("start", "big"))
    run(scenario())


def test_a_pinned_holder_is_never_stopped_and_the_start_fails_naming_it(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=1)
        await manager.swap("keep", InstanceRequest(model="acme/k", pinned=True, wait=True))
        await manager.swap("other", InstanceRequest(model="acme/o", wait=True, gpus=[0], strategy="restart"))
        # `other` made room? No: `keep` is pinned, so the PUT was refused before anything changed.
    with pytest.raises(InstanceError, match="owned by instance 'keep', which is pinned") as caught:
        run(scenario())
    assert caught.value.status == 409


def test_an_on_demand_start_makes_room_too(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=1)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        await manager.stop("a")
        await manager.swap("b", InstanceRequest(model="acme/b", wait=True))
        answer = await manager.start("a")  # what the router calls for a request naming a stopped model
        assert answer["state"] == "starting" and manager.phase("b") == Phase.STOPPED
        await manager.swap("b", InstanceRequest(model="acme/b", pinned=True, strategy="restart"))
        await settle(manager)
        await manager.stop("a")
        await manager.start("b")
        with pytest.raises(InstanceError, match="instance 'b', which is pinned"):
            await manager.start("a")
    run(scenario())


# --- blue/green --------------------------------------------------------------------------------------------------
def test_blue_green_is_the_default_on_a_cpu_box_and_moves_the_engine_to_a_new_port(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, DRAIN_TIMEOUT="5")
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        old_port = manager.store.get("a").port
        fx.router.ports["a"] = {old_port: 1}  # a stream in flight on the old engine
        swap = asyncio.ensure_future(manager.swap("a", InstanceRequest(model="acme/b", wait=True)))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if manager.store.get("a").model == "acme/b":
                break
        saved = manager.store.get("a")
        assert saved.model == "acme/b" and saved.port != old_port and manager.phase("a") == Phase.READY
        assert fx.procs["a"]["statename"] == "RUNNING" and fx.procs["a_b"]["statename"] == "RUNNING"
        assert not swap.done()  # the old engine finishes its stream first
        assert manager.table().routes[0].port == saved.port  # the router already sends new requests to it
        with pytest.raises(InstanceError, match=f"port {old_port} is used by instance 'a'"):
            await manager.swap("c", InstanceRequest(model="acme/c", port=old_port))
        fx.router.ports["a"] = {old_port: 0}
        answer = await swap
        assert answer["result"] == "ready" and answer["port"] == saved.port
        assert "a" not in fx.programs and fx.programs["a_b"].model == "acme/b" and manager.program_of("a") == "a_b"
        assert ("drain", "a") not in fx.calls  # clients never waited
        third = await manager.swap("a", InstanceRequest(model="acme/c", wait=True))  # alternates back to `a`
        assert third["result"] == "ready" and set(fx.programs) == {"a"} and fx.programs["a"].model == "acme/c"
    run(scenario())


def test_a_failed_blue_green_swap_leaves_the_old_engine_serving_untouched(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        before, pid = manager.store.get("a"), manager.actors["a"].rt.pid
        fx.calls.clear()
        answer = await manager.swap("a", InstanceRequest(model="acme/fail-load", wait=True))
        assert answer["result"] == "rolled back" and "the engine exited" in answer["error"]
        assert manager.store.get("a") == before and manager.phase("a") == Phase.READY
        assert manager.actors["a"].rt.pid == pid and fx.procs["a"]["statename"] == "RUNNING"
        assert set(fx.programs) == {"a"} and ("stop", "a") not in fx.calls
    run(scenario())


def test_restart_is_chosen_where_blue_green_cannot_run(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=1)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        port = manager.store.get("a").port
        answer = await manager.swap("a", InstanceRequest(model="acme/b", wait=True))  # its only GPU is held
        assert answer["result"] == "ready" and answer["port"] == port and "a_b" not in fx.programs
        with pytest.raises(InstanceError, match="blue_green is not possible: the new engine's GPU 0 is held by "
                                                "the old engine") as caught:
            await manager.swap("a", InstanceRequest(model="acme/c", strategy="blue_green"))
        assert caught.value.status == 409
    run(scenario())


def test_the_routing_table_shows_an_accepted_swap_at_once(tmp_path):
    """Requests naming the new model queue for it from the moment the PUT is accepted (no 404 meanwhile); during
    blue/green the old engine's route serves on beside the new engine's, which takes over at the switch."""
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        old_port = manager.store.get("a").port
        await manager.swap("a", InstanceRequest(model="acme/slow-b", strategy="restart", timeout=5))
        [route] = manager.table().routes
        assert (route.id, route.names, route.phase) == ("a", ["acme/slow-b"], Phase.STARTING)
        await manager.swap("a", InstanceRequest(model="acme/a", strategy="restart", wait=True))  # back
        green = await manager.swap("a", InstanceRequest(model="acme/slow-b", timeout=0.5))
        old, new = manager.table().routes
        assert manager.view(manager.get("a"))["state"] == "starting"  # the API shows the swap under way ...
        assert (old.id, old.names, old.port, old.phase) == ("a", ["acme/a"], old_port, Phase.READY)  # ... it serves
        assert (new.id, new.names, new.port, new.phase, new.on_demand) == (
            "a_green", ["acme/slow-b"], green["port"], Phase.STARTING, False)
        while manager.actors["a"].desired is not None:
            await asyncio.sleep(0.01)
        [route] = manager.table().routes  # it never got ready: the old engine's route alone, as before
        assert (route.id, route.names, route.port, route.phase) == ("a", ["acme/a"], old_port, Phase.READY)
        green = await manager.swap("a", InstanceRequest(model="acme/b", wait=True))
        [route] = manager.table().routes
        assert (route.id, route.names, route.port, route.phase) == ("a", ["acme/b"], green["port"], Phase.READY)
        await asyncio.sleep(0.01)
        assert fx.router.tables[-1] == manager.table()  # and the router was told
    run(scenario())


# --- sleep -------------------------------------------------------------------------------------------------------
def test_between_two_sleep_mode_instances_the_holder_sleeps_and_a_start_wakes_it(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=1)
        await manager.swap("a", InstanceRequest(model="acme/a", strategy="sleep", wait=True))
        assert "--enable-sleep-mode" in manager.store.get("a").args
        answer = await manager.swap("b", InstanceRequest(model="acme/b", strategy="sleep", wait=True))
        assert answer["result"] == "ready" and manager.phase("a") == Phase.SLEEPING
        assert fx.procs["a"]["statename"] == "RUNNING"  # asleep, not stopped
        assert manager.view(manager.get("a"))["state"] == "sleeping" and manager.gpu_holders() == {0: "b"}
        await manager.observe()
        await settle(manager)
        assert manager.phase("a") == Phase.SLEEPING  # a running, healthy engine that sleeps stays asleep
        woken = await manager.start("a")
        assert woken["state"] == "ready" and manager.phase("b") == Phase.SLEEPING
        assert order(fx, "sleep", "wake")[-3:] == [("sleep", "a"), ("sleep", "b"), ("wake", "a")]
        await manager.swap("c", InstanceRequest(model="acme/c", wait=True, strategy="restart"))  # no sleep mode
        assert manager.phase("a") == Phase.STOPPED  # stopped, not put to sleep
    run(scenario())


def test_sleep_needs_a_gpu(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        with pytest.raises(InstanceError, match="strategy sleep needs a GPU") as caught:
            await manager.swap("a", InstanceRequest(model="acme/a", strategy="sleep"))
        assert caught.value.status == 422
    run(scenario())


def test_a_restarted_manager_finds_the_program_a_blue_green_swap_left_running(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        await manager.swap("a", InstanceRequest(model="acme/b", wait=True))
        assert manager.program_of("a") == "a_b"
        await manager.aclose()
        again = Manager(manager.settings, fx, fx.router)  # the manager restarted (supervisor brought it back)
        await again.reconcile()
        assert again.program_of("a") == "a_b" and set(fx.programs) == {"a_b"}
        await settle(again)
        assert again.phase("a") == Phase.READY
        # killed mid-swap, before the switch: both programs there, the saved config is the old one's
        fx.write_program(manager.store.get("a").model_copy(update={"model": "acme/c", "port": 19999}), name="a")
        third = Manager(manager.settings, fx, fx.router)
        await third.reconcile()
        assert third.program_of("a") == "a_b" and set(fx.programs) == {"a_b"}  # the leftover is removed
        await third.aclose()
    run(scenario())


def test_a_box_turned_worker_keeps_its_saved_instances_but_starts_none(tmp_path, capsys):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("a", InstanceRequest(model="acme/a", wait=True))
        await manager.aclose()
        fx.programs.clear()  # the next boot, as a worker, renders no engine
        worker = Settings(APPLIANCE_ROOT=str(tmp_path), APPLIANCE_ROLE="worker", RAY_NODE_IP="10.0.0.2",
                          RAY_ADDRESS="10.0.0.1:6379")
        again = Manager(worker, fx, fx.router)
        await again.reconcile()
        await settle(again)
        assert fx.programs == {} and "a" in again.store.instances
        assert "this box is a worker: its saved instances (a) are kept but not started" in capsys.readouterr().out
        await again.aclose()
    run(scenario())
