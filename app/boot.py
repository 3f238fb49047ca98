"""Boot steps run by entrypoint.sh before supervisord starts.

Every boot: folders, token, certificate, portal.yaml, supervisor programs and
the Caddyfile. Messages go to stderr (the boot log); the path of
supervisord.conf goes to stdout for the entrypoint. A bad setting that only
concerns the engine is reported and the engine left out, so the portal still
comes up; a bad setting that would weaken auth or TLS stops the boot.
"""
from __future__ import annotations

import argparse
import re
import socket
import sys
from pathlib import Path

from app import (
    boot_lock,
    boot_record,
    caddy_config,
    checks,
    credentials,
    engine,
    gpu,
    haproxy,
    hub,
    multinode,
    portal_config,
    render,
    routing_table,
    validation,
)
from app.files import write_atomic
from app.instance import DEFAULT_INSTANCE, InstanceConfig, Phase, error_message
from app.provisioning.prepare import prepare
from app.settings import Settings, get_settings
from app.state import SavedState, Store


def log(message: str) -> None:
    print(f"[boot] {message}", file=sys.stderr, flush=True)


def free_engine_port(settings: Settings, ports: portal_config.Ports, claimed: set[int]) -> int | None:
    """The first port of ENGINE_PORTS that no instance claims, no app uses and nothing listens on."""
    taken = claimed | set(ports.taken())
    for port in settings.engine_port_range:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return None


def env_instance(settings: Settings, ports: portal_config.Ports, saved: SavedState) -> InstanceConfig | None:
    """The instance `vllm` from VLLM_MODEL / VLLM_ARGS, or None (with the reason in the boot log). Without --port it
    keeps the engine port it had, or takes a free one of ENGINE_PORTS (the router listens on the API's port)."""
    if not settings.vllm_model:
        log("VLLM_MODEL is empty: no engine at boot; choose a model in the portal or through the API")
        return None
    try:
        others = {c.port for i, c in saved.instances.items() if i != DEFAULT_INSTANCE}
        port = None
        if "--port" not in settings.vllm_args:
            had = saved.instances.get(DEFAULT_INSTANCE)
            port = had.port if had and had.port not in others and had.port not in ports.taken() else \
                free_engine_port(settings, ports, others)
            if port is None:
                raise ValueError(f"no free port left in ENGINE_PORTS ({settings.engine_ports})")
        config = InstanceConfig.model_validate(
            {"id": DEFAULT_INSTANCE, "model": settings.vllm_model, "args": validation.split_args(settings.vllm_args),
             "port": port}, context={"check_folder": False})
        if config.port in ports.taken():
            raise ValueError(f"VLLM_ARGS --port {config.port}: that port is {ports.taken()[config.port]}; leave "
                             "--port out (the engine gets a free one of ENGINE_PORTS)")
        if config.port in others:
            raise ValueError(f"VLLM_ARGS --port {config.port}: another instance listens there; leave --port out")
        return config
    except ValueError as exc:
        log(f"ERROR: the engine is not started: {error_message(exc)}. Fix VLLM_MODEL / VLLM_ARGS and restart; "
            "the portal stays up.")
        return None


def migrate_default_port(settings: Settings, ports: portal_config.Ports, store: Store) -> None:
    """Before the router, `vllm` listened on the API's internal port; the router listens there now. A saved `vllm`
    still on it is given a free engine port (once: the state is saved)."""
    config = store.instances.get(DEFAULT_INSTANCE)
    if config is None or config.port != ports.api_port:
        return
    others = {c.port for i, c in store.instances.items() if i != DEFAULT_INSTANCE}
    port = free_engine_port(settings, ports, others)
    if port is None:
        log(f"ERROR: `vllm` listens on the API's port {ports.api_port}, where the router listens now, and no port of "
            f"ENGINE_PORTS ({settings.engine_ports}) is free: widen ENGINE_PORTS")
        return
    store.put(config.model_copy(update={"port": port}))
    log(f"the instance `vllm` moves from the API's internal port {ports.api_port} to engine port {port}: the router "
        "listens on the API's port now and routes by each request's `model`")


