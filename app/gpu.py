"""GPU readings through NVML (nvidia-ml-py). The only module that talks to NVML.

NVML is initialised once and its handles cached; `Sampler` reads every GPU in a
background thread so that no request ever waits on the driver.
"""
from __future__ import annotations

import threading
import time

import pynvml

_lock = threading.Lock()
_state: dict = {"ready": None, "reason": None, "handles": []}


def _nvml() -> list:
    """Cached device handles; [] (and a reason) without a driver or GPU."""
    with _lock:
        if _state["ready"] is None:
            try:
                pynvml.nvmlInit()
                _state["handles"] = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
                _state["ready"] = True
                if not _state["handles"]:
                    _state["reason"] = "NVML found no NVIDIA GPU"
            except pynvml.NVMLError as exc:
                _state["ready"], _state["reason"] = False, f"NVML is not available: {exc}"
        return _state["handles"]


def reason() -> str | None:
    _nvml()
    return _state["reason"]


def gpu_count() -> int:
    return len(_nvml())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def uuid_indices() -> dict[str, int]:
    """GPU UUID -> index, in NVML's order (the PCI bus order engines see: CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    indices = {}
    for index, handle in enumerate(_nvml()):
        try:
            indices[_text(pynvml.nvmlDeviceGetUUID(handle))] = index
        except pynvml.NVMLError:
            continue
    return indices


def _pids(handle) -> set[int]:
    try:
        return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    except pynvml.NVMLError:
        return set()


def engine_pids(gpus: list[int] | None) -> set[int]:
    """Pids of the compute processes on these GPUs (all GPUs if None)."""
    handles = _nvml()
    chosen = range(len(handles)) if gpus is None else [g for g in gpus if g < len(handles)]
    return set().union(*(_pids(handles[i]) for i in chosen)) if handles else set()


def wait_released(pids: set[int], timeout: float) -> bool:
    """Wait until none of `pids` holds GPU memory any more (True), or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        if not pids & engine_pids(None):
            return True
        time.sleep(0.25)
    return not pids


def read(index: int, handle) -> dict:
    def safe(call, default=None):
        try:
            return call()
        except pynvml.NVMLError:
            return default
    memory = safe(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    util = safe(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    power = safe(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    limit = safe(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return {
        "index": index, "uuid": _text(safe(lambda: pynvml.nvmlDeviceGetUUID(handle), "")),
        "name": _text(safe(lambda: pynvml.nvmlDeviceGetName(handle), "")),
        "utilization": util.gpu if util else None,
        "memory_used": memory.used if memory else None, "memory_total": memory.total if memory else None,
        "temperature": safe(lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "power_draw": power / 1000 if power is not None else None, "power_limit": limit / 1000 if limit else None,
        "processes": [{"pid": p.pid, "memory_used": p.usedGpuMemory}
                      for p in safe(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle), [])],
    }


class Sampler:
    """Reads every GPU every `interval` seconds in a daemon thread; `latest` never blocks."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.latest: list[dict] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-sampler")

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample(self) -> list[dict]:
        self.latest = [read(i, h) for i, h in enumerate(_nvml())]
        return self.latest

    def _run(self) -> None:
        while _nvml():
            self.sample()
            time.sleep(self.interval)
