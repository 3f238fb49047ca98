"""The web portal: server-rendered pages (portal/templates) that update themselves from /api with a little JS."""
from __future__ import annotations

import socket

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import caddy_config, credentials
from app.settings import get_settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(get_settings().home / "portal" / "templates"))
PAGES = {"overview": "Overview", "models": "Models", "activity": "Activity", "playground": "Playground",
         "logs": "Logs", "services": "Services", "apps": "Apps"}


def saved_token(settings) -> str:
    """The access token the boot resolved (never generates one: that is the boot's job)."""
    if settings.open_button_token or settings.token_file.exists():
        return credentials.resolve_token(settings)[0]
    return ""


def page(request: Request, name: str) -> HTMLResponse:
    settings = request.app.state.settings
    ports = request.app.state.manager.ports
    apps, api, own = ports.apps, ports.api, ports.portal
    settings = caddy_config.current(settings)  # auth and TLS as /etc/environment says now
    # The Apps page may need the token: behind a proxy that puts the port in the host name
    # (RunPod: https://<pod>-8000.proxy.runpod.net) the cookie of this host does not reach the other ports,
    # so links to them carry ?token= (Caddy sets the cookie there and drops it from the address).
    # Never on a portal left open (AUTH_EXCLUDE): the page would hand the token to anyone.
    guarded = settings.enable_auth and own is not None and own.external_port not in settings.auth_excluded_ports
    token = saved_token(settings) if name == "apps" and guarded else ""
    response = templates.TemplateResponse(request, f"{name}.html", {
        "page": name, "pages": PAGES, "box": socket.gethostname(), "apps": apps, "token": token,
        "api_port": api.external_port if api else None, "portal_port": own.external_port if own else None,
        "https": settings.enable_https})
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/", response_class=HTMLResponse)
def overview(request: Request):
    return page(request, "overview")


@router.get("/{name}", response_class=HTMLResponse)
def other(request: Request, name: str):
    if name not in PAGES:
        return HTMLResponse("<h1>Not found</h1>", status_code=404)
    return page(request, name)
