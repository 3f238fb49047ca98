"""Python client of the vLLM appliance: serve a model on chosen GPUs as replicas, batched chat/generate/embed with
retries and ordered results, LoRA adapters, typed errors. Sync (`Appliance`) and asyncio (`AsyncAppliance`) twins."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from vllm_appliance_client.aio import AsyncAppliance, AsyncServed
from vllm_appliance_client.core import Output, Result, Usage
from vllm_appliance_client.errors import (
    ApplianceError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServerError,
    StartupError,
    UnavailableError,
)
from vllm_appliance_client.sync import Appliance, Served

try:
    __version__ = version("vllm-appliance-client")
except PackageNotFoundError:  # imported from a checkout without being installed
    __version__ = "0+unknown"

__all__ = ["Appliance", "ApplianceError", "AsyncAppliance", "AsyncServed", "AuthenticationError", "BadRequestError",
           "ConflictError", "NotFoundError", "Output", "Result", "Served", "ServerError", "StartupError",
           "UnavailableError", "Usage", "__version__"]