def engine_programs(settings: Settings, ports: portal_config.Ports) -> list[render.Program]:
    """One program per saved instance. VLLM_MODEL / VLLM_ARGS win for `vllm` when they changed since the last boot;
    otherwise what was chosen through the API is kept. An engine whose model must come from a Hub that does not
    answer is held back (recorded for the manager, whose actor starts it once the Hub answers)."""
    store = Store(settings)
    saved = store.state
    env_now = {"VLLM_MODEL": settings.vllm_model, "VLLM_ARGS": settings.vllm_args}
    if saved.boot_env != env_now:
        instances = {i: c for i, c in saved.instances.items() if i != DEFAULT_INSTANCE}
        config = env_instance(settings, ports, saved)
        if config:
            instances[DEFAULT_INSTANCE] = config
        store.save(SavedState(instances=instances, boot_env=env_now))
    elif DEFAULT_INSTANCE in saved.instances:
        log(f"serving the model chosen through the API for `vllm`: {saved.instances[DEFAULT_INSTANCE].model}")
    migrate_default_port(settings, ports, store)
    gpus = gpu.gpu_count() if store.instances and settings.parallel_on_all_gpus else 0
    programs, held = [], {}
    for config in store.instances.values():
        reason = hub.unreachable(settings, config.model)
        if reason:
            held[config.id] = f"waiting for the Hugging Face Hub: {reason}; {config.model} is not in the model cache"
            log(f"WARNING: {reason}, and {config.model} is not in the model cache: the engine `{config.id}` waits "
                "and starts by itself as soon as the Hub answers (state `waiting` in the portal and the API).")
        programs.append(engine.program(settings, config, gpu_count=gpus, autostart=not reason))
    boot_record.write(settings, held)
    # The router's first table: every engine on its way (the manager publishes the phases as they come).
    routing_table.write(settings, routing_table.Table(manager_port=ports.manager_port, routes=[
        routing_table.route(c, Phase.WAITING if c.id in held else Phase.STARTING) for c in store.instances.values()]))
    return programs


def router_environment(settings: Settings) -> dict[str, str]:
    """ROUTER_PEERS for the router (spaces around `,` and `;` dropped); one supervisor cannot carry is left out,
    logged: the boot goes on (the router checks each entry itself and logs the bad ones)."""
    value = re.sub(r"\s*([,;])\s*", r"\1", settings.router_peers.strip())
    if not value:
        return {}
    try:
        return validation.env_vars({"ROUTER_PEERS": value})
    except ValueError as exc:
        log(f"ERROR: ROUTER_PEERS is not used: {exc}")
        return {}


def router_programs(settings: Settings, ports: portal_config.Ports) -> list[render.Program]:
    """The router, and HAProxy in front of it on the API's port when the fast path is on and HAProxy can run it
    (app/haproxy.py); otherwise the router on the API's port itself."""
    why_not = haproxy.unusable(settings)
    if why_not is None:
        port = haproxy.router_port(settings, ports.taken())
        if settings.router_port and port != settings.router_port:
            log(f"ERROR: ROUTER_PORT {settings.router_port} is {ports.taken()[settings.router_port]}: the router "
                f"takes port {port} instead")
        front = [haproxy.prepare(settings, ports.api_port, port)]
        why_not = haproxy.refused(settings)
    if why_not is None:
        log(f"fast path: HAProxy on the API's port {ports.api_port}, the router behind it on 127.0.0.1:{port}")
    else:
        port, front = ports.api_port, []
        log(f"{'WARNING: ' if settings.router_fast_path else ''}fast path off ({why_not}): the router listens on "
            f"the API's port {port} and passes every request itself")
    return front + [render.Program(name="router", argv=haproxy.router_argv(port, why_not is None), priority=150,
                                   stopwaitsecs=10, environment=router_environment(settings))]


def control_programs(settings: Settings, ports: portal_config.Ports) -> list[render.Program]:
    return [
        # Renders the Caddyfile afresh (portal.yaml, /etc/environment), then execs Caddy: app/caddy_config.py
        render.Program(name="caddy", argv=[sys.executable, "-m", "app.caddy_config", "run"], priority=100),
        # The router behind HAProxy (the fast path) or on the vLLM API's internal port: app/haproxy.py.
        # ROUTER_PEERS (the peers' keys) reaches the router only, through its 0600 program file.
        *(router_programs(settings, ports) if ports.api else []),
        # HF_TOKEN: the manager renders the engines' programs (the token reaches it here, not through
        # supervisord's environment, which the entrypoint scrubs of secrets). The manager also serves
        # vllm-bootstrap's gRPC InferenceService on the API port + 1 (app/grpc_bridge.py; plaintext: docs/security.md).
        render.Program(name="manager", argv=[sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                             "--port", str(ports.manager_port)],
                       environment={"HF_TOKEN": settings.hf_token} if settings.hf_token else {}, priority=200),
    ]


