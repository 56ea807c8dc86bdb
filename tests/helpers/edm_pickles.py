"""Stand-ins for the EDM packages an EDM pickle names, so that tests can write such pickles without EDM's code."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

__all__ = ["fake_edm_packages"]


@contextmanager
def fake_edm_packages() -> Iterator[types.SimpleNamespace]:
    """Importable ``torch_utils.persistence`` and ``dnnlib.util`` stand-ins, present only while pickling.

    Yields a namespace with ``reconstruct`` (``torch_utils.persistence._reconstruct_persistent_obj``, which a
    pickle references and the library's reader must never call) and ``EasyDict`` (``dnnlib.util.EasyDict``).
    """

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - pickling only references it
        raise AssertionError("must never be called")

    class EasyDict(dict):
        pass

    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")
    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    with pytest.MonkeyPatch.context() as patch:  # puts sys.modules back as it was on exit
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
