"""First-boot provisioning (PROVISIONING_SCRIPT, PROVISIONING_MANIFEST), boot hooks and the optional sshd.

At boot (`prepare`, called by app.boot before supervisord starts):
  - the boot hooks in <workspace>/boot.d run (see docs/provisioning.md for the rules);
  - the manifest is fetched and validated; its env, programs and apps are applied to the rendered config;
  - if provisioning must run (never succeeded, failed last time, script or manifest changed, or a re-run was
    asked for), the one-shot program `provisioning` is rendered with autostart=true and every engine (and
    manifest program) with autostart=false: they are started by `run` once provisioning ends, so a model the
    manifest downloads is never fetched twice.

`python -m app.provisioning run` (the program `provisioning`): apt -> pip -> files -> models -> script, each a
step in <state>/provisioning.json, output in <log dir>/provisioning.log. A failure is recorded and the engines
still start; it never stops the portal.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from app import manifest as manifest_mod
from app import portal_config, render, validation
from app.settings import Settings, get_settings
from app.state import Store

PROGRAM = "provisioning"
ATTEMPTS = 4
BACKOFF = 1.0  # seconds, doubled after each failed attempt
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def log(message: str) -> None:
    print(f"[boot] {message}", file=sys.stderr, flush=True)


def say(message: str) -> None:
    """A line in provisioning.log (the program's stdout)."""
    print(f"[provisioning {time.strftime('%H:%M:%S')}] {message}", flush=True)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- the record ---------------------------------------------------------------------------------------------
def load_record(settings: Settings) -> dict:
    try:
        return json.loads(settings.provisioning_record.read_text())
    except (OSError, ValueError):
        return {}


def save_record(settings: Settings, record: dict) -> None:
    settings.provisioning_record.parent.mkdir(parents=True, exist_ok=True)
    render.write_atomic(settings.provisioning_record, json.dumps(record, indent=2) + "\n", mode=0o600)


def configured(settings: Settings) -> bool:
    return bool(settings.provisioning_script or settings.provisioning_manifest)


def provisioning_pending(settings: Settings) -> bool:
    """True while provisioning is to run or running: engines are held back until it ends."""
    return configured(settings) and load_record(settings).get("status") in ("pending", "running")


def waiting(settings: Settings) -> set[str]:
    """The programs (engines, manifest programs) held back until provisioning ends; empty when none wait."""
    return set(load_record(settings).get("deferred") or []) if provisioning_pending(settings) else set()


WAITING_REASON = "waiting for provisioning to finish (GET /api/provisioning; log: provisioning)"


def status(settings: Settings) -> dict:
    """What GET /api/provisioning answers."""
    record = load_record(settings)
    return {"configured": configured(settings),
            "script": settings.provisioning_script or None, "manifest": settings.provisioning_manifest or None,
            "status": record.get("status", "not configured" if not configured(settings) else "pending"),
            "pending": provisioning_pending(settings),
            "exit_code": record.get("exit_code"), "started_at": record.get("started_at"),
            "ended_at": record.get("ended_at"), "error": record.get("error"),
            "script_sha256": record.get("script_sha256"), "manifest_sha256": record.get("manifest_sha256"),
            "steps": record.get("steps", []), "waiting": record.get("deferred", []) if provisioning_pending(settings) else [],
            "last_success": record.get("last_success"),
            "progress": progress(settings) if record.get("status") == "running" else None,
            "log": str(settings.log_dir / f"{PROGRAM}.log"), "log_url": f"/api/logs/{PROGRAM}"}


def progress(settings: Settings, size: int = 4096) -> str | None:
    """The last line of provisioning.log (a progress bar's latest state, for the portal) while it runs."""
    try:
        with open(settings.log_dir / f"{PROGRAM}.log", "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    pieces = [p.strip() for p in re.split(r"[\r\n]", tail) if p.strip()]
    return pieces[-1][-300:] if pieces else None


# --- fetching -----------------------------------------------------------------------------------------------
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


def manifest_copy(settings: Settings) -> Path:
    return settings.provisioning_dir / "manifest.yaml"


def script_copy(settings: Settings) -> Path:
    return settings.provisioning_dir / "script.sh"


# --- boot ---------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What boot needs from provisioning: extra apps, env for engines, whether engines must wait."""
    manifest: manifest_mod.Manifest | None = None
    pending: bool = False
    portal_config: str = ""
    hook_env: dict[str, str] = field(default_factory=dict)

    @property
    def engine_env(self) -> dict[str, str]:
        return {**(self.manifest.env if self.manifest else {}), **self.hook_env}

    def programs(self, settings: Settings, programs: list[render.Program]) -> list[render.Program]:
        """`programs` plus provisioning, sshd and the manifest's; engines held back while provisioning is pending."""
        engines = set(Store(settings).instances)  # their env already holds engine_env (engine.environment)
        extra = self.engine_env
        for spec in (self.manifest.programs if self.manifest else []):
            if spec.name in {p.name for p in programs}:
                log(f"ERROR: the manifest's program {spec.name!r} has the name of an instance; left out")
                continue
            directory = settings.workspace / (spec.directory or "")  # an absolute `directory` stays as it is
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log(f"ERROR: the manifest's program {spec.name!r}: cannot create its directory {directory}: "
                    f"{exc.strerror}; left out")
                continue
            programs.append(render.Program(
                name=spec.name, argv=spec.command, autostart=spec.autostart, directory=str(directory),
                autorestart="true" if spec.autorestart else "false", priority=950,
                environment={"HF_HOME": str(settings.hf_home), "WORKSPACE": str(settings.workspace),
                             **extra, **spec.environment},
                note="from PROVISIONING_MANIFEST; edit the manifest, not this file"))
        deferred = []
        if self.pending:
            manifest_names = {s.name for s in (self.manifest.programs if self.manifest else [])}
            for p in programs:
                if p.autostart and (p.name in engines or p.name in manifest_names):
                    p.autostart = False
                    deferred.append(p.name)
            if deferred:
                log(f"waiting for provisioning before starting: {', '.join(deferred)}")
        if configured(settings):
            programs.append(render.Program(
                name=PROGRAM, argv=[sys.executable, "-m", "app.provisioning", "run"], autostart=self.pending,
                autorestart="false", startsecs=0, startretries=0, stopwaitsecs=30, priority=300,
                note="one-shot; re-run it with POST /api/provisioning/rerun"))
        sshd = ssh_program(settings)
        if sshd:
            programs.append(sshd)
        if self.pending:
            save_record(settings, {**load_record(settings), "status": "pending", "deferred": deferred})
        return programs


def prepare(settings: Settings) -> Prepared:
    """Boot hooks, the manifest (validated) and whether provisioning runs this boot. Never raises.
    Saves the env they add to engines first, so `engine.environment` renders engines the same at boot and later."""
    prepared = read_boot_inputs(settings)
    record = load_record(settings)
    record["engine_env"] = prepared.engine_env
    save_record(settings, record)
    return prepared


def read_boot_inputs(settings: Settings) -> Prepared:
    prepared = Prepared(portal_config=settings.portal_config)
    try:
        prepared.hook_env = run_boot_hooks(settings)
    except Exception as exc:  # noqa: BLE001 (a broken hook folder must not stop the portal)
        log(f"ERROR: boot hooks: {exc}")
    if settings.runpod_pod_id:
        log(f"RunPod pod {settings.runpod_pod_id}: each public port P is at "
            f"https://{settings.runpod_pod_id}-P.proxy.runpod.net/ (e.g. -1111 for the portal, -8000 for the API)")
    if not configured(settings):
        return prepared
    manifest_copy(settings).unlink(missing_ok=True)
    if settings.provisioning_manifest:
        try:
            text = fetch(settings.provisioning_manifest, "PROVISIONING_MANIFEST", attempts=3, echo=log)
            render.write_atomic(manifest_copy(settings), text.decode("utf-8", "replace"), mode=0o600)
            prepared.manifest = manifest_mod.parse(text.decode("utf-8", "replace"))
            log(f"PROVISIONING_MANIFEST: {prepared.manifest.summary()}")
        except (RuntimeError, ValueError) as exc:
            log(f"ERROR: {exc}")
            log("ERROR: nothing from the manifest is applied; the portal stays up (details in provisioning.log)")
    if prepared.manifest and prepared.manifest.apps:
        combined = "|".join(filter(None, [settings.portal_config, prepared.manifest.portal_entries]))
        try:
            portal_config.parse(combined)
            prepared.portal_config = combined
        except ValueError as exc:
            log(f"ERROR: the manifest's apps do not fit PORTAL_CONFIG ({exc}); they are left out")
    prepared.pending = needs_run(settings)
    if not prepared.pending:
        last = load_record(settings).get("last_success") or {}
        log(f"provisioning succeeded at {last.get('ended_at')} and is unchanged: not run again "
            "(POST /api/provisioning/rerun to force)")
    return prepared


def needs_run(settings: Settings) -> bool:
    record = load_record(settings)
    last = record.get("last_success")
    if record.get("force") or not last or record.get("status") not in ("succeeded", "skipped"):
        return True
    if last.get("script") != settings.provisioning_script or last.get("manifest") != settings.provisioning_manifest:
        return True
    if settings.provisioning_manifest:
        copy = manifest_copy(settings)
        if not copy.exists() or sha256(copy.read_bytes()) != last.get("manifest_sha256"):
            return True
    if settings.provisioning_script:
        if is_url(settings.provisioning_script):
            return True  # `run` downloads it and compares checksums (a quick no-op when unchanged)
        try:
            return sha256(fetch(settings.provisioning_script, "PROVISIONING_SCRIPT")) != last.get("script_sha256")
        except RuntimeError:
            return True
    return False


def engine_env(settings: Settings) -> dict[str, str]:
    """Env the manifest and boot hooks add to every engine (saved at boot, for the manager's re-renders)."""
    return dict(load_record(settings).get("engine_env") or {})


# --- the run ------------------------------------------------------------------------------------------------
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
        code = subprocess.run(argv, env=_child_env(settings), cwd=settings.workspace, stdin=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT).returncode
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


class Interrupted(Exception):
    pass


def _interrupted(signum, _frame):
    raise Interrupted(f"stopped by signal {signum} before the end (it runs again at the next boot)")


def run(settings: Settings, *, force: bool = False) -> int:
    record = load_record(settings)
    force = force or bool(record.pop("force", False))
    deferred = record.get("deferred", []) if record.get("status") == "pending" else []
    steps: list[dict] = []
    record.update(status="running", started_at=now(), ended_at=None, exit_code=None, error=None, steps=steps,
                  skipped=False)
    save_record(settings, record)
    code = 0
    signal.signal(signal.SIGTERM, _interrupted)  # stopped by supervisor (a stop, or the container stopping)
    try:
        code = _run(settings, record, steps, force)
    except Exception as exc:  # noqa: BLE001 (record any surprise as a failure)
        say(f"ERROR: {type(exc).__name__}: {exc}")
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        code = 143 if isinstance(exc, Interrupted) else 1
        for entry in steps:
            if entry["status"] == "running":
                entry.update(status="failed", ended_at=now(), error=str(exc))
            elif entry["status"] == "waiting":
                entry["status"] = "not run"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    record.update(exit_code=code, ended_at=now(), deferred=[])
    if record["status"] == "running":
        record["status"] = "succeeded" if code == 0 else "failed"
    if record["status"] == "succeeded":
        record["last_success"] = {"script": settings.provisioning_script, "manifest": settings.provisioning_manifest,
                                  "script_sha256": record.get("script_sha256"),
                                  "manifest_sha256": record.get("manifest_sha256"), "ended_at": record["ended_at"]}
    save_record(settings, record)
    if record["status"] == "failed":
        say(f"FAILED (exit code {code}): {record.get('error')}. The portal stays up; fix it and re-run from the "
            "portal or with POST /api/provisioning/rerun (it is also retried at the next boot).")
    start_deferred(settings, deferred)
    return code


def _run(settings: Settings, record: dict, steps: list[dict], force: bool) -> int:
    manifest = None
    if settings.provisioning_manifest:
        copy = manifest_copy(settings)
        if copy.exists():
            text = copy.read_bytes()
        else:
            try:
                text = fetch(settings.provisioning_manifest, "PROVISIONING_MANIFEST")
            except RuntimeError as exc:
                record.update(status="failed", error=str(exc))
                say(f"ERROR: {exc}")
                return 1
            render.write_atomic(copy, text.decode("utf-8", "replace"), mode=0o600)
        record["manifest_sha256"] = sha256(text)
        try:
            manifest = manifest_mod.parse(text.decode("utf-8", "replace"))
        except manifest_mod.ManifestError as exc:
            say(str(exc))
            say("nothing was run: fix the manifest first")
            record.update(status="failed", error=str(exc), problems=exc.problems)
            return 2
        say(f"manifest {settings.provisioning_manifest}: {manifest.summary()}")
    else:
        record["manifest_sha256"] = None
    script = None
    last = record.get("last_success") or {}
    if settings.provisioning_script:
        say(f"fetching the script {settings.provisioning_script}")
        try:
            data = fetch(settings.provisioning_script, "PROVISIONING_SCRIPT")
        except RuntimeError as exc:
            if not force and last.get("script") == settings.provisioning_script and all(
                    last.get(k) == v for k, v in (("manifest", settings.provisioning_manifest),
                                                  ("manifest_sha256", record["manifest_sha256"]))):
                say(f"WARNING: {exc}. It succeeded at {last.get('ended_at')} and cannot be checked for changes "
                    "now: not run again (POST /api/provisioning/rerun to force)")
                record.update(status="skipped", skipped=True, steps=[], script_sha256=last.get("script_sha256"))
                return 0
            record.update(status="failed", error=str(exc))
            say(f"ERROR: {exc}")
            return 1
        script = script_copy(settings)
        render.write_atomic(script, data.decode("utf-8", "replace"), mode=0o700)
        record["script_sha256"] = sha256(data)
        say(f"script sha256 {record['script_sha256']}")
    else:
        record["script_sha256"] = None
    if not force and last and all(last.get(k) == v for k, v in (
            ("script", settings.provisioning_script), ("manifest", settings.provisioning_manifest),
            ("script_sha256", record["script_sha256"]), ("manifest_sha256", record["manifest_sha256"]))):
        say(f"unchanged since the successful run at {last.get('ended_at')}: not run again "
            "(POST /api/provisioning/rerun to force)")
        record.update(status="skipped", skipped=True, steps=[])
        return 0
    plan: list[tuple[str, str, object]] = []
    if manifest:
        if manifest.apt:
            plan.append(("apt", " ".join(manifest.apt), lambda: step_apt(settings, manifest.apt)))
        if manifest.pip:
            plan.append(("pip", " ".join(manifest.pip), lambda: step_pip(settings, manifest.pip)))
        if manifest.files:
            plan.append(("files", ", ".join(f.dest for f in manifest.files), lambda: step_files(settings, manifest.files)))
        if manifest.models:
            plan.append(("models", ", ".join(m.repo for m in manifest.models),
                         lambda: step_models(settings, manifest.models)))
    if script:
        plan.append(("script", settings.provisioning_script, lambda: step_script(settings, script)))
    steps.extend({"name": name, "detail": detail, "status": "waiting"} for name, detail, _ in plan)
    save_record(settings, record)
    for entry, (name, detail, action) in zip(steps, plan):
        say(f"==> step {name}: {detail}")
        entry.update(status="running", started_at=now())
        save_record(settings, record)
        try:
            action()
        except StepFailed as exc:
            entry.update(status="failed", ended_at=now(), exit_code=exc.exit_code, error=str(exc))
            record.update(status="failed", error=f"step {name}: {exc}")
            for rest in steps:
                if rest["status"] == "waiting":
                    rest["status"] = "not run"
            say(f"<== step {name} failed: {exc}")
            return exc.exit_code or 1
        entry.update(status="succeeded", ended_at=now(), exit_code=0)
        save_record(settings, record)
        say(f"<== step {name} done")
    say("provisioning succeeded")
    return 0


def start_deferred(settings: Settings, names: list[str]) -> None:
    """Start the engines and programs that waited for provisioning (they start even if it failed)."""
    if not names:
        return
    from app.supervisor import Supervisor
    supervisor = Supervisor.of(settings)
    for name in names:
        say(f"starting {name}, which waited for provisioning")
        try:
            supervisor.start(name)
        except Exception as exc:  # noqa: BLE001
            say(f"WARNING: cannot start {name}: {exc}")


def rerun(settings: Settings) -> dict:
    """Force a run now (the API's POST /api/provisioning/rerun). Raises LookupError / RuntimeError."""
    if not configured(settings):
        raise LookupError("provisioning is not configured (set PROVISIONING_SCRIPT or PROVISIONING_MANIFEST)")
    from app.supervisor import Supervisor
    supervisor = Supervisor.of(settings)
    info = supervisor.info(PROGRAM)
    if info is None:
        raise LookupError("the program `provisioning` is not loaded; restart the appliance")
    deadline = time.monotonic() + 5  # a run that has saved its outcome may still be exiting
    while info["statename"] in ("STARTING", "RUNNING"):
        if load_record(settings).get("status") in ("pending", "running") or time.monotonic() > deadline:
            raise RuntimeError("provisioning is running already")
        time.sleep(0.1)
        info = supervisor.info(PROGRAM) or info
    record = load_record(settings)
    record.update(force=True, status="pending", deferred=[])
    save_record(settings, record)
    manifest_copy(settings).unlink(missing_ok=True)  # fetch the manifest afresh
    supervisor.start(PROGRAM)
    return status(settings)


# --- boot hooks ---------------------------------------------------------------------------------------------
HOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHELL_VARS = {"_", "SHLVL", "PWD", "OLDPWD", "BASHOPTS", "SHELLOPTS", "BASH_EXECUTION_STRING"}


def _hook_env(settings: Settings, name: str) -> dict[str, str]:
    return {**os.environ, "WORKSPACE": str(settings.workspace), "HF_HOME": str(settings.hf_home),
            "BOOT_HOOK": name}


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
            code, out = _run_hook(settings, ["bash", "-c", 'set -a; . "$1" >&2 || exit $?; env -0', "boot-hook", str(path)],
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


# --- ssh ----------------------------------------------------------------------------------------------------
def public_keys(text: str) -> list[str]:
    """PUBLIC_KEY as authorized_keys lines; no options (command=, from=...), only known key types."""
    keys = []
    for line in text.replace("\\n", "\n").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] not in KEY_TYPES or len(parts) < 2 or not re.fullmatch(r"[A-Za-z0-9+/]+={0,3}", parts[1]):
            raise ValueError(f"PUBLIC_KEY: {line[:40]!r}... is not an SSH public key (type base64 [comment])")
        validation.plain_text(line, "PUBLIC_KEY")
        keys.append(line)
    if not keys:
        raise ValueError("PUBLIC_KEY holds no key")
    return keys


def port_listening(port: int) -> bool:
    """Whether something listens on TCP `port` here (the platform's sshd, on Vast's SSH launch modes or RunPod)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def ssh_setup(settings: Settings, keys: list[str]) -> Path:
    """Host key (generated once, kept in the workspace), authorized_keys (PUBLIC_KEY only, rewritten at every boot)
    and sshd_config; returns the config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    folder = settings.ssh_dir
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    host_key = folder / "ssh_host_ed25519_key"
    if not host_key.exists():
        key = Ed25519PrivateKey.generate()
        render.write_atomic(host_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                        serialization.NoEncryption()).decode(), mode=0o600)
        render.write_atomic(folder / "ssh_host_ed25519_key.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " appliance-host\n")
        log(f"generated the SSH host key {host_key}")
    # authorized_keys is derived from PUBLIC_KEY at every boot: kept in the run folder (0700), not on the volume.
    authorized = settings.ssh_authorized_keys
    authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    render.write_atomic(authorized, "\n".join(keys) + "\n", mode=0o600)
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder, fixed at its build
    except OSError as exc:
        log(f"WARNING: cannot create /run/sshd ({exc.strerror}): sshd may refuse to start")
    import pwd
    user = pwd.getpwuid(os.geteuid()).pw_name
    config = folder / "sshd_config"
    render.write_atomic(config, "\n".join([
        f"# {render.MARKER} from PUBLIC_KEY at every boot; do not edit",
        f"Port {settings.ssh_port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        # The appliance writes the keys itself (0600, in a 0700 folder). With StrictModes, sshd would refuse
        # them whenever a parent folder is group/world-writable (a 0777 /workspace, /tmp under `make run`).
        "StrictModes no",
        f"AllowUsers {user}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        "UsePAM no",
        f"PidFile {settings.run_dir / 'sshd.pid'}",
        "PrintMotd no",
        "",
    ]), mode=0o600)
    return config


def sshd_binary() -> str | None:
    return shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))


def ssh_program(settings: Settings) -> render.Program | None:
    if not settings.public_key:
        return None
    try:
        keys = public_keys(settings.public_key)
    except ValueError as exc:
        log(f"ERROR: {exc}; no sshd is started")
        return None
    if port_listening(settings.ssh_port):
        log(f"PUBLIC_KEY is set but port {settings.ssh_port} is already served (the platform's sshd): "
            "the appliance starts no sshd of its own")
        return None
    config = ssh_setup(settings, keys)
    sshd = sshd_binary()
    if not sshd:
        log("WARNING: PUBLIC_KEY is set but sshd is not installed (apt package openssh-server): no SSH access")
        return None
    return render.Program(name="sshd", argv=[sshd, "-D", "-e", "-f", str(config)], priority=150,
                          note="from PUBLIC_KEY")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.provisioning")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run provisioning (the program `provisioning` does this)")
    run_parser.add_argument("--force", action="store_true", help="run even if unchanged since a successful run")
    check = sub.add_parser("check", help="validate a manifest file and print its problems")
    check.add_argument("manifest")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            print(manifest_mod.parse(Path(args.manifest).read_text()).summary())
            return 0
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    return run(get_settings(), force=args.force)


if __name__ == "__main__":
    sys.exit(main())
