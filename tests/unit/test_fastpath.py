"""The fast path's rules without HAProxy: which names go straight to an engine, the map kept in step, HAProxy's
counts and log lines read."""
from __future__ import annotations

import asyncio
from pathlib import Path

from app.instance import Phase
from app.router.fastlog import parse
from app.router.fastpath import FastPath, safe, wanted
from app.router.runtime_api import RuntimeAPI
from app.router.state import State
from app.routing_table import Route, Table


def route(id: str, *names: str, phase: Phase = Phase.READY, port: int = 18001, adapters=()) -> Route:
    return Route(id=id, names=list(names) + list(adapters), adapters=list(adapters), port=port, phase=phase)


def state(*routes: Route) -> State:
    return State(Table(manager_port=1, routes=list(routes)))


def ports(s: State) -> dict[str, int]:
    return {name: r.port for name, r in wanted(s).items()}


def test_only_names_with_one_ready_engine_sent_as_they_are():
    s = state(route("vllm", "acme/chat", "chat", port=18001, adapters=["sql-lora"]),
              route("a", "acme/twin", port=18002), route("b", "acme/twin", port=18003),
              route("c", "acme/solo", port=18004, phase=Phase.STARTING),
              route("d", "acme/lone", port=18005), route("e", "acme/lone", port=18006, phase=Phase.STOPPED))
    # an alias (`chat`) is rewritten by the router; two ready replicas are balanced by it; a starting one queues
    assert ports(s) == {"acme/chat": 18001, "sql-lora": 18001, "acme/lone": 18005}


def test_a_held_or_probed_engine_and_learned_adapters():
    s = state(route("vllm", "acme/chat", port=18001), route("lazy", "acme/lazy", port=18002, phase=Phase.STARTING))
    s.hold("vllm")
    s.probed_ready("lazy")  # started on demand, answering before the manager's table says so
    s.learn({"my-lora": ["lazy"]})
    assert ports(s) == {"acme/lazy": 18002, "my-lora": 18002}
    s.release("vllm")
    assert "acme/chat" in ports(s)


def test_names_the_runtime_api_cannot_carry_as_one_word_stay_on_the_router():
    assert safe("Qwen/Qwen2.5-0.5B-Instruct") and safe("/models/my_model")
    for name in ("a b", "a;clear map x", "tab\there", "new\nline", "back\\slash", "quo'te", "é", "x" * 513, ""):
        assert not safe(name)
    s = state(route("vllm", "a b", port=18001), route("x", "ok;del", port=18002))
    assert wanted(s) == {}


class FakeAPI(RuntimeAPI):
    def __init__(self):
        super().__init__(Path("/nonexistent"))
        self.map: dict[str, int] = {}
        self.sent: list[list[str]] = []
        self.table = ""

    async def run(self, commands: list[str]) -> str:
        self.sent.append(commands)
        for command in commands:
            words = command.split()
            if words[0] == "clear":
                self.map.clear()
            elif words[0] in ("add", "set"):
                self.map[words[3]] = int(words[4])
            elif words[0] == "del":
                self.map.pop(words[3])
            elif words[:2] == ["show", "table"]:
                return self.table
        return "\n" * len(commands)


def test_the_map_follows_the_state_and_a_drain_empties_it_before_counting():
    async def scenario():
        s = state(route("vllm", "acme/chat", port=18001), route("coder", "acme/coder", port=18002))
        api = FakeAPI()
        fast = FastPath(s, api, Path("/run/fast.map"), print)
        await fast.sync()
        first = dict(api.map)
        s.hold("coder")
        assert fast.dirty.is_set()  # every change of the state marks the map stale
        await fast.sync()
        held = dict(api.map)
        s.apply(Table(manager_port=1, routes=[route("vllm", "acme/chat", port=18009)]))  # blue/green: new port
        await fast.sync()
        api.table = ("# table: fast, type: integer, size:4096, used:2\n"
                     "0x1: key=18001 use=1 exp=0 shard=0 conn_cur=2 http_req_cnt=9\n"
                     "0x2: key=18009 use=0 exp=0 shard=0 conn_cur=0 http_req_cnt=1\n")
        await fast.read_counts()
        status = fast.merge({"instances": {}})
        return first, held, dict(api.map), api.sent[-2], status, fast.by_instance()
    first, held, moved, commands, status, by_instance = asyncio.run(scenario())
    assert first == {"acme/chat": 18001, "acme/coder": 18002}
    assert held == {"acme/chat": 18001}
    assert moved == {"acme/chat": 18009} and commands == ["set map /run/fast.map acme/chat 18009"]
    # the old port's requests still count for `vllm` (blue/green waits for them)
    assert status["instances"]["vllm"]["in_flight"] == 2 and status["instances"]["vllm"]["ports"] == {"18001": 2}
    assert by_instance == {"vllm": 2}


def test_haproxy_log_lines():
    line = parse(b"18002 200 12 3 410 ---- 7 2 /v1/chat/completions acme/coder")
    assert line is not None and (line.port, line.status, line.duration, line.ttft) == (18002, 200, 0.012, 0.003)
    assert (line.prompt_tokens, line.completion_tokens, line.path, line.model) == (7, 2, "/v1/chat/completions",
                                                                                   "acme/coder")
    streamed = parse(b"18002 200 1500 0 900 ---- - - /v1/chat/completions acme/coder")
    assert streamed is not None and streamed.prompt_tokens is None and streamed.ttft == 0.0
    gone = parse(b"18002 200 300 1 100 CD-- - - /v1/completions acme/coder")
    assert gone is not None and gone.status == 499  # the client went away
    refused = parse(b"18002 503 1 -1 200 SC-- - - /v1/completions acme/coder")
    assert refused is not None and refused.status == 503 and refused.ttft is None
    assert parse(b"garbage") is None and parse(b"- 200 1 1 1 ---- - - /x m") is None
