"""Documentation that runs: every Python block in the docs pages, and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import re

import pytest

from helpers import REPO_ROOT

ROOT = REPO_ROOT
PAGES = ["quickstart.md", "extending.md", "custom_loop.md"]
DOCTEST_MODULES = [
    "scoredistill.teacher",
    "scoredistill.generator",
    "scoredistill.precond",
    "scoredistill.losses.functional",
    "scoredistill.schedules",
]


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_docs_code_blocks_run(page, monkeypatch):
    blocks = _blocks(page)
    assert blocks, f"{page} has no python blocks"
    namespace: dict = {}
    for block in blocks:  # blocks of one page share a namespace, as a reader running them in order would
        exec(compile(block, f"docs/{page}", "exec"), namespace)


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_readme_starts_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert len(block) == 2 and "scoredistill demo" in block[0] and "pytest" in block[1]
