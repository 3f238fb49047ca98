"""Settings that are valid one by one but careless together, refused at boot with a message naming the setting.

Each check leaves the portal up where it safely can: it drops the careless part (with an ERROR line in the
boot log) rather than stopping the boot. Where a user may really want the risky choice, an explicit opt-in
setting allows it, with a WARNING at every boot.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable

from app.portal_config import PORTAL_NAME, PortalApp, find
from app.settings import Settings

Log = Callable[[str], None]


def auth_exclude(settings: Settings, apps: list[PortalApp], log: Log) -> Settings:
    """AUTH_EXCLUDE must not name the portal's port (that opens the manager API) unless ALLOW_OPEN_PORTAL."""
    portal = find(apps, PORTAL_NAME)
    excluded = settings.auth_excluded_ports
    if not settings.enable_auth or portal is None or portal.external_port not in excluded:
        return settings
    if settings.allow_open_portal:
        log(f"WARNING: AUTH_EXCLUDE opens the portal's port {portal.external_port} (ALLOW_OPEN_PORTAL is set): "
            "anyone who reaches it can start and stop engines, read logs and re-run provisioning")
        return settings
    log(f"ERROR: AUTH_EXCLUDE names the portal's port {portal.external_port}, which would open the manager API "
        "(start/stop engines, logs, provisioning) to anyone; auth stays on for it. Set ALLOW_OPEN_PORTAL=true "
        "if you really want that.")
    kept = ",".join(str(p) for p in sorted(excluded - {portal.external_port}))
    return settings.model_copy(update={"auth_exclude": kept})


def _bound_here(app: PortalApp) -> set[int]:
    """The ports of this box an entry takes: Caddy's external port, and the internal one on this host."""
    ports = {app.external_port} if app.proxied else set()
    if app.host in ("localhost", "127.0.0.1"):
        ports.add(app.internal_port)
    return ports


def port_collisions(apps: list[PortalApp], log: Log) -> list[PortalApp]:
    """The entries of PORTAL_CONFIG that take no port another entry takes; the portal's own entry first.

    Two programs on one port make the later one crash-loop on "address already in use" (Caddy's site on the
    manager's port, the engine on the portal's), so a colliding entry is left out, named in the boot log.
    """
    portal = find(apps, PORTAL_NAME)
    ordered = ([portal] if portal else []) + [a for a in apps if a is not portal]
    kept: list[PortalApp] = []
    taken: dict[int, PortalApp] = {}
    for app in ordered:
        clash = sorted(p for p in _bound_here(app) if p in taken)
        if clash:
            log(f"ERROR: PORTAL_CONFIG entry {app.name!r} (external {app.external_port}, internal "
                f"{app.internal_port}) uses port {clash[0]}, which entry {taken[clash[0]].name!r} already uses; "
                "it is left out. Give each entry its own ports.")
            continue
        kept.append(app)
        taken.update(dict.fromkeys(_bound_here(app), app))
    return kept


def public_addresses(settings: Settings, log: Log) -> Settings:
    """PUBLIC_IPADDR / RUNPOD_PUBLIC_IP only name the box in the certificate: a malformed one is left out (with an
    ERROR line), not a reason to keep the portal down."""
    blank = {}
    for field, name in (("public_ipaddr", "PUBLIC_IPADDR"), ("runpod_public_ip", "RUNPOD_PUBLIC_IP")):
        value = getattr(settings, field).strip()
        try:
            if value:
                ipaddress.ip_address(value)
        except ValueError:
            log(f"ERROR: {name} {value!r} is not an IP address; the certificate does not name it")
            blank[field] = ""
    return settings.model_copy(update=blank) if blank else settings


def other_ports(settings: Settings, apps: list[PortalApp], log: Log) -> Settings:
    """SSH_PORT (with PUBLIC_KEY) on a port of PORTAL_CONFIG: no sshd, rather than a crash-looping one or Caddy.
    ENGINE_PORTS overlapping PORTAL_CONFIG: a warning (an instance created through the API could take an app's
    port while that app is down)."""
    taken = {port: app for app in apps for port in _bound_here(app)}
    if settings.public_key and settings.ssh_port in taken:
        log(f"ERROR: SSH_PORT {settings.ssh_port} is a port of PORTAL_CONFIG entry {taken[settings.ssh_port].name!r}; "
            "no sshd is started. Choose another SSH_PORT.")
        settings = settings.model_copy(update={"public_key": ""})
    try:
        overlap = sorted(set(settings.engine_port_range) & set(taken))
    except ValueError:
        return settings  # a malformed ENGINE_PORTS is reported where it is used
    if overlap:
        log(f"WARNING: ENGINE_PORTS ({settings.engine_ports}) holds port {overlap[0]} of PORTAL_CONFIG entry "
            f"{taken[overlap[0]].name!r}; an instance created through the API could take it. Move one of them.")
    return settings
