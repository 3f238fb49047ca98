"""/api/provisioning: first-boot provisioning's state, steps and log location; force a re-run."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import provisioning

router = APIRouter(prefix="/api")


@router.get("/provisioning")
def get_provisioning(request: Request) -> dict:
    """State (pending, running, succeeded, skipped, failed), steps, exit code, timestamps, checksums, log."""
    return provisioning.status(request.app.state.settings)


@router.post("/provisioning/rerun", status_code=202)
async def rerun_provisioning(request: Request):
    """Run provisioning again now, even if it succeeded and is unchanged; follow it in the log."""
    try:
        return JSONResponse(await asyncio.to_thread(provisioning.rerun, request.app.state.settings), status_code=202)
    except LookupError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    except RuntimeError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
