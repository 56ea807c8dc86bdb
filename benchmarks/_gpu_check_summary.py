"""The summary table of benchmarks/gpu_check.sh, read from the files it left in OUT."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path


def bench_row(path: Path) -> str:
    """images/s (ms / iter) of bench_step's last printed row, or why there is none."""
    if not path.exists():
        return "skipped (input missing)"
    lines = [line for line in path.read_text().splitlines() if line.startswith("[")]
    rows = [ast.literal_eval(re.sub(r"\bnan\b", "None", line)) for line in lines]  # --no-mfu leaves MFU nan
    if not rows:
        return "FAILED: " + (path.read_text().strip().splitlines() or ["no output"])[-1][:120]
    row = rows[-1]
    return f"{row[6]:,.1f} images/s ({row[5]:.1f} ms / iter, peak {row[8]:.1f} GiB, finite: {row[11]})"


def logged(path: Path) -> tuple[str, float | None]:
    """The images/s an example logged: the intervals after the first (warm-up and capture), or why there is none."""
    if not path.exists():
        return "skipped or FAILED (no log)", None
    values = [json.loads(line).get("images_per_s") for line in path.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"FAILED: {len(values)} log intervals", None
    steady = values[1:]
    mean = sum(steady) / len(steady)
    return f"{mean:,.1f} images/s (intervals after the first: {', '.join(f'{v:,.1f}' for v in steady)})", mean


def pytest_line(path: Path) -> str:
    """A pytest run's summary line, with every failure named, or why there is none."""
    if not path.exists():
        return "not run"
    text = path.read_text().splitlines()
    lines = [ln for ln in text if re.search(r"\d+ (passed|failed|errors?|skipped)", ln)]
    failed = [ln for ln in text if ln.startswith(("FAILED", "ERROR"))]
    return (lines[-1].strip("= ") if lines else "no summary (timed out?)") + "".join(f"<br>{f[:150]}" for f in failed)


def main(out: Path) -> None:
    gpu = (out / "gpu.txt").read_text().strip().replace("\n", "; ") if (out / "gpu.txt").exists() else "?"
    sid_text, sid = logged(out / "study_sid.jsonl")
    sida_text, sida = logged(out / "study_sida.jsonl")
    ids = out / "matrix_ids.txt"
    matrix_total = len(ids.read_text().split()) if ids.exists() else "?"
    rows = [
        ("GPU-marked tests (all but the matrix)", pytest_line(out / "gpu_tests.txt")),
        (
            f"captured-vs-eager matrix (tests/training/test_gpu_matrix.py, {matrix_total} tests)",
            pytest_line(out / "matrix.txt"),
        ),
        ("bench_step CIFAR-10 DDPM++ batch 32, zip + augment 0.12, graphs-cl", bench_row(out / "c10_b32.txt")),
        ("bench_step CIFAR-10 DDPM++ batch 128, zip + augment 0.12, graphs-cl", bench_row(out / "c10_b128.txt")),
        ("examples/distill_edm.py SiDA batch 32, random teacher, zip, logged", logged(out / "example.jsonl")[0]),
        ("bench_step ImageNet-64 ADM batch 32, fixed batch, graphs-cl", bench_row(out / "in64_b32.txt")),
        ("study teacher (augment_dim 0), SiD batch 256, captured, logged", sid_text),
        ("study teacher (augment_dim 0), SiDA batch 256, zip, captured, logged", sida_text),
    ]
    if sid and sida:
        rows.append(("SiDA / SiD images/s, study teacher (target: at least 0.85)", f"{sida / sid:.3f}"))
    print(f"gpu_check on {gpu}\n\n| check | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
