"""A progress bar that needs nothing: tqdm when installed, printed lines otherwise."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """A tqdm bar when installed (``pip install scoredistill[progress]``) and wanted, and one printed line per log.

    Args:
        total: Images of the whole run.
        initial: Images already done (a resumed run).
        enabled: Print anything at all (rank 0 only).
        bar: Show the bar; the log lines are printed either way.
    """

    def __init__(self, total: int, initial: int, *, enabled: bool, bar: bool = True):
        self.enabled, self.bar = enabled, None
        if enabled and bar:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
