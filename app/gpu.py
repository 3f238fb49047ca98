"""GPU readings through NVML (nvidia-ml-py). The only module that talks to NVML."""
from __future__ import annotations

import pynvml


def gpu_count() -> int:
    """Number of NVIDIA GPUs NVML sees; 0 without a driver or GPU."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
