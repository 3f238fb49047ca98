"""GPU code paths with a fake NVML: readings, owners, memory release, ownership conflicts, parallel size."""
from __future__ import annotations

import os
import subprocess
import threading
import time

from app import gpu, stats
from app.instance import InstanceConfig
from app.manager import Manager
from app.settings import Settings
from tests.fakes.nvml import FakeNVML


def test_without_nvml_there_are_no_gpus_and_a_reason(tmp_path):
    sampler = gpu.Sampler()
    snapshot = stats.snapshot(tmp_path, sampler, {})
    assert snapshot["gpus"] == [] and snapshot["gpu_reason"]
    assert snapshot["host"]["cpu_count"] == os.cpu_count() and snapshot["host"]["memory"]["total"] > 0


def test_readings_and_the_instance_owning_each_process(monkeypatch, tmp_path):
    fake = FakeNVML(2).install(monkeypatch)
    engine = subprocess.Popen(["sleep", "30"])
    worker = subprocess.Popen(["python3", "-c", "import subprocess; subprocess.run(['sleep', '30'])"])
    try:
        time.sleep(0.3)
        child = int(subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()[0])
        fake.devices[1]["processes"] = [engine.pid, child]
        sampler = gpu.Sampler()
        sampler.sample()
        snapshot = stats.snapshot(tmp_path, sampler, {engine.pid: "vllm", worker.pid: "second"})
    finally:
        engine.kill()
        worker.kill()
    first, second = snapshot["gpus"]
    assert first["name"].startswith("NVIDIA H100") and first["memory_total"] == 80 * 2**30
    assert second["utilization"] == 10 and second["temperature"] == 41 and second["power_draw"] == 100.001
    assert [p["instance"] for p in second["processes"]] == ["vllm", "second"]  # a worker child counts for its engine
    assert second["instances"] == ["second", "vllm"]
    assert snapshot["gpu_reason"] is None


def test_wait_released_waits_until_the_engine_leaves_the_gpu(monkeypatch):
    fake = FakeNVML(1).install(monkeypatch)
    fake.devices[0]["processes"] = [4242]
    threading.Timer(0.5, lambda: fake.devices[0].update(processes=[])).start()
    started = time.monotonic()
    assert gpu.engine_pids([0]) == {4242}
    assert gpu.wait_released({4242}, timeout=5)
    assert 0.4 < time.monotonic() - started < 3
    fake.devices[0]["processes"] = [7]
    assert not gpu.wait_released({7}, timeout=0.3)


def test_gpus_become_cuda_visible_devices_and_the_parallel_size(monkeypatch, tmp_path):
    from app import engine
    settings = Settings(APPLIANCE_ROOT=str(tmp_path))
    program = engine.program(settings, InstanceConfig(id="a", model="m", port=18001, gpus=[2, 3]), gpu_count=4)
    assert program.environment["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert program.environment["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert program.argv[-2:] == ["--tensor-parallel-size", "2"]
    automatic = engine.program(settings, InstanceConfig(id="vllm", model="m", port=18000), gpu_count=4)
    assert (automatic.argv[-2:] == ["--tensor-parallel-size", "4"]
            and "CUDA_VISIBLE_DEVICES" not in automatic.environment)
    off = engine.program(Settings(APPLIANCE_ROOT=str(tmp_path), USE_ALL_GPUS="false"),
                         InstanceConfig(id="vllm", model="m", port=18000), gpu_count=4)
    assert "--tensor-parallel-size" not in off.argv


def test_a_swap_waits_only_for_the_gpu_processes_of_the_engine_it_stops(monkeypatch, tmp_path):
    fake = FakeNVML(1).install(monkeypatch)
    engine = subprocess.Popen(["python3", "-c", "import subprocess; subprocess.run(['sleep', '30'])"])
    neighbour = subprocess.Popen(["sleep", "30"])  # another instance sharing the GPU
    try:
        time.sleep(0.3)
        worker = int(subprocess.run(["pgrep", "-P", str(engine.pid)], capture_output=True, text=True).stdout.split()[0])
        fake.devices[0]["processes"] = [worker, neighbour.pid]
        manager = Manager(Settings(APPLIANCE_ROOT=str(tmp_path)))
        monkeypatch.setattr(manager.fx.supervisor, "info", lambda name: {"pid": engine.pid})
        previous = InstanceConfig(id="a", model="m", port=18001, gpus=[0], share_gpus=True)
        assert manager.fx._engine_gpu_pids("a", previous) == {worker}
        assert manager.fx._engine_gpu_pids("a", None) == set()  # nothing ran before
        os.kill(worker, 9)
    finally:
        engine.kill()
        neighbour.kill()


def test_an_empty_gpu_list_means_no_gpu_and_no_parallel_size(tmp_path):
    from app import engine
    program = engine.program(Settings(APPLIANCE_ROOT=str(tmp_path)),
                             InstanceConfig(id="a", model="m", port=18001, gpus=[]), gpu_count=4)
    assert program.environment["CUDA_VISIBLE_DEVICES"] == "" and "--tensor-parallel-size" not in program.argv


def foreign_pid() -> int:
    """A pid no process here can have: what NVML reports for an engine when the appliance runs in a container."""
    return int(open("/proc/sys/kernel/pid_max").read()) + 1000


def test_in_a_container_a_swap_waits_for_the_foreign_pids_on_gpus_the_engine_held_alone(monkeypatch, tmp_path):
    fake = FakeNVML(2).install(monkeypatch)
    engine = subprocess.Popen(["sleep", "30"])
    host_pid = foreign_pid()
    try:
        fake.devices[0]["processes"] = [host_pid]
        manager = Manager(Settings(APPLIANCE_ROOT=str(tmp_path)))
        monkeypatch.setattr(manager.fx.supervisor, "info", lambda name: {"pid": engine.pid})
        alone = InstanceConfig(id="a", model="m", port=18001, gpus=[0])
        assert manager.fx._engine_gpu_pids("a", alone) == {host_pid}
        # on a shared GPU a foreign pid may be the neighbour's: not waited for
        assert manager.fx._engine_gpu_pids("a", alone.model_copy(update={"share_gpus": True})) == set()
        assert manager.fx._engine_gpu_pids("a", alone.model_copy(update={"gpus": [1]})) == set()  # nothing on GPU 1
        threading.Timer(0.3, lambda: fake.devices[0].update(processes=[])).start()
        assert gpu.wait_released({host_pid}, timeout=5)
    finally:
        engine.kill()


def test_in_a_container_stats_name_the_instance_holding_the_gpu_for_foreign_pids(monkeypatch, tmp_path):
    fake = FakeNVML(2).install(monkeypatch)
    host_pid, local = foreign_pid(), os.getpid()
    fake.devices[0]["processes"] = [host_pid]
    fake.devices[1]["processes"] = [host_pid + 1, local]
    sampler = gpu.Sampler()
    sampler.sample()
    snapshot = stats.snapshot(tmp_path, sampler, {}, {0: "vllm", 1: "second"})
    first, second = snapshot["gpus"]
    assert [p["instance"] for p in first["processes"]] == ["vllm"] and first["instances"] == ["vllm"]
    # a local process that is no engine (e.g. a notebook) is nobody's, even on a held GPU
    assert [p["instance"] for p in second["processes"]] == ["second", None]
    assert stats.snapshot(tmp_path, sampler, {})["gpus"][0]["instances"] == []  # held by nobody: no owner
