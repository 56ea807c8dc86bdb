"""Public artefacts: save_pretrained -> from_pretrained round trips, strict failures, Hub I/O and the sample CLI.

The Hub tests run against ``tests/helpers/hub_server.py``, a stand-in for the Hub's HTTP API on 127.0.0.1, so they are
offline and run by default.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import FIXTURES
from helpers.hub_server import FakeHub, serve_hub
from scoredistill import FakeScore, OneStepGenerator, Precond
from scoredistill.cli import main as cli_main
from scoredistill.data.imageio import image_grid, write_png
from scoredistill.io.artefact import CONFIG_NAME, MODEL_CARD_NAME, WEIGHTS_NAME
from scoredistill.io.hub import (
    CheckpointError,
    WeightsMismatchError,
    from_pretrained,
    load_config,
    push_to_hub,
    save_pretrained,
)
from scoredistill.networks import MLP, DhariwalUNetConfig, SongUNetConfig, StateDictMismatchError, TinyUNet
from scoredistill.roles.precond import edm_precond

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are tiny: on a loaded 2-core machine, a second intra-op thread made them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tiny roles ------------------------------------------------------------------------------------------------------


def _perturb(role: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere: EDM's near-zero output layers would make a round trip trivially exact."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in role.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=rng))
    return role.eval()


def mlp_generator() -> OneStepGenerator:
    torch.manual_seed(0)
    return _perturb(OneStepGenerator(Precond(MLP(2, 16, depth=2)), sample_shape=(2,), sigma_init=2.0), 0)


def tinyunet_fake_score() -> FakeScore:
    torch.manual_seed(1)
    return _perturb(FakeScore(Precond(TinyUNet(img_channels=1, channels=8, label_dim=3), label_dim=3)), 1)


def songunet_generator() -> OneStepGenerator:
    torch.manual_seed(2)
    config = SongUNetConfig(
        img_resolution=8,
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        augment_dim=9,
        dropout=0.0,
    )
    return _perturb(OneStepGenerator(edm_precond(config)), 2)


def dhariwal_generator() -> OneStepGenerator:
    torch.manual_seed(3)
    config = DhariwalUNetConfig(
        img_resolution=8,
        label_dim=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
    )
    return _perturb(OneStepGenerator(edm_precond(config)), 3)


ROLES: dict[str, Callable[[], nn.Module]] = {
    "mlp_generator": mlp_generator,
    "tinyunet_fake_score": tinyunet_fake_score,
    "songunet_generator": songunet_generator,
    "dhariwal_generator": dhariwal_generator,
}


def outputs(role: nn.Module) -> list[torch.Tensor]:
    """Deterministic outputs of a role on fixed inputs (denoised and logits for a fake score)."""
    rng = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if isinstance(role, OneStepGenerator):
            z = torch.randn(3, *role.sample_shape, generator=rng)
            labels = torch.tensor([0, 1, 3]) if role.label_dim else None
            return [role(z, labels)]
        x = torch.randn(3, 1, 8, 8, generator=rng)
        out = role.score(x, torch.tensor([0.1, 1.0, 10.0]), torch.tensor([0, 1, 2]))
        return [out.denoised, out.logits]


def assert_same_outputs(a: nn.Module, b: nn.Module, **tol: float) -> None:
    for x, y in zip(outputs(a), outputs(b), strict=True):
        if tol:
            torch.testing.assert_close(x, y, **tol)
        else:
            assert torch.equal(x, y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each tiny role and its artefact directory, written once per module."""
    root = tmp_path_factory.mktemp("artefacts")
    return {name: (make := build(), save_pretrained(make, root / name)) for name, build in ROLES.items()}


def copy_artefact(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


# Round trips -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROLES)
def test_round_trip_outputs_config_and_keys(name: str, saved, tmp_path: Path):
    role, path = saved[name]
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME])
    loaded = from_pretrained(path)
    assert type(loaded) is type(role) and not loaded.training
    assert_same_outputs(role, loaded)
    assert loaded.to_config() == role.to_config()
    assert loaded.state_dict().keys() == role.state_dict().keys()
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values() if t.is_floating_point())
    # The role's own classmethod, and a re-save that gives the same config.json byte for byte.
    assert_same_outputs(role, type(role).from_pretrained(path))
    again = loaded.save_pretrained(tmp_path / "again")
    assert (again / CONFIG_NAME).read_bytes() == (path / CONFIG_NAME).read_bytes()
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["_class_name"] == type(role).__name__ and config["format_version"] == 1
    assert config["backbone"]["_class_name"] in ("MLP", "TinyUNet", "SongUNet", "DhariwalUNet")
    assert set(config["precond"]) == {"label_dim", "augment_dim", "sigma_data"}
    with safe_open(str(path / WEIGHTS_NAME), "pt") as f:
        assert f.metadata()["format"] == "pt"


