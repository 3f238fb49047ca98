"""The manager's API docs page (/api/docs): Swagger UI served from the box, so it works offline and under the
portal's Content-Security-Policy (no CDN, no inline script)."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.settings import get_settings

SWAGGER_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-dist's files, shipped in the wheel
templates = Jinja2Templates(directory=str(get_settings().home / "portal" / "templates"))


def install(app: FastAPI, path: str = "/api/docs") -> None:
    """Serve the docs page at `path` and Swagger UI's files at /static/swagger (before the portal's /static)."""
    app.mount("/static/swagger", StaticFiles(directory=str(SWAGGER_ASSETS)), name="swagger")

    @app.get(path, include_in_schema=False, response_class=HTMLResponse)
    def api_docs(request: Request):
        return templates.TemplateResponse(request, "api_docs.html",
                                          {"title": app.title, "openapi_url": app.openapi_url})
