"""Caddy's configuration: rendered from portal.yaml and the current access settings, checked by Caddy, then used.

The Vast.ai way of changing a running box works here: edit /etc/portal.yaml or /etc/environment, then
`supervisorctl restart caddy`. The program `caddy` runs `python -m app.caddy_config run`, which renders the
Caddyfile afresh and execs Caddy; the portal's Services page and `POST /api/caddy/reload` do the same and reload
Caddy gracefully (open connections and streams go on). A configuration Caddy refuses, or one that needs a
restart of the appliance, is not used: the previous one keeps serving and the reason is logged. Engines are never
touched.

The current settings are the program's environment, the secrets the boot saw (the entrypoint keeps them out of
every program's environment, so the boot saves them here, mode 0600), and /etc/environment over both, where
Vast.ai and RunPod put a running instance's variables. Only the access settings (RELOADABLE) are taken from it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from dotenv import dotenv_values

from app import checks, credentials, render, validation
from app.files import write_atomic
from app.portal_config import PortalApp, Ports
from app.settings import Settings, get_settings

RELOADABLE = ("OPEN_BUTTON_TOKEN", "WEB_USERNAME", "WEB_PASSWORD", "API_KEYS", "ENABLE_AUTH", "AUTH_EXCLUDE",
              "ALLOW_OPEN_PORTAL", "ENABLE_HTTPS", "TLS_CERT", "TLS_KEY", "PUBLIC_IPADDR", "RUNPOD_PUBLIC_IP")
SECRETS = ("WEB_PASSWORD", "API_KEYS")  # kept out of every program's environment; saved by the boot
Log = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[caddy config] {message}", file=sys.stderr, flush=True)


def remember(settings: Settings, ports: Ports) -> None:
    """At boot: what a later render needs and cannot see in a program's environment (0600: it holds secrets)."""
    secrets = {name: value for name in SECRETS if (value := os.environ.get(name))}
    write_atomic(settings.caddy_inputs, json.dumps({"secrets": secrets, "ports": {
        "manager": ports.manager_port, "api": ports.api_port}}) + "\n", mode=0o600)


def _inputs(settings: Settings) -> dict:
    try:
        return json.loads(settings.caddy_inputs.read_text())
    except (OSError, ValueError):
        return {}


def environment_file(settings: Settings) -> dict[str, str]:
    """The access settings in /etc/environment (`KEY=value` lines, `export` and quotes allowed)."""
    if not settings.environment_file.is_file():
        return {}
    values = dotenv_values(settings.environment_file)
    return {name: value for name, value in values.items() if name in RELOADABLE and value is not None}


def current(settings: Settings) -> Settings:
    """The settings as they are now: this program's environment, the boot's secrets, /etc/environment over both."""
    overrides = {**_inputs(settings).get("secrets", {}), **environment_file(settings)}
    return Settings(**overrides) if overrides else settings  # type: ignore[arg-type]


def render_text(settings: Settings, apps: list[PortalApp], log: Log) -> str:
    """The Caddyfile for these settings and apps (ValueError: a setting that must not be used, named)."""
    token, _ = credentials.resolve_token(settings)
    saved = settings.token_file.read_text().strip() if settings.token_file.exists() else ""
    if settings.open_button_token and saved != token:
        credentials.write_private(settings.token_file, token + "\n")  # the manager reads the token from there
    validation.username(settings.web_username)
    password = credentials.password(settings, token)
    settings = checks.auth_exclude(settings, apps, log)
    if settings.enable_https:
        settings = checks.public_addresses(settings, log)
        from app import tls  # here: the manager and the router read this module, and cryptography costs them 8 MiB

        why = tls.ensure_certificate(settings)
        if why == "created":
            log(f"created a self-signed TLS certificate: {settings.cert_file}")
        elif why:
            log(f"{why}; the new self-signed TLS certificate is {settings.cert_file} (clients that trusted the old "
                "one must download this one)")
    admins = credentials.bearer_tokens(settings, token)
    return render.caddyfile(settings, apps, token=token, admins=admins, keys=credentials.api_keys(settings, admins),
                            basic=credentials.basic_header(settings.web_username, password),
                            session=credentials.session_value(token))


def validate(settings: Settings, text: str) -> str | None:
    """Caddy's own verdict on a Caddyfile: None if it would run it, else what Caddy says."""
    trial = settings.caddyfile.with_name(".Caddyfile.trial")
    write_atomic(trial, text, mode=0o600)
    try:
        done = subprocess.run(["caddy", "validate", "--config", str(trial), "--adapter", "caddyfile"],
                              capture_output=True, text=True, timeout=60, env=caddy_environment(settings))
    finally:
        trial.unlink(missing_ok=True)
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1][-500:] if lines else f"caddy validate exited with {done.returncode}"


def refresh(settings: Settings, log: Log = _say) -> tuple[bool, str | None]:
    """Render the Caddyfile from portal.yaml and the current settings; write it if Caddy accepts it.
    Returns (changed, why it was not used)."""
    try:
        now = current(settings)
        apps = checks.port_collisions(Ports.read(settings.portal_yaml).apps, log)
        ports, booted = Ports(apps), _inputs(settings).get("ports", {})
        for what, port, was in (("Instance Portal", ports.manager_port, booted.get("manager")),
                                ("vLLM API", ports.api_port, booted.get("api"))):
            if was is not None and port != was:
                raise ValueError(f"the internal port of {what!r} changed in portal.yaml ({was} -> {port}): the "
                                 "manager and the engine listen where the boot put them; restart the appliance for it")
        text = render_text(now, apps, log)
    except (ValueError, OSError) as exc:
        return False, f"{exc}"
    if settings.caddyfile.exists() and settings.caddyfile.read_text() == text:
        return False, None
    problem = validate(settings, text)
    if problem:
        return False, f"Caddy refuses the new configuration: {problem}"
    write_atomic(settings.caddyfile, text, mode=0o600)
    return True, None


def caddy_environment(settings: Settings) -> dict[str, str]:
    """Caddy keeps its data (and finds its config folder) under the appliance's root."""
    folder = str(settings.caddy_data_dir)
    return {**os.environ, "XDG_DATA_HOME": folder, "XDG_CONFIG_HOME": folder, "HOME": folder}


def reload(settings: Settings) -> str | None:
    """Reload the running Caddy with the Caddyfile (graceful: listeners and open connections are kept)."""
    done = subprocess.run(["caddy", "reload", "--config", str(settings.caddyfile), "--adapter", "caddyfile",
                           "--address", f"unix/{settings.caddy_admin_socket}"], capture_output=True, text=True,
                          timeout=30, env=caddy_environment(settings))
    return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())[-500:]


def main(argv: list[str]) -> int:
    """`python -m app.caddy_config run`: the program `caddy`. A fresh configuration if it is good, then Caddy."""
    if argv != ["run"]:
        print("usage: python -m app.caddy_config run", file=sys.stderr)
        return 2
    settings = get_settings()
    changed, problem = refresh(settings)
    if problem:
        _say(f"ERROR: {problem}; Caddy keeps the previous configuration")
    elif changed:
        _say("rendered a new configuration from portal.yaml and the current settings")
    os.execvpe("caddy", ["caddy", "run", "--config", str(settings.caddyfile), "--adapter", "caddyfile"],
               caddy_environment(settings))
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
