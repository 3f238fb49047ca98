"""HAProxy's runtime API (a unix socket, mode 0600, level admin): one connection per batch of commands, as its
non-interactive mode wants (commands joined by `;`, the answer read to the end)."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

TIMEOUT = 5.0
# `show table <name>` lines: `0x...: key=18001 use=1 exp=... conn_cur=1 http_req_cnt=7`
_ENTRY = re.compile(r"\bkey=(\d+)\b.*?\bconn_cur=(\d+)")


class HAProxyError(Exception):
    """HAProxy answered a command with an error, or could not be reached."""


class RuntimeAPI:
    def __init__(self, path: Path):
        self.path = path

    async def run(self, commands: list[str]) -> str:
        """Run the commands in one connection; their answers, concatenated."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise HAProxyError(f"HAProxy's runtime socket {self.path}: {exc.__class__.__name__}: {exc}") from exc
        try:
            writer.write(("; ".join(commands) + "\n").encode())
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), TIMEOUT)).decode(errors="replace")
        except (OSError, TimeoutError) as exc:
            raise HAProxyError(f"HAProxy's runtime socket: {exc.__class__.__name__}") from exc
        finally:
            writer.close()

    async def show_map(self, map_path: Path) -> dict[str, int]:
        """The map's entries (`0x... key value` lines)."""
        out: dict[str, int] = {}
        for line in (await self.run([f"show map {map_path}"])).splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith("0x") and parts[2].isdigit():
                out[parts[1]] = int(parts[2])
        return out

    async def in_flight(self, table: str) -> dict[int, int]:
        """conn_cur per key of a stick table keyed by engine port."""
        text = await self.run([f"show table {table}"])
        return {int(m[1]): int(m[2]) for m in _ENTRY.finditer(text) if int(m[2])}

    async def change(self, commands: list[str]) -> None:
        """Map changes (`add map`, `set map`, `del map`, `clear map`): answered with empty lines when they worked."""
        if not commands:
            return
        answer = (await self.run(commands)).strip()
        if answer:
            raise HAProxyError(f"HAProxy refused a map change: {answer[:300]}")
