"""`python -m app.router [--port N] [--fast-path]`: the supervisor program `router` (app/boot.py renders its
arguments: the API's internal port, or with HAProxy in front its own loopback port and --fast-path)."""
from __future__ import annotations

import argparse
import asyncio

from app.settings import get_settings

from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.router")
    parser.add_argument("--port", type=int, help="where to listen on 127.0.0.1 (default: the API's internal port)")
    parser.add_argument("--fast-path", action="store_true", help="HAProxy is in front: keep its map, read its log")
    args = parser.parse_args(argv)
    run = serve(get_settings(), args.port, args.fast_path)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run)
    else:
        uvloop.run(run)


if __name__ == "__main__":
    main()
