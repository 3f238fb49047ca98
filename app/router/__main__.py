"""`python -m app.router`: the supervisor program `router`."""
from __future__ import annotations

import asyncio

from app.settings import get_settings

from .server import serve


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(get_settings()))
    else:
        uvloop.run(serve(get_settings()))


if __name__ == "__main__":
    main()
