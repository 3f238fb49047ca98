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

from app import credentials, engine, gpu, portal_config, render, tls, validation
from app.settings import Settings, get_settings


def log(message: str) -> None:
    print(f"[boot] {message}", file=sys.stderr, flush=True)


def engine_environment(settings: Settings) -> dict[str, str]:
    env = {"HF_HOME": str(settings.hf_home), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if settings.hf_token:
        env["HF_TOKEN"] = settings.hf_token
    return env


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


def default_engine(settings: Settings, apps: list[portal_config.PortalApp]) -> render.Program | None:
    """The program `vllm` from VLLM_MODEL / VLLM_ARGS, or None (with the reason in the boot log)."""
    if not settings.vllm_model:
        log("VLLM_MODEL is empty: no engine at boot; choose a model in the portal or through the API")
        return None
    try:
        model = validation.model_name(settings.vllm_model)
        args = validation.engine_args(validation.split_args(settings.vllm_args))
    except ValueError as exc:
        log(f"ERROR: the engine is not started: {exc}. Fix VLLM_MODEL / VLLM_ARGS and restart; the portal stays up.")
        return None
    api = portal_config.find(apps, "vLLM")
    gpus = gpu.gpu_count() if settings.parallel_on_all_gpus else 0
    argv = engine.serve_argv(settings.vllm_bin, model, args, port=api.internal_port if api else 18000,
                             tensor_parallel=gpus)
    autostart = True
    reason = hub_unreachable(settings, model)
    if reason:
        autostart = False
        log(f"WARNING: {reason}, and {model} is not in the model cache, so the engine is not started. "
            "The portal stays up: choose a local model there, or fix the network and run `supervisorctl start vllm`.")
    return render.Program(name="vllm", argv=argv, environment=engine_environment(settings),
                          autostart=autostart, startsecs=5, stopwaitsecs=30, priority=900)


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

    apps = portal_config.sync(settings.portal_yaml, settings.portal_config)
    programs = control_programs(settings, apps)
    programs += [p for p in (ray_program(settings), default_engine(settings, apps)) if p]

    render.write_atomic(settings.supervisord_conf, render.supervisord_conf(settings, sys.executable))
    render.write_programs(settings, programs)
    render.write_atomic(settings.caddyfile, render.caddyfile(
        settings, apps, token=token, bearers=credentials.bearer_tokens(settings, token),
        password_hash=credentials.password_hash(password)), mode=0o600)

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