def test_config_records_role_args_teacher_and_training(tmp_path: Path):
    G = songunet_generator()
    path = G.save_pretrained(
        tmp_path / "g",
        teacher_id="org/edm-teacher",
        teacher_revision="0" * 40,
        license="cc-by-nc-sa-4.0",
        training={"method": "SiD", "alpha": 1.2},
    )
    config = load_config(path)
    assert config["sigma_init"] == 2.5 and config["sample_shape"] == [3, 8, 8] and config["label_dim"] == 0
    assert config["precond"] == {"label_dim": 0, "augment_dim": 9, "sigma_data": 0.5}
    assert config["backbone"]["config"] == G.denoiser.model.config.to_dict()
    assert (config["teacher_id"], config["teacher_revision"]) == ("org/edm-teacher", "0" * 40)
    assert config["training"] == {"method": "SiD", "alpha": 1.2}
    card = (path / MODEL_CARD_NAME).read_text()
    front = card.split("---")[1]
    for line in (
        "library_name: scoredistill",
        "license: cc-by-nc-sa-4.0",
        "- org/edm-teacher",
        "- scoredistill",
        "pipeline_tag: unconditional-image-generation",
    ):
        assert line in front
    assert "OneStepGenerator.from_pretrained(" in card and "| `alpha` | `1.2` |" in card


