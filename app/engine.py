"""The `vllm serve` command line and environment of an engine program."""
from __future__ import annotations

from app import gpu, multinode
from app.instance import SLEEP_MODE
from app.provisioning.record import engine_env

PARALLEL_OPTIONS = ("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp",
                    "--data-parallel-size", "-dp")


def has_option(args: list[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args for name in names)


def serve_argv(vllm_bin: str, model: str, args: list[str], *, port: int,
               tensor_parallel: int = 0) -> list[str]:
    """`vllm serve MODEL ARGS`, adding host, port and parallel size unless ARGS sets them."""
    argv = [vllm_bin, "serve", model, *args]
    if not has_option(args, "--host"):
        argv += ["--host", "127.0.0.1"]
    if not has_option(args, "--port"):
        argv += ["--port", str(port)]
    if tensor_parallel > 1 and not has_option(args, *PARALLEL_OPTIONS):
        argv += ["--tensor-parallel-size", str(tensor_parallel)]
    return argv


def environment(settings, config) -> dict[str, str]:
    """The engine's environment: model cache in the workspace, HF token, GPU order and selection, the user's env."""
    env = {"HF_HOME": str(settings.hf_home), "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **caches(settings)}
    if settings.hf_token:
        env["HF_TOKEN"] = settings.hf_token
    if config.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpus))
    if has_option(config.args, SLEEP_MODE):  # vLLM serves /sleep, /wake_up, /is_sleeping only in its dev mode
        env["VLLM_SERVER_DEV_MODE"] = "1"  # (loopback only: Caddy never routes those paths, see render.DEV_PATHS)
    if lora_enabled(config):  # vLLM registers /v1/load_lora_adapter only with this (reached on loopback only)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return {**env, **engine_env(settings), **config.env}  # + the manifest's and boot hooks' env (saved at boot)


def lora_enabled(config) -> bool:
    """LoRA is on: the instance has a `lora` field (even empty), or its args enable it."""
    return config.lora is not None or has_option(config.args, "--enable-lora")


def lora_options(config) -> list[str]:
    """`--enable-lora --lora-modules name=path ...` for the instance's adapters (validated in app/instance.py)."""
    if not lora_enabled(config):
        return []
    options = [] if has_option(config.args, "--enable-lora") else ["--enable-lora"]
    if config.lora:
        options += ["--lora-modules", *(f"{name}={path}" for name, path in config.lora.items())]
    return options


def caches(settings) -> dict[str, str]:
    """vLLM's, torch's and triton's caches on the workspace volume: a restart or a swap back does not redo them."""
    root = settings.cache_dir
    return {"VLLM_CACHE_ROOT": str(root / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(root / "torchinductor"),
            "TRITON_CACHE_DIR": str(root / "triton"), "XDG_CACHE_HOME": str(root)}


def check_environment(settings, config) -> None:
    """ValueError if supervisor's config format could not carry the engine's environment."""
    from app.render import environment_line
    environment_line(environment(settings, config))


def program(settings, config, *, gpu_count: int = 0, autostart: bool = True, name: str | None = None):
    """The supervisor program of an instance. Parallel size: the GPUs it was given, else all GPUs if so configured.
    `name`: the program's name when it is not the instance id (blue/green's second program, `<id>_b`); it logs
    to the instance's log all the same."""
    from app.render import ENGINE_NOTE, Program
    args = list(config.args)
    if config.served_model_name and not has_option(args, "--served-model-name"):
        args += ["--served-model-name", config.served_model_name]
    args += lora_options(config)
    tensor_parallel = (len(config.gpus) if config.gpus is not None
                       else gpu_count if settings.parallel_on_all_gpus else 0)
    argv = serve_argv(settings.vllm_bin, config.model, args, port=config.port, tensor_parallel=tensor_parallel)
    env = environment(settings, config)
    plan = multinode.engine_plan(settings, config, gpu.gpu_count()) if settings.appliance_role == "head" else None
    if plan is None:
        return Program(name=name or config.id, log=config.id, argv=argv, environment=env, autostart=autostart,
                       startsecs=5, stopwaitsecs=30, priority=900, note=ENGINE_NOTE)
    # Across the cluster: its guard starts it only with its nodes there, and ends it (status GUARD_EXIT, not
    # restarted by supervisor: the manager starts it again when the nodes are back) when one leaves.
    return Program(name=name or config.id, log=config.id, argv=multinode.guarded(argv + plan.args, plan),
                   environment={**plan.env, **env}, autostart=autostart, autorestart="unexpected",
                   exitcodes=str(multinode.GUARD_EXIT), startsecs=5,
                   stopwaitsecs=30, priority=900, note=ENGINE_NOTE)
