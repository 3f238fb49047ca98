"""docs/configuration.md lists every setting, with its default, and nothing else."""
from __future__ import annotations

import re

from app.settings import Settings
from tests.appliance import REPO


def documented() -> dict[str, str]:
    text = (REPO / "docs/configuration.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.*?) \| .+ \|$", section, re.M)
    return {name: default.strip("`").replace("\\|", "|") for name, default in rows}


def actual() -> dict[str, str]:
    out = {}
    for field in Settings.model_fields.values():
        default = field.default
        out[field.alias] = ("—" if default in ("", None)
                            else str(default).lower() if isinstance(default, bool) else str(default))
    return out


def test_every_setting_is_documented_with_its_default():
    assert documented() == actual()
