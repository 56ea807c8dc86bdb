"""The CIFAR-10 quality study's measurements (see run_study.sh for the order and docs/results.md for the results).

Sub-commands (each writes JSON or .npz files under --out; nothing here trains: training is the example script):

    ref      feature statistics (+ features, for precision/recall) of a dataset zip; shards merge with `merge`
    merge    merge statistics shards into one file (exact: the sums add up) and concatenate their features
    teacher  FID of the teacher with EDM's Heun sampler at given numbers of network evaluations (NFE)
    final    FID, precision and recall (k = 3) of a one-step generator's samples
    report   collect the runs' stats.jsonl, the final and teacher figures into results.json, a plot and a table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from scoredistill import OneStepGenerator, Precond, Teacher
from scoredistill.data.imageio import image_grid, to_uint8, write_png
from scoredistill.io.hub import from_pretrained
from scoredistill.metrics import (
    FeatureStats,
    dataset_stats,
    frechet_distance,
    generator_stats,
    image_stats,
    load_inception,
    precision_recall,
)
from scoredistill.roles.sampling import edm_sample


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


def cmd_ref(args: argparse.Namespace) -> None:
    device = _device()
    inception = load_inception(args.inception, device=device)
    t0 = time.perf_counter()
    stats, features = dataset_stats(
        args.data,
        inception,
        batch_size=args.batch,
        device=device,
        return_features=True,
        num_workers=min(8, os.cpu_count() or 1),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats.save(out.with_suffix(".npz"))
    np.save(out.with_suffix(".features.npy"), features.cpu().numpy())
    print(f"{args.data}: {stats.count} images in {time.perf_counter() - t0:.1f} s -> {out.with_suffix('.npz')}")


def cmd_merge(args: argparse.Namespace) -> None:
    parts = [FeatureStats.load(p) for p in args.parts]
    merged = sum(parts[1:], parts[0])
    out = Path(args.out)
    merged.save(out.with_suffix(".npz"))
    features = [np.load(Path(p).with_suffix(".features.npy")) for p in args.parts]
    np.save(out.with_suffix(".features.npy"), np.concatenate(features))
    print(f"merged {[p.count for p in parts]} -> {merged.count} images: {out.with_suffix('.npz')}")


@torch.no_grad()
def _teacher_batches(net: Teacher, n: int, nfe: int, batch: int, seed: int, device: torch.device):
    steps = (nfe + 1) // 2  # Heun: 2 * steps - 1 evaluations
    for start in range(0, n, batch):
        rng = torch.Generator(device).manual_seed(seed * 1_000_003 + start)
        noise = torch.randn(min(batch, n - start), *net.sample_shape, generator=rng, device=device)
        yield to_uint8(edm_sample(net, noise, steps=steps))


def cmd_teacher(args: argparse.Namespace) -> None:
    device = _device()
    teacher = Teacher(from_pretrained(args.teacher, expected_class=Precond, device=device))
    inception = load_inception(args.inception, device=device)
    ref = FeatureStats.load(args.ref)
    for nfe, n in zip(args.nfe, args.n):
        if nfe % 2 == 0:
            raise SystemExit(f"--nfe {nfe}: Heun uses an odd number of evaluations (2 * steps - 1)")
        t0 = time.perf_counter()
        stats = image_stats(_teacher_batches(teacher, n, nfe, args.batch, args.seed, device), inception, device=device)
        seconds = time.perf_counter() - t0
        record = {"nfe": nfe, "n": n, "fid": frechet_distance(stats, ref), "seconds": round(seconds, 1)}
        record["device"] = _device_name(device)
        _write_json(Path(args.out) / f"teacher-nfe{nfe}-{n // 1000}k.json", record)
        grid = next(_teacher_batches(teacher, 64, nfe, 64, args.seed, device))  # the first 64 samples
        write_png(Path(args.out) / f"teacher-nfe{nfe}.png", image_grid(grid.float() / 127.5 - 1, cols=8))


def cmd_final(args: argparse.Namespace) -> None:
    device = _device()
    G = OneStepGenerator.from_pretrained(args.generator, device=device).eval()
    inception = load_inception(args.inception, device=device)
    t0 = time.perf_counter()
    stats, features = generator_stats(
        G, args.n, inception, batch_size=args.batch, seed=args.seed, device=device, return_features=True
    )
    ref = FeatureStats.load(args.ref)
    real = torch.from_numpy(np.load(args.ref_features)).to(device)
    precision, recall = precision_recall(real, features, k=3)
    record = {
        "generator": str(args.generator),
        "n": args.n,
        "fid": frechet_distance(stats, ref),
        "precision": precision,
        "recall": recall,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": _device_name(device),
    }
    _write_json(Path(args.out), record)


def _runs(root: Path) -> dict[str, list[dict]]:
    from scoredistill.training.monitor import read_stats

    return {d.name: read_stats(d / "stats.jsonl") for d in sorted(root.iterdir()) if (d / "stats.jsonl").is_file()}


def cmd_report(args: argparse.Namespace) -> None:
    root = Path(args.root)
    runs = _runs(root)
    finals = {p.stem.removeprefix("final-"): json.loads(p.read_text()) for p in root.glob("final-*.json")}
    teacher = sorted((json.loads(p.read_text()) for p in root.glob("teacher-nfe*.json")), key=lambda r: r["nfe"])
    results: dict = {"teacher": teacher, "runs": {}}
    for name, records in runs.items():
        evals = [r for r in records if any(k.startswith("fid") and not k.endswith("_best") for k in r)]
        logs = [r for r in records if "images_per_s" in r]
        key = next((k for k in evals[0] if k.startswith("fid") and not k.endswith("_best")), None) if evals else None
        train_s = records[-1]["time_s"] - sum(r.get("eval_s", 0.0) for r in evals) if records else math.nan
        results["runs"][name] = {
            "curve": [(r["nimg"], r[key]) for r in evals] if key else [],
            "nimg": records[-1]["nimg"] if records else 0,
            "images_per_s": float(np.median([r["images_per_s"] for r in logs[1:] or logs])) if logs else math.nan,
            "train_s": train_s,
            "final": finals.get(name),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, out / "fid_vs_images.png", offsets={k: v for k, v in (a.split("=") for a in args.offset)})
    print(json.dumps(results["runs"], indent=1)[:3000])


def _plot(results: dict, path: Path, offsets: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=130)
    for name, run in results["runs"].items():
        if not run["curve"]:
            continue
        start = float(offsets.get(name, 0))  # SiD²A continues from SiD's images
        x = [(start + n) / 1e6 for n, _ in run["curve"]]
        ax.plot(x, [f for _, f in run["curve"]], marker="o", ms=3, label=name)
    for record in results["teacher"]:
        if record["nfe"] == 35:
            ax.axhline(record["fid"], color="grey", ls="--", lw=1, label=f"teacher, 35 NFE ({record['n'] // 1000}k)")
    ax.set_xlabel("images seen by the student (millions)")
    ax.set_ylabel("FID, 10k samples vs CIFAR-10-JPEG75 train")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("ref")
    ref.add_argument("--data", required=True)
    ref.add_argument("--out", required=True, help="output prefix: PREFIX.npz and PREFIX.features.npy")
    merge = sub.add_parser("merge")
    merge.add_argument("parts", nargs="+", help="statistics files written by `ref`")
    merge.add_argument("--out", required=True)
    teacher = sub.add_parser("teacher")
    teacher.add_argument("--teacher", required=True)
    teacher.add_argument("--ref", required=True)
    teacher.add_argument("--nfe", type=int, nargs="+", default=[35])
    teacher.add_argument("--n", type=int, nargs="+", default=[50_000])
    teacher.add_argument("--seed", type=int, default=0)
    teacher.add_argument("--out", required=True)
    final = sub.add_parser("final")
    final.add_argument("--generator", required=True)
    final.add_argument("--ref", required=True)
    final.add_argument("--ref-features", required=True)
    final.add_argument("--n", type=int, default=50_000)
    final.add_argument("--seed", type=int, default=1)
    final.add_argument("--out", required=True)
    report = sub.add_parser("report")
    report.add_argument("--root", required=True)
    report.add_argument("--out", required=True)
    report.add_argument("--offset", nargs="*", default=[], help="NAME=NIMG: where a run's curve starts")
    for s in (ref, teacher, final):
        s.add_argument("--inception", default=None, help="Inception weights (default: the installed package's)")
        s.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    if args.command == "teacher" and len(args.nfe) != len(args.n):
        p.error("give one --n per --nfe")
    {"ref": cmd_ref, "merge": cmd_merge, "teacher": cmd_teacher, "final": cmd_final, "report": cmd_report}[
        args.command
    ](args)


if __name__ == "__main__":
    main()