def test_fp16_variant_and_load_dtype(saved, tmp_path: Path):
    role, _ = saved["tinyunet_fake_score"]
    path = save_pretrained(role, tmp_path / "fp16", dtype=torch.float16)
    assert load_config(path)["torch_dtype"] == "float16"
    assert {t.dtype for t in load_file(str(path / WEIGHTS_NAME)).values()} == {torch.float16}
    loaded = FakeScore.from_pretrained(path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert_same_outputs(role, loaded, atol=5e-3, rtol=5e-3)
    half = FakeScore.from_pretrained(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_bare_precond_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    D = _perturb(Precond(MLP(3, 8, depth=2, label_dim=2), label_dim=2, sigma_data=0.7), 5)
    loaded = from_pretrained(save_pretrained(D, tmp_path / "d"))
    assert type(loaded) is Precond and loaded.sigma_data == 0.7
    x, sigma, labels = torch.randn(4, 3), torch.full((4,), 0.5), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        assert torch.equal(D(x, sigma, labels), loaded(x, sigma, labels))


def test_save_replaces_atomically_and_protects_foreign_directories(saved, tmp_path: Path):
    role, _ = saved["mlp_generator"]
    path = save_pretrained(role, tmp_path / "g")
    other = mlp_generator()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_pretrained(other, path, model_card=False)  # an existing artefact is replaced as a whole
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert_same_outputs(other, from_pretrained(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # no temporary directories left behind
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"state\.pt"):
        save_pretrained(role, tmp_path / "run")


def test_save_refuses_what_it_cannot_rebuild(tmp_path: Path):
    class Custom(nn.Module):
        def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
            return x

    with pytest.raises(TypeError, match="Custom backbone"):
        save_pretrained(OneStepGenerator(Precond(Custom()), sample_shape=(2,)), tmp_path / "a")
    with pytest.raises(TypeError, match="Precond"):
        save_pretrained(OneStepGenerator(MLP(2, 8), sample_shape=(2,)), tmp_path / "b")
    with pytest.raises(TypeError, match="cannot save a FakeScore around a MLP: public artefacts hold a Precond"):
        save_pretrained(FakeScore(MLP(2, 8)), tmp_path / "b2")
    with pytest.raises(TypeError, match="training"):
        save_pretrained(mlp_generator(), tmp_path / "c", training={"rng": torch.Generator()})
    with pytest.raises(ValueError, match="dtype"):
        save_pretrained(mlp_generator(), tmp_path / "d", dtype=torch.int8)
    assert not any(tmp_path.iterdir())


# Strict loading --------------------------------------------------------------------------------------------------


def _edit_weights(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(str(path / WEIGHTS_NAME))
    edit(state)
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})


def _edit_config(path: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((path / CONFIG_NAME).read_text())
    edit(config)
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _first_key(path: Path) -> str:
    return sorted(load_file(str(path / WEIGHTS_NAME)))[0]


@pytest.mark.parametrize("name", ROLES)
def test_weight_key_tampering_is_named(name: str, saved, tmp_path: Path):
    path = copy_artefact(saved[name][1], tmp_path)
    key = _first_key(path)
    weights = str(path / WEIGHTS_NAME)

    _edit_weights(path, lambda s: s.update({"denoiser.extra.weight": torch.zeros(2)}))
    with pytest.raises(WeightsMismatchError, match=r"unexpected: denoiser\.extra\.weight") as info:
        from_pretrained(path)
    assert info.value.unexpected == ["denoiser.extra.weight"] and weights in str(info.value)
    assert isinstance(info.value, StateDictMismatchError) and isinstance(info.value, CheckpointError)

    _edit_weights(path, lambda s: (s.pop("denoiser.extra.weight"), s.pop(key)))
    with pytest.raises(WeightsMismatchError, match=f"missing: {key}") as info:
        from_pretrained(path)
    assert info.value.missing == [key]

    original = load_file(str(saved[name][1] / WEIGHTS_NAME))[key]
    _edit_weights(path, lambda s: s.update({key: torch.zeros(*original.shape, 2)}))
    with pytest.raises(WeightsMismatchError, match=f"shape mismatch: {key}") as info:
        from_pretrained(path)
    assert info.value.mismatched == [(key, tuple(original.shape), (*original.shape, 2))]


@pytest.mark.parametrize("name", ROLES)
def test_file_tampering_raises_clear_errors(name: str, saved, tmp_path: Path):
    src = saved[name][1]
    path = copy_artefact(src, tmp_path)

    (path / CONFIG_NAME).write_text('{"_class_name": "OneStepGenerator", ')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        from_pretrained(path)
    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)

    data = (src / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        from_pretrained(path)
    (path / WEIGHTS_NAME).write_bytes(b"\x80\x04pickle? no." * 4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        from_pretrained(path)
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        from_pretrained(path)
    shutil.copy(src / WEIGHTS_NAME, path / WEIGHTS_NAME)

    _edit_config(path, lambda c: c.update(_class_name="Sampler"))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown _class_name 'Sampler'"):
        from_pretrained(path)
    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)

    _edit_config(path, lambda c: c["backbone"].update(_class_name="os.system"))
    with pytest.raises(CheckpointError, match=r"unknown backbone class 'os\.system'"):
        from_pretrained(path)
    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)

    _edit_config(path, lambda c: c.update(format_version=2, _scoredistill_version="9.0"))
    with pytest.raises(CheckpointError, match=r"format_version 2, newer than .* \(1\).*9\.0: upgrade"):
        from_pretrained(path)
    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)

    (path / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        from_pretrained(path)


def test_config_weights_mismatch_and_bad_configs(saved, tmp_path: Path):
    src = saved["mlp_generator"][1]
    path = copy_artefact(src, tmp_path)
    _edit_config(path, lambda c: c["backbone"]["config"].update(hidden=24))
    with pytest.raises(WeightsMismatchError, match=r"does not match the network described by config\.json") as info:
        from_pretrained(path)
    assert info.value.mismatched and not info.value.missing

    _edit_config(path, lambda c: c["backbone"]["config"].update(hidden=16, width=3))
    with pytest.raises(CheckpointError, match=r"cannot build OneStepGenerator .*width"):
        from_pretrained(path)

    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)
    _edit_config(path, lambda c: c.update(extra=1))
    with pytest.raises(CheckpointError, match=r"unknown keys \['extra'\]"):
        from_pretrained(path)

    shutil.copy(src / CONFIG_NAME, path / CONFIG_NAME)
    _edit_config(path, lambda c: c.pop("sigma_init"))
    with pytest.raises(CheckpointError, match="sigma_init"):
        from_pretrained(path)

    song = copy_artefact(saved["songunet_generator"][1], tmp_path)
    _edit_config(song, lambda c: c["backbone"]["config"].update(embedding_type="learned"))
    with pytest.raises(CheckpointError, match="embedding_type"):
        from_pretrained(song)


def test_role_classmethods_check_the_class(saved):
    with pytest.raises(CheckpointError, match="holds a OneStepGenerator, not a FakeScore"):
        FakeScore.from_pretrained(saved["mlp_generator"][1])
    with pytest.raises(CheckpointError, match="holds a FakeScore, not a OneStepGenerator"):
        OneStepGenerator.from_pretrained(saved["tinyunet_fake_score"][1])


def test_missing_paths_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a valid Hub repo id"):
        from_pretrained(str(tmp_path / "nowhere" / "generator"))
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="revision"):
        from_pretrained(tmp_path, revision="main")


