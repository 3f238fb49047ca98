"""The access token and the basic-auth password hash."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import bcrypt

from app import validation
from app.settings import Settings


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
    return validation.password(settings.web_password) if settings.web_password else token


def bearer_tokens(settings: Settings, token: str) -> list[str]:
    """Bearer tokens Caddy accepts: the token, and WEB_PASSWORD when it is token-shaped."""
    tokens = [token]
    if settings.web_password and validation.TOKEN.fullmatch(settings.web_password):
        tokens.append(settings.web_password)
    return list(dict.fromkeys(tokens))


def password_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


def write_private(path: Path, text: str) -> None:
    """Write a secret atomically, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
