"""Hostile EDM pickles: each is refused with UnsafePickleError or ValueError, quickly, and changes nothing.

The payloads are crafted here (a few hundred bytes each) and sized so that, on a version without the checks,
each test fails in seconds rather than hanging or exhausting memory.
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import warnings
import zipfile
from collections import OrderedDict

import pytest
import torch

from helpers.edm_pickles import fake_edm_packages
from scoredistill.convert import (
    RecordedObject,
    UnsafePickleError,
    load_edm_pickle,
    module_state_dict,
    read_edm_network,
    read_edm_pickle,
)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _body(obj: object) -> bytes:
    """The opcodes that push ``obj`` (a protocol-2 pickle without its PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _build_on_global(module: str, name: str, state: object) -> bytes:
    # GLOBAL pushes the allow-listed object itself; BUILD then sets attributes on it.
    return b"\x80\x02" + _global(module, name) + _body(state) + pickle.BUILD + pickle.STOP


class _Record:
    """Pickles like an EDM persistent module: ``_reconstruct_persistent_obj({'type': 'class', ...})``."""

    def __init__(self, reconstruct, state: dict):
        self.reconstruct, self.state = reconstruct, state

    def __reduce__(self):
        return self.reconstruct, ({"type": "class", "class_name": "Module", "state": self.state},)


def _module_state(modules: dict | None = None, **extra) -> dict:
    return {"_parameters": OrderedDict(), "_buffers": OrderedDict(), "_modules": OrderedDict(modules or {}), **extra}


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_build_never_touches_allow_listed_functions_or_classes() -> None:
    from scoredistill import convert

    function = convert._ALLOWED["torch._utils", "_rebuild_tensor_v2"]
    cls = convert._ALLOWED["dnnlib.util", "EasyDict"]
    for payload, target in [
        # __dict__ state on a function, and slot state (setattr) on a class and on a function's defaults.
        (_build_on_global("torch._utils", "_rebuild_tensor_v2", {"hijacked": True}), function),
        (_build_on_global("dnnlib.util", "EasyDict", (None, {"hijacked": True})), cls),
        (_build_on_global("torch._utils", "_rebuild_parameter", (None, {"hijacked": True})), None),
    ]:
        with pytest.raises(UnsafePickleError, match="BUILD applies only to"):
            read_edm_pickle(payload)
        if target is not None:
            assert not hasattr(target, "hijacked")
    assert not hasattr(convert._ALLOWED["torch._utils", "_rebuild_parameter"], "hijacked")


def test_build_state_of_a_record_must_be_a_dict_with_str_keys() -> None:
    # NEWOBJ of an inert torch.nn stand-in, then BUILD with a list: refused instead of stored.
    payload = b"\x80\x02" + _global("torch.nn.modules.container", "ModuleDict") + b")\x81" + _body([1, 2])
    with pytest.raises(UnsafePickleError, match="must be a dict with str keys"):
        read_edm_pickle(payload + pickle.BUILD + pickle.STOP)


def test_items_go_only_into_dicts_with_scalar_keys() -> None:
    # A tuple DAG as a dict key: hashing it visits 2^depth leaves.
    dag: tuple = ()
    for _ in range(22):
        dag = (dag, dag)
    start = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="dict key must be a str or number"):
        read_edm_pickle(pickle.dumps({dag: 1}, protocol=4))
    with pytest.raises(UnsafePickleError, match="set item must be a str or number"):
        read_edm_pickle(pickle.dumps({dag}, protocol=4))
    assert time.perf_counter() - start < 1.0
    # SETITEM on an allow-listed function instead of a dict.
    payload = b"\x80\x02" + _global("torch", "Size") + _body("k") + _body("v") + pickle.SETITEM + pickle.STOP
    with pytest.raises(UnsafePickleError, match="only dicts take items"):
        read_edm_pickle(payload)


def test_module_dag_is_refused_in_linear_time() -> None:
    with fake_edm_packages() as edm:
        node = _Record(edm.reconstruct, _module_state(weight=None))
        for _ in range(20):  # 2^20 paths through 21 records: seconds for a walk that does not remember
            node = _Record(edm.reconstruct, _module_state({"a": node, "b": node}))
        data = pickle.dumps({"ema": node}, protocol=4)
    assert len(data) < 4000
    record = read_edm_pickle(data)["ema"]
    start = time.perf_counter()
    with pytest.raises(ValueError, match="reached twice"):
        module_state_dict(record)
    assert time.perf_counter() - start < 0.5


def test_cyclic_and_deep_module_graphs_are_refused_or_walked_without_recursion() -> None:
    cyclic = RecordedObject("Module", _module_state())
    cyclic.state["_modules"]["self"] = cyclic
    with pytest.raises(ValueError, match="reached twice"):
        module_state_dict(cyclic)
    chain = RecordedObject("Module", _module_state(_parameters=OrderedDict(w=torch.ones(1))))
    for _ in range(5000):  # deeper than Python's recursion limit
        chain = RecordedObject("Module", _module_state({"c": chain}))
    assert list(module_state_dict(chain)) == ["c." * 5000 + "w"]