# The Hub, through a local stand-in server ------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with serve_hub(monkeypatch, str(tmp_path / "default-cache")) as hub:  # the CLI's cache
        yield hub


def _publish(hub: FakeHub, repo_id: str, artefact: Path, **kwargs) -> str:
    return hub.commit(repo_id, {p.name: p.read_bytes() for p in artefact.iterdir()}, **kwargs)


def test_hub_download_and_load(fake_hub: FakeHub, saved, tmp_path: Path):
    role, path = saved["songunet_generator"]
    sha = _publish(fake_hub, "org/sid-tiny", path)
    loaded = OneStepGenerator.from_pretrained("org/sid-tiny", cache_dir=tmp_path / "cache")
    assert_same_outputs(role, loaded)
    fetched = {p.rsplit("/", 1)[-1] for m, p in fake_hub.requests if "/resolve/" in p}
    assert fetched == {CONFIG_NAME, WEIGHTS_NAME}  # the card is not downloaded
    assert (tmp_path / "cache" / "models--org--sid-tiny" / "snapshots" / sha / WEIGHTS_NAME).exists()
    assert load_config("org/sid-tiny", cache_dir=tmp_path / "cache")["_class_name"] == "OneStepGenerator"


def test_hub_revision_is_honoured(fake_hub: FakeHub, saved, tmp_path: Path):
    old, old_path = saved["mlp_generator"]
    new = mlp_generator()
    with torch.no_grad():
        next(new.parameters()).mul_(-1)
    sha_old = _publish(fake_hub, "org/g", old_path)
    fake_hub.tag("org/g", "v1", sha_old)
    _publish(fake_hub, "org/g", save_pretrained(new, tmp_path / "new"))
    cache = tmp_path / "cache"
    assert_same_outputs(new, from_pretrained("org/g", cache_dir=cache))
    assert_same_outputs(old, from_pretrained("org/g", revision="v1", cache_dir=cache))
    assert_same_outputs(old, from_pretrained("org/g", revision=sha_old, cache_dir=cache))
    with pytest.raises(RevisionNotFoundError, match="no revision 'v2'"):
        from_pretrained("org/g", revision="v2", cache_dir=cache)


def test_hub_missing_repo_and_files(fake_hub: FakeHub, saved, tmp_path: Path):
    with pytest.raises(RepositoryNotFoundError, match="'org/missing' is not a local directory"):
        from_pretrained("org/missing", cache_dir=tmp_path / "cache")
    fake_hub.commit("org/config-only", {CONFIG_NAME: (saved["mlp_generator"][1] / CONFIG_NAME).read_bytes()})
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        from_pretrained("org/config-only", cache_dir=tmp_path / "cache")


def test_hub_local_files_only_uses_the_cache(fake_hub: FakeHub, saved, tmp_path: Path):
    role, path = saved["tinyunet_fake_score"]
    _publish(fake_hub, "org/fake-score", path)
    cache = tmp_path / "cache"
    with pytest.raises(LocalEntryNotFoundError):
        from_pretrained("org/fake-score", cache_dir=cache, local_files_only=True)
    FakeScore.from_pretrained("org/fake-score", cache_dir=cache)
    n_requests = len(fake_hub.requests)
    fake_hub.stop()  # nothing answers now: only the cache can serve the load
    loaded = FakeScore.from_pretrained("org/fake-score", cache_dir=cache, local_files_only=True)
    assert_same_outputs(role, loaded)
    assert len(fake_hub.requests) == n_requests


def test_push_to_hub_round_trip(fake_hub: FakeHub, saved, tmp_path: Path):
    role, _ = saved["dhariwal_generator"]
    info = role.push_to_hub("org/pushed", token="hf_fake", teacher_id="org/edm-imagenet", license="apache-2.0")
    files = fake_hub.files("org/pushed")
    assert {CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME} <= set(files)
    assert info.oid == fake_hub.head("org/pushed")
    card = files[MODEL_CARD_NAME].decode()
    assert 'OneStepGenerator.from_pretrained("org/pushed")' in card and "- org/edm-imagenet" in card
    assert json.loads(files[CONFIG_NAME])["teacher_id"] == "org/edm-imagenet"
    cache = tmp_path / "cache"
    assert_same_outputs(role, OneStepGenerator.from_pretrained("org/pushed", cache_dir=cache))
    assert ("POST", "/api/models/org/pushed/preupload/main") in fake_hub.requests

    # A second push to a new branch leaves main alone.
    other = dhariwal_generator()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    push_to_hub(other, "org/pushed", token="hf_fake", revision="dev", commit_message="try")
    assert fake_hub.head("org/pushed") == info.oid
    assert_same_outputs(other, from_pretrained("org/pushed", revision="dev", cache_dir=cache))
    assert_same_outputs(role, from_pretrained("org/pushed", revision="main", cache_dir=cache))


