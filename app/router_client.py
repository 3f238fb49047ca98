"""The manager's side of the router's control socket (settings.router_socket, a unix socket: never published).

The router (app/router) serves these on that socket:
- `PUT /table` with a routing table (app/routing_table.py) as JSON: route by it from now on;
- `GET /status`: `{"instances": {id: {"in_flight": n, "queued": n, "last_active": epoch seconds}}}`;
  `last_active` is when the last request for it ended (or began, while some are in flight);
- `POST /drain/{id}?timeout=S`: from now on requests for `id` queue instead of going to its engine; answers once
  none is in flight (`{"in_flight": 0}`) or after S seconds (`{"in_flight": n}`, the ones still running);
- `POST /release/{id}`: requests for `id` go to its engine again (queued ones leave as soon as its route is ready);
- `GET /metrics`: the router's own Prometheus metrics (text format), merged into the manager's /metrics;
- `GET /activity?limit=N`: the last requests through the router, newest first.
Every call is best effort: the router may be down (then nothing is in flight through it).
"""
from __future__ import annotations

import httpx

from app.routing_table import Table
from app.settings import Settings


class RouterClient:
    def __init__(self, settings: Settings, timeout: float = 5.0):
        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(settings.router_socket)),
                                        base_url="http://router", timeout=timeout)

    async def push(self, table: Table) -> None:
        await self.client.put("/table", content=table.model_dump_json(),
                              headers={"content-type": "application/json"})

    async def status(self) -> dict[str, dict]:
        answer = await self.client.get("/status")
        answer.raise_for_status()
        return answer.json()["instances"]

    async def drain(self, instance_id: str, timeout: float) -> int:
        """Hold new requests for the instance and wait for the ones in flight; the number still in flight."""
        answer = await self.client.post(f"/drain/{instance_id}", params={"timeout": timeout}, timeout=timeout + 5)
        answer.raise_for_status()
        return int(answer.json()["in_flight"])

    async def release(self, instance_id: str) -> None:
        await self.client.post(f"/release/{instance_id}")

    async def metrics(self) -> str:
        answer = await self.client.get("/metrics")
        answer.raise_for_status()
        return answer.text

    async def activity(self, limit: int = 200) -> list[dict]:
        answer = await self.client.get("/activity", params={"limit": limit})
        answer.raise_for_status()
        return answer.json()["requests"]

    async def aclose(self) -> None:
        await self.client.aclose()
