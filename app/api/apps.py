"""/api/apps: the appliance's public ports, so a client given the portal's address finds the inference API."""
from __future__ import annotations

from fastapi import APIRouter, Request

from app import caddy_config

router = APIRouter(prefix="/api")


@router.get("/apps")
def list_apps(request: Request) -> dict:
    """Each app of PORTAL_CONFIG with its public port; `api_port` and `portal_port` name the two that matter to a
    client, `https` whether they speak TLS."""
    ports = request.app.state.manager.ports
    settings = caddy_config.current(request.app.state.settings)  # TLS as /etc/environment says now
    return {"https": settings.enable_https,
            "api_port": ports.api.external_port if ports.api else None,
            "portal_port": ports.portal.external_port if ports.portal else None,
            "apps": [{"name": a.name, "port": a.external_port, "path": a.path, "proxied": a.proxied}
                     for a in ports.apps]}
