"""Shared helpers for the benchmarks: environment tags and appending result tables to ``RESULTS.md`` / CSV.

Every table is written with the GPU's name, the torch and Triton versions and the date, so that only numbers
from the same device and the same run are ever compared.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"

__all__ = ["RESULTS_MD", "env_tag", "format_table", "print_row", "replay_args", "write_table"]


def env_tag() -> dict[str, str]:
    """``{gpu, torch, triton, cuda, date}`` for the current process."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": str(torch.version.cuda),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_row(columns: Sequence[str], row: Sequence[object]) -> None:
    """One row on stdout as ``column=value`` pairs, floats to 4 significant digits (a bench's progress as it runs)."""
    print("  ".join(f"{c}={v:.4g}" if isinstance(v, float) else f"{c}={v}" for c, v in zip(columns, row)))


def write_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    notes: Sequence[str] = (),
    md_path: Path | str = RESULTS_MD,
    csv_path: Path | str | None = None,
) -> str:
    """Append one tagged table to ``RESULTS.md`` (optionally its tagged rows to a CSV file); returns the markdown.

    Args:
        title: Section title, e.g. ``"bench_losses: fused vs eager"``.
        columns: Column names.
        rows: One sequence of values per row.
        notes: Lines printed under the table (measured copy bandwidth, targets met or not).
        md_path: Markdown file appended to.
        csv_path: CSV file appended to (header written when the file is new), or ``None``.
    """
    tag = env_tag()
    head = (
        f"## {title}\n\n*{tag['gpu']}; torch {tag['torch']}, triton {tag['triton']}, CUDA {tag['cuda']}; {tag['date']}*"
    )
    body = format_table(columns, rows)
    text = head + "\n\n" + body + "\n" + "".join(f"\n{n}\n" for n in notes) + "\n"
    md_path = Path(md_path)
    if not md_path.exists():
        md_path.write_text("# Benchmark results\n\nWritten by the scripts in this folder; see README.md.\n\n")
    with md_path.open("a") as fh:
        fh.write(text)
    if csv_path is not None:
        csv_path = Path(csv_path)
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            keys = ["table", "gpu", "torch", "triton", "date"]
            if new:
                writer.writerow(keys + list(columns))
            for row in rows:
                writer.writerow([title, tag["gpu"], tag["torch"], tag["triton"], tag["date"], *row])
    return text


def replay_args(
    argv: Sequence[str] | None,
    description: str,
    iters: int,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options of the per-layer benchmarks that time each setting as CUDA-graph replays (``--iters``,
    ``--rounds``, ``--out``, ``--no-write``, and any that ``extra`` adds to the parser), parsed from ``argv``."""
    p = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(p)
    p.add_argument("--iters", type=int, default=iters, help="graph replays timed per setting and round")
    p.add_argument("--rounds", type=int, default=3, help="each setting's best of this many rounds, interleaved")
    p.add_argument("--out", type=Path, default=RESULTS_MD)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)
