"""`python -m bench [NAME ...]`: run the named benchmarks (all by default) and update docs/performance.md."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["proxy", "router", "boot", "memory", "swap", "stats_logs", "streams", "caches", "metrics",
              "bootstrap_embed"]


def main(names: list[str]) -> None:
    for name in names or BENCHMARKS:
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
