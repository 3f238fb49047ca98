"""Validation in the instance model: the same rules for VLLM_ARGS, the API and the llm-d API."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from app import validation
from app.instance import MAX_ARGS, MAX_ENV, InstanceConfig, InstanceRequest, error_message


def config(**fields) -> InstanceConfig:
    return InstanceConfig(**{"id": "a", "model": "acme/m", "port": 18001, **fields})


def refused(**fields) -> str:
    with pytest.raises(ValidationError) as caught:
        config(**fields)
    return error_message(caught.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.2", "example.com"])
def test_an_engine_host_other_than_loopback_is_refused(host):
    assert "engines listen on 127.0.0.1 only" in refused(args=["--host", host])
    assert "engines listen on 127.0.0.1 only" in refused(args=[f"--host={host}"])


def test_a_loopback_host_is_accepted():
    assert config(args=["--host", "127.0.0.1"]).args == ["--host", "127.0.0.1"]


def test_port_in_args_becomes_the_instances_port():
    made = InstanceConfig(id="a", model="acme/m", args=["--seed", "1", "--port", "19001"])
    assert made.port == 19001 and made.args == ["--seed", "1"]
    assert InstanceConfig(id="a", model="acme/m", args=["--port=19002"]).port == 19002
    assert "differs from port" in refused(args=["--port", "19001"], port=19003)
    assert "is not a port number" in refused(args=["--port", "x"])


def test_model_in_args_is_refused():
    assert "give the model as `model`" in refused(args=["--model", "x"])


@pytest.mark.parametrize("model", ["org/m; touch x", "a/b/c", "org/../x", "-m", "m n", "org/m$(id)", "", "x" * 200,
                                   "~0", "~root/m"])
def test_a_model_that_is_neither_a_hub_id_nor_a_folder_is_refused(model):
    assert "model" in refused(model=model)


@pytest.mark.parametrize("model", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "org_1/m.v2-x"])
def test_hub_ids_are_accepted(model):
    assert config(model=model).model == model


def test_a_local_model_must_be_an_existing_folder_unless_read_from_saved_state(tmp_path):
    assert config(model=str(tmp_path)).model == str(tmp_path)
    assert "not an existing local folder" in refused(model=str(tmp_path / "missing"))
    saved = InstanceConfig.model_validate({"id": "a", "model": str(tmp_path / "missing"), "port": 18001},
                                          context={"check_folder": False})
    assert saved.model.endswith("missing")


def test_sizes_are_bounded():
    assert f"at most {MAX_ARGS} arguments" in refused(args=["--x"] * (MAX_ARGS + 1))
    assert f"at most {MAX_ENV} environment variables" in refused(env={f"V{n}": "1" for n in range(MAX_ENV + 1)})
    assert "longer than" in refused(args=["x" * 5000])


def test_args_given_as_one_string_are_split_like_a_shell_would():
    request = InstanceRequest(model="acme/m", args="--override-generation-config='{\"temperature\": 0.5}' --seed 3")
    assert request.args == ['--override-generation-config={"temperature": 0.5}', "--seed", "3"]
    with pytest.raises(ValidationError, match="not a valid shell-quoted string"):
        InstanceRequest(model="acme/m", args="--x 'unbalanced")


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="modle"):
        InstanceRequest(model="acme/m", modle="x")


@pytest.mark.parametrize("name", sorted(validation.OWN_PROGRAMS))
def test_an_instance_never_takes_the_name_of_one_of_the_appliances_own_programs(name):
    with pytest.raises(ValidationError, match="one of the appliance's own programs"):
        InstanceConfig(id=name, model="acme/m", port=18001)  # its program file would replace ours
