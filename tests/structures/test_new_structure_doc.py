"""The example of ``docs/new-structure.md`` runs: the structure passes its checks, and is short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "new-structure.md").read_text()


def _code_lines(source: str) -> int:
    """Lines of code: no docstrings, comments or blank lines."""
    source = re.sub(r'r?"""(.*?)"""', "", source, flags=re.S)
    return sum(
        1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#")
    )


def test_the_structure_and_its_checks_run_as_written() -> None:
    structure, check = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    namespace: dict = {"__name__": "new_structure_doc"}
    exec(compile(structure, "docs/new-structure.md", "exec"), namespace)
    exec(compile(check, "docs/new-structure.md", "exec"), namespace)
    q = namespace["q"]
    assert type(q).__name__ == "KSubsets" and q.extra_args() == {"k": 2}
    assert namespace["report"].max_abs_z < 5


def test_the_line_count_in_the_heading_is_the_code_shown() -> None:
    structure = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)[0]
    (count,) = re.findall(r"## Example: .*\((\d+) lines of code\)", DOC)
    assert _code_lines(structure) == int(count)
