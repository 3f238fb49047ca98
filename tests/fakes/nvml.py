"""A fake of the nvidia-ml-py functions app/gpu.py calls: N GPUs with settable memory, load and processes.

Two ways in:
- unit tests: `FakeNVML(n).install(monkeypatch)`; set `devices[i]["processes"]` to the pids on GPU i.
- the real appliance: put tests/fakes/nvml_site on PYTHONPATH and set FAKE_NVML_GPUS=N; its sitecustomize
  installs `EngineNVML`, whose GPU processes are this appliance's engines (`vllm serve`), each on the GPUs of
  its CUDA_VISIBLE_DEVICES (all of them when unset), as a real engine would be.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pynvml

GIB = 2**30


class FakeNVML:
    def __init__(self, count: int = 2):
        self.devices = [{"name": f"NVIDIA H100 80GB HBM3 #{i}", "uuid": f"GPU-fake-{i:04d}", "util": 10 * i,
                         "used": (i + 1) * GIB, "total": 80 * GIB, "temp": 40 + i, "power": 100_000 + i,
                         "limit": 700_000, "processes": []} for i in range(count)]

    def processes(self, index: int) -> list[int]:
        return list(self.devices[index]["processes"])

    def install(self, monkeypatch=None) -> FakeNVML:
        import app.gpu as gpu
        setattr_ = monkeypatch.setattr if monkeypatch else setattr
        setattr_(gpu, "_state", {"ready": None, "reason": None, "handles": []})
        d = self.devices
        replacements = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(d),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetName": lambda h: d[h]["name"],
            "nvmlDeviceGetUUID": lambda h: d[h]["uuid"],
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=d[h]["util"], memory=0),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
                used=d[h]["used"] + GIB * len(self.processes(h)), total=d[h]["total"],
                free=d[h]["total"] - d[h]["used"] - GIB * len(self.processes(h))),
            "nvmlDeviceGetTemperature": lambda h, sensor: d[h]["temp"],
            "nvmlDeviceGetPowerUsage": lambda h: d[h]["power"],
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: d[h]["limit"],
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [SimpleNamespace(pid=p, usedGpuMemory=GIB)
                                                               for p in self.processes(h)],
        }
        for name, function in replacements.items():
            setattr_(pynvml, name, function)
        return self


class EngineNVML(FakeNVML):
    """GPU i's processes: the live `... serve ...` processes of this appliance that CUDA_VISIBLE_DEVICES gives GPU i."""

    def __init__(self, count: int, root: str):
        super().__init__(count)
        self.marker = f"APPLIANCE_ROOT={root}".encode()

    def processes(self, index: int) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z" or b"serve" not in argv[:3] or self.marker not in environ:
                continue
            visible = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")), None)
            gpus = range(len(self.devices)) if visible is None else [int(g) for g in visible.split(b",") if g.strip()]
            if index in gpus:
                pids.append(int(entry.name))
        return sorted(pids)


def install_from_env() -> None:
    """Called by tests/fakes/nvml_site/sitecustomize.py in every Python process of an appliance under test."""
    count = os.environ.get("FAKE_NVML_GPUS")
    if count:
        EngineNVML(int(count), os.environ.get("APPLIANCE_ROOT", "")).install()
