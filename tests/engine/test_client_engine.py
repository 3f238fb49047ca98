"""The Python client (client/) against the real vLLM (CPU build): replicas sharing a batch, generate with
return_extra, embeddings from a real embedding model, a LoRA adapter built locally loaded at start and at runtime,
and the instances deleted when the block ends with an error."""
from __future__ import annotations

import math

import pytest
from vllm_appliance_client import Appliance, NotFoundError

from tests.client.conftest import ids, needs_router
from tests.engine.conftest import ENGINE_ARGS, READY_TIMEOUT, served

pytestmark = pytest.mark.engine
LORA_ARGS = [*ENGINE_ARGS.split(), "--max-loras", "2", "--max-cpu-loras", "2", "--max-lora-rank", "8"]


def connect(app, instance: str | None = None) -> Appliance:
    api_url = app.api_url(f"/instances/{instance}") if instance else None
    return Appliance(app.portal_url(), app.token, verify=str(app.cert), api_url=api_url, timeout=READY_TIMEOUT)


def requests_served(app, instance: str) -> float:
    with app.client() as http:
        text = http.get(app.api_url(f"/instances/{instance}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))


@needs_router
def test_two_replicas_share_a_batch_of_64_chats_in_order(real_app, tiny_model):
    conversations = [[{"role": "user", "content": f"Count to {i}"}] for i in range(64)]
    with connect(real_app) as client:
        with client.serve(str(tiny_model("tiny-a")), name="tiny-pair", replicas=2, args=ENGINE_ARGS,
                          startup_timeout=READY_TIMEOUT, id="pair", progress=False) as pair:
            answers = pair.chat(conversations, max_tokens=4, temperature=0, return_extra=True)
            alone = {i: pair.chat([conversations[i]], max_tokens=4, temperature=0)[0] for i in (0, 21, 63)}
            counts = [requests_served(real_app, i) for i in pair.instances]
    assert all(a.usage.completion_tokens > 0 and a.model == "tiny-pair" for a in answers)
    assert all(answers[i].text == text for i, text in alone.items())  # in input order
    assert sum(counts) >= 64 and min(counts) > 0, counts
    assert not {"pair-0", "pair-1"} & ids(real_app)


def test_generate_with_return_extra(real_app):
    with connect(real_app) as client, real_app.client() as http:
        model = client.model(served(real_app, http))
        results = model.generate(["one two three", "the quick brown"], max_tokens=5, temperature=0, logprobs=2,
                                 return_extra=True)
    for result in results:
        assert result.finish_reason in ("length", "stop") and 0 < result.usage.completion_tokens <= 5
        assert len(result.logprobs["token_logprobs"]) == result.usage.completion_tokens
        assert all(len(top) <= 3 for top in result.logprobs["top_logprobs"])


def test_embed_with_a_real_embedding_model(real_app, minilm):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(100)]
    with connect(real_app, "minilm-0") as client:
        with client.serve(str(minilm), name="minilm", id="minilm", progress=False,
                          args=[*ENGINE_ARGS.split(), "--runner", "pooling", "--convert", "embed"],
                          startup_timeout=READY_TIMEOUT) as model:
            vectors = model.embed(texts, batch_size=16)
            alone = {i: model.embed([texts[i]])[0] for i in (0, 37, 99)}
    assert len(vectors) == 100 and {len(v) for v in vectors} == {384}
    for i, vector in alone.items():  # in input order
        assert math.dist(vectors[i], vector) < 1e-3
    assert math.dist(vectors[1], vectors[3]) < math.dist(vectors[1], vectors[2])  # cats nearer cats


def test_lora_static_and_runtime_then_cleanup_on_an_exception(real_app, tiny_model, tiny_lora):
    prompts = ["one two three", "hello world", "the quick brown fox", "a b c d"]
    with connect(real_app, "lora-0") as client, pytest.raises(RuntimeError, match="the user's code failed"):  # noqa: PT012
        with client.serve(str(tiny_model("tiny-a")), name="tiny-base", id="lora", progress=False, args=LORA_ARGS,
                          lora={"static-lora": str(tiny_lora("static-lora", seed=1))},
                          startup_timeout=READY_TIMEOUT) as base:
            plain = base.generate(prompts, max_tokens=8, temperature=0)
            tuned = base.generate(prompts, max_tokens=8, temperature=0, model="static-lora", return_extra=True)
            assert {r.model for r in tuned} == {"static-lora"}
            assert [r.text for r in tuned] != plain  # the adapter changes the answers
            base.load_lora("live-lora", str(tiny_lora("live-lora", seed=2)))
            live = base.generate(prompts, max_tokens=8, temperature=0, model="live-lora", return_extra=True)
            assert {r.model for r in live} == {"live-lora"} and [r.text for r in live] != plain
            assert {(a["name"], a["static"], a["loaded"]) for a in client.loras("lora-0")} == {
                ("static-lora", True, True), ("live-lora", False, True)}
            base.unload_lora("live-lora")
            with pytest.raises(NotFoundError):
                base.generate(prompts[:1], model="live-lora")
            raise RuntimeError("the user's code failed")
    assert "lora-0" not in ids(real_app)
