"""The README's module map names every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_module_map_matches_the_package():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+\.(?:py|json))`", section))
    modules = {p.name for p in (ROOT / "src" / "atbsn").rglob("*.py")} - {"__init__.py", "__main__.py"}
    assert modules | {"models.json"} == listed
