"""Every example of docs/client.md, run as written against the booted appliance with stand-in engines."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.appliance import REPO
from tests.client.conftest import ROUTER, ids

DOC = (REPO / "docs" / "client.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", DOC, re.S))
# Examples that name a model other than the default instance's: their requests reach it by its name (the router).
NEED_ROUTER = {"bootstrap", "lora"}
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture(scope="module")
def docs_app(boot_session):
    return boot_session({"VLLM_MODEL": MODEL})


def test_the_page_has_the_examples():
    assert set(EXAMPLES) == {"gserve", "bootstrap", "existing", "lora"}


@pytest.mark.parametrize("name", sorted({"gserve", "bootstrap", "existing", "lora"}))
def test_example_runs_as_written(docs_app, name):
    if name in NEED_ROUTER and not ROUTER:
        pytest.skip("needs the router (app/router): requests routed by `model`")
    env = {**os.environ, "APPLIANCE_URL": docs_app.portal_url(), "APPLIANCE_TOKEN": docs_app.token,
           "APPLIANCE_CERT": str(docs_app.cert)}
    done = subprocess.run([sys.executable, "-c", EXAMPLES[name]], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    expected = {"gserve": ["chat: stand-in reply from " + MODEL, "generate: stand-in reply", "| stop"],
                "bootstrap": ["2 vectors of 8", "stand-in reply from " + MODEL],
                "existing": [f"['stand-in reply from {MODEL}: hello']", f"\nstand-in reply from {MODEL}: hello\n"],
                "lora": ["stand-in reply from sql: list the tables", "stand-in reply from support: my order is late",
                         "'name': 'support'"]}[name]
    for text in expected:
        assert text in done.stdout, done.stdout
    assert ids(docs_app) == {"vllm"}  # whatever it served is gone
