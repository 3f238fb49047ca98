"""The manager: a FastAPI app on 127.0.0.1, reached through Caddy on the portal port."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import api_docs, cluster, gpu, grpc_bridge, guard, portal, portal_cluster
from app.api import (
    activity,
    apps,
    bootstrap,
    caddy,
    instances,
    logs,
    lora,
    metrics,
    overview,
    playground,
    v2,
    v2_single,
)
from app.api import cluster as cluster_api
from app.api import provisioning as provisioning_api
from app.manager import Manager
from app.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.settings = get_settings()
    app.state.manager = Manager(app.state.settings)
    app.state.sampler = gpu.Sampler().start()
    try:  # after a crash of the manager: bring supervisor and Caddy back in line with the saved state
        await app.state.manager.reconcile()
    except Exception as exc:  # noqa: BLE001 (the portal must come up to show what is wrong)
        print(f"manager: could not reconcile programs with the saved state: {app.state.manager.fx.explain(exc)}",
              flush=True)
    monitor = asyncio.create_task(app.state.manager.monitor())
    app.state.manager.cluster = cluster.Watch(app.state.manager).start()  # a head reads its Ray cluster
    # vllm-bootstrap's gRPC InferenceService on the API port + 1, on this loop (app/grpc_bridge.py)
    bridge = await grpc_bridge.start(app.state.settings) if app.state.settings.bootstrap_grpc else None
    yield
    if bridge is not None:
        await bridge.stop(grace=2)
    monitor.cancel()
    app.state.manager.cluster.stop()
    if getattr(app.state, "llmd", None):  # the llm-d API's event poller, started on its first use
        app.state.llmd.task.cancel()
    await app.state.manager.aclose()


app = FastAPI(title="vLLM appliance manager", docs_url=None, openapi_url="/api/openapi.json", redoc_url=None,
              lifespan=lifespan)
app.add_middleware(guard.Guard)  # Host check, same-site forgery check, security headers (app/guard.py)
api_docs.install(app)  # /api/docs with Swagger UI served from the box
app.mount("/static", StaticFiles(directory=str(get_settings().home / "portal" / "static")), name="static")
if get_settings().appliance_role == "worker":
    app.include_router(portal_cluster.worker_router)  # first: a worker's / is its own page
app.include_router(lora.router)  # before instances: its POST .../lora is not an action
app.include_router(instances.router)
app.include_router(apps.router)
app.include_router(caddy.router)
app.include_router(logs.router)
app.include_router(v2.router)
app.include_router(metrics.router)
app.include_router(overview.router)
app.include_router(activity.router)
app.include_router(playground.router)
app.include_router(v2_single.router)
app.include_router(provisioning_api.router)
app.include_router(cluster_api.router)
app.include_router(bootstrap.router)  # vllm-bootstrap's REST paths at the root (the API port routes them here)


@app.get("/api/health")
def health() -> dict:
    return {"status": "ok"}



app.include_router(portal_cluster.router)
app.include_router(portal.router)  # last: its /{page} must not shadow the API