def test_error_messages_never_repr_untrusted_objects() -> None:
    dag: list = []
    for _ in range(22):  # repr is 2^22 elements long
        dag = [dag, dag]
    with fake_edm_packages() as edm:
        record = _Record(edm.reconstruct, _module_state(_init_args=dag))
        data = pickle.dumps({"ema": record}, protocol=4)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="positional args") as info:
        read_edm_network(data)
    assert len(str(info.value)) < 300 and time.perf_counter() - start < 1.0
    # A persistent id and a record's class name are untrusted too.
    payload = b"\x80\x02" + _body(dag) + pickle.BINPERSID + pickle.STOP
    with pytest.raises(UnsafePickleError, match="persistent id") as info:
        read_edm_pickle(payload)
    assert len(str(info.value)) < 300
    with fake_edm_packages() as edm:
        meta = {"type": "class", "class_name": dag, "state": {}}
        data = pickle.dumps({"ema": _Reduce(edm.reconstruct, meta)}, protocol=4)
    with pytest.raises(UnsafePickleError, match="class_name must be a str") as info:
        read_edm_pickle(data)
    assert len(str(info.value)) < 300


def test_tensor_view_past_its_storage_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated, but it is what pickles hold
        storage = torch.zeros(4).storage()
    rebuild = torch._utils._rebuild_tensor_v2
    ok = pickle.dumps(_Reduce(rebuild, storage, 1, (3,), (1,), False, OrderedDict()), protocol=4)
    assert torch.equal(read_edm_pickle(ok), torch.zeros(3))
    for offset, size, stride in [(0, (10**7,), (1,)), (4, (1,), (1,)), (0, (2, 2), (3, 1))]:
        data = pickle.dumps(_Reduce(rebuild, storage, offset, size, stride, False, OrderedDict()), protocol=4)
        with pytest.raises(UnsafePickleError, match="past its storage"):
            read_edm_pickle(data)
    not_storage = pickle.dumps(_Reduce(rebuild, "1234", 0, (1,), (1,), False, OrderedDict()), protocol=4)
    with pytest.raises(UnsafePickleError, match="must be a typed torch storage"):
        read_edm_pickle(not_storage)


def test_declared_network_size_is_checked_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    import scoredistill.convert as convert

    built: list[object] = []
    real = convert.edm_precond
    monkeypatch.setattr(convert, "edm_precond", lambda *a, **k: built.append(a) or real(*a, **k))
    kwargs = {"model_type": "SongUNet", "img_resolution": 16, "model_channels": 512, "channel_mult": [1, 2]}
    kwargs |= {"num_blocks": 2, "attn_resolutions": []}  # ~60M parameters declared by a few hundred bytes
    with fake_edm_packages() as edm:
        data = pickle.dumps({"ema": _Record(edm.reconstruct, _module_state(_init_kwargs=kwargs))}, protocol=4)
    assert len(data) < 1000
    with pytest.raises(ValueError, match="declare a network of at least"):
        load_edm_pickle(data)
    assert built == []


def test_declared_lengths_are_bounded_by_the_file(tmp_path) -> None:
    # BINBYTES8 declaring 64 GiB: a buffered file would allocate it before finding 3 bytes.
    data = b"\x80\x04\x8e" + struct.pack("<Q", 2**36) + b"abc."
    path = tmp_path / "long.pkl"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(UnsafePickleError, match="malformed or truncated pickle"):
            read_edm_pickle(source)
    with open(path, "rb") as f, pytest.raises(UnsafePickleError, match="malformed or truncated pickle"):
        read_edm_pickle(f)


def test_embedded_storage_declaring_more_than_it_holds_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save(torch.zeros(4).untyped_storage(), buffer)
    source, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            member = source.read(info)
            if info.filename.endswith("data.pkl"):  # 16 bytes -> 10^9 declared
                member = member.replace(b"K\x10", b"J" + struct.pack("<i", 10**9))
            target.writestr(info, member)
    data = pickle.dumps(_Reduce(torch.storage._load_from_bytes, out.getvalue()), protocol=4)
    with pytest.raises(UnsafePickleError, match="malformed or truncated pickle"):
        read_edm_pickle(data)


def test_overlapping_views_are_bounded_by_the_file_size() -> None:
    # Old code: each view fitted its storage, so a 1 KB pickle of stride-0 views declared 12 GB of float32 weights,
    # which load_edm_pickle's contiguous copies would then allocate.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        storage = torch.zeros(4).storage()
    rebuild = torch._utils._rebuild_tensor_v2
    data = pickle.dumps(_Reduce(rebuild, storage, 0, (30_000, 100_000), (0, 0), False, OrderedDict()), protocol=4)
    assert len(data) < 1000
    with pytest.raises(UnsafePickleError, match="times its own size"):
        read_edm_pickle(data)
    # A few overlapping views within the bound still load; many of them add up like one large one.
    small = pickle.dumps(_Reduce(rebuild, storage, 0, (1000,), (0,), False, OrderedDict()), protocol=4)
    assert read_edm_pickle(small).shape == (1000,)
    repeated = [_Reduce(rebuild, storage, 0, (100_000,), (0,), False, OrderedDict()) for _ in range(10)]
    with pytest.raises(UnsafePickleError, match="times its own size"):
        read_edm_pickle(pickle.dumps(repeated, protocol=4))
