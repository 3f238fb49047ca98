"""Claims of ports and GPUs across instances, and the GPU holders /api/stats credits foreign pids to."""
from __future__ import annotations

import asyncio

import pytest

from app import portal_config
from app.instance import InstanceRequest
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


def test_running_instances_may_not_share_a_gpu_unless_both_say_so(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=4)
        await manager.swap("a", InstanceRequest(model="acme/a", gpus=[0, 1], wait=True))
        await manager.swap("b", InstanceRequest(model="acme/b", gpus=[2], share_gpus=True, wait=True))
        with pytest.raises(InstanceError, match="GPU 1 is owned by instance 'a'") as caught:
            await manager.swap("c", InstanceRequest(model="acme/c", gpus=[1]))
        assert caught.value.status == 409
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'a'"):
            await manager.swap("c", InstanceRequest(model="acme/c"))  # automatic = every GPU
        await manager.swap("c", InstanceRequest(model="acme/c", gpus=[2], share_gpus=True, wait=True))
        await manager.swap("d", InstanceRequest(model="acme/d", gpus=[3], wait=True))
        assert manager.gpu_holders() == {0: "a", 1: "a", 3: "d"}  # b and c share GPU 2
        await manager.stop("a")  # a stopped instance holds nothing
        await manager.swap("e", InstanceRequest(model="acme/e", gpus=[0], wait=True))
        with pytest.raises(InstanceError, match="GPU 0 is owned by instance 'e'"):
            await manager.start("a")
    asyncio.run(scenario())


def test_an_accepted_swap_claims_its_gpus_before_it_runs(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, gpus=2)
        await manager.swap("a", InstanceRequest(model="acme/a", gpus=[0]))  # accepted, not carried out yet
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
