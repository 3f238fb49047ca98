"""The instance lifecycle driven with a fake outside world: transitions, supersession, stale readings, restarts,
the Hub wait. No processes; each test runs in milliseconds."""
from __future__ import annotations

import asyncio
import time

from app.actor import Observation
from app.hub import Answer
from app.instance import InstanceRequest, Phase
from tests.unit.fakes import make_manager, settle


def run(coro):
    return asyncio.run(coro)


def request(model: str, **fields) -> InstanceRequest:
    return InstanceRequest(model=model, **fields)


def test_a_swap_saves_writes_starts_and_ends_ready(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        answer = await manager.swap("vllm", request("acme/a", wait=True))
        assert answer["result"] == "ready" and answer["state"] == "ready"
        assert manager.store.get("vllm").model == "acme/a" and fx.programs["vllm"].model == "acme/a"
        assert fx.calls[-1] == ("start", "vllm")
    run(scenario())


def test_a_failed_swap_rolls_back_to_the_previous_model(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        answer = await manager.swap("vllm", request("acme/fail-load", wait=True, strategy="restart"))
        assert answer["result"] == "rolled back" and "the engine exited" in answer["error"]
        assert answer["failed_log"] == ["vllm: last line"]
        assert manager.store.get("vllm").model == "acme/a" and fx.procs["vllm"]["statename"] == "RUNNING"
        assert manager.phase("vllm") == Phase.READY and "rolled back to acme/a" in manager.actors["vllm"].rt.reason
    run(scenario())


def test_without_rollback_a_failed_swap_leaves_the_instance_failed_and_its_engine_stopped(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        answer = await manager.swap("vllm", request("acme/fail-load", wait=True, rollback=False))
        assert answer["result"] == "failed" and answer["state"] == "failed"
        assert manager.store.get("vllm").model == "acme/fail-load" and fx.procs["vllm"]["statename"] == "STOPPED"
    run(scenario())


def test_a_swap_that_times_out_rolls_back(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        answer = await manager.swap("vllm", request("acme/slow-start", wait=True, timeout=0.3, strategy="restart"))
        assert answer["result"] == "rolled back" and answer["error"] == "not ready after 0.3 s"
    run(scenario())


def test_queued_requests_are_superseded_and_the_last_accepted_wins(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        answers = [await manager.swap("vllm", request(f"acme/m{n}")) for n in range(5)]
        assert [a["accepted"] for a in answers] == [1, 2, 3, 4, 5]
        assert all(a["state"] == "starting" for a in answers)  # shown at once, before the actor takes them up
        await settle(manager)
        assert manager.store.get("vllm").model == "acme/m4" and manager.phase("vllm") == Phase.READY
        assert [c for c in fx.calls if c[0] == "start"] == [("start", "vllm")]  # one engine start, the last one
    run(scenario())


def test_a_waited_swap_that_is_superseded_says_so(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        first = asyncio.ensure_future(manager.swap("vllm", request("acme/a", wait=True)))
        await asyncio.sleep(0)
        await manager.swap("vllm", request("acme/b"))
        assert (await first)["result"] == "superseded by a later request"
        await settle(manager)
        assert manager.store.get("vllm").model == "acme/b"
    run(scenario())


def test_a_stop_does_not_wait_for_a_swap_that_is_still_waiting_for_its_engine(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        slow = asyncio.ensure_future(manager.swap("vllm", request("acme/slow-start", wait=True, timeout=60)))
        while fx.procs.get("vllm", {}).get("statename") != "RUNNING":
            await asyncio.sleep(0.01)
        started = time.monotonic()
        stopped = await manager.stop("vllm")
        assert time.monotonic() - started < 2 and stopped["state"] == "stopped"
        assert (await slow)["result"] == "superseded by a later request"
    run(scenario())


def test_a_reading_taken_before_a_failed_swap_does_not_undo_it(tmp_path):
    """Regression (CI, b61f765): the monitor read supervisor while the old engine was stopping; applied after
    the swap had set `failed`, that stale reading showed the instance as starting."""
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        old_reading = Observation(dict(fx.procs["vllm"]), time.monotonic())
        await manager.swap("vllm", request("acme/fail-load", wait=True, rollback=False))
        manager.actors["vllm"].observe(old_reading)
        await settle(manager)
        assert manager.phase("vllm") == Phase.FAILED
    run(scenario())


def test_a_monitor_round_in_flight_during_a_stop_does_not_show_the_instance_starting(tmp_path):
    """Regression: supervisor read (engine running), then a stop runs and ends, then the reading arrives."""
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        fx.read_gate = asyncio.Event()
        monitor = asyncio.ensure_future(manager.observe())
        await asyncio.sleep(0)
        assert (await manager.stop("vllm"))["state"] == "stopped"
        fx.read_gate.set()
        await monitor
        await settle(manager)
        assert manager.phase("vllm") == Phase.STOPPED
    run(scenario())


def test_a_new_pid_the_manager_did_not_cause_counts_as_a_restart(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        await manager.restart("vllm")  # asked for: not counted
        await manager.observe()
        await settle(manager)
        assert manager.actors["vllm"].rt.restarts == 0
        fx.procs["vllm"]["pid"] = 4242  # supervisor restarted a crashed engine
        await manager.observe()
        await settle(manager)
        assert manager.actors["vllm"].rt.restarts == 1 and manager.phase("vllm") == Phase.READY
    run(scenario())


def test_an_engine_that_exits_is_failed_with_supervisors_reason(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        fx.procs["vllm"].update(statename="FATAL", pid=0, spawnerr="", description="Exited too quickly")
        await manager.observe()
        await settle(manager)
        actor = manager.actors["vllm"]
        assert actor.rt.phase == Phase.FAILED and actor.rt.reason == "the engine exited: Exited too quickly"
    run(scenario())


def test_supervisor_refusing_to_spawn_is_a_clear_failure_not_an_error_500(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        fx.spawn_errors["vllm"] = "can't find command 'vllm'"
        answer = await manager.swap("vllm", request("acme/a", wait=True))
        assert answer["result"] == "failed"
        assert "can't find command 'vllm'" in answer["error"]
    run(scenario())


def test_delete_removes_program_state_and_log_and_a_new_instance_starts_fresh(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("extra", request("acme/a", wait=True))
        fx.procs["extra"]["pid"] = 99
        await manager.observe()
        await settle(manager)
        assert manager.actors["extra"].rt.restarts == 1
        assert (await manager.delete("extra"))["state"] == "deleted"
        await settle(manager)
        assert "extra" not in manager.store.instances and "extra" not in fx.programs
        assert fx.removed_logs == ["extra"] and "extra" not in manager.actors
        await manager.swap("extra", request("acme/b", wait=True))
        assert manager.actors["extra"].rt.restarts == 0
    run(scenario())


def test_a_full_workspace_refuses_the_swap_and_leaves_the_running_model(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))

        def full(config):
            raise OSError(28, "No space left on device")
        manager.store.put = full
        try:
            await manager.swap("vllm", request("acme/b", wait=True))
        except Exception as exc:  # noqa: BLE001
            assert exc.status == 507 and "untouched" in exc.message
        else:
            raise AssertionError("no 507")
        assert manager.phase("vllm") == Phase.READY and fx.programs["vllm"].model == "acme/a"
    run(scenario())


def test_an_engine_held_back_at_boot_waits_for_the_hub_then_starts(tmp_path, monkeypatch):
    monkeypatch.setattr("app.actor.HUB_BACKOFF", (0.01, 0.02))
    async def scenario():
        from app import boot_record
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/a", wait=True))
        await manager.stop("vllm")
        boot_record.write(manager.settings, {"vllm": "waiting for the Hugging Face Hub: it cannot be reached"})
        manager, fx2 = make_manager(tmp_path)
        fx2.programs = dict(fx.programs)
        fx2.hub_answers = [Answer("down", "the Hub cannot be reached"), Answer("ok")]
        actor = manager.actor("vllm")
        assert actor.rt.phase == Phase.WAITING and "Hub" in actor.rt.reason
        for _ in range(200):
            await asyncio.sleep(0.01)
            if actor.rt.phase == Phase.STARTING:
                break
        assert actor.rt.phase == Phase.STARTING and ("start", "vllm") in fx2.calls
        assert boot_record.held(manager.settings) == {}  # a later manager start does not hold it again
    run(scenario())


def test_a_model_the_hub_does_not_know_fails_with_the_hubs_message(tmp_path):
    async def scenario():
        from app import boot_record
        manager, fx = make_manager(tmp_path)
        await manager.swap("vllm", request("acme/nope", wait=True))
        await manager.stop("vllm")
        boot_record.write(manager.settings, {"vllm": "waiting for the Hugging Face Hub"})
        manager, fx2 = make_manager(tmp_path)
        fx2.hub_answers = [Answer("missing", "the Hugging Face Hub says: 404 Repository Not Found")]
        actor = manager.actor("vllm")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if actor.rt.phase == Phase.FAILED:
                break
        assert actor.rt.reason == "the Hugging Face Hub says: 404 Repository Not Found"
    run(scenario())
