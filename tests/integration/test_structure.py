"""The package's import graph: no circle, layers import downhill, and no reference to documents users lack."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "scoredistill"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The scoredistill modules an ``import from`` statement names (a name may be a submodule)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("scoredistill"):
        return []
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(*, lazy: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports: at module level only (``lazy=False``) or anywhere."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = ast.walk(tree) if lazy else _module_level(tree.body)
        edges: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                edges |= {t for t in resolve(module, path.name == "__init__.py", node) if t in files}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
        graph[module] = edges - {module}
    return graph


def _module_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # annotations only
        if isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + getattr(node, "orelse", []) + getattr(node, "handlers", []))
        elif isinstance(node, ast.ExceptHandler):
            yield from _module_level(node.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its submodules is not a circle through the submodule.
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_form_no_circle():
    graph = import_graph(lazy=False)
    assert len(graph) > 30 and "scoredistill.hub" in graph["scoredistill.generator"]
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("scoredistill.kernels", "scoredistill.losses"),
        ("scoredistill.kernels", "scoredistill.distill"),
        ("scoredistill.networks", "scoredistill.losses"),
        ("scoredistill.networks", "scoredistill.hub"),
        ("scoredistill._untrusted", "scoredistill.hub"),  # the checks raise ValueError; hub names the file
        ("scoredistill.hub", "scoredistill.generator"),
        ("scoredistill.hub", "scoredistill.fake_score"),
        ("scoredistill.hub", "scoredistill.precond"),
    ],
)
def test_layers_import_downhill(lower: str, upper: str):
    """Nothing in ``lower`` imports ``upper``, not even lazily inside a function."""
    graph = import_graph(lazy=True)
    offenders = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if t == upper or t.startswith(upper + ".")
    )
    assert not offenders, offenders


def test_no_reference_to_documents_outside_the_repository():
    cited = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO_ROOT / "docs").rglob("*.md"), REPO_ROOT / "README.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(name in line for name in ("SID_SPEC", "STYLE.md", "PERF.md", "../shared/docs")):
                cited.append(f"{path.relative_to(REPO_ROOT)}:{n}")
    assert not cited, cited


def test_distill_re_exports_the_config_module():
    """``DistillConfig`` and its companions live in ``scoredistill.config``; the old import path still works."""
    import scoredistill
    from scoredistill import config, distill

    for name in ("DistillConfig", "RESUME_MAY_CHANGE", "warn_unreached_warmups"):
        assert getattr(distill, name) is getattr(config, name), name
    assert scoredistill.DistillConfig is config.DistillConfig
    assert config.DistillConfig.__module__ == "scoredistill.config"
