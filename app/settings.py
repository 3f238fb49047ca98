"""The one settings object: every environment variable, default and path.

Environment variable names follow the Vast.ai vLLM image (VLLM_MODEL,
VLLM_ARGS, OPEN_BUTTON_TOKEN, PORTAL_CONFIG, ...). No other module reads
os.environ or builds a path by itself: they all ask `get_settings()`.

Paths derive from APPLIANCE_ROOT: empty means the image's real paths
(/etc/supervisor, /var/log/portal, /workspace, ...); `make run` and the tests
point it at a folder so the whole appliance lives under one root.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTAL_CONFIG = ("localhost:1111:11111:/:Instance Portal|localhost:8000:18000:/docs:vLLM API|"
                         "localhost:8001:8001:/:gRPC (vllm-bootstrap)")
HOME = Path(__file__).resolve().parent.parent  # the checkout, or /opt/appliance in the image


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=True, extra="ignore")

    # --- where things live -------------------------------------------------
    appliance_root: str = Field("", alias="APPLIANCE_ROOT",
        description="Prefix for every path; empty means the image's real paths (/etc, /var/log/portal, /workspace).")
    workspace_dir: str = Field("", alias="WORKSPACE",
        description="Persistent volume: model cache, saved state, token, certificate. Default `<root>/workspace`.")
    hf_home_dir: str = Field("", alias="HF_HOME",
        description="Hugging Face cache. Default `<workspace>/huggingface`, so downloads survive restarts.")

    # --- the engine ----------------------------------------------------------
    vllm_model: str = Field("", alias="VLLM_MODEL",
        description="Model served by the program `vllm` at boot (HF id or local path). "
                    "Empty: no engine until one is chosen.")
    vllm_args: str = Field("", alias="VLLM_ARGS",
        description="Extra `vllm serve` arguments, a shell-quoted string (parsed, never run through a shell).")
    vllm_bin: str = Field("vllm", alias="VLLM_BIN",
        description="The engine command: `vllm` found on PATH, or a path.")
    use_all_gpus: bool = Field(True, alias="USE_ALL_GPUS",
        description="Add `--tensor-parallel-size <GPU count>` unless VLLM_ARGS gives a parallel size.")
    auto_parallel: bool | None = Field(None, alias="AUTO_PARALLEL",
        description="Same as USE_ALL_GPUS; when set, it takes precedence.")
    hf_token: str = Field("", alias="HF_TOKEN",
        description="Hugging Face token for gated models; passed to the engines.")
    hf_endpoint: str = Field("https://huggingface.co", alias="HF_ENDPOINT",
        description="The Hugging Face Hub's address (a mirror, or a local stand-in in tests).")
    hf_hub_offline: bool = Field(False, alias="HF_HUB_OFFLINE",
        description="Never contact the Hub; models must be local or already in the cache.")
    engine_ports: str = Field("18001-18999", alias="ENGINE_PORTS",
        description="Internal ports (`first-last`) given to instances created through the API without a port.")
    gpu_release_timeout: float = Field(60.0, alias="GPU_RELEASE_TIMEOUT",
        description="Seconds a swap waits (with NVML) for the old engine's processes to leave its GPUs "
                    "before starting the new one.")
    drain_timeout: float = Field(60.0, alias="DRAIN_TIMEOUT", ge=0, le=86400,
        description="Seconds a stop, swap or restart (and making room for another instance) waits for the requests "
                    "in flight on an engine to finish before it stops the engine; new requests queue meanwhile.")
    router_max_body_mb: int = Field(100, ge=1, le=10240, alias="ROUTER_MAX_BODY_MB",
        description="The largest request body (MiB) the router on the API port accepts (it reads the body to find "
                    "its `model`); a larger one gets 413.")
    router_fast_path: bool = Field(True, alias="ROUTER_FAST_PATH",
        description="HAProxy (2.5 or later) on the API's internal port sends a request for a model with one ready "
                    "engine straight to that engine, and everything else to the router (docs/routing.md#the-fast-"
                    "path); false, or no such HAProxy installed: the router listens on the API's port itself.")
    router_port: int = Field(0, ge=0, le=65535, alias="ROUTER_PORT",
        description="The router's loopback port behind HAProxy when the fast path is on; 0: a free port chosen at "
                    "each boot.")
    router_peers: str = Field("", alias="ROUTER_PEERS",
        description="Other appliances the router forwards to (docs/scale-out.md): comma list of `URL=KEY` (URL: "
                    "`https://host:port` of a peer's API port; KEY: its access token or an API_KEYS key), each "
                    "optionally followed by `;ca=PATH` (a CA or self-signed certificate to trust) or `;insecure` "
                    "(no TLS verification). A secret: only the router gets it.")
    router_peers_interval: float = Field(10.0, ge=1, le=3600, alias="ROUTER_PEERS_INTERVAL",
        description="Seconds between two readings of each peer's `/v1/models` by the router.")
    ray_args: str = Field("--head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 28265", alias="RAY_ARGS",
        description="`ray start` arguments of the program `ray`. `head`: the Ray head's (Vast.ai's default); "
                    "`worker`: added after `--address RAY_ADDRESS` unless they contain `--head`; `single`: rendered "
                    "where `ray` is installed, started by hand (`supervisorctl start ray`).")

    # --- several boxes (docs/scale-out.md) -------------------------------------------------------------------
    appliance_role: Literal["single", "head", "worker"] = Field("single", alias="APPLIANCE_ROLE",
        description="`single`: one box. `head`: runs the Ray head and the engines; an engine larger than this box "
                    "uses the cluster. `worker`: joins RAY_ADDRESS and runs no engine of its own.")
    multinode_mode: Literal["ray", "mp"] = Field("ray", alias="MULTINODE_MODE",
        description="How a multi-node engine runs: `ray` (vLLM's Ray executor: GPUs) or `mp` (vLLM's own "
                    "multiprocessing across nodes, `--nnodes`: the only one vLLM's CPU build runs).")
    ray_address: str = Field("", alias="RAY_ADDRESS",
        description="`host:port` of the Ray head (its RAY_NODE_IP and GCS port) that a `worker` joins.")
    ray_node_ip: str = Field("", alias="RAY_NODE_IP",
        description="This box's address on the network between the boxes (`--node-ip-address`, VLLM_HOST_IP); "
                    "required for `head` and `worker`.")
    ray_auth_token: str = Field("", alias="RAY_AUTH_TOKEN",
        description="Ray's token (RAY_AUTH_MODE=token on every node and for the engines); default: the access "
                    "token. Every box of a cluster needs the same one.")
    allow_public_cluster: bool = Field(False, alias="ALLOW_PUBLIC_CLUSTER",
        description="Let `head`/`worker` use a public RAY_NODE_IP (cluster ports reachable from the internet, "
                    "guarded by Ray's token only). Without it such a boot stops.")
    ray_bin: str = Field("ray", alias="RAY_BIN",
        description="The `ray` command: found on PATH, or a path.")
    multinode_nodes: int = Field(2, ge=2, le=64, alias="MULTINODE_NODES",
        description="`mp` mode: the number of boxes the engine spans (`--nnodes`).")
    multinode_rank: int = Field(1, ge=1, le=63, alias="MULTINODE_RANK",
        description="`mp` mode, on a worker: this box's node rank (`--node-rank`), 1 to MULTINODE_NODES - 1.")
    multinode_port: int = Field(29500, ge=1024, le=65535, alias="MULTINODE_PORT",
        description="`mp` mode: the head's rendezvous port (`--master-port`), reachable from the workers.")

    # --- access --------------------------------------------------------------
    open_button_token: str = Field("", alias="OPEN_BUTTON_TOKEN",
        description="The access token. Unset: generated on first boot, kept in the workspace, printed once.")
    web_username: str = Field("vastai", alias="WEB_USERNAME",
        description="Basic-auth user name (default `vastai`, as on Vast.ai).")
    web_password: str = Field("", alias="WEB_PASSWORD",
        description="Basic-auth password; defaults to the token. Accepted as a bearer token too when it is "
                    "token-shaped (16+ of A-Z a-z 0-9 _ -).")
    enable_auth: bool = Field(True, alias="ENABLE_AUTH",
        description="Auth on every public port (bearer, basic, cookie).")
    auth_exclude: str = Field("", alias="AUTH_EXCLUDE",
        description="Comma list of external ports left without auth, e.g. `6006,8384`.")
    enable_https: bool = Field(True, alias="ENABLE_HTTPS",
        description="TLS on the public ports (self-signed certificate kept in the workspace unless TLS_CERT/TLS_KEY).")
    tls_cert: str = Field("", alias="TLS_CERT", description="PEM certificate to use instead of the self-signed one.")
    tls_key: str = Field("", alias="TLS_KEY", description="PEM private key for TLS_CERT.")
    portal_config: str = Field(DEFAULT_PORTAL_CONFIG, alias="PORTAL_CONFIG",
        description="`host:external:internal:path:Name|...`, as on Vast.ai.")
    api_keys: str = Field("", alias="API_KEYS",
        description="Comma list of inference-only keys (each 16-256 of A-Z a-z 0-9 _ -): accepted as bearer "
                    "tokens on the API port's inference routes only (`/v1/...`, `/instances/<id>/...`, /tokenize, "
                    "/score, ...), refused everywhere else. Remove a key to revoke it.")

    # --- first boot ----------------------------------------------------------
    provisioning_script: str = Field("", alias="PROVISIONING_SCRIPT",
        description="URL or path of a shell script run once on first boot.")
    provisioning_manifest: str = Field("", alias="PROVISIONING_MANIFEST",
        description="URL or path of a YAML manifest (apt, pip, models, files, env, programs, apps) applied once "
                    "on first boot; see docs/provisioning.md.")
    boot_hooks_dir: str = Field("", alias="BOOT_HOOKS_DIR",
        description="Folder of scripts run at every boot before the programs start. Default `<workspace>/boot.d`.")
    boot_hook_timeout: int = Field(300, alias="BOOT_HOOK_TIMEOUT",
        description="Seconds one boot hook may run before it is killed (counted as a failure).")
    public_key: str = Field("", alias="PUBLIC_KEY",
        description="SSH public key(s), one per line: an `sshd` program accepts only these, "
                    "unless an sshd already runs.")
    ssh_port: int = Field(22, alias="SSH_PORT",
        description="Port of the appliance's own sshd (when PUBLIC_KEY is set).")
    runpod_pod_id: str = Field("", alias="RUNPOD_POD_ID",
        description="Set by RunPod: the boot log then prints the RunPod proxy addresses of the public ports.")
    allow_open_portal: bool = Field(False, alias="ALLOW_OPEN_PORTAL",
        description="Let AUTH_EXCLUDE name the portal's port, which opens the manager API to anyone "
                    "(a warning at every boot). Without it, that port keeps its auth.")
    public_ipaddr: str = Field("", alias="PUBLIC_IPADDR",
        description="Set by Vast.ai: the box's public IP, named in the self-signed certificate "
                    "so clients can verify it.")
    runpod_public_ip: str = Field("", alias="RUNPOD_PUBLIC_IP",
        description="Set by RunPod: the pod's public IP, named in the self-signed certificate "
                    "so clients can verify it.")
    bootstrap_grpc: bool = Field(True, alias="BOOTSTRAP_GRPC",
        description="Serve vllm-bootstrap's gRPC InferenceService on the vLLM API's public port + 1, in plaintext "
                    "HTTP/2 (its client cannot do TLS; calls need the token or an API key). false: no such port.")

    @field_validator("auto_parallel", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    # --- derived values ------------------------------------------------------
    @property
    def engine_port_range(self) -> range:
        first, sep, last = self.engine_ports.partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()
                and 1024 <= int(first) <= int(last) <= 65535):
            raise ValueError(f"ENGINE_PORTS {self.engine_ports!r} must be FIRST-LAST between 1024 and 65535")
        return range(int(first), int(last) + 1)

    @property
    def parallel_on_all_gpus(self) -> bool:
        return self.use_all_gpus if self.auto_parallel is None else self.auto_parallel

    @property
    def auth_excluded_ports(self) -> set[int]:
        ports = set()
        for part in self.auth_exclude.split(","):
            part = part.strip()
            if part:
                if not part.isdigit():
                    raise ValueError(f"AUTH_EXCLUDE: {part!r} is not a port number")
                ports.add(int(part))
        return ports

    # --- paths ---------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.appliance_root).resolve() if self.appliance_root else Path("/")

    @property
    def home(self) -> Path:
        """Where the appliance's code and templates are (checkout or /opt/appliance)."""
        return HOME

    @property
    def workspace(self) -> Path:
        return Path(self.workspace_dir) if self.workspace_dir else self.root / "workspace"

    @property
    def state_dir(self) -> Path:
        return self.workspace / ".appliance"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def cert_file(self) -> Path:
        return Path(self.tls_cert) if self.tls_cert else self.tls_dir / "cert.pem"

    @property
    def key_file(self) -> Path:
        return Path(self.tls_key) if self.tls_key else self.tls_dir / "key.pem"

    @property
    def boot_record(self) -> Path:
        return self.state_dir / "boot.json"

    @property
    def provisioning_record(self) -> Path:
        return self.state_dir / "provisioning.json"

    @property
    def provisioning_dir(self) -> Path:
        """Copies of the script and manifest last fetched."""
        return self.state_dir / "provisioning"

    @property
    def boot_hooks(self) -> Path:
        return Path(self.boot_hooks_dir) if self.boot_hooks_dir else self.workspace / "boot.d"

    @property
    def ssh_dir(self) -> Path:
        """sshd's config and host key (generated once, kept); authorized_keys is in run_dir."""
        return self.state_dir / "ssh"

    @property
    def ssh_authorized_keys(self) -> Path:
        """PUBLIC_KEY's keys for the appliance's sshd, rewritten at every boot (not kept on the volume)."""
        return self.run_dir / "ssh_authorized_keys"

    @property
    def hf_home(self) -> Path:
        return Path(self.hf_home_dir) if self.hf_home_dir else self.workspace / "huggingface"

    @property
    def cache_dir(self) -> Path:
        """vLLM's, torch's and triton's caches (compiled graphs, kernels), kept on the volume."""
        return self.workspace / "cache"

    @property
    def supervisor_dir(self) -> Path:
        return self.root / "etc" / "supervisor"

    @property
    def supervisord_conf(self) -> Path:
        return self.supervisor_dir / "supervisord.conf"

    @property
    def programs_dir(self) -> Path:
        return self.supervisor_dir / "conf.d"

    @property
    def caddyfile(self) -> Path:
        return self.root / "etc" / "caddy" / "Caddyfile"

    @property
    def caddy_routes_file(self) -> Path:
        return self.caddyfile.parent / "instances.caddy"

    @property
    def caddy_data_dir(self) -> Path:
        return self.root / "var" / "lib" / "caddy"

    @property
    def caddy_inputs(self) -> Path:
        """What the boot saw that a later render of the Caddyfile needs (secrets, ports); mode 0600."""
        return self.state_dir / "caddy-inputs.json"

    @property
    def environment_file(self) -> Path:
        """Where Vast.ai and RunPod put a running instance's variables; read when Caddy's config is rendered."""
        return self.root / "etc" / "environment"

    @property
    def portal_yaml(self) -> Path:
        return self.root / "etc" / "portal.yaml"

    @property
    def log_dir(self) -> Path:
        return self.root / "var" / "log" / "portal"

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "appliance"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def caddy_admin_socket(self) -> Path:
        return self.run_dir / "caddy-admin.sock"

    @property
    def router_socket(self) -> Path:
        """The router's control socket (app/router_client.py): the manager's only way to talk to it."""
        return self.run_dir / "router.sock"

    @property
    def haproxy_config(self) -> Path:
        """HAProxy's configuration (the fast path: app/haproxy.py), rendered at boot."""
        return self.run_dir / "haproxy.cfg"

    @property
    def haproxy_map(self) -> Path:
        """The fast path's map (model name -> engine port): empty at boot, filled by the router over the socket."""
        return self.run_dir / "fast.map"

    @property
    def haproxy_socket(self) -> Path:
        """HAProxy's runtime API (mode 0600): the router's way to update the map and read the counts."""
        return self.run_dir / "haproxy.sock"

    @property
    def haproxy_log_socket(self) -> Path:
        """The stream socket the router reads HAProxy's line per fast-path request from (metrics, activity)."""
        return self.run_dir / "haproxy-log.sock"

    @property
    def ray_token_file(self) -> Path:
        """Ray's token for the ray program and the engines (RAY_AUTH_TOKEN_PATH), written at boot; mode 0600."""
        return self.state_dir / "ray-token"

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's session folder: its default in the image; a short one of its own per root otherwise (Ray's unix
        socket paths must stay under 108 bytes, and two appliances on one machine must not share one)."""
        if not self.appliance_root:
            return Path("/tmp/ray")
        return Path("/tmp") / f"ray-{hashlib.sha1(str(self.root).encode()).hexdigest()[:10]}"

    @property
    def routing_table(self) -> Path:
        """What the router routes to (app/routing_table.py), written by the manager; read by the router at its start."""
        return self.run_dir / "routes.json"

    def folders(self) -> list[Path]:
        """Every folder the appliance writes to, created at each boot."""
        return [self.workspace, self.state_dir, self.tls_dir, self.hf_home, self.programs_dir,
                self.caddyfile.parent, self.caddy_data_dir, self.log_dir, self.run_dir, self.provisioning_dir,
                self.cache_dir]


@lru_cache
def get_settings() -> Settings:
    return Settings()
