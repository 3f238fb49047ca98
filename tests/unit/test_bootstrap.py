"""vllm-bootstrap's requests as ours: extra_kwargs as `vllm serve` options, and a CompleteRequest's sampling and
guided decoding as vLLM's /v1/completions body."""
from __future__ import annotations

import pytest

from app.api.bootstrap import options
from app.grpc_bridge import sampling
from app.proto import inference_pb2 as pb


def test_extra_kwargs_become_options_flags_and_json():
    args = options({"max_model_len": 2048, "enforce_eager": True, "trust_remote_code": False, "seed": None,
                    "override_generation_config": {"temperature": 0.5}, "dtype": "half"})
    assert args == ["--max-model-len", "2048", "--enforce-eager", "--override-generation-config",
                    '{"temperature": 0.5}', "--dtype", "half"]


@pytest.mark.parametrize("name", ["--host", "Host", "a b", "x;rm", ""])
def test_a_name_that_is_not_an_option_name_is_refused(name):
    with pytest.raises(ValueError, match="not a vllm serve option name"):
        options({name: "1"})


def test_sampling_forwards_only_what_was_set():
    assert sampling(pb.CompleteRequest(prompts=["x"])) == {}
    body = sampling(pb.CompleteRequest(prompts=["x"], max_tokens=7, temperature=0.0, top_p=0.5))
    assert body == {"max_tokens": 7, "temperature": 0.0, "top_p": 0.5}  # 0.0 is set, not absent


@pytest.mark.parametrize("guided, expected", [
    (pb.GuidedDecodingParams(json_schema='{"type": "object"}'), {"json": '{"type": "object"}'}),
    (pb.GuidedDecodingParams(regex="[0-9]+"), {"regex": "[0-9]+"}),
    (pb.GuidedDecodingParams(grammar="root ::= 'a'"), {"grammar": "root ::= 'a'"}),
    (pb.GuidedDecodingParams(regex="[0-9]+", choice=["yes", "no"]), {"choice": ["yes", "no"]}),
])
def test_guided_decoding_becomes_structured_outputs(guided, expected):
    assert sampling(pb.CompleteRequest(prompts=["x"], guided_decoding=guided))["structured_outputs"] == expected


def test_only_the_latest_ended_launches_are_remembered(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from app.api import bootstrap
    monkeypatch.setattr(bootstrap, "KEPT", 2)
    running = {"launch-run"}
    manager = SimpleNamespace(settings=SimpleNamespace(state_dir=tmp_path), known=lambda: dict.fromkeys(running))
    bootstrap.save(manager, "launch-run", model="m")
    for n in range(4):
        bootstrap.archived_log(manager, f"launch-{n}").parent.mkdir(exist_ok=True)
        bootstrap.archived_log(manager, f"launch-{n}").write_text("log")
        bootstrap.save(manager, f"launch-{n}", model="m")
    assert sorted(bootstrap.records(manager)) == ["launch-2", "launch-3", "launch-run"]
    assert not bootstrap.archived_log(manager, "launch-0").exists()
    assert bootstrap.archived_log(manager, "launch-3").exists()


@pytest.mark.parametrize("size", [0, 1, 31, 32, 384, 4096])
def test_a_base64_vector_becomes_the_same_embedding_as_its_floats(size):
    import base64
    import struct

    from app.grpc_bridge import embedding
    values = [i / 7 - 3 for i in range(size)]
    packed = base64.b64encode(struct.pack(f"<{size}f", *values)).decode()
    assert embedding(packed) == embedding(values) == pb.Embedding(values=values)
