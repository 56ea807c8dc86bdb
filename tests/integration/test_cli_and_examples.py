"""The command line, the example script and the API pages guide a new user (issue 10, item 6).

Each test pins one defect seen by trying the tools as a new user would: errors that name the flag to change,
paths that never reach the Hub, outputs in the format asked for, and config fields that the API site shows.
"""

from __future__ import annotations

import dataclasses
import doctest
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, tiny_image_roles, tiny_vector_roles
from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, OneStepGenerator, Precond, SiDLoss
from scoredistill._version import __version__
from scoredistill.cli import CommandError
from scoredistill.cli import main as cli
from scoredistill.convert import load_edm_pickle
from scoredistill.networks import MLP
from scoredistill.training.recipes import RECIPES, Recipe

ROOT = REPO_ROOT
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-tiny.zip"
sys.path.insert(0, str(ROOT / "examples"))
distill_edm = pytest.importorskip("distill_edm")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any attempt to reach the Hub fails the test: local paths must stay local."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"sent to the Hub: {args} {kwargs}")

    monkeypatch.setattr("scoredistill.io.hub.HfApi", refuse)  # every Hub request (listing, upload) starts there
    monkeypatch.delenv("SCOREDISTILL_DEBUG", raising=False)


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory) -> Path:
    """A saved 8x8 image generator (TinyUNet)."""
    _, G, _ = tiny_image_roles(seed=0)
    return G.save_pretrained(tmp_path_factory.mktemp("artefacts") / "generator")


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a one-line error; return it (the printed line, checked to be the raised one)."""
    with pytest.raises(CommandError) as info:
        cli(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("scoredistill ") and ": error: " in err and str(info.value) in err
    return err


# -- save_pretrained and the loop's logs ---------------------------------------------------------------------------


def test_save_pretrained_replaces_only_its_own_artefacts(tmp_path):
    G = OneStepGenerator(Precond(MLP(dim=2, hidden=8)), sample_shape=(2,))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "bert"}')  # someone else's config, alone in its folder
    with pytest.raises(FileExistsError, match="not a scoredistill artefact"):
        G.save_pretrained(foreign)
    assert (foreign / "config.json").read_text() == '{"model_type": "bert"}'
    (foreign / "config.json").write_text("not json")
    with pytest.raises(FileExistsError, match="not a scoredistill artefact"):
        G.save_pretrained(foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    G.save_pretrained(empty)
    G.save_pretrained(empty, model_card=False)  # our own artefact is replaced as a whole
    assert sorted(p.name for p in empty.iterdir()) == ["config.json", "model.safetensors"]


def test_progress_false_silences_the_bar_not_the_logs(capsys):
    teacher, G, fake = tiny_vector_roles()
    config = DistillConfig(batch_size=4, total_nimg=8, lr_generator=1e-4, lr_fake_score=1e-4)
    Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config).run(log_every_nimg=4, progress=False)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if "sid/generator_loss=" in line]
    assert len(lines) == 2 and "nimg=8" in lines[1]
    assert "img/s" not in out.err  # no tqdm bar


def test_labelled_data_for_an_unconditional_generator_says_how_to_drop_the_labels():
    teacher, G, fake = tiny_image_roles(label_dim=0)
    labels = torch.eye(10)[torch.arange(4)]
    data = iter([(torch.zeros(4, *G.sample_shape), labels)] * 4)
    config = DistillConfig(batch_size=4, total_nimg=8)
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss(), AdversarialEncoderLoss()], config, data=data)  # SiDA
    with pytest.raises(ValueError, match=r"data labels \(4, 10\) .*unconditional.*use_labels=False"):
        d.step()


# -- the scoredistill command line --------------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"scoredistill {__version__}"


def test_demo_checks_its_output_and_device_before_training(tmp_path, monkeypatch, capsys):
    def no_training(**kwargs):
        raise AssertionError("trained before checking the arguments")

    monkeypatch.setattr("scoredistill.demo.run.run_demo", no_training)
    taken = tmp_path / "taken"
    taken.write_text("")
    assert "--out" in cli_error(["demo", "--out", str(taken)], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(["demo", "--device", "cuda", "--out", str(tmp_path / "d")], capsys)
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    assert "--device" in cli_error(["demo", "--device", "gpu0", "--out", str(tmp_path / "d")], capsys)


def test_sample_writes_the_format_its_name_says(generator_dir, tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from scoredistill.data.imageio import image_grid

    height, width = image_grid(torch.zeros(6, 3, 8, 8), cols=3).shape[:2]
    for name, magic, fmt in (("g.jpg", b"\xff\xd8\xff", "JPEG"), ("g.png", b"\x89PNG", "PNG")):
        argv = ["sample", "--model", str(generator_dir), "--n", "6", "--cols", "3", "--out", str(tmp_path / name)]
        assert cli(argv) == 0
        assert (tmp_path / name).read_bytes()[: len(magic)] == magic
        with Image.open(tmp_path / name) as image:
            assert image.format == fmt and image.size == (width, height) and width > height
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jpg", "g.png"]  # no temporary file left
    err = cli_error(["sample", "--model", str(generator_dir), "--out", str(tmp_path / "g.gif")], capsys)
    assert "--out" in err and ".png" in err
    assert "--out" in cli_error(["sample", "--model", str(generator_dir), "--out", str(tmp_path)], capsys)


@pytest.mark.parametrize("argv", [["--cols", "-2"], ["--cols", "0"], ["--n", "0"]])
def test_sample_counts_are_checked_by_argparse(argv, generator_dir, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["sample", "--model", str(generator_dir), *argv])
    assert info.value.code == 2 and f"argument {argv[0]}: must be at least 1" in capsys.readouterr().err


def test_device_without_cuda_is_a_clear_error(generator_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(["sample", "--model", str(generator_dir), "--device", "cuda"], capsys)
    assert "--device cuda: CUDA is not available" in err
    err = cli_error(["fid", "stats", str(FIXTURE), "--out", str(tmp_path / "s.npz"), "--device", "cuda:1"], capsys)
    assert err.startswith("scoredistill fid stats: error: --device cuda:1: CUDA is not available")


def test_local_paths_never_reach_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for model in ("./missing", str(tmp_path / "missing"), "~/no-such-scoredistill-dir", "a/b/generator_ema"):
        assert "no such directory" in cli_error(["sample", "--model", model], capsys)
    assert "no such directory" in cli_error(["sample", "--model", "runs/typo"], capsys)  # runs/ exists here
    (tmp_path / "edm.pkl").write_bytes(b"")
    assert "scoredistill convert edm.pkl" in cli_error(["sample", "--model", "edm.pkl"], capsys)
    assert "no such directory" in cli_error(["sample", "--model", "other.pkl"], capsys)
    assert "--revision" in cli_error(["sample", "--model", "./missing", "--revision", "main"], capsys)


def test_a_run_directory_stands_for_its_generator_and_the_wrong_role_gets_a_hint(generator_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(generator_dir, run / "generator_ema")
    (run / "config.json").write_text(json.dumps({"args": {"teacher": "org/teacher"}, "config": {}}))  # the run's record
    assert cli(["sample", "--model", str(run), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert f"samples of {run / 'generator_ema'}" in capsys.readouterr().out
    shutil.rmtree(run / "generator_ema")
    (run / "generator_last").mkdir()
    err = cli_error(["sample", "--model", str(run)], capsys)
    assert "is a run directory without a finished generator_ema/: pass" in err and str(run / "generator_last") in err
    teacher = Precond(MLP(dim=2, hidden=8)).save_pretrained(tmp_path / "teacher")
    err = cli_error(["sample", "--model", str(teacher)], capsys)
    assert "holds a denoiser (a teacher network), not a OneStepGenerator" in err
    assert "Precond.from_pretrained" not in err


def test_library_errors_are_one_line_and_debug_shows_the_traceback(generator_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from scoredistill.io.hub import CheckpointError

    broken = tmp_path / "broken"
    shutil.copytree(generator_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    err = cli_error(["sample", "--model", str(broken)], capsys)
    assert f"--model {broken}: " in err and "format_version 99" in err and "upgrade scoredistill" in err
    with pytest.raises(CheckpointError, match="format_version 99"):
        cli(["--debug", "sample", "--model", str(broken)])
    monkeypatch.setenv("SCOREDISTILL_DEBUG", "1")
    with pytest.raises(CheckpointError):
        cli(["sample", "--model", str(broken)])


def _edm_pickle() -> bytes:
    """A synthetic EDM network pickle, from the converter tests' helper (wherever the tests folder keeps it)."""
    path = next((REPO_ROOT / "tests").rglob("test_convert.py"))
    spec = importlib.util.spec_from_file_location("_convert_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.edm_pickle()[0]


def test_convert_writes_an_artefact_directory(tmp_path, capsys):
    from scoredistill.io.hub import from_pretrained

    pkl = tmp_path / "edm.pkl"
    pkl.write_bytes(_edm_pickle())
    expected = load_edm_pickle(pkl)
    assert cli(["convert", str(pkl), str(tmp_path / "teacher")]) == 0
    digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
    out = capsys.readouterr().out
    assert "wrote" in out and f"SHA-256 {digest}" in out  # EDM pickles carry no checksum of their own
    teacher = from_pretrained(tmp_path / "teacher")
    assert isinstance(teacher, Precond)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert cli(["convert", str(pkl), str(tmp_path / "g"), "--as", "generator", "--sigma-init", "2.0"]) == 0
    G = OneStepGenerator.from_pretrained(tmp_path / "g")
    assert G.sigma_init == 2.0 and G.sample_shape == (3, 16, 16)
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["training"] == {"converted_from": "edm.pkl", "converted_from_sha256": digest, "pickle_key": "ema"}
    assert "--key G_ema: no 'G_ema' network" in cli_error(
        ["convert", str(pkl), str(tmp_path / "x"), "--key", "G_ema"], capsys
    )
    assert "PICKLE" in cli_error(["convert", str(tmp_path / "none.pkl"), str(tmp_path / "x")], capsys)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    assert f"PICKLE {tmp_path / 'junk.pkl'}: " in cli_error(
        ["convert", str(tmp_path / "junk.pkl"), str(tmp_path / "x")], capsys
    )
    assert not (tmp_path / "x").exists()


# -- examples/distill_edm.py --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--total-kimg", "--batch", "--lr", "--micro-batch"])
def test_example_zero_is_an_error_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit) as info:
        distill_edm.parse(["--recipe", "cifar10-uncond", "--dry-run", flag, "0"])
    assert info.value.code == 2 and f"argument {flag}: must be positive, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "sid", "--outdir", "x"], "pass --teacher"),
        (["--method", "sid", "--outdir", "x", "--teacher", "missing.pkl"], "--teacher missing.pkl: no such file"),
        (["--method", "sida", "--outdir", "x", "--random-teacher"], "--method sida trains a discriminator"),
        (["--method", "sid2a", "--outdir", "x", "--random-teacher", "--data", "d.zip"], "pass --generator-init"),
    ],
)
def test_example_says_what_a_run_needs_in_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        distill_edm.parse(["--recipe", "cifar10-uncond", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "=..." not in err


def test_example_dry_run_needs_no_outdir_and_honours_small_values(capsys):
    distill_edm.main(
        ["--recipe", "cifar10-uncond", "--method", "sid", "--dry-run", "--batch", "8", "--total-kimg", "1"]
    )
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["batch_size"] == 8 and config["total_nimg"] == 1000
    with pytest.raises(SystemExit):
        distill_edm.parse(["--recipe", "cifar10-uncond"])
    assert "--outdir" in capsys.readouterr().err


def test_example_warns_before_the_warm_up_and_a_refused_resume_keeps_the_run(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from scoredistill.networks import PRESETS, SongUNetConfig

    # The recipe's wiring with a 32x32 teacher small enough for a CPU test (the real one has 56M parameters).
    tiny = SongUNetConfig(
        img_resolution=32, augment_dim=9, model_channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=()
    )
    monkeypatch.setitem(PRESETS, "cifar10-32x32-uncond", tiny)
    common = ["--recipe", "cifar10-uncond", "--random-teacher", "--device", "cpu", "--precision", "fp32"]
    common += ["--data", str(FIXTURE), "--batch", "2", "--total-kimg", "0.002", "--outdir", str(tmp_path)]
    with pytest.warns(UserWarning, match="the generator never trains"):
        distill_edm.main([*common, "--method", "sida"])
    recorded = (tmp_path / "config.json").read_text()
    refused = r"--outdir .*cannot resume .*config differs.*seed: 0 -> 1"
    with pytest.raises(CommandError, match=refused), pytest.warns(UserWarning):
        distill_edm.main([*common, "--method", "sida", "--seed", "1"])
    with pytest.raises(CommandError, match=r"cannot resume .*lr_generator: 1e-05 -> 2e-05"), pytest.warns(UserWarning):
        distill_edm.main([*common, "--method", "sida", "--lr", "2e-5"])
    assert (tmp_path / "config.json").read_text() == recorded
    # A shorter run than the checkpoint's is refused, not a silent rewrite of generator_ema.
    published = (tmp_path / "generator_ema" / "config.json").read_bytes()
    shorter = [*common, "--method", "sida", "--total-kimg", "0.001"]
    too_short = r"--total-kimg 0.001: the run .* is already at 0.002 kimg"
    with pytest.raises(CommandError, match=too_short), pytest.warns(UserWarning):
        distill_edm.main(shorter)
    assert (tmp_path / "generator_ema" / "config.json").read_bytes() == published
    assert (tmp_path / "config.json").read_text() == recorded


def _labelled_zip(path: Path, labels: list[int], broken: int | None = None) -> Path:
    """A 32x32 dataset zip with these class labels (``broken``: that image's pixels cut off after its header)."""
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(path, "w") as archive:
        for i in range(len(labels)):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (i * 20, 100, 200 - i * 20)).save(buffer, format="PNG")
            data = buffer.getvalue()
            archive.writestr(f"{i:03d}.png", data[:60] if i == broken else data)
        archive.writestr("dataset.json", json.dumps({"labels": [[f"{i:03d}.png", c] for i, c in enumerate(labels)]}))
    return path


def test_example_takes_a_class_subset_and_a_failed_start_leaves_no_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("PIL")
    from scoredistill.networks import PRESETS, SongUNetConfig

    tiny = SongUNetConfig(
        img_resolution=32,
        label_dim=10,
        augment_dim=9,
        model_channels=16,
        channel_mult=(1,),
        num_blocks=1,
        attn_resolutions=(),
    )
    monkeypatch.setitem(PRESETS, "cifar10-32x32-cond", tiny)
    common = ["--recipe", "cifar10-cond", "--method", "sida", "--random-teacher", "--device", "cpu"]
    common += ["--precision", "fp32", "--batch", "2", "--workers", "0", "--start-kimg", "0"]
    # Labels 0..3 of the teacher's 10 classes (an ImageNet subset, say): the class count is the teacher's.
    subset = _labelled_zip(tmp_path / "subset.zip", [0, 1, 2, 3])
    distill_edm.main([*common, "--data", str(subset), "--total-kimg", "0.002", "--outdir", str(tmp_path / "ok")])
    assert (tmp_path / "ok" / "generator_ema" / "config.json").is_file()
    # An image that cannot be decoded, found mid-run: one line naming --data, and no run directory left behind.
    broken = _labelled_zip(tmp_path / "broken.zip", [0, 1, 2, 3], broken=2)
    with pytest.raises(CommandError, match=r"^--data .*broken\.zip: .*002\.png cannot be decoded"):
        distill_edm.main([*common, "--data", str(broken), "--total-kimg", "0.004", "--outdir", str(tmp_path / "bad")])
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


# -- the API pages ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api():
    griffe = pytest.importorskip("griffe")
    return griffe.load("scoredistill", search_paths=[str(ROOT / "src")], docstring_parser="google")


def _documented(obj, kind: str) -> list[str]:
    return [
        item.name for section in obj.docstring.parse("google") if section.kind.value == kind for item in section.value
    ]


@pytest.mark.parametrize(
    ("path", "cls"), [("training.config.DistillConfig", DistillConfig), ("training.recipes.Recipe", Recipe)]
)
def test_every_config_field_is_documented(api, path, cls):
    assert _documented(api[path], "attributes") == [f.name for f in dataclasses.fields(cls)]


def test_run_arguments_and_recipe_names_are_documented(api):
    import inspect

    run = api["training.distill.Distiller"].members["run"]
    assert _documented(run, "parameters") == list(inspect.signature(Distiller.run).parameters)[1:]
    text = api["training.recipes.RECIPES"].docstring.value
    assert all(f'``"{name}"``' in text for name in RECIPES)
    assert "::: scoredistill.training.recipes.RECIPES" in (ROOT / "docs" / "api" / "recipes.md").read_text()
    # The example in RECIPES' docstring runs (doctest does not see docstrings of module attributes).
    test = doctest.DocTestParser().get_doctest(text, {}, "RECIPES", None, 0)
    assert doctest.DocTestRunner().run(test).failed == 0


def test_no_sphinx_roles_left_in_docstrings_or_pages():
    """mkdocstrings renders :class:`X` as raw text: cross-references are written [`X`][scoredistill.path.X]."""
    import re

    role = re.compile(r":(class|func|meth|data|attr|mod|exc|obj):`")
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    left = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if role.search(line)
    ]
    assert not left, f"Sphinx-style references (convert them to mkdocstrings syntax): {left}"
