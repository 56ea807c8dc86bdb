"""Every training example in the docs trains: its generator's parameters move, and no warm-up swallows the run.

The blocks of a page run in order in one namespace, as a reader pasting them would. A block that builds a
`Distiller` or an optimizer must move some generator's parameters (docs/extending.md's DMD surrogate once had
an exactly zero gradient; the quickstart's SiDA snippet once stopped inside `DistillConfig.sida`'s 100k-image
warm-up). The README's tour needs an EDM pickle, a dataset zip and CUDA: it is compiled, not run.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT
from scoredistill import GaussianMixture, OneStepGenerator

ROOT = REPO_ROOT
PAGES = ["quickstart.md", "extending.md", "custom_loop.md"]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _trains(block: str) -> bool:
    return "Distiller(" in block or "torch.optim." in block


@pytest.fixture(autouse=True)
def one_thread():
    """The examples' networks are tiny: one CPU thread is fastest (a second, on a busy machine, is far slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def generators(monkeypatch) -> list[tuple[OneStepGenerator, list[torch.Tensor]]]:
    """Every generator built while a test runs, with a copy of its parameters at construction."""
    built: list[tuple[OneStepGenerator, list[torch.Tensor]]] = []
    init = OneStepGenerator.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append((self, [p.detach().clone() for p in self.parameters()]))

    monkeypatch.setattr(OneStepGenerator, "__init__", recording_init)
    return built


def _moved(generators) -> list[float]:
    return [max(float((p.detach() - q).abs().max()) for p, q in zip(g.parameters(), start)) for g, start in generators]


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_train(page, generators):
    blocks = _blocks(ROOT / "docs" / page)
    assert blocks, f"{page} has no python blocks"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        before = {id(g): [p.detach().clone() for p in g.parameters()] for g, _ in generators}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(block, f"docs/{page}[{i}]", "exec"), namespace)
        warmups = [str(w.message) for w in caught if "never" in str(w.message)]
        assert not warmups, f"docs/{page} block {i}: {warmups}"
        if _trains(block):
            # Compare with the start of this block (or with construction, for generators built inside it).
            starts = [(g, before.get(id(g), start)) for g, start in generators]
            assert starts, f"docs/{page} block {i} trains no OneStepGenerator"
            assert max(_moved(starts)) > 0, f"docs/{page} block {i}: the generator's parameters did not move"
        if page == "quickstart.md" and _trains(block) and "AdversarialEncoderLoss" not in block:
            # The figures the page states for its SiD snippet (seed 0): masses near 1/8, 0.318 near a mode.
            mixture, rng = GaussianMixture.ring(8), torch.Generator().manual_seed(0)
            samples = namespace["distiller"].ema.module.sample(1000, rng=rng)
            assert (mixture.mode_mass(samples) - 0.125).abs().max() < 0.05, mixture.mode_mass(samples)
            assert 0.25 < float(mixture.near_mode(samples)) < 0.4, mixture.near_mode(samples)
    if page == "custom_loop.md":
        # The loop once ended with 0.63 and 0.35 of the mass in two of the eight modes.
        mixture, samples = GaussianMixture.ring(8), namespace["samples"]
        mass = mixture.mode_mass(samples)
        assert (mass - 0.125).abs().max() < 0.05, mass
        assert mixture.near_mode(samples) > 0.25  # 300 steps; the demo's 3000 reach 0.85 to 0.88


def test_readme_tour_compiles():
    blocks = _blocks(ROOT / "README.md")
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")


def test_custom_loop_page_loop_is_thirty_lines():
    """The page (and the README) promise a 30-line loop: the block holding it is at most that long."""
    loops = [b for b in _blocks(ROOT / "docs" / "custom_loop.md") if "for step in" in b]
    assert len(loops) == 1 and len(loops[0].strip().splitlines()) <= 30
