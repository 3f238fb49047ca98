"""Peers: other appliances whose models this router offers too ("several boxes, one endpoint", docs/scale-out.md).

ROUTER_PEERS lists them, `URL=KEY[;ca=PATH][;insecure]` separated by commas. Every ROUTER_PEERS_INTERVAL seconds (and
at start) the router reads each peer's `GET /v1/models` with the peer's key; a request whose `model` no local instance
(nor a local engine's LoRA adapter) answers to, but a peer lists, is forwarded to that peer with the peer's key in
place of any credentials the caller sent. A peer that does not answer drops out until it answers again (its error
logged once). Requests from a peer carry LOOP_HEADER: such a request is never forwarded to a peer again, and its
`/v1/models` lists this box's own models only. Keys are secrets: never logged, never in a repr.
"""
from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

LOOP_HEADER = "X-Appliance-Peer"  # set on every request to a peer; a request carrying it is never sent to a peer
KEY = re.compile(r"[A-Za-z0-9_-]{16,256}")  # the appliance's token and API_KEYS shape
LIST_TIMEOUT = 5.0
# The caller's credentials and what its proxy said about it never reach a peer; the peer's key is set instead.
NOT_TO_PEERS = frozenset(("authorization", "cookie", "x-appliance-auth", "forwarded", "x-real-ip", "x-forwarded-for",
                          "x-forwarded-proto", "x-forwarded-host", LOOP_HEADER.lower()))


@dataclass
class Peer:
    url: URL  # scheme://host:port, no path
    key: str = field(repr=False)
    ssl: ssl.SSLContext | bool = field(default=True, repr=False)  # True: verify with the system's CAs
    ca: str | None = None
    insecure: bool = False
    models: list[dict] = field(default_factory=list, repr=False)  # its last listing; empty while it is down
    error: str | None = None  # why its last reading failed (logged once per new reason)
    in_flight: int = 0

    @property
    def name(self) -> str:
        return f"{self.url.host}:{self.url.port}"

    @property
    def label(self) -> str:
        """The peer as an instance in the router's metrics and activity log."""
        return f"peer:{self.name}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", LOOP_HEADER: "1"}


def parse_entry(entry: str) -> Peer:
    """One `URL=KEY[;ca=PATH][;insecure]`; ValueError with a reason that never quotes the key."""
    head, *options = [part.strip() for part in entry.split(";")]
    address, sep, key = head.partition("=")
    if not sep:
        raise ValueError("must be URL=KEY")
    try:
        url = URL(address.strip())
    except ValueError as exc:
        raise ValueError(f"{address.strip()[:100]!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{address.strip()[:100]!r} must be http(s)://HOST:PORT")
    if url.user or url.password or url.query_string or url.fragment or url.path not in ("", "/"):
        raise ValueError(f"{address.strip()[:100]!r} must be http(s)://HOST:PORT, without a path, query or user")
    if not KEY.fullmatch(key.strip()):
        raise ValueError("its key must be 16-256 of A-Z a-z 0-9 _ - (the peer's access token or one of its API_KEYS)")
    peer = Peer(url=url.with_path("").with_query(None), key=key.strip())
    for option in filter(None, options):
        name, _, value = option.partition("=")
        if name == "ca" and value and url.scheme == "https":
            peer.ca = value
        elif option == "insecure" and url.scheme == "https":
            peer.insecure = True
        else:
            raise ValueError(f"unknown option {option[:60]!r} (`ca=PATH` or `insecure`, for https only)")
    if peer.ca and peer.insecure:
        raise ValueError("`ca=` and `insecure` exclude each other")
    return peer


def parse(text: str) -> tuple[list[Peer], list[str]]:
    """The peers of a ROUTER_PEERS value, and a line for each entry left out (numbered, the key never quoted)."""
    peers: list[Peer] = []
    problems: list[str] = []
    for number, entry in enumerate((e.strip() for e in text.split(",")), 1):
        if not entry:
            continue
        try:
            peer = parse_entry(entry)
        except ValueError as exc:
            problems.append(f"ROUTER_PEERS entry {number} is left out: {exc}")
            continue
        if any(p.url == peer.url for p in peers):
            problems.append(f"ROUTER_PEERS entry {number} is left out: {peer.url} is listed already")
            continue
        peers.append(peer)
    return peers, problems


