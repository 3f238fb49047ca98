"""The manager's HTTP API (FastAPI routers)."""
