"""The import paths of modules that moved into subpackages in 0.2 keep working.

``import scoredistill.distill`` gives the module ``scoredistill.training.distill`` itself (the same object, so
``isinstance`` checks, monkeypatching and pickles see one class), through a finder on ``sys.meta_path`` instead of
one stub file per moved module. New code should use the new paths; ``docs/changelog.md`` lists every move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "analytic": "demo.analytic",
    "artefact": "io.artefact",
    "augment": "data.augment",
    "checkpoint": "training.checkpoint",
    "config": "training.config",
    "distill": "training.distill",
    "ema": "training.ema",
    "fake_score": "roles.fake_score",
    "fast": "training.fast",
    "fit": "training.fit",
    "generator": "roles.generator",
    "hub": "io.hub",
    "imageio": "data.imageio",
    "monitor": "training.monitor",
    "parallel": "training.parallel",
    "precond": "roles.precond",
    "recipes": "training.recipes",
    "sampling": "roles.sampling",
    "teacher": "roles.teacher",
}
"""Old module name under ``scoredistill`` -> its new name under ``scoredistill``."""


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``scoredistill.<old>`` with the module now at ``scoredistill.<new>``."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(f"{__package__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its new name."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
