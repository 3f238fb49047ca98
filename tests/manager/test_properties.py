"""Property tests of the manager's input path: any request body is either refused with a message (4xx), or becomes
a program file that supervisor's own parser reads back as exactly the engine meant, and never a second program."""
from __future__ import annotations

import shlex

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from app import engine, render, validation
from app.api.v2 import LaunchRequest, to_swap
from app.instance import InstanceRequest as SwapRequest
from app.instance import without_option
from app.manager import InstanceError, Manager
from app.settings import Settings
from tests.test_render import TEXT, parsed_programs

SETTINGS = {"suppress_health_check": [HealthCheck.function_scoped_fixture], "deadline": None}
IDS = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True), TEXT)
BODIES = st.fixed_dictionaries({"model": TEXT}, optional={
    "args": st.lists(st.one_of(TEXT, st.sampled_from(["--port", "--host=x", "--seed", "--served-model-name"])),
                     max_size=6),
    "env": st.dictionaries(st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), TEXT), TEXT,
                           max_size=3),
    "gpus": st.one_of(st.none(), st.lists(st.integers(-2, 3), max_size=3)),
    "served_model_name": st.one_of(st.none(), TEXT),
    "port": st.one_of(st.none(), st.integers(0, 70000)),
})


@pytest.fixture
def manager(tmp_path):
    settings = Settings(APPLIANCE_ROOT=str(tmp_path))
    for folder in settings.folders():
        folder.mkdir(parents=True, exist_ok=True)
    render.write_atomic(settings.supervisord_conf, render.supervisord_conf(settings, "python3"))
    return Manager(settings)


def accepted(manager: Manager, instance_id: str, body: dict):
    """The config, or None when refused -- always with a ValueError or a 4xx InstanceError that says why."""
    try:
        return manager.build(instance_id, SwapRequest(**body))
    except ValidationError as exc:
        assert exc.errors() and all(e["msg"] for e in exc.errors())
    except ValueError as exc:
        assert str(exc)
    except InstanceError as exc:
        assert 400 <= exc.status < 500 and exc.message
    return None


@hsettings(max_examples=200, **SETTINGS)
@given(instance_id=IDS, body=BODIES)
@example(instance_id="a", body={"model": "m", "args": ["--seed", "1", "--port", "19001"]})
@example(instance_id="a", body={"model": "~0"})  # found by this test in CI: a 500 before
def test_any_request_is_refused_or_round_trips_through_supervisor(manager, instance_id, body):
    config = accepted(manager, instance_id, body)
    if config is None:
        return
    assert validation.INSTANCE_ID.fullmatch(config.id)
    program = engine.program(manager.settings, config)
    render.write_program(manager.settings, program)
    programs = parsed_programs(manager.settings.supervisord_conf)
    render.program_path(manager.settings, config.id).unlink()
    assert set(programs) == {"logforward", config.id}  # never an extra program
    argv, env = programs[config.id]
    assert argv == program.argv and argv[1:3] == ["serve", body["model"]]
    assert argv[3:3 + len(config.args)] == without_option(body.get("args", []), "--port")  # --port: the port
    assert env == engine.environment(manager.settings, config) and body.get("env", {}).items() <= env.items()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv.count("--host") == 1
    assert argv[argv.index("--port") + 1] == str(config.port) and argv.count("--port") == 1


@hsettings(max_examples=100, **SETTINGS)
@given(model=TEXT, rest=st.lists(TEXT, max_size=5))
def test_llm_d_options_become_the_same_model_and_arguments(manager, model, rest):
    options = shlex.join(["--model", model, *rest])
    try:
        swap = to_swap(LaunchRequest(options=options).options, None, None)
    except ValueError:  # refused, with a message
        return
    assert swap.model == model
    assert not any(a.split("=", 1)[0] in ("--model", "--port") for a in swap.args)
    config = accepted(manager, "x", swap.model_dump(exclude={"wait", "rollback", "timeout", "share_gpus"}))
    if config is not None:
        assert engine.program(manager.settings, config).argv[1:3] == ["serve", swap.model]


@hsettings(max_examples=150, **SETTINGS)
@given(args=st.lists(TEXT, max_size=4),
       env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), TEXT, max_size=4))
def test_the_manager_recognises_a_program_it_would_render_whatever_the_order_of_its_env(manager, args, env):
    try:
        validation.env_vars(env)
    except ValueError:
        return
    from app.render import same_program
    program = render.Program(name="x", argv=["vllm", "serve", "m", *args], environment=env)
    text = render.program_conf(manager.settings, program)
    reordered = render.Program(name="x", argv=program.argv, environment=dict(reversed(list(env.items()))))
    assert same_program(text, program) and same_program(text, reordered)
    assert not same_program(text, render.Program(name="x", argv=[*program.argv, "--seed"], environment=env))
    assert not same_program(text, render.Program(name="x", argv=program.argv, environment={**env, "NEW_ONE": "1"}))
