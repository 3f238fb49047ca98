"""Roles and multi-node engines as pure logic: the settings' checks, the `ray` program, engine plans and commands,
the cluster's shortfall and the manager's 409 (app/multinode.py, app/cluster.py)."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from app import cluster, cluster_guard, engine, gpu, multinode, render
from app.instance import InstanceConfig, InstanceRequest
from app.manager import InstanceError
from app.settings import Settings
from tests.unit.fakes import make_manager, settle

HEAD = {"APPLIANCE_ROLE": "head", "RAY_NODE_IP": "10.0.0.1", "RAY_BIN": "/bin/true"}
WORKER = {"APPLIANCE_ROLE": "worker", "RAY_NODE_IP": "10.0.0.2", "RAY_ADDRESS": "10.0.0.1:6379", "RAY_BIN": "/bin/true"}


def settings(tmp_path, **env) -> Settings:
    return Settings(APPLIANCE_ROOT=str(tmp_path), **env)


@pytest.mark.parametrize("env,message", [
    ({**HEAD, "RAY_NODE_IP": "8.8.8.8"}, "RAY_NODE_IP 8.8.8.8, a public address"),
    ({**HEAD, "RAY_NODE_IP": "0.0.0.0"}, "a public address"),
    ({**HEAD, "RAY_NODE_IP": ""}, "needs RAY_NODE_IP"),
    ({**HEAD, "RAY_NODE_IP": "box.example"}, "is not an IP address"),
    ({**HEAD, "RAY_ARGS": "--head --dashboard-host 0.0.0.0"}, "--dashboard-host 0.0.0.0"),
    ({**HEAD, "RAY_ARGS": "--port 6379"}, "needs `--head` in RAY_ARGS"),
    ({**WORKER, "RAY_ADDRESS": "10.0.0.1"}, "must be HOST:PORT"),
    ({**WORKER, "MULTINODE_MODE": "mp", "MULTINODE_NODES": "2", "MULTINODE_RANK": "2"}, "MULTINODE_RANK 2"),
])
def test_a_cluster_open_to_the_internet_or_that_cannot_form_is_refused(tmp_path, env, message):
    with pytest.raises(ValueError, match=message):
        multinode.check(settings(tmp_path, **env))


def test_a_public_address_passes_with_the_opt_in_and_single_needs_nothing(tmp_path):
    multinode.check(settings(tmp_path, **{**HEAD, "RAY_NODE_IP": "8.8.8.8", "ALLOW_PUBLIC_CLUSTER": "true"}))
    multinode.check(settings(tmp_path))
    multinode.check(settings(tmp_path, **WORKER))
    multinode.check(settings(tmp_path, **{**HEAD, "RAY_NODE_IP": "100.64.1.2"}))  # carrier NAT, Tailscale: private


def test_the_head_runs_ray_with_its_args_address_and_token_auth(tmp_path):
    program = multinode.ray_program(settings(tmp_path, **HEAD))
    args = program.argv[1:]
    assert args[:2] == ["start", "--block"] and "--head" in args
    assert args[args.index("--node-ip-address") + 1] == "10.0.0.1"
    assert args[args.index("--dashboard-port") + 1] == "28265"
    assert "--temp-dir" in args and "--disable-usage-stats" in args
    assert program.autostart and program.environment == {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "workspace/.appliance/ray-token")}


def test_a_worker_joins_the_head_and_keeps_its_own_ray_args_but_not_the_heads(tmp_path):
    default = multinode.ray_program(settings(tmp_path, **WORKER)).argv
    assert default[1:5] == ["start", "--block", "--address", "10.0.0.1:6379"] and "--head" not in default
    custom = multinode.ray_program(settings(tmp_path, **WORKER, RAY_ARGS="--num-gpus 8")).argv
    assert custom[custom.index("--num-gpus") + 1] == "8"


def test_a_role_without_ray_installed_stops_the_boot_and_single_leaves_it_out(tmp_path):
    with pytest.raises(ValueError, match="needs Ray"):
        multinode.ray_program(settings(tmp_path, **{**HEAD, "RAY_BIN": "/nonexistent/ray"}))
    assert multinode.ray_program(settings(tmp_path, RAY_BIN="/nonexistent/ray")) is None


def test_the_dashboard_is_published_on_a_head_once(tmp_path):
    text = "localhost:1111:11111:/:Instance Portal"
    head = settings(tmp_path, **HEAD)
    assert multinode.portal_config(head, text) == f"{text}|localhost:8265:28265:/:Ray Dashboard"
    listed = f"{text}|localhost:9265:28265:/:Dash"
    assert multinode.portal_config(head, listed) == listed
    assert multinode.portal_config(settings(tmp_path), text) == text


@pytest.mark.parametrize("args,gpus,size", [
    ([], None, 1), ([], [0, 1, 2], 3), (["-tp", "4"], None, 4), (["--tensor-parallel-size=2", "-pp", "2"], None, 4),
    (["--pipeline-parallel-size", "3"], None, 3),
])
def test_parallel_size_is_tensor_times_pipeline(args, gpus, size):
    assert multinode.parallel_size(args, gpus) == size


def config(**fields) -> InstanceConfig:
    return InstanceConfig(**{"id": "vllm", "model": "acme/m", "port": 18000, **fields})


def test_ray_mode_uses_the_ray_executor_only_beyond_the_local_gpus(tmp_path):
    head = settings(tmp_path, **HEAD)
    assert multinode.engine_plan(head, config(args=["-tp", "2"]), local_gpus=2) is None
    plan = multinode.engine_plan(head, config(args=["-tp", "4", "-pp", "2"]), local_gpus=2)
    assert plan.gpus == 8 and plan.nodes == 1 and plan.args == ["--distributed-executor-backend", "ray"]
    assert plan.env["RAY_ADDRESS"] == "10.0.0.1:6379" and plan.env["RAY_AUTH_MODE"] == "token"
    assert plan.env["VLLM_HOST_IP"] == "10.0.0.1"
    given = multinode.engine_plan(head, config(args=["-tp", "4", "--distributed-executor-backend", "ray"]), 0)
    assert given.args == []
    assert multinode.engine_plan(settings(tmp_path), config(args=["-tp", "8"]), 0) is None  # single


def test_mp_mode_makes_the_default_instance_node_zero(tmp_path):
    head = settings(tmp_path, **HEAD, MULTINODE_MODE="mp", MULTINODE_NODES="3", MULTINODE_PORT="29555")
    plan = multinode.engine_plan(head, config(args=["-pp", "3"]), 0)
    assert plan.nodes == 3 and plan.gpus == 0
    assert plan.args == ["--distributed-executor-backend", "mp", "--nnodes", "3", "--node-rank", "0",
                         "--master-addr", "10.0.0.1", "--master-port", "29555"]
    assert multinode.engine_plan(head, config(id="other"), 0) is None


def test_a_multi_node_engine_runs_under_its_guard_and_is_not_restarted_by_supervisor(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "gpu_count", lambda: 0)
    head = settings(tmp_path, **HEAD, MULTINODE_MODE="mp")
    program = engine.program(head, config(args=["-pp", "2"]))
    assert program.argv[1:7] == ["-m", "app.cluster_guard", "--nodes", "2", "--gpus", "0"]
    assert program.argv[7:10] == ["--", "vllm", "serve"] and "--master-addr" in program.argv
    assert program.autorestart == "unexpected" and program.exitcodes == "3"
    text = render.program_conf(head, program)
    assert "autorestart=unexpected\nexitcodes=3\n" in text
    plain = render.program_conf(head, engine.program(head, config(id="other")))
    assert "exitcodes" not in plain and "cluster_guard" not in plain


def test_a_worker_in_mp_mode_runs_the_heads_engine_headless(tmp_path):
    worker = settings(tmp_path, **WORKER, MULTINODE_MODE="mp", VLLM_MODEL="acme/m", VLLM_ARGS="-pp 2 --dtype float32")
    program = multinode.headless_program(worker)
    guard, argv = program.argv[:program.argv.index("--")], program.argv[program.argv.index("--") + 1:]
    assert guard[1:] == ["-m", "app.cluster_guard", "--follow", "10.0.0.1:29500"]  # it joins each new head engine
    assert program.name == "vllm_headless" and argv[:3] == ["vllm", "serve", "acme/m"] and argv[-1] == "--headless"
    assert argv[argv.index("--node-rank") + 1] == "1" and argv[argv.index("--master-addr") + 1] == "10.0.0.1"
    assert program.environment["VLLM_HOST_IP"] == "10.0.0.2"
    assert multinode.headless_program(settings(tmp_path, **WORKER)) is None  # ray mode: nothing
    with pytest.raises(ValueError, match="needs VLLM_MODEL"):
        multinode.headless_program(settings(tmp_path, **WORKER, MULTINODE_MODE="mp"))


def nodes(*gpus: int, dead: int = 0) -> cluster.Snapshot:
    alive = [cluster.Node(f"n{i}", f"10.0.0.{i + 1}", i == 0, True, g, 4) for i, g in enumerate(gpus)]
    gone = [cluster.Node(f"d{i}", f"10.0.1.{i + 1}", False, False, 2, 4) for i in range(dead)]
    return cluster.Snapshot(alive + gone, None, 1.0)


def test_the_shortfall_names_what_is_missing():
    assert cluster.shortfall(nodes(2, 2), 2, 4) is None
    assert cluster.shortfall(nodes(2, dead=1), 2, 0) == "the engine spans 2 nodes and the Ray cluster has 1 alive " \
                                                       "(10.0.1.1 left)"
    assert "needs 8 GPUs and the Ray cluster's alive nodes have 4" in cluster.shortfall(nodes(2, 2), 1, 8)
    assert cluster.shortfall(cluster.Snapshot(error="Ray is not running here"), 1, 0) == "Ray is not running here"


def test_the_state_apis_nodes_are_parsed():
    answer = {"data": {"result": {"result": [
        {"node_id": "a", "node_ip": "10.0.0.1", "is_head_node": True, "state": "ALIVE",
         "resources_total": {"CPU": 4.0, "GPU": 2.0}},
        {"node_id": "b", "node_ip": "10.0.0.2", "is_head_node": False, "state": "DEAD", "resources_total": {}}]}}}
    assert cluster.parse_nodes(answer) == [cluster.Node("a", "10.0.0.1", True, True, 2, 4),
                                           cluster.Node("b", "10.0.0.2", False, False, 0, 0)]


def test_an_instance_larger_than_the_cluster_gets_a_409_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "gpu_count", lambda: 2)

    async def scenario():
        manager, fx = make_manager(tmp_path, gpus=2, **HEAD)
        manager.cluster = SimpleNamespace(snapshot=nodes(2, 2))
        with pytest.raises(InstanceError, match=r"needs 8 GPUs .* the cluster has 4 \(10.0.0.1: 2, 10.0.0.2: 2\)") \
                as caught:
            await manager.swap("big", InstanceRequest(model="acme/m", args=["-tp", "8"]))
        assert caught.value.status == 409 and fx.calls == [] and manager.store.get("big") is None
        await manager.swap("fits", InstanceRequest(model="acme/m", args=["-tp", "2", "-pp", "2"], share_gpus=True))
        manager.cluster = SimpleNamespace(snapshot=cluster.Snapshot(error="Ray is not running here"))
        with pytest.raises(InstanceError, match="the cluster cannot be read: Ray is not running here"):
            await manager.swap("more", InstanceRequest(model="acme/m", args=["-tp", "4"]))
        await manager.swap("local", InstanceRequest(model="acme/m", args=["-tp", "2"], share_gpus=True))  # this box
        await settle(manager)
    asyncio.run(scenario())


def test_a_worker_refuses_every_instance(tmp_path):
    async def scenario():
        manager, _ = make_manager(tmp_path, **WORKER)
        with pytest.raises(InstanceError, match="worker of the Ray head at 10.0.0.1:6379") as caught:
            await manager.swap("x", InstanceRequest(model="acme/m"))
        assert caught.value.status == 409
    asyncio.run(scenario())


def test_the_cluster_view_says_why_a_box_shows_no_cluster(tmp_path):
    async def scenario():
        single, _ = make_manager(tmp_path / "a")
        worker, _ = make_manager(tmp_path / "b", **WORKER)
        return cluster.view(single), cluster.view(worker)
    single, worker = asyncio.run(scenario())
    assert single["role"] == "single" and "APPLIANCE_ROLE=single" in single["error"] and single["nodes"] == []
    assert worker["role"] == "worker" and "worker of the Ray head at 10.0.0.1:6379" in worker["error"]


def test_rays_token_is_the_access_token_unless_given_and_then_token_shaped(tmp_path):
    assert multinode.ray_token(settings(tmp_path, **HEAD), "access-token-0123456789") == "access-token-0123456789"
    assert multinode.ray_token(settings(tmp_path, **HEAD, RAY_AUTH_TOKEN="ray-token-0123456789abc"), "x") \
        == "ray-token-0123456789abc"
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN must be 16-256 characters"):
        multinode.ray_token(settings(tmp_path, **HEAD, RAY_AUTH_TOKEN="short\nline"), "x")


def test_a_ray_without_token_auth_is_refused_before_it_could_run_an_open_cluster(tmp_path, monkeypatch):
    said = SimpleNamespace(stdout="ray, version 2.49.2\n")
    monkeypatch.setattr(multinode.subprocess, "run", lambda argv, **_: said if argv[1:] == ["--version"] else None)
    with pytest.raises(ValueError, match=r"Ray 2\.49, which has no token auth"):
        multinode.ray_program(settings(tmp_path, **HEAD))
    said.stdout = "ray, version 2.60.0\n"
    assert multinode.ray_program(settings(tmp_path, **HEAD)).environment["RAY_AUTH_MODE"] == "token"


def test_the_image_and_the_tests_install_the_same_ray_and_it_has_token_auth():
    repo = Path(__file__).resolve().parents[2]
    pins = [re.findall(r"ray\[[a-z,]+\]==([\d.]+)", (repo / name).read_text()) for name in ("Dockerfile", "Makefile")]
    assert pins[0] and pins[0] == pins[1]
    assert tuple(int(n) for n in pins[0][0].split(".")[:2]) >= multinode.TOKEN_AUTH_SINCE


class FakeEngine:
    def __init__(self, argv):
        self.returncode = None

    def poll(self):
        return self.returncode

    def terminate(self):
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


def test_a_workers_share_restarts_when_the_heads_engine_it_joined_is_gone(monkeypatch, capsys):
    readings = iter([False, False, True, True, False, False])  # not up yet (waits), up, then gone twice
    monkeypatch.setattr(cluster_guard, "reachable", lambda host, port: next(readings))
    monkeypatch.setattr(cluster_guard.subprocess, "Popen", FakeEngine)
    monkeypatch.setattr(cluster_guard.time, "sleep", lambda seconds: None)
    assert cluster_guard.main(["--follow", "10.0.0.1:29500", "--", "vllm", "serve", "m", "--headless"]) == 1
    said = capsys.readouterr().out
    assert "the head's engine at 10.0.0.1:29500 is gone" in said and "the engine was stopped" in said
