"""`python -m app.provisioning run` (the program `provisioning`): apt -> pip -> files -> models -> script.

Each step is recorded in provisioning.json, its output goes to provisioning.log. A failure is recorded and the
engines still start; it never stops the portal.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable

from app import render
from app.provisioning import manifest as manifest_mod
from app.provisioning.fetch import fetch, sha256
from app.provisioning.output import say
from app.provisioning.record import (
    PROGRAM,
    configured,
    load_record,
    manifest_copy,
    now,
    save_record,
    script_copy,
    status,
)
from app.provisioning.steps import (
    StepFailed,
    step_apt,
    step_files,
    step_models,
    step_pip,
    step_script,
)
from app.settings import Settings
from app.supervisor import Supervisor


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
    plan: list[tuple[str, str, Callable[[], None]]] = []
    if manifest:
        if manifest.apt:
            plan.append(("apt", " ".join(manifest.apt), lambda: step_apt(settings, manifest.apt)))
        if manifest.pip:
            plan.append(("pip", " ".join(manifest.pip), lambda: step_pip(settings, manifest.pip)))
        if manifest.files:
            plan.append(("files", ", ".join(f.dest for f in manifest.files),
                         lambda: step_files(settings, manifest.files)))
        if manifest.models:
            plan.append(("models", ", ".join(m.repo for m in manifest.models),
                         lambda: step_models(settings, manifest.models)))
    if script:
        plan.append(("script", settings.provisioning_script, lambda: step_script(settings, script)))
    steps.extend({"name": name, "detail": detail, "status": "waiting"} for name, detail, _ in plan)
    save_record(settings, record)
    for entry, (name, detail, action) in zip(steps, plan, strict=True):
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
