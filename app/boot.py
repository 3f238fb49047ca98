"""Boot steps run by entrypoint.sh before supervisord starts.

Every boot: folders, token, certificate, portal.yaml, supervisor programs and
the Caddyfile. Messages go to stderr (the boot log); the path of
supervisord.conf goes to stdout for the entrypoint. A bad setting that only
concerns the engine is reported and the engine left out, so the portal still
comes up; a bad setting that would weaken auth or TLS stops the boot.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx

from app import credentials, engine, gpu, portal_config, provisioning, render, state, tls, validation
from app.settings import Settings, get_settings


def log(message: str) -> None:
    print(f"[boot] {message}", file=sys.stderr, flush=True)


def hub_unreachable(settings: Settings, model: str) -> str | None:
    """Why `model` cannot be fetched from the Hub, or None if it is local, cached or the Hub answers."""
    if model.startswith(("/", ".")) or Path(model).exists():
        return None
    if (settings.hf_home / "hub" / f"models--{model.replace('/', '--')}").exists():
        return None
    if settings.hf_hub_offline:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(settings.hf_endpoint, timeout=3.0, follow_redirects=True)
    except httpx.HTTPError as exc:
        return f"the Hugging Face Hub ({settings.hf_endpoint}) cannot be reached ({type(exc).__name__})"
    return None


def env_instance(settings: Settings, apps: list[portal_config.PortalApp]) -> state.InstanceConfig | None:
    """The instance `vllm` from VLLM_MODEL / VLLM_ARGS, or None (with the reason in the boot log)."""
    if not settings.vllm_model:
        log("VLLM_MODEL is empty: no engine at boot; choose a model in the portal or through the API")
        return None
    api = portal_config.find(apps, "vLLM")
    try:
        return state.InstanceConfig(id=state.DEFAULT_INSTANCE, model=settings.vllm_model,
                                    args=validation.split_args(settings.vllm_args),
                                    port=api.internal_port if api else 18000)
    except ValueError as exc:
        reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        log(f"ERROR: the engine is not started: {reason}. Fix VLLM_MODEL / VLLM_ARGS and restart; "
            "the portal stays up.")
        return None


def engine_programs(settings: Settings, apps: list[portal_config.PortalApp]) -> list[render.Program]:
    """One program per saved instance. VLLM_MODEL / VLLM_ARGS win for `vllm` when they changed since the last boot;
    otherwise what was chosen through the API is kept."""
    saved = state.load(settings)
    env_now = {"VLLM_MODEL": settings.vllm_model, "VLLM_ARGS": settings.vllm_args}
    if saved.boot_env != env_now:
        saved.instances.pop(state.DEFAULT_INSTANCE, None)
        config = env_instance(settings, apps)
        if config:
            saved.instances[state.DEFAULT_INSTANCE] = config
        saved.boot_env = env_now
        state.save(settings, saved)
    elif state.DEFAULT_INSTANCE in saved.instances:
        log(f"serving the model chosen through the API for `vllm`: {saved.instances['vllm'].model}")
    gpus = gpu.gpu_count() if saved.instances and settings.parallel_on_all_gpus else 0
    programs = []
    for config in saved.instances.values():
        reason = hub_unreachable(settings, config.model)
        if reason:
            log(f"WARNING: {reason}, and {config.model} is not in the model cache, so the engine `{config.id}` is not "
                f"started. The portal stays up: choose a local model there, or fix the network and run "
                f"`supervisorctl start {config.id}`.")
        programs.append(engine.program(settings, config, gpu_count=gpus, autostart=not reason))
    render.write_atomic(settings.caddy_routes_file, render.caddy_routes(settings, saved.instances.values()))
    return programs


def control_programs(settings: Settings, apps: list[portal_config.PortalApp]) -> list[render.Program]:
    portal = portal_config.find(apps, portal_config.PORTAL_NAME)
    caddy_env = {"XDG_DATA_HOME": str(settings.caddy_data_dir), "XDG_CONFIG_HOME": str(settings.caddy_data_dir),
                 "HOME": str(settings.caddy_data_dir)}
    return [
        render.Program(name="caddy", argv=["caddy", "run", "--config", str(settings.caddyfile),
                                           "--adapter", "caddyfile"],
                       environment=caddy_env, priority=100),
        render.Program(name="manager", argv=[sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                             "--port", str(portal.internal_port if portal else 11111)],
                       priority=200),
    ]


def ray_program(settings: Settings) -> render.Program | None:
    """`ray start --block $RAY_ARGS`, for multi-node serving; present only where ray is installed, started by hand."""
    ray = shutil.which("ray")
    if not ray:
        return None
    args = validation.split_args(settings.ray_args, "RAY_ARGS")
    return render.Program(name="ray", argv=[ray, "start", "--block", *args], autostart=False, priority=800)


def boot(settings: Settings) -> Path:
    for folder in settings.folders():
        folder.mkdir(parents=True, exist_ok=True)
    settings.run_dir.chmod(0o700)

    token, generated = credentials.resolve_token(settings)
    validation.username(settings.web_username)
    password = credentials.password(settings, token)
    if settings.enable_https and tls.ensure_certificate(settings):
        log(f"created a self-signed TLS certificate: {settings.cert_file}")

    prepared = provisioning.prepare(settings)  # boot hooks; manifest (validated); must provisioning run?
    apps = portal_config.sync(settings.portal_yaml, prepared.portal_config)
    programs = control_programs(settings, apps)
    programs += [p for p in [ray_program(settings)] if p] + engine_programs(settings, apps)
    programs = prepared.programs(settings, programs)  # + provisioning, sshd, manifest programs; engines wait

    render.write_atomic(settings.supervisord_conf, render.supervisord_conf(settings, sys.executable))
    render.write_programs(settings, programs)
    admins = credentials.bearer_tokens(settings, token)
    render.write_atomic(settings.caddyfile, render.caddyfile(
        settings, apps, token=token, admins=admins, keys=credentials.api_keys(settings, admins),
        basic=credentials.basic_header(settings.web_username, password),
        session=credentials.session_value(token)), mode=0o600)

    portal = portal_config.find(apps, portal_config.PORTAL_NAME)
    if portal:
        scheme = "https" if settings.enable_https else "http"
        url = f"{scheme}://localhost:{portal.external_port}/"
        if generated:
            log(f"generated the access token (kept in {settings.token_file}); it is printed this once:")
            log(f"  token: {token}")
            log(f"  open:  {url}?token={token}")
        else:
            log(f"portal: {url} (log in with ?token=<token>, or user {settings.web_username!r} and the password)")
    log(f"programs: {', '.join(p.name for p in programs)}; logs in {settings.log_dir}")
    return settings.supervisord_conf


def main() -> int:
    try:
        settings = get_settings()
        conf = boot(settings)
    except ValueError as exc:
        log(f"ERROR: {exc}")
        log("the appliance did not start: fix the setting above and start it again")
        return 1
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
