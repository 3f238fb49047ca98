"""PORTAL_CONFIG and /etc/portal.yaml: the apps behind Caddy and the portal's links.

PORTAL_CONFIG is `host:external:internal:path:Name|...`, as on Vast.ai. An entry
whose external and internal ports differ gets a Caddy site; one whose ports are
equal is only a link in the portal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator

from app.files import write_atomic
from app.validation import plain_text

PORTAL_NAME = "Instance Portal"
API_NAME = "vLLM"  # the entry whose name contains this is the OpenAI-compatible API
DEFAULT_MANAGER_PORT, DEFAULT_API_PORT = 11111, 18000
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/?%#-]*")


class PortalApp(BaseModel):
    host: str
    external_port: int = Field(ge=1, le=65535)
    internal_port: int = Field(ge=1, le=65535)
    path: str = "/"
    name: str

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.fullmatch(value):
            raise ValueError(f"host {value!r} is not a host name")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _PATH.fullmatch(value):
            raise ValueError(f"path {value!r} must start with / and hold URL characters only")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        plain_text(value, "app name", max_len=64)
        if not value.strip() or any(c in value for c in '"{}\\'):
            raise ValueError(f"app name {value!r} is empty or holds one of \" {{ }} \\")
        return value

    @property
    def proxied(self) -> bool:
        return self.external_port != self.internal_port


def parse(text: str) -> list[PortalApp]:
    apps = []
    for number, entry in enumerate(filter(None, (e.strip() for e in text.split("|"))), 1):
        parts = entry.split(":", 4)
        if len(parts) != 5:
            raise ValueError(f"PORTAL_CONFIG entry {number} ({entry!r}) must be host:external:internal:path:Name")
        host, external, internal, path, name = parts
        try:
            apps.append(PortalApp(host=host, external_port=external, internal_port=internal, path=path, name=name))
        except ValueError as exc:
            raise ValueError(f"PORTAL_CONFIG entry {number} ({entry!r}): {_first_error(exc)}") from None
    externals = [a.external_port for a in apps if a.proxied]
    duplicate = {p for p in externals if externals.count(p) > 1}
    if duplicate:
        raise ValueError(f"PORTAL_CONFIG proxies external port {sorted(duplicate)[0]} twice")
    return apps


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(exc)


def write(path: Path, source: str, apps: list[PortalApp]) -> None:
    """Write portal.yaml; `source` records the PORTAL_CONFIG it came from."""
    doc = {"portal_config": source,
           "applications": {a.name: a.model_dump() for a in apps}}
    write_atomic(path, "# Written from PORTAL_CONFIG at boot. Edit it, then `supervisorctl restart caddy`\n"
                       "# (or the portal's Services > Apply configuration).\n" + yaml.safe_dump(doc, sort_keys=False))


def load(path: Path) -> tuple[str, list[PortalApp]]:
    doc = yaml.safe_load(path.read_text()) or {}
    apps = [PortalApp(**fields) for fields in (doc.get("applications") or {}).values()]
    return doc.get("portal_config", ""), apps


def sync(path: Path, portal_config: str) -> list[PortalApp]:
    """The apps to serve: portal.yaml as the user left it, unless PORTAL_CONFIG changed since it was written."""
    if path.exists():
        source, apps = load(path)
        if source == portal_config:
            return apps
    apps = parse(portal_config)
    write(path, portal_config, apps)
    return apps


def find(apps: list[PortalApp], name_contains: str) -> PortalApp | None:
    exact = [a for a in apps if a.name == name_contains]
    if exact:
        return exact[0]
    return next((a for a in apps if name_contains.lower() in a.name.lower()), None)


@dataclass(frozen=True)
class Ports:
    """portal.yaml parsed once: the apps, which of them is the portal and which the API, and the ports they take."""
    apps: list[PortalApp] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Ports:
        """The apps of portal.yaml; none when it is not written yet."""
        try:
            return cls(load(path)[1])
        except FileNotFoundError:
            return cls()

    @classmethod
    def current(cls, path: Path) -> Ports:
        """portal.yaml as it is now, parsed again only when the file changed (a user may edit it at any time)."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return cls()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if _parsed.get("key") != key:
            try:
                _parsed.update(key=key, ports=cls.read(path))
            except (ValueError, yaml.YAMLError):
                return _parsed.get("ports") or cls()  # a broken edit: keep what was read before
        return _parsed["ports"]

    @property
    def portal(self) -> PortalApp | None:
        return find(self.apps, PORTAL_NAME)

    @property
    def api(self) -> PortalApp | None:
        return find(self.apps, API_NAME)

    @property
    def manager_port(self) -> int:
        """Where the manager listens (127.0.0.1)."""
        return self.portal.internal_port if self.portal else DEFAULT_MANAGER_PORT

    @property
    def api_port(self) -> int:
        """The internal port of the OpenAI-compatible API: where the default instance `vllm` listens."""
        return self.api.internal_port if self.api else DEFAULT_API_PORT

    def taken(self) -> dict[int, str]:
        """Every port the appliance's apps use, with what uses it (not for other engines)."""
        ports = {}
        for app in self.apps:
            ports[app.external_port] = f"the public port of {app.name!r}"
            ports[app.internal_port] = f"the internal port of {app.name!r}"
        return ports


_parsed: dict = {}  # Ports.current's last reading: the file's (path, mtime, size) and what it held
