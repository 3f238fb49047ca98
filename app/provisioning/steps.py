"""The steps of a run: apt, pip (into the engine's environment), files, models, the script."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from app.provisioning import manifest as manifest_mod
from app.provisioning.fetch import fetch, sha256
from app.provisioning.output import say
from app.settings import Settings


class StepFailed(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def engine_python(settings: Settings) -> str:
    """The interpreter of the engine's environment: the `vllm` on PATH's shebang (or the python beside it)."""
    vllm = shutil.which(settings.vllm_bin)
    if not vllm:
        raise StepFailed(f"pip: no `{settings.vllm_bin}` on PATH, so the engine's environment is unknown")
    beside = Path(vllm).resolve().parent / "python"
    try:
        first = Path(vllm).read_bytes()[:256].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        first = ""
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and Path(parts[0]).name == "env" and len(parts) > 1:
            found = shutil.which(parts[1])
            if found:
                return found
        elif parts and "python" in Path(parts[0]).name:
            return parts[0]
    if beside.exists():
        return str(beside)
    raise StepFailed(f"pip: cannot tell the Python of {vllm}")


def _child_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "WORKSPACE": str(settings.workspace), "HF_HOME": str(settings.hf_home),
           "HF_ENDPOINT": settings.hf_endpoint, "DEBIAN_FRONTEND": "noninteractive", "PROVISIONING": "1"}
    try:
        env["PATH"] = f"{Path(engine_python(settings)).parent}{os.pathsep}{env.get('PATH', '')}"
    except StepFailed:
        pass
    if settings.hf_token:
        env["HF_TOKEN"] = settings.hf_token
    return env


def _command(settings: Settings, argv: list[str], what: str) -> None:
    say(f"$ {' '.join(argv)}")
    try:
        code = subprocess.run(argv, check=False, env=_child_env(settings), cwd=settings.workspace,
                              stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode
    except OSError as exc:
        raise StepFailed(f"{what}: {exc.strerror}: {argv[0]}", 127) from None
    if code != 0:
        raise StepFailed(f"{what} exited with {code}", code)


def step_apt(settings: Settings, packages: list[str]) -> None:
    apt = shutil.which("apt-get")
    if not apt:
        raise StepFailed("apt: apt-get is not installed here", 127)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    _command(settings, [*sudo, apt, "update"], "apt-get update")
    _command(settings, [*sudo, apt, "install", "-y", "--no-install-recommends", "--", *packages], "apt-get install")


def step_pip(settings: Settings, packages: list[str]) -> None:
    python = engine_python(settings)
    say(f"pip installs into the engine's environment: {python}")
    _command(settings, [python, "-m", "pip", "install", "--disable-pip-version-check", *packages], "pip install")


def step_files(settings: Settings, files: list[manifest_mod.File]) -> None:
    for spec in files:
        dest = Path(spec.dest) if spec.dest.startswith("/") else settings.workspace / spec.dest
        say(f"fetching {spec.url} -> {dest}")
        try:
            data = fetch(spec.url, f"file {spec.dest}")
        except RuntimeError as exc:
            raise StepFailed(str(exc)) from None
        if spec.sha256 and sha256(data) != spec.sha256:
            raise StepFailed(f"file {spec.dest}: sha256 is {sha256(data)}, the manifest says {spec.sha256}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(int(spec.mode, 8) if spec.mode else 0o644)
        tmp.replace(dest)
        say(f"  {len(data)} bytes, sha256 {sha256(data)}")


def step_models(settings: Settings, models: list[manifest_mod.Model]) -> None:
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import snapshot_download
    for spec in models:
        say(f"downloading {spec.repo}{'@' + spec.revision if spec.revision else ''} into {settings.hf_home / 'hub'}")
        try:
            path = snapshot_download(repo_id=spec.repo, revision=spec.revision, cache_dir=settings.hf_home / "hub",
                                     endpoint=settings.hf_endpoint, token=settings.hf_token or None,
                                     allow_patterns=spec.allow_patterns, ignore_patterns=spec.ignore_patterns)
        except Exception as exc:  # noqa: BLE001 (huggingface_hub raises many kinds; all fail the step)
            raise StepFailed(f"model {spec.repo}: {type(exc).__name__}: {exc}") from None
        say(f"  {spec.repo} is in the cache: {path}")


def step_script(settings: Settings, script: Path) -> None:
    _command(settings, ["bash", str(script)], "the script")
