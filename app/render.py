"""The one renderer: supervisord.conf, program files, the Caddyfile and HAProxy's configuration.

Templates live beside the system they configure (supervisor/, caddy/, haproxy/). Every
value that comes from a user is validated before it gets here and escaped for
the file it lands in: shell-style quoting for supervisor's `command=` (which
supervisor splits with shlex, never a shell), quoting for `environment=`, and
`%` doubled because supervisor expands `%(name)s` in both.
"""
from __future__ import annotations

import configparser
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from supervisor.datatypes import dict_of_key_value_pairs

from app import validation
from app.files import write_atomic
from app.portal_config import PORTAL_NAME, PortalApp, Ports, find
from app.settings import Settings

MARKER = "Rendered by the appliance"
ENGINE_NOTE = "rendered from the saved state; change it through the API"  # in the first line of engine programs
COOKIE = "appliance_token"


@dataclass
class Program:
    """One supervisor program."""
    name: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    autostart: bool = True
    autorestart: str = "true"
    exitcodes: str = ""  # the exit statuses that are expected (autorestart=unexpected); empty: supervisor's (0)
    startsecs: int = 1
    startretries: int = 3
    stopwaitsecs: int = 20
    priority: int = 500
    note: str = "do not edit: changes are lost at the next boot"
    directory: str | None = None  # working folder; None: the appliance's home
    log: str | None = None  # the log's name (<log_dir>/<log>.log); None: the program's name


@dataclass
class Site:
    """One Caddy site: a public port in front of a local one."""
    external_port: int
    upstream: str
    auth: bool
    routes: Path | None = None  # the fixed rules imported into this site (the vLLM API port: dev routes refused)
    portal: bool = False  # the manager: told how a request authenticated, and sent its own loopback Host
    inference: bool = False  # the vLLM API port: inference-only keys (API_KEYS) pass on its inference routes
    manager: str | None = None  # the API port: the manager's address, for vllm-bootstrap's paths (BOOTSTRAP_PATHS)


# Where an inference-only key passes on the API port: vLLM's OpenAI routes and inference routes, at the root and
# under the per-instance prefix (the router's /instances/<id>/...). Everything else there (/metrics, /docs, LoRA
# loading, ...) needs the admin token.
_INFERENCE_ROOT = ["/v1/*", "/tokenize", "/detokenize", "/pooling", "/score", "/rerank", "/classify", "/invocations",
                   "/v2/rerank"]
INFERENCE_PATHS = _INFERENCE_ROOT + [f"/instances/*{path}" for path in _INFERENCE_ROOT]
# The engines' own control endpoints: refused on every public port, whatever the credential; the manager calls them
# on the engine's loopback port (LoRA: app/lora.py, through POST/DELETE /api/instances/<id>/lora).
ENGINE_ONLY_PATHS = ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/instances/*/v1/load_lora_adapter",
                     "/instances/*/v1/unload_lora_adapter"]
ENGINE_ONLY_MESSAGE = "this engine endpoint is reached through the manager's API only (LoRA: /api/instances/<id>/lora)"
ADMIN_ONLY_PATHS = ENGINE_ONLY_PATHS  # never a key's either (they are refused to everyone before the keys matter)
# vllm-bootstrap's REST control plane, served by the manager at the root of the API port (app/api/bootstrap.py).
BOOTSTRAP_PATHS = ["/launch", "/status/*", "/stop/*", "/logs/*", "/stats"]
# vLLM's development and control routes (sleep mode, RPC, caches, weights, profiling, scaling): the manager uses
# some of them on loopback; Caddy answers 404 for every one of them, at the root and under /instances/<id>/.
DEV_PATHS = ["/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache", "/reset_mm_cache",
             "/reset_encoder_cache", "/release_kv_cache_memory", "/server_info", "/pause", "/resume", "/is_paused",
             "/abort_requests", "/init_weight_transfer_engine", "/shutdown_weight_transfer_engine", "/update_weights",
             "/update_weight_version", "/start_weight_update", "/start_draft_weight_update", "/finish_weight_update",
             "/weight_checker", "/weight_info", "/get_world_size", "/start_profile", "/stop_profile",
             "/scale_elastic_ep", "/is_scaling_elastic_ep", "/fault_tolerance"]
UPSTREAM_IDLE = "2s"  # below uvicorn's 5 s keep-alive timeout


def _templates(settings: Settings) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(settings.home)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def supervisor_escape(text: str) -> str:
    return text.replace("%", "%%")


# Where supervisor's config parser would read something into a value: `%(here)s` is substituted before
# `%%` is unescaped, and whitespace followed by `;` or `#` starts an inline comment.
_PARSER_HAZARD = re.compile(r"(?<=%)|(?<=\s)(?=[;#])")


def _quote(arg: str) -> str:
    """Shell-quote one argument so that supervisor's shlex split gives it back unchanged."""
    if not _PARSER_HAZARD.search(arg):
        return shlex.quote(arg)
    # Quote the pieces separately: adjacent quoted pieces are one argument to shlex, and the quote
    # between them keeps `%` away from `(` and whitespace away from `;`/`#`.
    return "".join("'" + piece.replace("'", "'\"'\"'") + "'" for piece in _PARSER_HAZARD.split(arg) if piece)


def command_line(argv: list[str]) -> str:
    return supervisor_escape(" ".join(_quote(arg) for arg in argv))


