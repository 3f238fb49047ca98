"""Downloads of the script, the manifest and its files: timeouts, retries with backoff, or a local path."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from app.provisioning.output import say

ATTEMPTS = 4
BACKOFF = 1.0  # seconds, doubled after each failed attempt
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def fetch(source: str, what: str, attempts: int = ATTEMPTS, echo=say) -> bytes:
    """The bytes of a URL (timeouts, retries with backoff on network errors and 5xx/429) or of a local path."""
    if not is_url(source):
        path = Path(source.removeprefix("file://"))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"{what}: cannot read {path}: {exc.strerror}") from None
    delay, last = BACKOFF, ""
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.get(source, timeout=TIMEOUT, follow_redirects=True)
            if response.status_code < 400:
                return response.content
            last = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # 404, 403...: trying again will not help
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            echo(f"{what}: download failed ({last}); retrying in {delay:.0f} s (attempt {attempt + 1}/{attempts})")
            time.sleep(delay)
            delay *= 2
    raise RuntimeError(f"{what}: cannot download {source}: {last}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