# Images and the sample CLI ---------------------------------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    """Decode the PNGs that write_png makes (8-bit, no interlace, filter 0): enough to check the pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(tag + body)
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and not rows[:, 0].any()
    return rows[:, 1:].reshape(height, width, channels)


def test_write_png_and_image_grid(tmp_path: Path):
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (5, 7, 1), (5, 7, 3), (2, 3, 4)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = read_png(write_png(tmp_path / "x.png", image))
        assert np.array_equal(decoded.reshape(image.shape), image)
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 5), np.uint8))
    x = torch.linspace(-1.2, 1.2, 5 * 3 * 2 * 4).reshape(5, 3, 2, 4)
    grid = image_grid(x)
    assert grid.shape == (2 * 2, 3 * 4, 3) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 0 and grid[2, 4, 2] == 255 and not grid[2:, 8:].any()  # clipped; empty cell black


def test_cli_sample_image_grid_from_directory_and_hub(fake_hub: FakeHub, saved, tmp_path: Path, capsys):
    role, path = saved["dhariwal_generator"]
    out = tmp_path / "grid.png"
    assert (
        cli_main(["sample", "--model", str(path), "--n", "5", "--seed", "3", "--labels", "1", "2", "--out", str(out)])
        == 0
    )
    with torch.no_grad():
        expected = role.sample(5, torch.tensor([1, 2, 1, 2, 1]), rng=torch.Generator().manual_seed(3))
    assert np.array_equal(read_png(out), image_grid(expected))
    assert "wrote" in capsys.readouterr().out

    sha = _publish(fake_hub, "org/cli", path)
    _publish(fake_hub, "org/cli", saved["songunet_generator"][1], replace=True)
    out2 = tmp_path / "hub.png"
    cli_main(
        [
            "sample",
            "--model",
            "org/cli",
            "--revision",
            sha,
            "--n",
            "5",
            "--seed",
            "3",
            "--labels",
            "1",
            "2",
            "--out",
            str(out2),
        ]
    )
    assert out2.read_bytes() == out.read_bytes()


def test_cli_sample_scatter_for_2d_generators(saved, tmp_path: Path):
    out = tmp_path / "points.png"
    assert cli_main(["sample", "--model", str(saved["mlp_generator"][1]), "--n", "200", "--out", str(out)]) == 0
    image = read_png(out)
    assert image.shape == (512, 512, 3) and (image != 255).any()
    with pytest.raises(SystemExit, match="unconditional"):
        cli_main(["sample", "--model", str(saved["mlp_generator"][1]), "--labels", "1", "--out", str(out)])


# Compatibility and file modes -----------------------------------------------------------------------------------

FIXTURES_0_1_0 = FIXTURES / "artefacts-0.1.0"


def test_artefacts_of_0_1_0_still_load():
    """Artefacts written by scoredistill 0.1.0 (before the Hub layer moved onto ModelHubMixin) load unchanged."""
    want = load_file(str(FIXTURES_0_1_0 / "expected_outputs.safetensors"))
    G = OneStepGenerator.from_pretrained(FIXTURES_0_1_0 / "generator-tinyunet")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        G(z, torch.tensor([0, 2])), want["generator"], rtol=1e-5, atol=1e-6
    )  # same weights; kernels may round differently
    assert load_config(FIXTURES_0_1_0 / "generator-tinyunet")["teacher_id"] == "org/teacher"
    F = FakeScore.from_pretrained(FIXTURES_0_1_0 / "fake-score-songunet")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        F(x, torch.tensor([0.5, 2.0])), want["fake_score"], rtol=1e-5, atol=1e-6
    )  # same weights; kernels may round differently
    P = Precond.from_pretrained(FIXTURES_0_1_0 / "precond-mlp")
    x2 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        P(x2, torch.full((4,), 1.5)), want["precond"], rtol=1e-5, atol=1e-6
    )  # same weights; kernels may round differently


def test_saved_artefacts_follow_the_umask(tmp_path: Path):
    """A generator saved to a shared folder is readable by the group, as any file the user saves."""
    import os

    G = OneStepGenerator(Precond(MLP(dim=2, hidden=8)), sample_shape=(2,))
    old = os.umask(0o002)
    try:
        path = save_pretrained(G, tmp_path / "shared" / "g")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o775
    for name in (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME):
        assert (path / name).stat().st_mode & 0o777 == 0o664, name
