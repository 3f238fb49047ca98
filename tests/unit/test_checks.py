"""app/checks.py: careless settings refused with a message naming the setting; the portal kept."""
from __future__ import annotations

import pytest

from app import checks, portal_config
from app.settings import Settings

PORTAL = "localhost:1111:11111:/:Instance Portal"
API = "localhost:8000:18000:/docs:vLLM API"


def review(config: str) -> tuple[list[str], list[str]]:
    said: list[str] = []
    kept = checks.port_collisions(portal_config.parse(config), said.append)
    return [a.name for a in kept], said


def test_distinct_ports_pass_untouched():
    assert review(f"{PORTAL}|{API}|localhost:6006:16006:/:TensorBoard|localhost:8888:8888:/:Link") == (
        ["Instance Portal", "vLLM API", "TensorBoard", "Link"], [])


@pytest.mark.parametrize("entry,port", [
    ("localhost:11111:16006:/:Clash", 11111),  # Caddy on the manager's port
    ("localhost:18000:16006:/:Clash", 18000),  # Caddy on the engine's port
    ("localhost:6006:18000:/:Clash", 18000),   # an app said to listen where the engine does
    ("localhost:1111:1111:/:Clash", 1111),     # a plain link on the portal's public port
])
def test_an_entry_on_a_port_another_takes_is_left_out_with_the_setting_named(entry, port):
    kept, said = review(f"{PORTAL}|{API}|{entry}")
    assert kept == ["Instance Portal", "vLLM API"]
    assert len(said) == 1 and said[0].startswith("ERROR: PORTAL_CONFIG entry 'Clash'") and f"port {port}" in said[0]


def test_the_portal_is_kept_even_when_listed_after_the_entry_it_collides_with():
    kept, said = review(f"localhost:11111:16006:/:Clash|{PORTAL}")
    assert kept == ["Instance Portal"] and "'Instance Portal' already uses" in said[0]


def test_an_app_on_another_host_may_reuse_a_local_internal_port():
    assert review(f"{PORTAL}|{API}|gpu2.lan:9000:18000:/:Remote")[0] == ["Instance Portal", "vLLM API", "Remote"]


def settings(**env: str) -> Settings:
    return Settings(**env)


def test_auth_exclude_of_the_portal_port_is_refused_and_other_ports_stay_excluded():
    said: list[str] = []
    apps = portal_config.parse(f"{PORTAL}|{API}")
    result = checks.auth_exclude(settings(AUTH_EXCLUDE="1111,6006"), apps, said.append)
    assert result.auth_excluded_ports == {6006}
    assert said[0].startswith("ERROR: AUTH_EXCLUDE names the portal's port 1111") and "ALLOW_OPEN_PORTAL" in said[0]


def test_allow_open_portal_keeps_it_open_with_a_warning():
    said: list[str] = []
    apps = portal_config.parse(PORTAL)
    result = checks.auth_exclude(settings(AUTH_EXCLUDE="1111", ALLOW_OPEN_PORTAL="true"), apps, said.append)
    assert result.auth_excluded_ports == {1111} and said[0].startswith("WARNING: AUTH_EXCLUDE opens")


def test_auth_exclude_of_other_ports_says_nothing():
    said: list[str] = []
    s = settings(AUTH_EXCLUDE="8000")
    assert checks.auth_exclude(s, portal_config.parse(f"{PORTAL}|{API}"), said.append) is s and said == []


def test_a_malformed_public_address_is_left_out_by_name():
    said: list[str] = []
    result = checks.public_addresses(settings(PUBLIC_IPADDR="box.example", RUNPOD_PUBLIC_IP="203.0.113.7"), said.append)
    assert result.public_ipaddr == "" and result.runpod_public_ip == "203.0.113.7"
    assert said == ["ERROR: PUBLIC_IPADDR 'box.example' is not an IP address; the certificate does not name it"]


def test_ssh_port_on_a_portal_port_starts_no_sshd_and_says_so():
    said: list[str] = []
    s = settings(PUBLIC_KEY="ssh-ed25519 AAAA me", SSH_PORT="8000")
    result = checks.other_ports(s, portal_config.parse(f"{PORTAL}|{API}"), said.append)
    assert result.public_key == "" and said[0].startswith("ERROR: SSH_PORT 8000 is a port of PORTAL_CONFIG entry")


def test_engine_ports_overlapping_an_app_is_warned_about():
    said: list[str] = []
    s = settings(ENGINE_PORTS="18000-18010")
    assert checks.other_ports(s, portal_config.parse(f"{PORTAL}|{API}"), said.append) is s
    assert said[0].startswith("WARNING: ENGINE_PORTS (18000-18010) holds port 18000 of PORTAL_CONFIG entry 'vLLM API'")


def test_the_defaults_pass_every_check():
    said: list[str] = []
    s = settings()
    apps = portal_config.parse(s.portal_config)
    assert checks.port_collisions(apps, said.append) == apps
    assert checks.other_ports(checks.auth_exclude(s, apps, said.append), apps, said.append) is s
    assert checks.public_addresses(s, said.append) is s and said == []
