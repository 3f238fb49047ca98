"""The renderer: what supervisor reads back is exactly what was meant, whatever the user typed."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from supervisor.options import ServerOptions

from app import render, validation
from app.engine import serve_argv
from app.settings import Settings

# Printable text, as a user can type it: quotes, %, brackets, $(), backslashes, unicode; no control characters.
TEXT = st.lists(st.one_of(st.characters(blacklist_categories=("Cc", "Cs")),
                          st.sampled_from(list(" ;#%()'\"$\\[]=,") + ["%(here)s", " ;", " #", "$(id)"])),
                min_size=1, max_size=12).map("".join)


def parsed_programs(conf: Path) -> dict[str, tuple[list[str], dict]]:
    """Program name -> (argv, environment), as supervisord itself reads the config."""
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    return {p.name: (shlex.split(p.command), p.environment or {})
            for group in options.process_group_configs for p in group.process_configs}


def render_one(root: Path, program: render.Program) -> Path:
    settings = Settings(APPLIANCE_ROOT=str(root))
    settings.programs_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    render.write_atomic(settings.supervisord_conf, render.supervisord_conf(settings, "python3"))
    render.write_programs(settings, [program])
    return settings.supervisord_conf


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=TEXT, args=st.lists(TEXT, max_size=6),
       env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), TEXT, max_size=3))
def test_any_model_args_and_env_round_trip_through_supervisor(tmp_path, model, args, env):
    env = {k: v for k, v in env.items() if _env_value_accepted(v)}
    argv = serve_argv("vllm", model, args, port=18000)
    conf = render_one(tmp_path, render.Program(name="vllm", argv=argv, environment=env))
    programs = parsed_programs(conf)
    assert set(programs) == {"logforward", "vllm"}  # never an extra program
    assert programs["vllm"] == (argv, env)


def _env_value_accepted(value: str) -> bool:
    try:
        validation.env_vars({"X": value})
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("hostile", [
    "x\n[program:evil]\ncommand=/bin/sh -c 'touch /tmp/pwned'",
    "model\rname",
    "tab\there",
])
def test_newlines_and_control_characters_are_refused_with_a_clear_message(hostile):
    with pytest.raises(ValueError, match="newline or control character"):
        validation.model_name(hostile)
    with pytest.raises(ValueError, match="newline or control character"):
        validation.split_args(f"--served-model-name {hostile}")


@pytest.mark.parametrize("value,message", [("a'b\"c", "single or double quotes"), ('"x', "start or end with a quote"),
                                           ("x'", "start or end with a quote"), ("a ;b", "space followed by"),
                                           ("%(here)s", "'%\\('")])
def test_env_values_supervisor_cannot_carry_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        validation.env_vars({"X": value})
    with pytest.raises(ValueError, match=message):
        render.environment_line({"X": value})


def test_unbalanced_quotes_in_vllm_args_are_refused():
    with pytest.raises(ValueError, match="not a valid shell-quoted string"):
        validation.split_args("--served-model-name 'oops")


@pytest.mark.parametrize("args,expected_tail", [
    ([], ["--host", "127.0.0.1", "--port", "18000", "--tensor-parallel-size", "4"]),
    (["--port", "9000"], ["--port", "9000", "--host", "127.0.0.1", "--tensor-parallel-size", "4"]),
    (["--host=0.0.0.0", "-tp", "2"], ["--host=0.0.0.0", "-tp", "2", "--port", "18000"]),
    (["--pipeline-parallel-size", "2"], ["--pipeline-parallel-size", "2", "--host", "127.0.0.1", "--port", "18000"]),
])
def test_serve_argv_adds_host_port_and_parallel_size_only_when_not_given(args, expected_tail):
    argv = serve_argv("vllm", "m", args, port=18000, tensor_parallel=4)
    assert argv[:3] == ["vllm", "serve", "m"]
    assert argv[3:] == expected_tail


def test_one_gpu_adds_no_parallel_size():
    assert "--tensor-parallel-size" not in serve_argv("vllm", "m", [], port=1, tensor_parallel=1)


def test_files_a_user_added_to_conf_d_are_kept_and_stale_rendered_ones_removed(tmp_path):
    settings = Settings(APPLIANCE_ROOT=str(tmp_path))
    settings.programs_dir.mkdir(parents=True)
    (settings.programs_dir / "mine.conf").write_text("[program:mine]\ncommand=/bin/true\n")
    render.write_programs(settings, [render.Program(name="old", argv=["/bin/true"])])
    render.write_programs(settings, [render.Program(name="new", argv=["/bin/true"])])
    assert sorted(p.name for p in settings.programs_dir.iterdir()) == ["mine.conf", "new.conf"]
