"""The CIFAR-10 quality study's measurements (see run_study.sh for the order and docs/results.md for the results).

Sub-commands (each writes JSON or .npz files under --out; nothing here trains: training is the example script):

    ref      feature statistics (+ features, for precision/recall) of a dataset zip; shards merge with `merge`
    merge    merge statistics shards into one file (exact: the sums add up) and concatenate their features
    teacher  FID of the teacher with EDM's Heun sampler at given numbers of network evaluations (NFE)
    final    FID against each reference, precision and recall (k = 3) of a one-step generator's samples
    report   collect the runs' stats.jsonl, the final and teacher figures into results.json, then draw the plot and
             write the tables from that file alone
    tables   print the markdown tables of a results.json (the docs' tables come from here)

Runs are named METHOD-sSEED (``sid-s0``, ``sida-s1``, ``sid2a-s2``, ``sidcont-s0``: the SiD control continued as
long as SiD²A); ``report`` averages the final figures of each method over its seeds. Every FID names its reference
(``train``: the training set, ``test``: held-out images), so one run is scored against several.
"""

from __future__ import annotations

import argparse
import importlib.util
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
        max_images=args.max_images,
        num_workers=min(8, os.cpu_count() or 1) if args.workers is None else args.workers,
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
        labels = None  # a conditional teacher: a uniform random class per sample, as EDM's generate.py draws them
        if net.label_dim:
            labels = torch.randint(net.label_dim, (noise.shape[0],), generator=rng, device=device)
        yield to_uint8(edm_sample(net, noise, labels, steps=steps))


def cmd_teacher(args: argparse.Namespace) -> None:
    device = _device()
    teacher = Teacher(from_pretrained(args.teacher, expected_class=Precond, device=device))
    inception = load_inception(args.inception, device=device)
    refs = _refs(args.ref)
    for nfe, n in zip(args.nfe, args.n):
        if nfe % 2 == 0:
            raise SystemExit(f"--nfe {nfe}: Heun uses an odd number of evaluations (2 * steps - 1)")
        t0 = time.perf_counter()
        stats = image_stats(_teacher_batches(teacher, n, nfe, args.batch, args.seed, device), inception, device=device)
        seconds = time.perf_counter() - t0
        fids = {name: frechet_distance(stats, ref) for name, ref in refs.items()}
        record = {"name": args.name, "nfe": nfe, "n": n, "fid": fids, "seed": args.seed, "seconds": round(seconds, 1)}
        record["device"] = _device_name(device)
        prefix = f"teacher-{args.name}-" if args.name else "teacher-"
        _write_json(Path(args.out) / f"{prefix}nfe{nfe}-n{n}.json", record)
        grid = next(_teacher_batches(teacher, 64, nfe, 64, args.seed, device))  # the first 64 samples
        write_png(Path(args.out) / f"{prefix}nfe{nfe}.png", image_grid(grid.float() / 127.5 - 1, cols=8))


def cmd_final(args: argparse.Namespace) -> None:
    device = _device()
    G = OneStepGenerator.from_pretrained(args.generator, device=device).eval()
    inception = load_inception(args.inception, device=device)
    t0 = time.perf_counter()
    stats, features = generator_stats(
        G, args.n, inception, batch_size=args.batch, seed=args.seed, device=device, return_features=True
    )
    refs = _refs(args.ref)
    real = torch.from_numpy(np.load(args.ref_features)).to(device)
    precision, recall = precision_recall(real, features, k=3)
    record = {
        "generator": str(args.generator),
        "n": args.n,
        "seed": args.seed,
        "fid": {name: frechet_distance(stats, ref) for name, ref in refs.items()},
        "precision": precision,
        "recall": recall,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": _device_name(device),
    }
    _write_json(Path(args.out), record)


def _refs(pairs: list[str]) -> dict[str, FeatureStats]:
    """``NAME=PATH`` pairs to statistics, in order."""
    refs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--ref {pair}: expected NAME=PATH, e.g. train=runs/quality/ref.npz")
        refs[name] = FeatureStats.load(path)
    return refs


