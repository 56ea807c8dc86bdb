"""Train a small EDM teacher with the library's DSM loss: the CIFAR-10 quality study's teachers.

    python benchmarks/quality/train_teacher.py --data cifar10-train-jpeg75.zip --outdir runs/teacher-cond \
        --label-dim 10 --kimg 2460

Defaults are the settings of the shared unconditional teacher (``cifar10-uncond-ddpmpp32``): the DDPM++ (VP)
network of the ``cifar10-32x32-*`` presets with 32 model channels, 3 blocks per resolution, dropout 0.13 and no
augmentation labels; EDM's loss and noise levels (P_mean -1.2, P_std 1.2, sigma_data 0.5); Adam (0.9, 0.999),
lr 1e-3 with a 1 Mimg linear ramp-up, batch 512, bf16 autocast on CUDA, random x-flips, EMA half-life 500 kimg
with a 0.05 ramp-up. ``--label-dim 10`` gives the conditional teacher of the same size (labels from the
dataset's ``dataset.json``; EDM's classifier-free label dropout is off, as in EDM's CIFAR-10 runs).

Every ``--ckpt-kimg`` images (and at the end, and on Ctrl-C) the network, its EMA, the optimiser, the image
counter and the data stream's position go to ``OUTDIR/training_state``; running the same command again resumes
there and continues the same run. The EMA weights are written as an artefact (``OUTDIR/teacher``, float16 by
default), loadable with ``from_pretrained(..., expected_class=Precond)`` and as the example scripts' ``--teacher``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from scoredistill.data import ImageZipDataset, real_batches
from scoredistill.losses.functional import dsm_loss
from scoredistill.roles.precond import edm_precond
from scoredistill.schedules import LogNormal
from scoredistill.training.checkpoint import (
    apply_networks,
    has_training_state,
    read_training_state,
    save_training_state,
)
from scoredistill.training.distill import sanitize_grads
from scoredistill.training.ema import EMA


def build(label_dim: int, model_channels: int, num_blocks: int, dropout: float) -> torch.nn.Module:
    preset = "cifar10-32x32-cond" if label_dim else "cifar10-32x32-uncond"
    return edm_precond(
        preset,
        model_channels=model_channels,
        num_blocks=num_blocks,
        dropout=dropout,
        augment_dim=0,
        label_dim=label_dim,
    )


def train(args: argparse.Namespace) -> Path:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    net = build(args.label_dim, args.model_channels, args.num_blocks, args.dropout).to(device).train()
    ema = EMA(net, halflife_nimg=args.ema_halflife_kimg * 1000, rampup_ratio=args.ema_rampup or None)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    dataset = ImageZipDataset(args.data, use_labels=args.label_dim > 0, label_dim=args.label_dim or None)
    data = real_batches(
        dataset, args.batch, seed=args.seed, device=device, label_dim=args.label_dim, num_workers=args.workers
    )
    sigmas = LogNormal()
    outdir, nimg, train_s = Path(args.outdir), 0, 0.0
    ckpt = outdir / "training_state"
    modules = {"net": net, "ema": ema.module}
    if has_training_state(ckpt):
        loaded = read_training_state(ckpt, modules=modules, map_location=device)
        apply_networks(loaded, modules)
        opt.load_state_dict(loaded.state["opt"])
        data.load_state_dict(loaded.state["data"])
        nimg = int(loaded.state["nimg"])
        train_s = float(loaded.state.get("train_s", 0.0))  # the training time of the earlier processes
        print(f"resumed from {ckpt} at {nimg} images")

    def save() -> None:
        seconds = train_s + time.perf_counter() - t0  # to this step, across resumes
        state = {
            "opt": opt.state_dict(),
            "data": data.state_dict(),
            "nimg": nimg,
            "train_s": seconds,
            "args": vars(args),
        }
        save_training_state(ckpt, modules=modules, state=state)

    rng = torch.Generator(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 and device.type == "cuda" else None
    total, every_log, every_ckpt = (round(k * 1000) for k in (args.kimg, args.log_kimg, args.ckpt_kimg))
    next_log, next_ckpt = nimg + every_log, nimg + every_ckpt
    t0, losses = time.perf_counter(), []
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        while nimg < total:
            step_seed = args.seed * 1_000_003 + nimg  # the step's randomness depends on where it is, not on resumes
            rng.manual_seed(step_seed)
            torch.manual_seed(step_seed)  # dropout
            x, labels = next(data)
            flip = torch.rand(x.shape[0], 1, 1, 1, generator=rng, device=device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
            sigma = sigmas.sample(x.shape[0], device=device, rng=rng)
            noise = torch.randn(x.shape, generator=rng, device=device)
            for group in opt.param_groups:  # linear ramp-up of the learning rate
                group["lr"] = args.lr * min(1.0, (nimg + args.batch) / max(args.rampup_kimg * 1000, 1))
            with autocast or torch.autocast(device.type, enabled=False):
                denoised = net(x + sigma.view(-1, 1, 1, 1) * noise, sigma, labels)
            loss = dsm_loss(denoised.float(), x, sigma).sum() / x.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sanitize_grads(list(net.parameters()))  # EDM's guard against the odd non-finite gradient
            opt.step()
            ema.update(net, nimg=nimg, batch=args.batch)
            nimg += args.batch
            losses.append(loss.detach())
            if nimg >= next_log or nimg >= total:
                mean = float(torch.stack(losses).mean())
                seconds = time.perf_counter() - t0
                train_s += seconds
                print(json.dumps({"nimg": nimg, "loss": mean, "images_per_s": len(losses) * args.batch / seconds}))
                if not math.isfinite(mean):
                    raise FloatingPointError(f"the loss is {mean} at {nimg} images: lower --lr")
                losses, t0, next_log = [], time.perf_counter(), nimg + every_log
            if nimg >= next_ckpt:
                save()
                next_ckpt = nimg + every_ckpt
    except KeyboardInterrupt:
        save()
        raise
    save()
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    training = {
        "lr": args.lr,
        "batch": args.batch,
        "nimg": nimg,
        "train_s": round(train_s, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "recipe": "EDM VP loss (P_mean -1.2, P_std 1.2), Adam betas (0.9, 0.999), lr ramp-up "
        f"{args.rampup_kimg} kimg, EMA half-life {args.ema_halflife_kimg} kimg with ramp-up {args.ema_rampup}, "
        f"x-flips{', bf16 autocast' if autocast else ''}; EMA weights stored as {args.dtype}",
        "data": Path(args.data).name,
    }
    ema.module.save_pretrained(outdir / "teacher", training=training, dtype=dtype)
    return outdir / "teacher"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="EDM-style dataset zip (labels from its dataset.json)")
    p.add_argument("--outdir", required=True)
    p.add_argument("--label-dim", type=int, default=10, help="classes (0: unconditional)")
    p.add_argument("--kimg", type=float, default=2460, help="training length in thousands of images")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rampup-kimg", type=float, default=1000, help="linear learning-rate ramp-up")
    p.add_argument("--ema-halflife-kimg", type=float, default=500)
    p.add_argument("--ema-rampup", type=float, default=0.05, help="EDM's EMA ramp-up ratio (0: off)")
    p.add_argument("--model-channels", type=int, default=32)
    p.add_argument("--num-blocks", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.13)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on CUDA")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="stored EMA weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-kimg", type=float, default=50)
    p.add_argument("--ckpt-kimg", type=float, default=500)
    p.add_argument("--workers", type=int, default=4, help="image-decoding processes")
    p.add_argument("--device", default=None)
    path = train(p.parse_args(argv))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
