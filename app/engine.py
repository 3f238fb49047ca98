"""The `vllm serve` command line of an engine program."""
from __future__ import annotations

PARALLEL_OPTIONS = ("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp",
                    "--data-parallel-size", "-dp")


def has_option(args: list[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args for name in names)


def option_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


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
