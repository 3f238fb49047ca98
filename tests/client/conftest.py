"""The Python client (client/) against the booted appliance with stand-in engines."""
from __future__ import annotations

import importlib.util

import pytest
from vllm_appliance_client import Appliance, AsyncAppliance

# Routing by the request's `model` (issue 14) comes with the router; until it is there, tests of replicas behind one
# name cannot pass, and those that can send their requests to the instance's own route (/instances/<id>).
ROUTER = importlib.util.find_spec("app.router") is not None
needs_router = pytest.mark.skipif(not ROUTER, reason="needs the router (app/router): requests routed by `model`")


def connect(app, instance: str | None = None, cls=Appliance):
    """A client of `app`; with `instance`, its inference requests go to that instance's own route."""
    api_url = app.api_url(f"/instances/{instance}") if instance else None
    return cls(app.portal_url(), app.token, verify=str(app.cert), api_url=api_url)


def connect_async(app, instance: str | None = None) -> AsyncAppliance:
    return connect(app, instance, AsyncAppliance)


def ids(app) -> set[str]:
    with app.client() as http:
        return {i["id"] for i in http.get(app.portal_url("/api/instances")).json()}
