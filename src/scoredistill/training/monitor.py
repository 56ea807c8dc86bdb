"""What a run leaves behind while it trains: a ``stats.jsonl`` log, TensorBoard scalars, and evaluations.

[`RunLog`][scoredistill.training.monitor.RunLog] appends one JSON object per log interval and per evaluation to
``stats.jsonl`` in the run directory (and writes the same scalars to TensorBoard when ``tensorboard`` is installed),
whether or not a
progress bar is shown. The contract of in-training evaluations,
[`GeneratorMetric`][scoredistill.metrics.base.GeneratorMetric], lives in `scoredistill.metrics.base` (re-exported
here for 0.1's import path).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..metrics.base import GeneratorMetric

__all__ = ["GeneratorMetric", "RunLog", "read_stats"]


class RunLog:
    """Append-only run log: ``stats.jsonl`` (one JSON object a line) plus TensorBoard when installed.

    Each record holds ``nimg`` (images seen), ``time_s`` (seconds since the log was opened, continued across
    resumes from the last record) and the scalars. Non-finite values are written as ``null`` (strict JSON).

    Args:
        run_dir: The run directory; ``stats.jsonl`` and ``tensorboard/`` are written there.
        tensorboard: Also write TensorBoard scalars (``None``: when ``tensorboard`` can be imported).
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "stats.jsonl"
        previous = read_stats(self.path) if self.path.exists() else []
        self._offset_s = float(previous[-1].get("time_s") or 0.0) if previous else 0.0
        self._t0 = time.perf_counter()
        self._writer = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise ImportError("tensorboard=True needs: pip install tensorboard") from None
            else:
                self._writer = SummaryWriter(str(self.dir / "tensorboard"))

    def write(self, nimg: int, values: dict[str, float]) -> dict[str, Any]:
        """Append one record at ``nimg`` images and return it."""
        elapsed_s = self._offset_s + time.perf_counter() - self._t0
        record: dict[str, Any] = {"nimg": int(nimg), "time_s": round(elapsed_s, 3)}
        for key, value in values.items():
            if key == "nimg":
                continue
            value = float(value)
            record[key] = value if math.isfinite(value) else None
            if self._writer is not None:
                self._writer.add_scalar(key, value, global_step=int(nimg))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._writer.flush()
        return record

    def close(self) -> None:
        """Close the TensorBoard writer (``stats.jsonl`` is closed after every record)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_stats(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``stats.jsonl`` file into a list of records; a line cut short by a kill is skipped.

    Raises:
        ValueError: A complete line (not the last) that is not a JSON object.
    """
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a kill during the last write
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {i + 1} is not a JSON object")
        records.append(record)
    return records
