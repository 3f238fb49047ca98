"""Claims of ports and GPUs across instances, and the GPU holders /api/stats credits foreign pids to."""
from __future__ import annotations

import asyncio

import pytest

from app import portal_config
from app.instance import InstanceRequest, Phase
from app.manager import InstanceError
from tests.unit.fakes import make_manager, settle


def test_two_requests_in_flight_are_not_given_the_same_port(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        first = await manager.swap("a", InstanceRequest(model="acme/a"))
        second = await manager.swap("b", InstanceRequest(model="acme/b"))
        assert first["port"] != second["port"]
        with pytest.raises(InstanceError, match="port .* is used by instance 'a'") as caught:
            await manager.swap("c", InstanceRequest(model="acme/c", port=first["port"]))
        assert caught.value.status == 409
        await settle(manager)
    asyncio.run(scenario())


def test_a_port_of_the_appliance_is_refused(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path)
        config = "localhost:1111:11111:/:Instance Portal|localhost:8000:18000:/docs:vLLM API"
        manager.settings.portal_yaml.parent.mkdir(parents=True, exist_ok=True)
        portal_config.write(manager.settings.portal_yaml, config, portal_config.parse(config))
        with pytest.raises(InstanceError, match="port 18000 is the internal port of 'vLLM API'") as caught:
            await manager.swap("a", InstanceRequest(model="acme/a", port=18000))
        assert caught.value.status == 409
    asyncio.run(scenario())


def test_running_instances_may_not_share_a_gpu_unless_both_say_so_and_a_pinned_one_is_never_stopped(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=4)
        await manager.swap("a", InstanceRequest(model="acme/a", gpus=[0, 1], pinned=True, wait=True))
        await manager.swap("b", InstanceRequest(model="acme/b", gpus=[2], share_gpus=True, wait=True))
        with pytest.raises(InstanceError, match="GPU 1 is owned by instance 'a', which is pinned") as caught:
            await manager.swap("c", InstanceRequest(model="acme/c", gpus=[1]))
        assert caught.value.status == 409
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'a'"):
            await manager.swap("c", InstanceRequest(model="acme/c"))  # automatic = every GPU
        await manager.swap("c", InstanceRequest(model="acme/c", gpus=[2], share_gpus=True, wait=True))
        await manager.swap("d", InstanceRequest(model="acme/d", gpus=[3], wait=True))
        assert manager.gpu_holders() == {0: "a", 1: "a", 3: "d"}  # b and c share GPU 2
        assert {i: manager.phase(i) for i in "abcd"} == dict.fromkeys("abcd", Phase.READY)
        await manager.stop("a")  # a stopped instance holds nothing
        await manager.swap("e", InstanceRequest(model="acme/e", gpus=[0], pinned=True, wait=True))
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'e', which is pinned"):
            await manager.start("a")
    asyncio.run(scenario())


def test_the_llm_d_and_bootstrap_way_in_refuses_a_held_gpu_instead_of_making_room(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=2)
        await manager.swap("a", InstanceRequest(model="acme/a", gpus=[0], wait=True))
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'a'") as caught:
            await manager.swap("b", InstanceRequest(model="acme/b", gpus=[0]), make_room=False)
        assert caught.value.status == 409 and manager.phase("a") == Phase.READY
    asyncio.run(scenario())


def test_an_accepted_swap_claims_its_gpus_before_it_runs(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=2)
        await manager.swap("a", InstanceRequest(model="acme/a", gpus=[0], pinned=True))  # accepted, not carried out
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'a'"):
            await manager.swap("b", InstanceRequest(model="acme/b", gpus=[0]))
        await settle(manager)
    asyncio.run(scenario())


def test_gpus_that_do_not_exist_are_refused(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=2)
        with pytest.raises(InstanceError, match="GPU 2 does not exist: there are 2 GPUs") as caught:
            await manager.swap("a", InstanceRequest(model="acme/a", gpus=[2]))
        assert caught.value.status == 422
    asyncio.run(scenario())
