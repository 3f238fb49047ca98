"""LoRA on the appliance, the logic: the instance field's checks, the engine's options and environment, the adapters
loaded at runtime as the routing table sees them."""
from __future__ import annotations

import pytest

from app import engine
from app.instance import InstanceConfig, InstanceRequest, error_message
from app.lora import Runtime
from app.settings import Settings


def config(**fields) -> InstanceConfig:
    return InstanceConfig(**{"id": "chat", "model": "acme/base", "port": 18001, **fields})


def test_adapters_become_enable_lora_and_lora_modules_with_runtime_updating(tmp_path):
    adapter = tmp_path / "sql"
    adapter.mkdir()
    program = engine.program(Settings(), config(lora={"sql": str(adapter), "chat-v2": "acme/chat-lora"}))
    argv = program.argv
    assert argv[argv.index("--enable-lora"):argv.index("--enable-lora") + 4] == [
        "--enable-lora", "--lora-modules", f"sql={adapter}", "chat-v2=acme/chat-lora"]
    assert program.environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_an_empty_lora_enables_runtime_loading_and_none_leaves_lora_off():
    on = engine.program(Settings(), config(lora={}))
    assert "--enable-lora" in on.argv and "--lora-modules" not in on.argv
    assert on.environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    off = engine.program(Settings(), config())
    assert "--enable-lora" not in off.argv and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in off.environment
    by_args = engine.program(Settings(), config(args=["--enable-lora", "--max-lora-rank", "64"]))
    assert by_args.argv.count("--enable-lora") == 1
    assert by_args.environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


@pytest.mark.parametrize(("lora", "message"), [
    ({"my adapter": "acme/a"}, "name 'my adapter' must match"),
    ({"-x": "acme/a"}, "must match"),
    ({"a=b": "acme/a"}, "must match"),
    ({"acme/base": "acme/a"}, "must match"),
    ({"base": "acme/a; touch x"}, "neither a Hugging Face id"),
    ({"base": "/no/such/folder"}, "not an existing local folder"),
    ({"base": "/tmp,x"}, "must not contain ','"),
    ({"base": "acme/a\nb"}, "newline"),
    ({f"a{i}": "acme/a" for i in range(65)}, "at most 64"),
])
def test_bad_adapters_are_refused_with_a_message(lora, message):
    with pytest.raises(ValueError) as caught:
        config(lora=lora)
    assert message in error_message(caught.value) and "lora" in error_message(caught.value)


def test_an_adapter_may_not_take_the_served_name_or_an_alias():
    with pytest.raises(ValueError, match="already a name"):
        config(served_model_name="base", lora={"base": "acme/a"})
    with pytest.raises(ValueError, match="already a name"):
        config(aliases=["fast"], lora={"fast": "acme/a"})


def test_lora_modules_in_args_becomes_the_field_and_is_checked_as_it():
    given = config(args=["--enable-lora", "--lora-modules", "a=acme/a", '{"name": "b", "path": "acme/b"}', "--seed",
                         "1", "--lora-modules=c=acme/c"])
    assert given.lora == {"a": "acme/a", "b": "acme/b", "c": "acme/c"}
    assert given.args == ["--enable-lora", "--seed", "1"]
    assert engine.program(Settings(), given).argv.count("--lora-modules") == 1
    with pytest.raises(ValueError, match="neither a Hugging Face id"):
        config(args=["--lora-modules", "x=acme/x;rm"])
    with pytest.raises(ValueError, match="neither name=path nor JSON"):
        config(args=["--lora-modules", "{broken"])
    with pytest.raises(ValueError, match="not both"):
        config(args=["--lora-modules", "x=acme/x"], lora={"y": "acme/y"})


def test_saved_state_keeps_adapters_whose_folder_is_not_there_yet():
    saved = InstanceConfig.model_validate({"id": "chat", "model": "acme/base", "port": 18001,
                                           "lora": {"mine": "/workspace/adapters/mine"}},
                                          context={"check_folder": False})
    assert saved.lora == {"mine": "/workspace/adapters/mine"}


def test_the_request_carries_lora():
    assert InstanceRequest(model="acme/base", lora={"a": "acme/a"}).lora == {"a": "acme/a"}


def test_runtime_adapters_last_as_long_as_the_engine_that_loaded_them():
    runtime, chat = Runtime(), config(lora={"static": "acme/s"})
    assert runtime.names(chat, None) == ["static"]  # stopped: still routed, so a request may start it on demand
    runtime.add("chat", 100, "live", "acme/live")
    runtime.remove("chat", 100, "static")
    assert runtime.names(chat, 100) == ["live"]
    assert runtime.names(chat, 200) == ["static"]  # a new engine process: the static adapters only
    runtime.add("chat", 200, "other", "acme/o")
    assert runtime.names(chat, 200) == ["static", "other"] and runtime.names(chat, 100) == ["static"]
    assert runtime.names(config(), 200) == []  # LoRA off


def test_the_llmd_api_shows_adapters_in_options_and_takes_them_back():
    from app.api.v2_state import options_of
    shown = options_of(config(lora={"a": "acme/a"}).model_dump())
    assert shown == "--model acme/base --port 18001 --enable-lora --lora-modules a=acme/a"
    assert options_of(config().model_dump()) == "--model acme/base --port 18001"
    again = config(args=shown.split()[4:])
    assert again.lora == {"a": "acme/a"} and again.args == ["--enable-lora"]