def _runs(root: Path) -> dict[str, list[dict]]:
    from scoredistill.training.monitor import read_stats

    return {d.name: read_stats(d / "stats.jsonl") for d in sorted(root.iterdir()) if (d / "stats.jsonl").is_file()}


def _method_seed(name: str) -> tuple[str, int | None]:
    method, sep, seed = name.rpartition("-s")
    return (method, int(seed)) if sep and seed.isdigit() else (name, None)


def _summary(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.nan
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return {"mean": mean, "std": std, "values": values}


def collect(root: Path, setting: dict) -> dict:
    """Everything the study measured under ``root``, as the one JSON document that tables and plots are made from."""
    runs = _runs(root)
    finals = {p.stem.removeprefix("final-"): json.loads(p.read_text()) for p in root.glob("final-*.json")}
    teacher = sorted(
        (json.loads(p.read_text()) for p in root.glob("teacher-*nfe*.json")),
        key=lambda r: (r.get("name", ""), r["nfe"], r["n"]),
    )
    results: dict = {"setting": setting, "teacher": teacher, "runs": {}, "summary": {}}
    for name in sorted(set(runs) | set(finals)):
        records = runs.get(name, [])
        evals, stale = _fresh_evaluations(records)
        logs = [r for r in records if "images_per_s" in r]
        key = next((k for k in evals[0] if k.startswith("fid") and not k.endswith("_best")), None) if evals else None
        test_key = f"{key}_test"  # the same samples against the held-out reference (--extra-ref-stats test=...)
        train_s = records[-1]["time_s"] - sum(r.get("eval_s", 0.0) for r in evals) if records else math.nan
        method, seed = _method_seed(name)
        results["runs"][name] = {
            "method": method,
            "seed": seed,
            "curve": [(r["nimg"], r[key]) for r in evals] if key else [],
            "stale_evals": stale,
            "curve_test": [(r["nimg"], r[test_key]) for r in evals if test_key in r] if key else [],
            "grad_ratio": [(r["nimg"], r["adv/generator_grad_ratio"]) for r in logs if "adv/generator_grad_ratio" in r],
            "nimg": records[-1]["nimg"] if records else 0,
            "images_per_s": float(np.median([r["images_per_s"] for r in logs[1:] or logs])) if logs else math.nan,
            "train_s": train_s,
            "final": finals.get(name),
        }
    results["curves"] = curve_bands(results["runs"])
    results["curves_test"] = curve_bands(results["runs"], "curve_test")
    for method in sorted({run["method"] for run in results["runs"].values()}):
        members = {n: r for n, r in results["runs"].items() if r["method"] == method and r["final"]}
        if not members:
            continue
        finals_ = [r["final"] for r in members.values()]
        refs = sorted({ref for f in finals_ for ref in f["fid"]})
        results["summary"][method] = {
            "runs": sorted(members),
            **{f"fid_{ref}": _summary([f["fid"].get(ref) for f in finals_]) for ref in refs},
            "precision": _summary([f["precision"] for f in finals_]),
            "recall": _summary([f["recall"] for f in finals_]),
        }
    results["claims"] = claims(results)
    results["crossings"] = crossings(results)
    return results


# Where a method's in-training curve first reaches another's last point (both 10k-sample curves, seed means).
CROSSINGS = (("sida", "sid"), ("sida-cond", "sid-cond"))


def crossings(results: dict) -> list[dict]:
    """For each ``(a, b)`` of ``CROSSINGS`` and each reference's curves: the first image count at which ``a``'s mean
    in-training FID is at or below ``b``'s at its last evaluation (``nimg`` ``None``: never), with the seeds each
    mean is over."""
    out = []
    for key, ref in (("curves", "train"), ("curves_test", "test")):
        curves = results.get(key, {})
        for a, b in CROSSINGS:
            if a not in curves or b not in curves:
                continue
            b_nimg, b_fid, _, b_seeds = curves[b][-1]
            first = next((point for point in curves[a] if point[1] <= b_fid), None)
            out.append({"a": a, "b": b, "ref": ref, "b_nimg": b_nimg, "b_fid": b_fid, "b_seeds": b_seeds,
                        "nimg": first[0] if first else None, "fid": first[1] if first else None,
                        "seeds": first[3] if first else None})  # fmt: skip
    return out


# The study's comparisons, each "BETTER has a lower final FID than WORSE": methods are run names less their seed,
# "teacher" and "teacher-NAME" the teacher's (named) Heun figure at its largest NFE, paired with every seed.
CLAIMS = (
    ("one-step SiD beats its 35-NFE teacher", "sid", "teacher"),
    ("one-step SiDA beats its 35-NFE teacher", "sida", "teacher"),
    ("SiDA beats SiD (2 Mimg each, same seed)", "sida", "sid"),
    ("SiD²A beats SiD continued for the same 0.5 Mimg (same seed)", "sid2a", "sidcont"),
    ("SiDA (2 Mimg) beats SiD²A (2 Mimg of SiD + 0.5 of SiD²A, same seed)", "sida", "sid2a"),
    ("conditional SiD beats its 35-NFE conditional teacher", "sid-cond", "teacher-cond"),
    ("conditional SiDA beats its 35-NFE conditional teacher", "sida-cond", "teacher-cond"),
    ("conditional SiDA beats conditional SiD (same seed)", "sida-cond", "sid-cond"),
)


def _final_fids(results: dict, who: str) -> dict[int | None, dict[str, float]]:
    """``{seed: {reference: final FID}}`` of a method's runs, or ``{None: ...}`` for a teacher."""
    if who == "teacher" or who.startswith("teacher-"):
        name = who.removeprefix("teacher").removeprefix("-")
        entries = [t for t in results["teacher"] if (t.get("name") or "") == name]
        return {None: max(entries, key=lambda t: t["nfe"])["fid"]} if entries else {}
    runs = results["runs"].values()
    return {r["seed"]: r["final"]["fid"] for r in runs if r["method"] == who and r["final"]}


def claims(results: dict) -> list[dict]:
    """Each comparison of ``CLAIMS`` that both sides have final figures for, per reference: the gap ``WORSE - BETTER``
    on every seed they share (a teacher pairs with every seed), its mean ± sample std, and whether it ``held``:
    positive on every seed."""
    out = []
    for text, better, worse in CLAIMS:
        b, w = _final_fids(results, better), _final_fids(results, worse)
        refs = sorted({ref for fids in (*b.values(), *w.values()) for ref in fids}, key=lambda r: (r != "train", r))
        for ref in refs:  # (seed, better's FID, worse's FID); a teacher (seed None) stands beside every seed
            pairs = [(s, fids.get(ref), w.get(s, w.get(None, {})).get(ref)) for s, fids in sorted(b.items())]
            pairs = [(s, x, y) for s, x, y in pairs if x is not None and y is not None]
            if not pairs:
                continue
            gaps = [y - x for _, x, y in pairs]
            out.append({"claim": text, "better": better, "worse": worse, "ref": ref, "seeds": [s for s, _, _ in pairs],
                        **_summary(gaps), "held": all(g > 0 for g in gaps)})  # fmt: skip
    return out


def _fresh_evaluations(records: list[dict]) -> tuple[list[dict], list[int]]:
    """A run's evaluation records, less those that repeat the previous evaluation's values to every digit, and the
    image counts of the dropped ones.

    A repeat is not a measurement: training moved the generator in between, so its samples' FID cannot come out
    identical in float64. Until it was fixed during 0.2.0's development, FIDMetric's shared-sample cache was keyed
    by version counters, which CUDA's fused EMA update leaves alone, so it returned a process's first evaluation at
    every later one; the study's runs of 2026-12-06 (SiDA seed 0, SiD seed 1) recorded such repeats, and this drops
    them. An evaluation after no training at all would repeat legitimately; it adds nothing and goes too."""
    fresh, stale, previous = [], [], None
    for r in records:
        values = {k: v for k, v in r.items() if k.startswith("fid") and not k.endswith("_best")}
        if not values:
            continue
        if values == previous:
            stale.append(r["nimg"])
        else:
            fresh.append(r)
        previous = values
    return fresh, stale


def curve_bands(runs: dict[str, dict], curve: str = "curve") -> dict[str, list[list[float]]]:
    """Each method's in-training FID over its seeds: ``[nimg, mean, sample std (nan for one seed), seeds]`` at every
    image count that any of its runs evaluated (the runs of a method evaluate at the same counts). ``curve``: the
    runs' curve against the training set (``"curve"``) or the held-out one (``"curve_test"``)."""
    bands: dict[str, list[list[float]]] = {}
    for method in sorted({run["method"] for run in runs.values()}):
        at: dict[int, list[float]] = {}
        for run in runs.values():
            if run["method"] == method:
                for nimg, fid in run.get(curve, []):
                    at.setdefault(nimg, []).append(fid)
        summaries = {n: _summary(fids) for n, fids in sorted(at.items())}
        if summaries:
            bands[method] = [[n, s["mean"], s["std"], len(at[n])] for n, s in summaries.items()]
    return bands


def cmd_report(args: argparse.Namespace) -> None:
    setting: dict = dict(a.split("=", 1) for a in args.setting)
    setting["offsets"] = args.offsets
    results = collect(Path(args.root), setting)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    render(out / "results.json", out)


def render(results_json: Path, out: Path) -> None:
    """The plot and the tables, from ``results.json`` alone."""
    results = json.loads(Path(results_json).read_text())
    (out / "tables.md").write_text(tables(results))
    print(f"wrote {out / 'tables.md'} from {results_json}")
    if importlib.util.find_spec("matplotlib") is None:
        print("no plot: matplotlib is not installed (pip install matplotlib; then run `study.py report` again)")
        return
    _plot(results, out / "fid_vs_images.png")
    print(f"wrote {out / 'fid_vs_images.png'} from {results_json}")
    if results.get("curves_test"):
        _plot(results, out / "fid_vs_images_test.png", "curves_test", "test")
        print(f"wrote {out / 'fid_vs_images_test.png'} from {results_json}")
    if any(run["grad_ratio"] for run in results["runs"].values()):
        _plot_ratio(results, out / "grad_ratio.png")
        print(f"wrote {out / 'grad_ratio.png'} from {results_json}")


def _pm(summary: dict, digits: int = 2) -> str:
    mean, std, n = summary["mean"], summary["std"], len([v for v in summary["values"] if v is not None])
    if not math.isfinite(mean):
        return ""
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def tables(results: dict) -> str:
    """Markdown tables: each method's final figures over its seeds (mean ± sample std, number of seeds), every
    run's, and the teacher's."""
    refs = {k.removeprefix("fid_") for s in results["summary"].values() for k in s if k.startswith("fid_")}
    refs = sorted(refs, key=lambda ref: (ref != "train", ref))  # the training set first
    ref_columns = [f"FID vs {r}" for r in refs]
    lines = _table(
        ["method", *ref_columns, "precision", "recall", "runs"],
        [
            [method, *(_pm(s[f"fid_{r}"]) if f"fid_{r}" in s else "" for r in refs),
             _pm(s["precision"], 3), _pm(s["recall"], 3), str(len(s["runs"]))]
            for method, s in results["summary"].items()
        ],
    )[1:]  # fmt: skip
    rows = []
    for name, run in results["runs"].items():
        final = run["final"] or {"fid": {}}
        last = f"{run['curve'][-1][1]:.2f}" if run["curve"] else ""
        fids = (f"{final['fid'][r]:.2f}" if r in final["fid"] else "" for r in refs)
        rows.append([name, f"{run['nimg']:,}", f"{run['images_per_s']:,.0f}", *fids, last])
    lines += _table(["run", "images", "images/s", *ref_columns, "last curve FID"], rows)
    offsets = _offsets(results)
    for key, ref in (("curves", "train"), ("curves_test", "test")):
        curves = results.get(key, {})
        # In-training FID over seeds: one row per image count, one column per method.
        cells: dict[float, dict[str, str]] = {}
        for method, band in curves.items():
            for nimg, mean, std, seeds in band:
                text = f"{mean:.2f}" if seeds == 1 else f"{mean:.2f} ± {std:.2f} ({seeds})"
                cells.setdefault(offsets.get(method, 0.0) + nimg, {})[method] = text
        lines += _table(
            [f"images (FID vs {ref})", *curves],
            [[f"{nimg:,.0f}", *(cells[nimg].get(m, "") for m in curves)] for nimg in sorted(cells)],
        )
    claims_ = results.get("claims", [])
    held = {True: "yes", False: "**no**"}
    lines += _table(
        ["claim", "reference", "seeds", "FID gap (worse - better)", "held on every seed"],
        [[c["claim"], c["ref"], ", ".join(map(str, c["seeds"])), _pm(c), held[c["held"]]] for c in claims_],
    )

    def point(nimg, fid, seeds) -> str:
        return "not reached" if nimg is None else f"{nimg:,} ({fid:.2f}, {seeds})"

    lines += _table(
        ["curve", "reaches the last point of", "reference", "at images (FID, seeds)", "that point (FID, seeds)"],
        [
            [c["a"], c["b"], c["ref"], point(c["nimg"], c["fid"], c["seeds"]),
             point(c["b_nimg"], c["b_fid"], c["b_seeds"])]
            for c in results.get("crossings", [])
        ],
    )  # fmt: skip
    named = any(t.get("name") for t in results["teacher"])  # several teachers: a column says which
    lines += _table(
        [*(["teacher"] if named else []), "teacher NFE", "samples", *ref_columns],
        [
            [*([t.get("name") or "default"] if named else []), str(t["nfe"]), f"{t['n']:,}",
             *(f"{t['fid'][r]:.2f}" if r in t["fid"] else "" for r in refs)]
            for t in results["teacher"]
        ],
    )  # fmt: skip
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines after an empty one; nothing when there are no rows."""
    if not rows:
        return []
    return [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def cmd_tables(args: argparse.Namespace) -> None:
    print(tables(json.loads(Path(args.results).read_text())), end="")


def _offsets(results: dict) -> dict[str, float]:
    """Where each method's image count starts (SiD²A continues from SiD's images)."""
    return {k: float(v) for k, v in results["setting"].get("offsets", {}).items()}


def _figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, height), dpi=130)


def _save(fig, ax, ylabel: str, path: Path) -> None:
    """The plots' common axes (images seen, log scale), legend and file."""
    ax.set_xlabel("images seen by the student (millions)")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


