"""Peers across two network namespaces (tests/netns.py): box A in one, box B in the other, reachable from A only on
the link between them; the test talks to A alone. B's self-signed certificate names its link address
(PUBLIC_IPADDR), and A trusts it as the peer's CA."""
from __future__ import annotations

import json

import pytest

from tests.netns import NsAppliance, addresses, two_boxes, unavailable
from tests.router.conftest import control
from tests.router.test_peers import CHAT, CODER, listing_with, wait_for

A_TOKEN = "netns-box-a-token-0123456789"
B_TOKEN = "netns-box-b-token-0123456789"
B_KEY = "netns-box-b-key-for-a-0123456"
NET = "10.232"  # not test_cluster's 10.231: both may run at once on this machine
_, A_FRONT, _, B_ADDR = addresses(NET)


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with two_boxes(NET, "p") as (a_ns, b_ns):
        b = NsAppliance(tmp_path_factory.mktemp("ns-box-b"), {
            "VLLM_MODEL": CODER, "OPEN_BUTTON_TOKEN": B_TOKEN, "API_KEYS": B_KEY, "PUBLIC_IPADDR": B_ADDR},
            ns=b_ns, address=None)
        a = NsAppliance(tmp_path_factory.mktemp("ns-box-a"), {
            "VLLM_MODEL": CHAT, "OPEN_BUTTON_TOKEN": A_TOKEN, "PUBLIC_IPADDR": A_FRONT,
            "ROUTER_PEERS": f"https://{B_ADDR}:{b.api_port}={B_KEY};ca={b.cert}", "ROUTER_PEERS_INTERVAL": "1"},
            ns=a_ns, address=A_FRONT)
        for box, model in ((a, CHAT), (b, CODER)):  # "in the model cache": no Hub to ask inside the namespaces
            (box.workspace / "huggingface/hub" / f"models--{model.replace('/', '--')}").mkdir(parents=True)
        try:
            b.start(timeout=90)
            a.start(timeout=90, wait_engine=True)
            yield a, b
        finally:
            for box in (a, b):
                box.stop()


def test_a_request_to_box_a_is_answered_by_box_b_in_the_other_namespace(boxes):
    a, b = boxes
    def ready() -> list[dict] | None:
        listed = listing_with(a, CODER)
        return listed if listed and next(e for e in listed if e["id"] == CODER)["state"] == "ready" else None

    listed = wait_for(ready, 60, "B's model ready in A's list")
    assert [e["id"] for e in listed] == [CHAT, CODER]
    assert listed[1]["peer"] == f"{B_ADDR}:{b.api_port}"
    body = {"model": CODER, "messages": [{"role": "user", "content": "across namespaces"}], "max_tokens": 4}
    with a.client(timeout=30) as client:
        plain = client.post(a.api_url("/v1/chat/completions"), json=body)
        with client.stream("POST", a.api_url("/v1/chat/completions"), json={**body, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"].startswith(f"stand-in reply from {CODER}:")
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["model"] == CODER
    with control(b) as router_b:  # B's control socket: a unix socket, reachable through the shared filesystem
        on_b = router_b.get("/activity", params={"limit": 2}).json()["requests"]
    assert [(r["model"], r["instance"], r["status"]) for r in on_b] == [(CODER, "vllm", 200)] * 2


def test_box_b_stopped_leaves_box_a_answering_with_its_own_models(boxes):
    a, b = boxes
    b.stop()
    listed = wait_for(lambda: listing_with(a, CODER, False), 20, "B's model gone from A's list")
    assert [e["id"] for e in listed] == [CHAT]
    assert f"peer {B_ADDR}:{b.api_port} is left out until it answers" in a.log("router")
