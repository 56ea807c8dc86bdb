"""Output paths are resolved before they are checked or written: ``..`` after a missing folder, symlinked
directories and the working directory (``save_pretrained``, and ``scoredistill convert`` through it)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT
from scoredistill import OneStepGenerator, Precond
from scoredistill.cli import main as cli_main
from scoredistill.io.hub import from_pretrained, save_pretrained
from scoredistill.networks import MLP


@pytest.fixture(scope="module")
def generator() -> OneStepGenerator:
    torch.manual_seed(0)
    return OneStepGenerator(Precond(MLP(2, 8, depth=1)), sample_shape=(2,))


def _victim(root: Path) -> Path:
    victim = root / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return victim


def test_dot_dot_after_a_missing_folder_is_checked_as_the_folder_it_names(generator, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    with pytest.raises(FileExistsError, match=r"victim holds other files \(precious\.txt\)"):
        save_pretrained(generator, tmp_path / "typo" / ".." / "victim")
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["victim"]  # typo/ was never created
    path = save_pretrained(generator, tmp_path / "typo" / ".." / "new", model_card=False)
    assert path == tmp_path / "new" and not (tmp_path / "typo").exists()


def test_convert_to_dot_dot_after_a_missing_folder_keeps_the_victim(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "_convert_helpers", next((REPO_ROOT / "tests").rglob("test_convert.py"))
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    pkl = tmp_path / "edm.pkl"
    pkl.write_bytes(helpers.edm_pickle()[0])
    victim = _victim(tmp_path)
    with pytest.raises(SystemExit, match="holds other files"):
        cli_main(["convert", str(pkl), str(tmp_path / "typo" / ".." / "victim")])
    assert sorted(os.listdir(victim)) == ["precious.txt"] and not (tmp_path / "typo").exists()


def test_a_symlinked_directory_is_replaced_behind_its_link(generator, tmp_path: Path) -> None:
    real = save_pretrained(generator, tmp_path / "real", model_card=False)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    other = OneStepGenerator(Precond(MLP(2, 8, depth=1)), sample_shape=(2,))
    assert save_pretrained(other, link, model_card=False) == real
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["link", "real"]  # no orphan link, no leftovers
    z = torch.randn(3, 2)
    assert torch.equal(from_pretrained(link)(z), other.eval()(z))


def test_the_working_directory_is_refused_and_nothing_is_left_behind(
    generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", str(tmp_path)):
        with pytest.raises(ValueError, match="is the working directory or holds it"):
            save_pretrained(generator, target)
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["work"]


def test_a_failed_swap_leaves_no_complete_copy_behind(generator, tmp_path: Path, monkeypatch) -> None:
    target = save_pretrained(generator, tmp_path / "g", model_card=False)
    before = sorted(os.listdir(target))
    rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".g.new-"):
            raise OSError(16, "Device or resource busy")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="busy"):
        save_pretrained(generator, target, model_card=False)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["g"] and sorted(os.listdir(target)) == before