def cluster_programs(settings: Settings, ports: portal_config.Ports, token: str) -> list[render.Program]:
    """The program `ray` and the engines: a head's and a single box's from the saved state; a worker runs none of
    its own (in `mp` mode, its share of the head's engine)."""
    role = settings.appliance_role
    if role != "single":
        write_atomic(settings.ray_token_file, multinode.ray_token(settings, token) + "\n", mode=0o600)
        log(f"APPLIANCE_ROLE={role} ({settings.multinode_mode} mode): cluster traffic on {settings.ray_node_ip}"
            + (f", joining the Ray head at {settings.ray_address}" if role == "worker" else "")
            + "; Ray's token auth is on")
        if settings.allow_public_cluster:
            log("WARNING: ALLOW_PUBLIC_CLUSTER=true: Ray's ports may be reachable from the internet, guarded by its "
                "token alone; firewall them to the other boxes (docs/scale-out.md)")
    ray = multinode.ray_program(settings)
    programs = [ray] if ray else []
    if role != "worker":
        return programs + engine_programs(settings, ports)
    headless = multinode.headless_program(settings)
    if headless:
        log(f"worker's share of the head's engine ({multinode.HEADLESS}): node rank {settings.multinode_rank} of "
            f"{settings.multinode_nodes}, {settings.vllm_model}")
    elif settings.vllm_model:
        log("VLLM_MODEL is ignored on a worker in `ray` mode: the head runs the engines")
    return programs + ([headless] if headless else [])


def boot(settings: Settings, pid: int | None = None) -> Path:
    """Render everything supervisord needs; `pid` is the entrypoint's (it becomes supervisord), recorded so that
    a later boot of this root knows whether this one still runs."""
    for folder in settings.folders():
        folder.mkdir(parents=True, exist_ok=True)
    settings.run_dir.chmod(0o700)
    with boot_lock.claim(settings, pid, log):
        return _boot(settings)


def _boot(settings: Settings) -> Path:
    token, generated = credentials.resolve_token(settings)
    prepared = prepare(settings)  # boot hooks; manifest (validated); must provisioning run?
    multinode.check(settings)  # a cluster open to the internet, or one that cannot form: the boot stops
    apps = portal_config.sync(settings.portal_yaml, multinode.portal_config(settings, prepared.portal_config))
    kept = checks.port_collisions(apps, log)
    if kept != apps:
        portal_config.write(settings.portal_yaml, prepared.portal_config, kept)  # the manager reads this file
        apps = kept
    settings = checks.other_ports(settings, apps, log)
    ports = portal_config.Ports(apps)
    caddy_config.remember(settings, ports)
    caddyfile = caddy_config.render_text(settings, apps, log)  # token, password, keys, certificate: checked here
    programs = control_programs(settings, ports)
    programs += cluster_programs(settings, ports, token)
    programs = prepared.programs(settings, programs)  # + provisioning, sshd, manifest programs; engines wait

    write_atomic(settings.supervisord_conf, render.supervisord_conf(settings, sys.executable))
    render.write_programs(settings, programs)
    write_atomic(settings.caddyfile, caddyfile, mode=0o600)
    write_atomic(settings.caddy_routes_file, render.caddy_routes(settings))  # the API port's fixed rules (imported)

    portal = ports.portal
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.boot")
    parser.add_argument("--pid", type=int, help="the entrypoint's pid (supervisord's, once it execs)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        conf = boot(settings, args.pid)
    except boot_lock.AlreadyRunning as exc:
        log(f"ERROR: {exc}")
        log("this boot stops here; the running appliance is left as it is")
        return 1
    except ValueError as exc:
        log(f"ERROR: {exc}")
        log("the appliance did not start: fix the setting above and start it again")
        return 1
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
