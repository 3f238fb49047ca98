"""Checks on user input that ends up in a config file or a command line.

Everything here raises ValueError with a message a person can act on; callers
turn that into a boot-log error or an HTTP 4xx.
"""
from __future__ import annotations

import re
import shlex

INSTANCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# The appliance's own supervisor programs. An instance's program bears its id, so no instance (nor a manifest's
# program) may take one of these names: its program file would replace ours.
OWN_PROGRAMS = frozenset({"caddy", "haproxy", "router", "manager", "logforward", "provisioning", "sshd", "ray"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_text(value: str, what: str, *, max_len: int = 4096) -> str:
    """A single line of printable text: no newline, tab or other control character."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} contains a newline or control character")
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    return value


def instance_id(value: str) -> str:
    if not INSTANCE_ID.fullmatch(value):
        raise ValueError(f"instance id {value!r} must match [a-z0-9][a-z0-9-]{{0,31}}")
    if value in OWN_PROGRAMS:
        raise ValueError(f"instance id {value!r} is the name of one of the appliance's own programs "
                         f"({', '.join(sorted(OWN_PROGRAMS))}); choose another")
    return value


def model_name(value: str) -> str:
    plain_text(value, "model")
    if not value.strip():
        raise ValueError("model is empty")
    if value != value.strip() or value.startswith("-"):
        raise ValueError(f"model {value!r} must not start with '-' or have surrounding spaces")
    return value


def engine_args(values: list[str]) -> list[str]:
    for arg in values:
        plain_text(arg, f"argument {arg[:40]!r}")
    return values


def split_args(text: str, what: str = "VLLM_ARGS") -> list[str]:
    """Split a shell-quoted argument string the way a shell would, without a shell."""
    plain_text(text, what, max_len=16384)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid shell-quoted string: {exc}") from None


def env_vars(values: dict[str, str]) -> dict[str, str]:
    for name, value in values.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
        plain_text(value, f"environment variable {name}")
        # supervisor's environment= keeps quotes literal and strips every quote at both ends of a value.
        if '"' in value and "'" in value:
            raise ValueError(f"environment variable {name} may contain single or double quotes, not both")
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise ValueError(f"environment variable {name} must not start or end with a quote")
        if "%(" in value or re.search(r"\s[;#]", value):
            raise ValueError(f"environment variable {name} must not contain '%(' or a space followed by ';' or '#'")
    return values


def token(value: str, what: str = "OPEN_BUTTON_TOKEN") -> str:
    if not TOKEN.fullmatch(value):
        raise ValueError(f"{what} must be 16-256 characters of A-Z a-z 0-9 _ -")
    return value


def username(value: str) -> str:
    if not USERNAME.fullmatch(value):
        raise ValueError("WEB_USERNAME must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return value


def password(value: str) -> str:
    plain_text(value, "WEB_PASSWORD", max_len=256)
    if len(value) < 8:
        raise ValueError("WEB_PASSWORD must be at least 8 characters")
    return value
