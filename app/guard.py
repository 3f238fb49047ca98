"""The manager's own checks on every request: its Host, same-site request forgery, and security headers.

Caddy authenticates; this middleware stops what authentication cannot:
- DNS rebinding: the manager listens on 127.0.0.1, so a page whose name was made to resolve there could talk to
  it. It answers only to a loopback Host (Caddy sends the upstream's own address, the public one goes in
  X-Forwarded-Host; an SSH port-forward keeps its own loopback address).
- Same-site forgery: every port of a host is the same *site*, so a page served by another app on this box (or on
  an AUTH_EXCLUDE'd port) can make the browser post a form here with the cookie or the remembered basic-auth
  credentials. Caddy says how a request authenticated (X-Appliance-Auth, a client's own copy removed); a bearer
  token is never sent by a browser on its own, so only cookie, basic and unauthenticated (ENABLE_AUTH=false,
  a direct local call) requests that change state are checked: the browser must say the request comes from the
  portal's own origin, and it must carry a JSON body or the portal's header, which a form cannot send.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
PORTAL_HEADER = "x-portal-request"  # sent by portal/static/portal.js on every API call
AUTH_HEADER = "x-appliance-auth"  # set by Caddy: bearer, cookie, basic or none
SECURITY_HEADERS = {
    # No inline script anywhere (the API docs page loads its setup from /static too); inline styles are used for
    # the portal's bars. Nothing may frame the portal.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def host_refusal(host: str | None) -> str | None:
    """Why this Host header is refused, or None: only a loopback name, any port (an SSH forward picks its own)."""
    if not host:
        return "a Host header is required"
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name.lower() not in LOOPBACK_NAMES:
        return f"Host {host[:100]!r} is not this manager's loopback address; use the portal's public port"
    return None


def own_origin(headers: Mapping[str, str], scheme: str) -> str:
    """The portal's origin as the browser sees it: Caddy passes the public Host in X-Forwarded-Host."""
    host = headers.get("x-forwarded-host") or headers.get("host", "")
    return f"{headers.get('x-forwarded-proto') or scheme}://{host}".lower()


def csrf_refusal(method: str, headers: Mapping[str, str], scheme: str = "http") -> str | None:
    """Why a request that changes state is refused as possibly forged by another page, or None."""
    if method.upper() in SAFE_METHODS or headers.get(AUTH_HEADER) == "bearer":
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return (f"cross-origin request refused (Sec-Fetch-Site: {fetch_site[:40]}): "
                "use the portal itself or a bearer token")
    origin = headers.get("origin")
    if fetch_site is None and origin is None and headers.get(AUTH_HEADER, "none") == "none":
        return None  # no credential a browser could lend (auth off, or a local call) and no browser: a script
    if fetch_site is None and origin is not None and origin.lower() != own_origin(headers, scheme):
        return f"cross-origin request refused (Origin: {origin[:100]}): use the portal itself or a bearer token"
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and PORTAL_HEADER not in headers:
        return ("a request that changes state needs Content-Type: application/json or an X-Portal-Request header "
                "(or a bearer token)")
    return None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware (pure ASGI, so streamed responses such as log streams pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = host_refusal(headers.get("host"))
        if refusal:
            await _refuse(send, 421, refusal)
            return
        refusal = csrf_refusal(scope["method"], headers, scope.get("scheme", "http"))
        if refusal:
            await _refuse(send, 403, refusal)
            return
        forwarded_host = headers.get("x-forwarded-host")
        if forwarded_host:  # links and redirects the app builds name the public address, as before
            scope = dict(scope)
            mutable = MutableHeaders(scope=scope)
            mutable["host"] = forwarded_host

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    response_headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