def tls(peer: Peer) -> None:
    """The peer's TLS setting: the system's CAs, its own CA file, or none (OSError/ssl.SSLError: a bad CA file)."""
    if peer.insecure:
        peer.ssl = False
    elif peer.ca:
        peer.ssl = ssl.create_default_context(cafile=peer.ca)


class Peers:
    def __init__(self, peers: list[Peer], session: aiohttp.ClientSession, log: Callable[[str], None]):
        self.peers, self.session, self.log = peers, session, log

    @classmethod
    def from_setting(cls, text: str, session: aiohttp.ClientSession, log: Callable[[str], None]) -> Peers:
        """The peers of ROUTER_PEERS; every entry left out is logged with its reason (nothing else stops)."""
        parsed, problems = parse(text)
        peers = []
        for peer in parsed:
            try:
                tls(peer)
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"ROUTER_PEERS: peer {peer.name} is left out: its CA file {peer.ca} cannot be "
                                f"read ({exc.__class__.__name__}: {exc})")
                continue
            if peer.insecure:
                log(f"WARNING: peer {peer.name}: TLS verification is off (`insecure`): anyone on the way can read "
                    "its key and the requests")
            elif peer.url.scheme == "http":
                log(f"WARNING: peer {peer.name} is plain http: its key and the requests cross the network unencrypted")
            peers.append(peer)
        for line in problems:
            log(f"ERROR: {line}")
        if peers:
            log(f"peers: {', '.join(p.name for p in peers)}")
        return cls(peers, session, log)

    # --- reading the peers' lists -----------------------------------------------------------------------------------
    async def read(self, peer: Peer) -> None:
        try:
            async with self.session.get(peer.url / "v1/models", headers=peer.headers(), ssl=peer.ssl,
                                        timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT)) as answer:
                if answer.status != 200:
                    hint = " (is its key right?)" if answer.status in (401, 403) else ""
                    raise ValueError(f"GET /v1/models answered {answer.status}{hint}")
                data = (await answer.json(content_type=None)).get("data")
                if not isinstance(data, list):
                    raise ValueError("GET /v1/models answered no list")
            models = [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, OSError) as exc:
            self.down(peer, exc)
            return
        if peer.error is not None or not peer.models:
            self.log(f"peer {peer.name} answers: {len(models)} models")
        peer.models, peer.error = models, None

    def down(self, peer: Peer, exc: BaseException) -> None:
        """The peer drops out of the list; its error is logged when it is new."""
        reason = f"{exc.__class__.__name__}: {exc}"[:300] if str(exc) else exc.__class__.__name__
        if reason != peer.error:
            self.log(f"peer {peer.name} is left out until it answers: {reason}")
        peer.models, peer.error = [], reason

    async def follow(self, interval: float) -> None:
        """Read every peer's list now, then every `interval` seconds; nothing a peer answers ends this loop."""
        while True:
            results = await asyncio.gather(*(self.read(p) for p in self.peers), return_exceptions=True)
            for peer, result in zip(self.peers, results, strict=True):
                if isinstance(result, Exception):
                    self.down(peer, result)
            await asyncio.sleep(interval)

    # --- routing ----------------------------------------------------------------------------------------------------
    def choose(self, name: str, exclude: Collection[str] = ()) -> Peer | None:
        """The peer with the fewest requests in flight (then the first listed) among those that list `name`."""
        serving = [p for p in self.peers if p.name not in exclude and any(m["id"] == name for m in p.models)]
        return min(serving, key=lambda p: p.in_flight) if serving else None

    def names(self) -> list[str]:
        return [m["id"] for p in self.peers for m in p.models]

    def entries(self, local: set[str]) -> list[dict]:
        """The peers' models for GET /v1/models, after the local ones: a name served here (or by an earlier peer)
        is left out; each entry says which peer serves it (`peer`, and `instance` as in the router's metrics)."""
        seen, out = set(local), []
        for peer in self.peers:
            for model in peer.models:
                if model["id"] in seen:
                    continue
                seen.add(model["id"])
                entry = {k: v for k, v in model.items() if k != "instances"}
                out.append({**entry, "instance": peer.label, "peer": peer.name})
        return out
