"""A fake of the nvidia-ml-py functions app/gpu.py calls: N GPUs with settable memory, load and processes."""
from __future__ import annotations

from types import SimpleNamespace

import pynvml


class FakeNVML:
    def __init__(self, count: int = 2):
        self.devices = [{"name": f"NVIDIA H100 80GB HBM3 #{i}", "uuid": f"GPU-fake-{i:04d}", "util": 10 * i,
                         "used": (i + 1) * 2**30, "total": 80 * 2**30, "temp": 40 + i, "power": 100_000 + i,
                         "limit": 700_000, "processes": []} for i in range(count)]

    def install(self, monkeypatch) -> "FakeNVML":
        import app.gpu as gpu
        monkeypatch.setattr(gpu, "_state", {"ready": None, "reason": None, "handles": []})
        replacements = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.devices),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetName": lambda h: self.devices[h]["name"],
            "nvmlDeviceGetUUID": lambda h: self.devices[h]["uuid"],
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=self.devices[h]["util"], memory=0),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=self.devices[h]["used"],
                                                                 total=self.devices[h]["total"],
                                                                 free=self.devices[h]["total"] - self.devices[h]["used"]),
            "nvmlDeviceGetTemperature": lambda h, sensor: self.devices[h]["temp"],
            "nvmlDeviceGetPowerUsage": lambda h: self.devices[h]["power"],
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: self.devices[h]["limit"],
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [SimpleNamespace(pid=p, usedGpuMemory=2**30)
                                                               for p in self.devices[h]["processes"]],
        }
        for name, function in replacements.items():
            monkeypatch.setattr(pynvml, name, function)
        return self