def environment_line(environment: dict[str, str]) -> str:
    """KEY="value",... as supervisor parses it (quotes kept literal, so pick one the value lacks)."""
    validation.env_vars(environment)
    parts = []
    for name, value in environment.items():
        quote = '"' if '"' not in value else "'"
        parts.append(f"{name}={quote}{supervisor_escape(value)}{quote}")
    return ",".join(parts)


def supervisord_conf(settings: Settings, python: str) -> str:
    return _templates(settings).get_template("supervisor/supervisord.conf.j2").render(
        user="root" if os.geteuid() == 0 else "", socket=settings.supervisor_socket, log_dir=settings.log_dir,
        run_dir=settings.run_dir, programs_dir=settings.programs_dir,
        logforward=command_line([python, "-m", "app.logforward"]))


def program_conf(settings: Settings, program: Program) -> str:
    return _templates(settings).get_template("supervisor/program.conf.j2").render(
        p=program, marker=MARKER, note=program.note, command=command_line(program.argv),
        environment=environment_line(program.environment),
        directory=supervisor_escape(program.directory or str(settings.home)),
        logfile=supervisor_escape(str(settings.log_dir / f"{program.log or program.name}.log")))


def sites(settings: Settings, apps: list[PortalApp]) -> list[Site]:
    excluded = settings.auth_excluded_ports
    api, portal = find(apps, "vLLM"), find(apps, PORTAL_NAME)
    manager = f"127.0.0.1:{Ports(apps).manager_port}"
    return [Site(external_port=a.external_port,
                 upstream=f"{'127.0.0.1' if a.host == 'localhost' else a.host}:{a.internal_port}",
                 auth=settings.enable_auth and a.external_port not in excluded,
                 routes=settings.caddy_routes_file if a is api else None, portal=a is portal, inference=a is api,
                 manager=manager if a is api else None)
            for a in apps if a.proxied]


def caddy_routes(settings: Settings) -> str:
    """The API port's fixed rules. No port of an engine is in it: the router serves /instances/<id>/..., so an
    instance added, removed or moved to another port (blue/green) never reloads Caddy."""
    return _templates(settings).get_template("caddy/instances.caddy.j2").render(marker=MARKER, dev_paths=DEV_PATHS)


def caddyfile(settings: Settings, apps: list[PortalApp], *, token: str, admins: list[str], keys: list[str],
              basic: str, session: str) -> str:
    """The Caddyfile. `admins`: bearer tokens that pass everywhere; `keys`: inference-only bearer keys; `basic`:
    the exact `Authorization` header of the basic-auth user; `session`: the cookie's value (not the token)."""
    ours = [f"Bearer {value}" for value in [*admins, *keys]] + [basic]
    return _templates(settings).get_template("caddy/Caddyfile.j2").render(
        admin_socket=settings.caddy_admin_socket, data_dir=settings.caddy_data_dir,
        https=settings.enable_https, cert=settings.cert_file, key=settings.key_file,
        sites=sites(settings, apps), token=token, admins=admins, keys=keys, basic=basic, ours=ours,
        cookie=COOKIE, session=session, inference_paths=INFERENCE_PATHS,
        bootstrap_paths=BOOTSTRAP_PATHS, admin_only_paths=ADMIN_ONLY_PATHS,
        engine_only_paths=ENGINE_ONLY_PATHS, engine_only_message=ENGINE_ONLY_MESSAGE,
        upstream_idle=UPSTREAM_IDLE).rstrip() + "\n"


def haproxy_config(settings: Settings, *, api_port: int, router_port: int, bufsize: int) -> str:
    """HAProxy's configuration (the fast path, app/haproxy.py): ports and paths only, nothing a user typed."""
    return _templates(settings).get_template("haproxy/haproxy.cfg.j2").render(
        marker=MARKER, bufsize=bufsize, socket=settings.haproxy_socket, log_socket=settings.haproxy_log_socket,
        api_port=api_port, router_port=router_port, map=settings.haproxy_map)


def program_path(settings: Settings, name: str) -> Path:
    return settings.programs_dir / f"{name}.conf"


def write_program(settings: Settings, program: Program) -> None:
    """0600: a program's environment may hold a secret (HF_TOKEN, a manifest's or a user's env)."""
    write_atomic(program_path(settings, program.name), program_conf(settings, program), mode=0o600)


def write_programs(settings: Settings, programs: list[Program]) -> None:
    """Write these programs and remove earlier rendered ones not among them (files a user added stay)."""
    wanted = {program_path(settings, p.name) for p in programs}
    for path in settings.programs_dir.glob("*.conf"):
        if path not in wanted and MARKER in path.read_text(errors="replace").split("\n", 1)[0]:
            path.unlink()
    for program in programs:
        write_program(settings, program)


def engine_program_names(settings: Settings) -> set[str]:
    """The engine programs that have a file (their first line carries ENGINE_NOTE)."""
    return {path.stem for path in settings.programs_dir.glob("*.conf")
            if ENGINE_NOTE in path.read_text(errors="replace").split("\n", 1)[0]}


def same_program(text: str, program: Program) -> bool:
    """Whether a program file already runs this command with this environment (in any order of its variables)."""
    parser = configparser.RawConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        section = f"program:{program.name}"
        command = parser.get(section, "command")
        environment = parser.get(section, "environment", fallback="")
        env = dict_of_key_value_pairs(environment.replace("%%", "%")) if environment else {}
    except (configparser.Error, ValueError):
        return False
    return command == command_line(program.argv) and env == program.environment
