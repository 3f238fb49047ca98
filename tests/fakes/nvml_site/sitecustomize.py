"""Tests only: with FAKE_NVML_GPUS=N, every Python process that can import pynvml sees N fake GPUs
(tests/fakes/nvml.py)."""
import os

if os.environ.get("FAKE_NVML_GPUS"):
    try:
        import pynvml  # noqa: F401
    except ImportError:  # e.g. the stand-in engine's interpreter
        pass
    else:
        from tests.fakes.nvml import install_from_env
        install_from_env()
