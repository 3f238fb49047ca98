"""At boot: boot hooks, the manifest (validated), and whether provisioning runs; the programs that follow from them.

If provisioning must run (never succeeded, failed last time, script or manifest changed, or a re-run was asked
for), the one-shot program `provisioning` is rendered with autostart=true and every engine (and manifest
program) with autostart=false: they are started by `run` once provisioning ends, so a model the manifest
downloads is never fetched twice.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from app import portal_config, render
from app.provisioning import manifest as manifest_mod
from app.provisioning.boot_hooks import run_boot_hooks
from app.provisioning.fetch import fetch, is_url, sha256
from app.provisioning.output import log
from app.provisioning.record import (
    PROGRAM,
    configured,
    load_record,
    manifest_copy,
    save_record,
)
from app.provisioning.sshd import ssh_program
from app.settings import Settings
from app.state import Store


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
                # A download step (models, and scripts that fetch gated models as on Vast.ai): it gets HF_TOKEN.
                environment={"HF_TOKEN": settings.hf_token} if settings.hf_token else {},
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
