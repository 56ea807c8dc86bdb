"""Documentation that runs: every Python block in the docs pages, and the docstring examples."""

from __future__ import annotations

import doctest
import importlib

import pytest

from helpers import REPO_ROOT

ROOT = REPO_ROOT
DOCTEST_MODULES = [
    "scoredistill.roles.teacher",
    "scoredistill.roles.generator",
    "scoredistill.roles.precond",
    "scoredistill.losses.functional",
    "scoredistill.schedules",
]


# The docs pages' python blocks run (and must train) in tests/integration/test_docs_examples_train.py.


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_readme_starts_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert len(block) == 2 and "scoredistill demo" in block[0] and "pytest" in block[1]
