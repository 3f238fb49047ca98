"""The access token, the values Caddy checks it against, and the inference-only keys."""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path

from app import validation
from app.settings import Settings

# The cookie holds HMAC-SHA256(token, this label), never the token: a leaked cookie opens the portal until the
# token changes, but it is not the token (no bearer use, no ?token= login elsewhere).
SESSION_LABEL = b"vllm-appliance portal session v1"
MIN_PASSWORD_LENGTH = 12
MIN_PASSWORD_BITS = 60


def resolve_token(settings: Settings) -> tuple[str, bool]:
    """The token and whether it was generated just now (first boot without OPEN_BUTTON_TOKEN)."""
    if settings.open_button_token:
        return validation.token(settings.open_button_token), False
    if settings.token_file.exists():
        return validation.token(settings.token_file.read_text().strip(), "the saved token"), False
    token = secrets.token_urlsafe(32)
    write_private(settings.token_file, token + "\n")
    return token, True


def password(settings: Settings, token: str) -> str:
    return strong_password(validation.password(settings.web_password)) if settings.web_password else token


def password_bits(value: str) -> float:
    """A rough guess of a password's entropy: length times log2 of the character classes it draws from,
    counted on its distinct characters only (so `aaaaaaaaaaaaaaaa` is weak however long)."""
    classes = [("abcdefghijklmnopqrstuvwxyz", 26), ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 26), ("0123456789", 10)]
    alphabet = sum(size for letters, size in classes if any(c in letters for c in value))
    alphabet += 33 if any(not c.isascii() or not c.isalnum() for c in value) else 0
    return len(set(value)) * math.log2(max(alphabet, 2)) + (len(value) - len(set(value)))


def strong_password(value: str) -> str:
    """WEB_PASSWORD must resist an online guessing flood (Caddy compares it at network speed)."""
    if len(value) < MIN_PASSWORD_LENGTH or password_bits(value) < MIN_PASSWORD_BITS:
        raise ValueError(
            f"WEB_PASSWORD is too weak ({len(value)} characters, about {password_bits(value):.0f} bits): use at least "
            f"{MIN_PASSWORD_LENGTH} characters with about {MIN_PASSWORD_BITS} bits of entropy, e.g. four random words "
            "or `openssl rand -base64 18`; or leave it unset to use the token")
    return value


def bearer_tokens(settings: Settings, token: str) -> list[str]:
    """Admin bearer tokens Caddy accepts: the token, and WEB_PASSWORD when it is token-shaped."""
    tokens = [token]
    if settings.web_password and validation.TOKEN.fullmatch(settings.web_password):
        tokens.append(settings.web_password)
    return list(dict.fromkeys(tokens))


def api_keys(settings: Settings, admin: list[str]) -> list[str]:
    """API_KEYS: inference-only bearer keys (an admin token among them would be demoted: refused)."""
    keys = [validation.token(key.strip(), "each key of API_KEYS")
            for key in settings.api_keys.split(",") if key.strip()]
    if set(keys) & set(admin):
        raise ValueError("API_KEYS must not contain the admin token (OPEN_BUTTON_TOKEN) or WEB_PASSWORD")
    return list(dict.fromkeys(keys))


def session_value(token: str) -> str:
    """The cookie's value for this token; changing the token revokes every cookie handed out."""
    return hmac.new(token.encode(), SESSION_LABEL, hashlib.sha256).hexdigest()


def basic_header(username: str, password: str) -> str:
    """The exact `Authorization` value a client sends for these credentials. Caddy compares it as a string:
    a wrong password costs no hash (no CPU flood through bcrypt), and the password is strong (checked at boot)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def write_private(path: Path, text: str) -> None:
    """Write a secret atomically, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
