"""The llm-d event log and echo (app/api/v2_state.py) over a manager with a fake outside world: event order and
revisions, what was given going stale after a swap through /api, and the counter surviving a restart."""
from __future__ import annotations

import asyncio
import json

from app.api.v2_state import Given, Llmd
from app.instance import InstanceRequest
from tests.unit.fakes import make_manager, settle


def run(coro):
    return asyncio.run(coro)


def quiet(manager) -> Llmd:
    llmd = Llmd(manager, manager.settings)
    llmd.task.cancel()  # the test syncs by itself
    return llmd


def events(llmd: Llmd, after: int = 0) -> list[tuple[str, str, int]]:
    out = []
    for revision, line in llmd.events:
        event = json.loads(line)
        if revision > after:
            out.append((event["type"], event["object"]["instance_id"], event["object"]["revision"]))
    return out


def test_created_stopped_deleted_in_order_with_one_revision_each(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        llmd = quiet(manager)
        await manager.swap("one", InstanceRequest(model="acme/a", port=9001, wait=True))
        await llmd.sync()
        await manager.stop("one")
        await llmd.sync()
        await llmd.sync()  # nothing new: no event
        await manager.delete("one")
        await llmd.sync()
        assert events(llmd) == [("CREATED", "one", 1), ("STOPPED", "one", 2), ("DELETED", "one", 3)]
        assert llmd.forgotten_object("one")["status"] == "stopped" and llmd.saved.instances == {}
    run(scenario())


def test_an_exited_engine_is_stopped_with_its_exit_status(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        llmd = quiet(manager)
        await manager.swap("one", InstanceRequest(model="acme/a", port=9001, wait=True))
        await llmd.sync()
        fx.procs["one"].update(statename="EXITED", pid=0, exitstatus=3, description="exit status 3")
        await manager.observe()
        await settle(manager)
        await llmd.sync()
        kind, line = json.loads(llmd.events[-1][1])["type"], json.loads(llmd.events[-1][1])["object"]
        assert kind == "STOPPED" and line["exit_code"] == 3
    run(scenario())


def test_what_was_given_is_echoed_until_a_swap_through_api_replaces_it(tmp_path):
    async def scenario():
        manager, fx = make_manager(tmp_path)
        llmd = quiet(manager)
        await manager.swap("one", InstanceRequest(model="acme/a", port=9001, wait=True))
        given = Given(options="--model acme/a  --port 9001", annotations={"k": "v"})
        llmd.given("one", given, manager.known()["one"])
        await llmd.sync()
        described = llmd.describe(manager.known()["one"])
        assert described["options"] == "--model acme/a  --port 9001" and described["annotations"] == {"k": "v"}
        assert "env_vars" not in described and "gpu_uuids" not in described
        await manager.swap("one", InstanceRequest(model="acme/b", wait=True, strategy="restart"))  # keeps the port
        await llmd.sync()
        replaced = llmd.describe(manager.known()["one"])
        assert replaced["options"] == "--model acme/b --port 9001" and "annotations" not in replaced
        assert [e[0] for e in events(llmd)] == ["CREATED", "CREATED"]  # the swap is announced as a creation
    run(scenario())


def test_the_counter_survives_a_restart_and_older_revisions_are_gone(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        llmd = quiet(manager)
        await manager.swap("one", InstanceRequest(model="acme/a", port=9001, wait=True))
        await llmd.sync()
        assert llmd.oldest == 0 and llmd.revision == 1
        again = quiet(manager)  # a new manager process reads llmd.json
        await again.sync()
        assert again.revision == 1 and again.oldest == 1 and list(again.events) == []
    run(scenario())
