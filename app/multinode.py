"""Several boxes as one (APPLIANCE_ROLE): the program `ray`, the checks on the cluster's settings, and what a
multi-node engine adds to its command line and environment. Pure functions of the settings, called by the boot
and by app/engine.py; reading the running cluster is app/cluster.py's job.

Two ways to run one engine across boxes (MULTINODE_MODE):
- `ray`: vLLM's Ray executor (`--distributed-executor-backend ray`) on the Ray cluster the head and the workers
  form; the engine runs on the head, its workers are Ray actors on every box. Used for an engine whose parallel
  size (tensor x pipeline) exceeds the head's GPUs.
- `mp`: vLLM's own multiprocessing across nodes (`--nnodes`, `--node-rank`, `--master-addr`); the head runs the
  engine `vllm` as node 0, each worker a headless engine (program `vllm_headless`) with the same model and
  arguments. vLLM's CPU build refuses the Ray executor, so this is the mode that runs on CPUs.
Ray runs on every box in both modes: its membership says which boxes are there (app/cluster.py).
"""
from __future__ import annotations

import fcntl
import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field

from app import validation
from app.instance import DEFAULT_INSTANCE, LOOPBACK, option_value
from app.settings import Settings

DEFAULT_DASHBOARD_PORT = 8265  # Ray's own default; Vast.ai's RAY_ARGS move it to 28265 (published as 8265)
DEFAULT_GCS_PORT = 6379
HEADLESS = "vllm_headless"  # a worker's share of an `mp` engine (`_`: never an instance id)
GUARD_EXIT = 3  # the cluster guard's exit status when nodes are missing: supervisor does not restart it
SIOCGIFADDR = 0x8915
TOKEN_AUTH_SINCE = (2, 52)  # the first Ray with RAY_AUTH_MODE=token


def ray_args(settings: Settings) -> list[str]:
    return validation.split_args(settings.ray_args, "RAY_ARGS")


def dashboard_port(settings: Settings) -> int:
    value = option_value(ray_args(settings), "--dashboard-port")
    return int(value) if value and value.isdigit() else DEFAULT_DASHBOARD_PORT


def gcs_port(settings: Settings) -> int:
    value = option_value(ray_args(settings), "--port")
    return int(value) if value and value.isdigit() else DEFAULT_GCS_PORT


def head_address(settings: Settings) -> tuple[str, int]:
    """RAY_ADDRESS as (host, port)."""
    host, sep, port = settings.ray_address.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"RAY_ADDRESS {settings.ray_address!r} must be HOST:PORT of the Ray head "
                         "(its RAY_NODE_IP and the --port of its RAY_ARGS, e.g. 10.0.0.1:6379)")
    return host, int(port)


def check(settings: Settings) -> None:
    """ValueError (the boot stops) for a head or worker whose cluster would be open to the internet or cannot form."""
    role = settings.appliance_role
    if role == "single":
        return
    if not settings.ray_node_ip:
        raise ValueError(f"APPLIANCE_ROLE={role} needs RAY_NODE_IP: this box's address on the private network "
                         "between the boxes (cluster traffic uses it)")
    try:
        address = ipaddress.ip_address(settings.ray_node_ip)
    except ValueError:
        raise ValueError(f"RAY_NODE_IP {settings.ray_node_ip!r} is not an IP address") from None
    if (address.is_global or address.is_unspecified) and not settings.allow_public_cluster:
        raise ValueError(
            f"APPLIANCE_ROLE={role} with RAY_NODE_IP {address}, a public address: Ray's cluster ports (GCS "
            f"{gcs_port(settings)}, its node manager and object manager, vLLM's rendezvous) would be open to the "
            "internet, guarded by Ray's token alone. Use the address of a private network between the boxes, "
            "or set ALLOW_PUBLIC_CLUSTER=true to accept that (and firewall the ports: docs/scale-out.md)")
    args = ray_args(settings)
    if role == "head":
        host = option_value(args, "--dashboard-host")
        if host not in (None, *LOOPBACK) and not settings.allow_public_cluster:
            raise ValueError(f"RAY_ARGS --dashboard-host {host}: the Ray dashboard listens on 127.0.0.1 and is "
                             "published by Caddy with auth (PORTAL_CONFIG); leave it on 127.0.0.1")
        if "--head" not in args:
            raise ValueError("APPLIANCE_ROLE=head needs `--head` in RAY_ARGS")
    if role == "worker":
        head_address(settings)
        if settings.multinode_mode == "mp" and settings.multinode_rank >= settings.multinode_nodes:
            raise ValueError(f"MULTINODE_RANK {settings.multinode_rank} must be below MULTINODE_NODES "
                             f"({settings.multinode_nodes})")


