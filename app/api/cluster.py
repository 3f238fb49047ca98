"""GET /api/cluster: this box's role, the Ray cluster's nodes and GPUs, and which engine uses them (app/cluster.py)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from app import cluster

router = APIRouter(prefix="/api")


@router.get("/cluster")
def get_cluster(request: Request) -> dict:
    """On a head, the latest reading of the cluster (every 2 s); `error` says why there is none (Ray not running)."""
    return cluster.view(request.app.state.manager)
