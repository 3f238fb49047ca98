"""The portal's Cluster page, and a worker's only page (whose worker it is, its GPUs): new pages beside app/portal.py,
rendered with its layout."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app import portal
from app.settings import get_settings

router = APIRouter(include_in_schema=False)
worker_router = APIRouter(include_in_schema=False)
if get_settings().appliance_role == "head":
    portal.PAGES.setdefault("cluster", "Cluster")  # the nav link (the page answers on every box)


@router.get("/cluster", response_class=HTMLResponse)
def cluster_page(request: Request):
    if request.app.state.settings.appliance_role == "worker":
        return portal.page(request, "worker")
    return portal.page(request, "cluster")


@worker_router.get("/", response_class=HTMLResponse)
def worker_page(request: Request):
    """On a worker, instead of the overview: it runs no engine; the head's portal is where the models are.
    API clients asking for `/` get the llm-d service information, as on any box."""
    if "text/html" not in request.headers.get("accept", ""):
        from app.api import v2
        return v2.index(request)
    return portal.page(request, "worker")  # worker.html reads the head's address from the settings
