"""Boot hooks: the scripts in <workspace>/boot.d, run at every boot before the programs start."""
from __future__ import annotations

import os
import re
import signal
import subprocess

from app import validation
from app.provisioning.output import log
from app.settings import Settings

HOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHELL_VARS = {"_", "SHLVL", "PWD", "OLDPWD", "BASHOPTS", "SHELLOPTS", "BASH_EXECUTION_STRING"}


# The admin credentials stay with the boot (Caddy's config, the token file): no hook sees them.
# HF_TOKEN is kept: a hook may download models, as a provisioning script may.
ADMIN_SECRETS = ("OPEN_BUTTON_TOKEN", "WEB_PASSWORD", "API_KEYS")


def _hook_env(settings: Settings, name: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in ADMIN_SECRETS}
    return {**inherited, "WORKSPACE": str(settings.workspace), "HF_HOME": str(settings.hf_home), "BOOT_HOOK": name}


def _run_hook(settings: Settings, argv: list[str], name: str, *, capture_env: bool = False) -> tuple[int, str]:
    process = subprocess.Popen(argv, env=_hook_env(settings, name), cwd=settings.workspace, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_env else subprocess.STDOUT,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=settings.boot_hook_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        _echo(name, (err if capture_env else out) or b"")
        return 124, ""
    _echo(name, (err if capture_env else out) or b"")
    return process.returncode, out.decode("utf-8", "replace") if capture_env else ""


def _echo(name: str, output: bytes) -> None:
    for line in output.decode("utf-8", "replace").splitlines():
        log(f"boot.d/{name}: {line}")


def run_boot_hooks(settings: Settings) -> dict[str, str]:
    """Run <boot.d>/* in name order; return the variables the sourced `*.env` hooks exported (for the engines)."""
    folder = settings.boot_hooks
    if not folder.is_dir():
        return {}
    exported: dict[str, str] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name.encode()):
        name = path.name
        if not path.is_file() or not HOOK_NAME.fullmatch(name) or name.endswith(("~", ".disabled")):
            if not name.startswith("."):
                log(f"boot.d/{name}: ignored (not a regular file, hidden, *~ or *.disabled)")
            continue
        if name.endswith(".env"):
            log(f"boot.d/{name}: sourcing")
            baseline = _hook_env(settings, name)
            code, out = _run_hook(settings,
                                  ["bash", "-c", 'set -a; . "$1" >&2 || exit $?; env -0', "boot-hook", str(path)],
                                  name, capture_env=True)
            if code != 0:
                log(f"ERROR: boot.d/{name}: exited with {code}; none of its variables are used (boot goes on)")
                continue
            for item in out.split("\0"):
                key, sep, value = item.partition("=")
                if sep and key not in _SHELL_VARS and baseline.get(key) != value:
                    try:
                        validation.env_vars({key: value})
                    except ValueError as exc:
                        log(f"WARNING: boot.d/{name}: {exc}; not used")
                        continue
                    exported[key] = value
            log(f"boot.d/{name}: ok, exports {', '.join(sorted(exported)) or 'nothing'}")
        elif name.endswith(".sh") or os.access(path, os.X_OK):
            argv = ["bash", str(path)] if name.endswith(".sh") else [str(path)]
            log(f"boot.d/{name}: running")
            code, _ = _run_hook(settings, argv, name)
            if code == 0:
                log(f"boot.d/{name}: ok")
            else:
                log(f"ERROR: boot.d/{name}: exited with {code}{' (timed out)' if code == 124 else ''}; "
                    "the boot goes on")
        else:
            log(f"boot.d/{name}: ignored (not *.sh, *.env or executable)")
    return exported
