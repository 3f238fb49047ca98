"""The router: one OpenAI-compatible endpoint for every instance, on the vLLM API's internal port.

Caddy (TLS, auth) sends the API port here; the router reads a request's `model` and streams the request and the
response between the client and the engine that serves that name. It routes by the table the manager publishes
(app/routing_table.py: pushed on its control socket, read from the file at start and whenever the file changes), so
it keeps serving running engines while the manager is down.

Modules, one job each: `extract` (the model of a request), `errors` (OpenAI-style error answers), `state` (the table,
loads, holds, the change signal), `choose` (replica picking and the queue rules), `queueing` (waiting for an
instance, asking the manager for an on-demand start), `proxy` (the streaming forwarder), `models` (GET /v1/models),
`stats` (Prometheus metrics and the activity log), `control` (the unix control socket), `peers` (other appliances'
models: ROUTER_PEERS), `server` (wiring).
"""
