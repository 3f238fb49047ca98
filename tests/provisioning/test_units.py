"""Provisioning pieces without booting: manifest errors with lines, boot hooks, sshd config, the examples."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from app.provisioning import boot_hooks, manifest, sshd, steps
from app.settings import Settings
from tests.appliance import REPO

EXAMPLES = REPO / "provisioning" / "examples"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@laptop"


def settings(tmp_path, **env) -> Settings:
    return Settings(APPLIANCE_ROOT=str(tmp_path), **env)


def test_manifest_errors_name_every_bad_key_and_its_line():
    text = """apt:
  - htop
  - "rm -rf /"
models:
  - repo: acme/tiny
    revison: main
files:
  - url: ftp://example.org/x
    dest: data/x
programs:
  - name: caddy
    command: ""
env:
  BAD-NAME: x
"""
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(text)
    problems = "\n".join(info.value.problems)
    assert "line 3: apt.1:" in problems
    assert ("line 6: models.0.revison: unknown key "
            "(allowed here: repo, revision, allow_patterns, ignore_patterns)") in problems
    assert "line 8: files.0.url:" in problems and "http(s) URL" in problems
    assert "line 11: programs.0.name:" in problems and "appliance's own" in problems
    assert "line 12: programs.0.command:" in problems
    assert "line 14: env:" in problems or "line 13: env" in problems


def test_manifest_yaml_syntax_error_has_its_line():
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse("apt:\n  - a\n b: [\n")
    assert info.value.problems[0].startswith("line ")


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_manifests_are_valid(name):
    assert manifest.parse((EXAMPLES / name).read_text()).summary() != "empty"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_example_scripts_parse_and_run_in_a_workspace(name, tmp_path):
    assert subprocess.run(["bash", "-n", str(EXAMPLES / name)]).returncode == 0
    env = {**os.environ, "WORKSPACE": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "PIP_PACKAGES": "",
           "DOWNLOAD_URLS": ""}
    result = subprocess.run(["bash", str(EXAMPLES / name)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_boot_hooks_run_in_name_order_sourced_or_executed_and_failures_go_on(tmp_path, capsys):
    s = settings(tmp_path)
    hooks = s.boot_hooks
    hooks.mkdir(parents=True)
    s.workspace.mkdir(exist_ok=True)
    for example in (EXAMPLES / "boot.d").iterdir():
        shutil.copy(example, hooks / example.name)
    (hooks / "05-fail.sh").write_text("echo failing; exit 4\n")
    (hooks / "30-exec").write_text("#!/bin/sh\necho executed $BOOT_HOOK >> \"$WORKSPACE/order\"\n")
    (hooks / "30-exec").chmod(0o755)
    (hooks / "15-order.sh").write_text('echo sh >> "$WORKSPACE/order"\n')
    (hooks / "40-notes.txt").write_text("not run\n")
    (hooks / "50-off.sh.disabled").write_text("exit 1\n")
    (hooks / "12-bad.env").write_text("export A=1\nfalse\n")
    exported = boot_hooks.run_boot_hooks(s)
    err = capsys.readouterr().err
    assert exported == {"VLLM_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "4"}  # 10-tune.env; not 12-bad.env's A
    assert (s.workspace / "order").read_text() == "sh\nexecuted 30-exec\n"
    assert "ERROR: boot.d/05-fail.sh: exited with 4" in err and "boot.d/05-fail.sh: failing" in err
    assert "ERROR: boot.d/12-bad.env: exited with 1" in err
    assert "boot.d/20-check-disk.sh: free space in" in err
    assert "boot.d/40-notes.txt: ignored" in err and "50-off.sh.disabled: ignored" in err
    assert err.index("05-fail.sh") < err.index("10-tune.env") < err.index("15-order.sh") < err.index("30-exec")


def test_a_hook_that_hangs_is_killed_after_the_timeout(tmp_path, capsys):
    s = settings(tmp_path, BOOT_HOOK_TIMEOUT=1)
    s.boot_hooks.mkdir(parents=True)
    (s.boot_hooks / "hang.sh").write_text("sleep 30\n")
    boot_hooks.run_boot_hooks(s)
    assert "exited with 124 (timed out)" in capsys.readouterr().err


def test_sshd_config_accepts_only_public_key_and_keeps_the_host_key(tmp_path):
    s = settings(tmp_path, PUBLIC_KEY=KEY, SSH_PORT=2222)
    config = sshd.ssh_setup(s, sshd.public_keys(s.public_key))
    text = config.read_text()
    assert "Port 2222" in text and "PasswordAuthentication no" in text and "KbdInteractiveAuthentication no" in text
    assert s.ssh_authorized_keys.read_text() == KEY + "\n" and "StrictModes no" in text
    assert stat.S_IMODE(s.ssh_authorized_keys.stat().st_mode) == 0o600
    host_key = (s.ssh_dir / "ssh_host_ed25519_key").read_bytes()
    assert stat.S_IMODE((s.ssh_dir / "ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(s.ssh_dir.stat().st_mode) == 0o700
    sshd.ssh_setup(s, sshd.public_keys(s.public_key))
    assert (s.ssh_dir / "ssh_host_ed25519_key").read_bytes() == host_key  # generated once, kept
    if shutil.which("ssh-keygen"):
        pub = subprocess.run(["ssh-keygen", "-y", "-f", str(s.ssh_dir / "ssh_host_ed25519_key")],
                             capture_output=True, text=True)
        assert pub.returncode == 0 and pub.stdout.startswith("ssh-ed25519 ")
    binary = sshd.sshd_binary()
    if not binary:
        pytest.skip("sshd is not installed (apt package openssh-server): the config is checked, sshd -t is not")
    check = subprocess.run([binary, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("bad", ['command="rm -rf /" ' + KEY, "ssh-ed25519 not*base64", "hello"])
def test_public_key_with_options_or_garbage_is_refused(bad):
    with pytest.raises(ValueError):
        sshd.public_keys(bad)


def test_engine_python_is_the_shebang_of_vllm(tmp_path, monkeypatch):
    vllm = tmp_path / "vllm"
    vllm.write_text("#!/opt/engine/bin/python3.12\nprint()\n")
    vllm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert steps.engine_python(settings(tmp_path)) == "/opt/engine/bin/python3.12"
    vllm.write_text("#!/usr/bin/env python3\n")
    assert steps.engine_python(settings(tmp_path)) == shutil.which("python3")


def test_manifest_over_the_size_limit_is_refused_before_parsing():
    text = "apt:\n" + "  - htop\n" * (manifest.MAX_BYTES // 9 + 1)
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(text)
    assert info.value.problems == [f"the manifest is {len(text)} bytes: at most {manifest.MAX_BYTES} (the limit)"]


def test_manifest_with_too_many_keys_is_refused_at_the_line_that_goes_over():
    text = "env:\n" + "".join(f"  K{n}: v\n" for n in range(12_000))  # about 170 KB: under the size limit
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(text)
    [problem] = info.value.problems
    line = int(problem.split(":")[0].removeprefix("line "))
    assert f"more than {manifest.MAX_NODES} YAML nodes" in problem and 2 < line <= 12_001


def test_aliases_count_what_they_copy():
    # each level copies the one before it ten times: about 10**6 nodes from a few hundred bytes
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 7)]
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse("\n".join(levels) + "\n")
    assert "YAML nodes" in info.value.problems[0] and info.value.problems[0].startswith("line ")


@pytest.mark.parametrize("text,line", [
    ("apt: " + "[" * 5000 + "]" * 5000 + "\n", 1),
    ("env:\n" + "".join(f"{'  ' * n}k{n}:\n" for n in range(1, 200)), 20),
])
def test_manifest_nested_too_deep_is_refused_with_its_line(text, line):
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(text)
    assert info.value.problems == [f"line {line}: nested deeper than {manifest.MAX_DEPTH} levels (the limit)"]


def test_a_manifest_with_many_bad_keys_lists_the_first_ones_and_counts_the_rest():
    text = "".join(f"typo{n}: x\n" for n in range(3000))
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(text)
    problems = info.value.problems
    assert len(problems) == manifest.MAX_PROBLEMS + 1 and problems[-1] == "... and 2950 more problems"
    assert problems[1].startswith("line 2: typo1: unknown key")