COND = "-cond"  # the suffix of the conditional study's methods (sid-cond, sida-cond)


def _plot(results: dict, path: Path, key: str = "curves", ref: str = "train") -> None:
    """The in-training FID against reference ``ref`` (``results[key]``): each method's mean over seeds, with a band
    of one sample standard deviation, and the teacher's 35-NFE FID against the same reference."""
    offsets = _offsets(results)
    fig, ax = _figure(4.2)
    curves = results.get(key, {})
    # A conditional method (NAME-cond) is drawn dashed in its unconditional twin's colour, or in one of its own.
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(m.removesuffix(COND) for m in curves))}
    for method, band in curves.items():  # mean over seeds, and a band of one sample std
        start = offsets.get(method, 0.0)
        x = [(start + n) / 1e6 for n, *_ in band]
        mean = np.array([m for _, m, _, _ in band])
        std = np.nan_to_num(np.array([sd for _, _, sd, _ in band]))
        seeds = max(k for *_, k in band)
        style = "--" if method.endswith(COND) else "-"
        (line,) = ax.plot(x, mean, marker="o", ms=3, color=colours[method.removesuffix(COND)], ls=style,
                          label=f"{method} ({seeds} seed{'s' * (seeds > 1)})")  # fmt: skip
        if seeds > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    for record in results["teacher"]:
        if record["nfe"] == 35 and ref in record["fid"]:
            name = f"{record['name']} teacher" if record.get("name") else "teacher"
            style = ":" if record.get("name") else "--"  # the conditional teacher's line apart from the shared one's
            ax.axhline(record["fid"][ref], color="grey", ls=style, lw=1, label=f"{name}, 35 NFE ({record['n']:,})")
    _save(fig, ax, f"FID vs {ref} during training", path)