def ray_token(settings: Settings, access_token: str) -> str:
    if settings.ray_auth_token:
        return validation.token(settings.ray_auth_token, "RAY_AUTH_TOKEN")
    return access_token


def ray_env(settings: Settings) -> dict[str, str]:
    """What every Ray process and driver of this box needs: token auth, with the token in a 0600 file."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(settings.ray_token_file)}


def _ray_command(settings: Settings) -> str | None:
    return shutil.which(settings.ray_bin)


def ray_version(ray: str) -> tuple[int, ...] | None:
    """What `ray --version` says (`ray, version 2.60.0`), or None when it says no version."""
    try:
        said = subprocess.run([ray, "--version"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"version (\d+)\.(\d+)", said)
    return tuple(int(part) for part in found.groups()) if found else None


def check_token_auth(ray: str) -> None:
    """ValueError for a Ray that says it is older than TOKEN_AUTH_SINCE: it would ignore RAY_AUTH_MODE=token and
    run the cluster without auth (vLLM's own image carried such a Ray before ours installed a newer one)."""
    version = ray_version(ray)
    if version is not None and version < TOKEN_AUTH_SINCE:
        raise ValueError(f"{ray} is Ray {'.'.join(map(str, version))}, which has no token auth (Ray 2.52 or later "
                         "has it): its cluster ports would take anyone's jobs. Install `ray[default]>=2.52` for "
                         "this box's Python (the image has 2.60.0), or point RAY_BIN at such a `ray`")


def ray_program(settings: Settings):
    """The program `ray`: the head (`ray start --head ...`) or a worker joining RAY_ADDRESS; for `single`, present
    only where ray is installed and started by hand, as before."""
    from app.render import Program
    ray = _ray_command(settings)
    role = settings.appliance_role
    if role == "single":
        return Program(name="ray", argv=[ray, "start", "--block", *ray_args(settings)], autostart=False,
                       priority=800) if ray else None
    if not ray:
        raise ValueError(f"APPLIANCE_ROLE={role} needs Ray: {settings.ray_bin!r} (RAY_BIN) is not installed")
    check_token_auth(ray)
    args = ray_args(settings)
    if role == "worker":
        args = ["--address", settings.ray_address, *([] if "--head" in args else args)]
    extra = [] if option_value(args, "--node-ip-address") else ["--node-ip-address", settings.ray_node_ip]
    if not option_value(args, "--temp-dir"):
        extra += ["--temp-dir", str(settings.ray_temp_dir)]
    if "--disable-usage-stats" not in args:
        extra.append("--disable-usage-stats")
    return Program(name="ray", argv=[ray, "start", "--block", *args, *extra], environment=ray_env(settings),
                   priority=800, stopwaitsecs=30)


def portal_config(settings: Settings, text: str) -> str:
    """PORTAL_CONFIG with the Ray dashboard behind Caddy on a head (8265 -> its internal port), unless listed."""
    if settings.appliance_role != "head":
        return text
    port = dashboard_port(settings)
    if any(entry.split(":")[2:3] == [str(port)] for entry in text.split("|")):
        return text
    return f"{text}|localhost:{DEFAULT_DASHBOARD_PORT}:{port}:/:Ray Dashboard"


def interface_of(ip: str) -> str | None:
    """The network interface that has this IPv4 address (Gloo and NCCL must be told which one to use)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(packed[20:24]) == ip:
            return name
    return None


def node_env(settings: Settings) -> dict[str, str]:
    """A multi-node engine's address and interface: vLLM, Gloo (CPU) and NCCL (GPU) bind to the cluster network."""
    env = {"VLLM_HOST_IP": settings.ray_node_ip}
    name = interface_of(settings.ray_node_ip)
    if name:
        env |= {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}
    return env


def parallel_size(args: list[str], gpus: list[int] | None = None, default: int = 1) -> int:
    """GPUs one engine takes: tensor x pipeline parallel size from its args, else its GPUs, else `default`."""
    def size(*names: str) -> int | None:
        for name in names:
            value = option_value(args, name)
            if value is not None:
                return int(value) if value.isdigit() and int(value) > 0 else 1
        return None
    tp, pp = size("--tensor-parallel-size", "-tp"), size("--pipeline-parallel-size", "-pp")
    if tp is None and pp is None:
        return len(gpus) if gpus else default
    return (tp or 1) * (pp or 1)


@dataclass
class Plan:
    """What a multi-node engine needs: the nodes and GPUs its guard waits for, its extra args and environment."""
    nodes: int
    gpus: int
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _missing(args: list[str], extra: list[str]) -> list[str]:
    """`extra` (pairs of option and value) less the options `args` gives already."""
    out = []
    for i in range(0, len(extra), 2):
        if option_value(args, extra[i]) is None:
            out += extra[i:i + 2]
    return out


def engine_plan(settings: Settings, config, local_gpus: int) -> Plan | None:
    """On a head: how this instance spans the cluster, or None when it runs on this box alone."""
    if settings.appliance_role != "head":
        return None
    args = list(config.args)
    if settings.multinode_mode == "mp":
        if config.id != DEFAULT_INSTANCE:
            return None  # the workers' headless engines mirror VLLM_MODEL / VLLM_ARGS: the instance `vllm`
        extra = _missing(args, ["--distributed-executor-backend", "mp", "--nnodes", str(settings.multinode_nodes),
                                "--node-rank", "0", "--master-addr", settings.ray_node_ip,
                                "--master-port", str(settings.multinode_port)])
        nodes = int(option_value(args, "--nnodes") or settings.multinode_nodes)
        return Plan(nodes=nodes, gpus=0, args=extra, env=node_env(settings))
    size = parallel_size(args, config.gpus)
    if size <= local_gpus:
        return None
    extra = _missing(args, ["--distributed-executor-backend", "ray"])
    env = {**node_env(settings), **ray_env(settings), "RAY_ADDRESS": f"{settings.ray_node_ip}:{gcs_port(settings)}"}
    return Plan(nodes=1, gpus=size, args=extra, env=env)


def guarded(argv: list[str], plan: Plan) -> list[str]:
    """The engine's command run by the cluster guard (app/cluster_guard.py): it starts only with its nodes there,
    and stops (exit GUARD_EXIT) when one leaves."""
    return [sys.executable, "-m", "app.cluster_guard", "--nodes", str(plan.nodes), "--gpus", str(plan.gpus),
            "--", *argv]


def headless_program(settings: Settings):
    """A worker's share of an `mp` engine: `vllm serve VLLM_MODEL VLLM_ARGS --headless --node-rank R ...`."""
    from app import engine
    from app.render import Program
    if settings.appliance_role != "worker" or settings.multinode_mode != "mp":
        return None
    if not settings.vllm_model:
        raise ValueError("MULTINODE_MODE=mp on a worker needs VLLM_MODEL and VLLM_ARGS, the same as the head's")
    host, _ = head_address(settings)
    args = validation.split_args(settings.vllm_args)
    extra = _missing(args, ["--distributed-executor-backend", "mp", "--nnodes", str(settings.multinode_nodes),
                            "--node-rank", str(settings.multinode_rank), "--master-addr", host,
                            "--master-port", str(settings.multinode_port)])
    argv = [settings.vllm_bin, "serve", settings.vllm_model, *args, *extra]
    if "--headless" not in args:
        argv.append("--headless")
    rendezvous = f"{option_value(argv, '--master-addr')}:{option_value(argv, '--master-port')}"
    argv = [sys.executable, "-m", "app.cluster_guard", "--follow", rendezvous, "--", *argv]  # joins each new one
    env = {"HF_HOME": str(settings.hf_home), **engine.caches(settings), **node_env(settings)}
    if settings.hf_token:
        env["HF_TOKEN"] = settings.hf_token
    return Program(name=HEADLESS, argv=argv, environment=env, startsecs=5, stopwaitsecs=30, priority=900)
