"""Can an engine get its model? Local folders and cached models need nothing; otherwise ask the Hugging Face Hub.

The boot asks quickly (`unreachable`, one request, 3 s) whether to start an engine at once; an engine held back
waits in the phase `waiting` and its actor asks again (`check`) with backoff until the Hub answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from app.settings import Settings


@dataclass(frozen=True)
class Answer:
    status: str  # "ok": start it; "missing": the Hub says no (not found, gated); "down": ask again later
    message: str = ""


def local(settings: Settings, model: str) -> bool:
    """A folder, or a model already in the cache: nothing to fetch."""
    if model.startswith(("/", ".", "~")) or Path(model).exists():
        return True
    return (settings.hf_home / "hub" / f"models--{model.replace('/', '--')}").exists()


def unreachable(settings: Settings, model: str) -> str | None:
    """Why `model` cannot be fetched now, or None if it is local, cached or the Hub answers (boot: one quick try)."""
    if local(settings, model):
        return None
    if settings.hf_hub_offline:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(settings.hf_endpoint, timeout=3.0, follow_redirects=True)
    except httpx.HTTPError as exc:
        return f"the Hugging Face Hub ({settings.hf_endpoint}) cannot be reached ({type(exc).__name__})"
    return None


def check(settings: Settings, model: str) -> Answer:
    """Ask the Hub for the model's page: ok, missing (with the Hub's own message), or down (try later)."""
    if local(settings, model):
        return Answer("ok")
    if settings.hf_hub_offline:
        return Answer("missing", f"HF_HUB_OFFLINE is set and {model} is not in the model cache")
    # imported here: only an engine held back for the Hub needs it (it costs the manager ~10 MiB otherwise)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token or False)
    try:
        api.model_info(model, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        return Answer("missing", said(exc))
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if 400 <= status < 500 and status not in (408, 429):
            return Answer("missing", said(exc))
        return Answer("down", f"the Hugging Face Hub answers {status or 'an error'}")
    except Exception as exc:  # noqa: BLE001 (a network error of any kind: the Hub is not there yet)
        return Answer("down", f"the Hugging Face Hub ({settings.hf_endpoint}) cannot be reached "
                              f"({type(exc).__name__})")
    return Answer("ok")


def said(exc: Exception) -> str:
    """The Hub's own words, on one line."""
    return f"the Hugging Face Hub says: {' '.join(str(exc).split())[:400]}"
