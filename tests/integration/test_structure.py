"""The package's import graph: no circle, layers import downhill, and no reference to documents users lack."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO_ROOT
from scoredistill._moved import MOVED

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
    named = [f"{target}.{alias.name}" for alias in node.names]
    return named if node.module is None else [target, *named]  # ``from .. import kernels`` names kernels only


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


LAYERS = {
    # The base: shared records, checks, file helpers and noise schedules; imports nothing of the package.
    "_types": 0, "_validate": 0, "_io": 0, "_version": 0, "_moved": 0, "_streams": 0, "schedules": 0,
    "kernels": 1, "data": 1,  # fused kernels; real images (zips, augmentation, PNG)
    "networks": 2,  # backbones, raw F(x, c_noise, labels)
    "io": 3,  # the artefact format and Hub glue (the roles inherit HubMixin)
    "roles": 4, "losses": 4,  # Teacher / OneStepGenerator / FakeScore around Precond; the loss plug-ins
    "convert": 5, "metrics": 5,  # EDM pickles -> Precond; FID and friends (score generators)
    "training": 6,  # Distiller, config, EMA, checkpoints, recipes
    "demo": 7,  # the analytic demo, apart from the core
    "cli": 8, "_cmdline": 8,  # the command and what it shares with the example scripts (one-line errors)
}  # fmt: skip
"""Each first-level module or subpackage of scoredistill and its layer: imports go to lower layers only."""


def layer(module: str) -> tuple[str, int]:
    group = module.split(".")[1]
    return ("cli" if group == "_cmdline" else group), LAYERS[group]


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in import_graph(lazy=True) if m != "scoredistill"} == set(LAYERS)


def test_imports_form_no_circle():
    """No circle, at module level or through imports inside functions."""
    for lazy in (False, True):
        graph = import_graph(lazy=lazy)
        assert len(graph) > 30 and "scoredistill.io.hub" in graph["scoredistill.roles.generator"]
        cycle = find_cycle(graph)
        assert cycle is None, f"import circle ({'any' if lazy else 'module-level'} imports): {' -> '.join(cycle)}"


def test_layers_import_downhill():
    """No module imports one of a higher layer, or of a sibling group on its layer (the base excepted), anywhere."""
    offenders = []
    for module, targets in import_graph(lazy=True).items():
        if module == "scoredistill":
            continue  # the curated public API re-exports from every layer
        group, rank = layer(module)
        for target in targets:
            if target == "scoredistill":
                offenders.append(f"{module} -> scoredistill (import from the defining module instead)")
                continue
            t_group, t_rank = layer(target)
            if t_rank > rank or (t_rank == rank > 0 and t_group != group):
                offenders.append(f"{module} ({group}, layer {rank}) -> {target} ({t_group}, layer {t_rank})")
    assert not offenders, "\n".join(sorted(offenders))


def test_no_reference_to_documents_outside_the_repository():
    cited = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO_ROOT / "docs").rglob("*.md"), REPO_ROOT / "README.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(name in line for name in ("SID_SPEC", "STYLE.md", "PERF.md", "../shared/docs")):
                cited.append(f"{path.relative_to(REPO_ROOT)}:{n}")
    assert not cited, cited


def test_distill_re_exports_the_config_module():
    """``DistillConfig`` and its companions live in ``scoredistill.training.config``; the old import path still
    works."""
    import scoredistill
    from scoredistill import config, distill

    for name in ("DistillConfig", "RESUME_MAY_CHANGE", "warn_unreached_warmups"):
        assert getattr(distill, name) is getattr(config, name), name
    assert scoredistill.DistillConfig is config.DistillConfig
    assert config.DistillConfig.__module__ == "scoredistill.training.config"


def test_every_cuda_graph_capture_goes_through_fast_capture():
    """Captures in CUDA's default global mode break whenever another thread (a DataLoader's pin-memory thread) makes
    a CUDA call; `scoredistill.training.fast.capture` captures thread-locally and restores the random generators
    on failure. Nothing else in the package may start a capture."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if any(call in code for call in ("torch.cuda.graph(", "capture_begin(", "make_graphed_callables(")):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert len(offenders) == 1 and offenders[0].startswith("training/fast.py:"), offenders
    assert 'capture_error_mode="thread_local"' in offenders[0], offenders


@pytest.mark.parametrize("old", sorted(MOVED))
def test_module_paths_of_0_1_import_the_moved_modules(old):
    """``import scoredistill.<old>`` gives the very module now at its new path (same classes, same functions)."""
    import importlib

    module = importlib.import_module(f"scoredistill.{old}")
    assert module is importlib.import_module(f"scoredistill.{MOVED[old]}")
    assert module.__name__ == f"scoredistill.{MOVED[old]}"