def _plot_ratio(results: dict, path: Path) -> None:
    """Each run's logged ``adv/generator_grad_ratio`` (one micro-batch per record) against the images it has seen."""
    offsets = _offsets(results)
    fig, ax = _figure(3.6)
    for name, run in results["runs"].items():
        if run["grad_ratio"]:
            start = offsets.get(run["method"], 0.0)
            ax.plot([(start + n) / 1e6 for n, _ in run["grad_ratio"]], [r for _, r in run["grad_ratio"]], marker="o",
                    ms=3, label=name)  # fmt: skip
    _save(fig, ax, "adversarial / SiD gradient norm", path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("ref")
    ref.add_argument("--data", required=True)
    ref.add_argument("--out", required=True, help="output prefix: PREFIX.npz and PREFIX.features.npy")
    ref.add_argument("--max-images", type=int, default=None, help="only the first M images (plumbing tests)")
    ref.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: up to 8)")
    merge = sub.add_parser("merge")
    merge.add_argument("parts", nargs="+", help="statistics files written by `ref`")
    merge.add_argument("--out", required=True)
    teacher = sub.add_parser("teacher")
    teacher.add_argument("--teacher", required=True)
    teacher.add_argument("--nfe", type=int, nargs="+", default=[35])
    teacher.add_argument("--n", type=int, nargs="+", default=[50_000])
    teacher.add_argument("--seed", type=int, default=0)
    teacher.add_argument("--name", default="", help="which teacher, for several (files teacher-NAME-nfe*.json)")
    teacher.add_argument("--out", required=True)
    final = sub.add_parser("final")
    final.add_argument("--generator", required=True)
    final.add_argument("--ref-features", required=True, help="features of the first --ref (precision and recall)")
    final.add_argument("--n", type=int, default=50_000)
    final.add_argument("--seed", type=int, default=1)
    final.add_argument("--out", required=True)
    for s in (teacher, final):
        s.add_argument("--ref", action="append", required=True, help="NAME=PATH of reference statistics; repeat")
    report = sub.add_parser("report")
    report.add_argument("--root", required=True)
    report.add_argument("--out", required=True)
    report.add_argument("--offset", nargs="*", default=[], help="METHOD=NIMG: where a method's curves start")
    report.add_argument("--setting", nargs="*", default=[], help="KEY=VALUE recorded in results.json")
    tables_ = sub.add_parser("tables")
    tables_.add_argument("results", help="a results.json written by `report`")
    for s in (ref, teacher, final):
        s.add_argument("--inception", default=None, help="Inception weights (default: the installed package's)")
        s.add_argument("--batch", type=int, default=500)
    args = p.parse_args(argv)
    if args.command == "teacher" and len(args.nfe) != len(args.n):
        p.error("give one --n per --nfe")
    if args.command == "report":
        args.offsets = dict(a.split("=", 1) for a in args.offset)
    commands = {"ref": cmd_ref, "merge": cmd_merge, "teacher": cmd_teacher, "final": cmd_final}
    commands.update(report=cmd_report, tables=cmd_tables)
    commands[args.command](args)


if __name__ == "__main__":
    main()
