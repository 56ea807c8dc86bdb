"""torch.compile warm-up with a persistent compile cache: a cold run, then a second process reusing the artefacts.

Each run is a fresh process (nothing in memory carries over) that builds a SiDA distiller with ``compile``, runs
``--steps`` iterations and reports the seconds of the first two (the warm-up: compilation, or loading compiled
code from ``DistillConfig.compile_cache_dir``) and the median of the rest.

    python benchmarks/bench_compile_cache.py --preset imagenet-64x64 --compile network --batch 32   # one GPU
    python benchmarks/bench_compile_cache.py --tiny --device cpu                                    # a CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def child(args: argparse.Namespace) -> None:
    from scoredistill import (
        AdversarialEncoderLoss,
        DistillConfig,
        Distiller,
        DSMLoss,
        FakeScore,
        OneStepGenerator,
        SiDLoss,
        Teacher,
    )
    from scoredistill.networks.dhariwal_unet import DhariwalUNet, DhariwalUNetConfig
    from scoredistill.networks.toy import TinyUNet
    from scoredistill.roles.precond import Precond, edm_precond

    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.tiny:
        teacher = Teacher(Precond(TinyUNet(img_channels=3, channels=16)).to(device), sample_shape=(3, 16, 16))
    elif args.tiny_adm:  # the ImageNet-64 network's family (attention, both compiled entry points), CPU-sized
        config = DhariwalUNetConfig(
            img_resolution=16, model_channels=64, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,)
        )
        teacher = Teacher(Precond(DhariwalUNet(config)).to(device))
    else:
        teacher = Teacher(edm_precond(args.preset).to(device))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=0)]
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = DistillConfig.sida(
        batch_size=args.batch,
        generator_start_nimg=0,
        precision=precision,
        compile=args.compile,
        compile_cache_dir=args.cache,
        channels_last=device.type == "cuda",
    )
    shape = G.sample_shape

    def data():
        g = torch.Generator(device).manual_seed(0)
        x = torch.rand(args.batch, *shape, generator=g, device=device) * 2 - 1
        labels = None
        if G.label_dim:
            labels = torch.nn.functional.one_hot(torch.arange(args.batch, device=device) % G.label_dim, G.label_dim)
        while True:
            yield x, None if labels is None else labels.float()

    d = Distiller(teacher, G, fake, losses, config, data=data())
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        logs = d.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(f"step {len(times)}: {times[-1]:.1f} s", flush=True)  # progress, should a cold run outlast a limit
    finite = all(bool(torch.isfinite(v)) for v in logs.values())
    counters = torch._dynamo.utils.counters
    print(
        json.dumps(
            {
                "warmup_s": sum(times[:2]),
                "step_s": statistics.median(times[2:]),
                "finite": finite,
                "graphs": counters["stats"]["unique_graphs"],  # whole-network graphs Dynamo traced
                "fx_cache_hits": counters["inductor"]["fxgraph_cache_hit"],  # compiled code loaded from the cache
                "fx_cache_misses": counters["inductor"]["fxgraph_cache_miss"],  # compiled here
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10-32x32-uncond")
    p.add_argument("--tiny", action="store_true", help="a 16x16 TinyUNet instead of the preset (CPU checks)")
    p.add_argument("--tiny-adm", action="store_true", help="a 16x16, 64-channel DhariwalUNet (CPU checks)")
    p.add_argument("--compile", default="network", choices=["blocks", "network"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--cache", help="cache folder (default: a fresh temporary one, so the first run is cold)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or str(Path(tmp) / "compile-cache")
        argv = [sys.executable, __file__, "--child", "--cache", cache, *sys.argv[1:]]
        runs = []
        for name in ("cold", "cached"):
            with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child_process:
                assert child_process.stdout is not None
                lines = []
                for line in child_process.stdout:
                    print(f"  {name} {line.rstrip()}", flush=True)
                    lines.append(line)
            if child_process.returncode:
                raise SystemExit(f"the {name} run failed (exit status {child_process.returncode})")
            runs.append({"run": name, **json.loads(lines[-1])})
            print(runs[-1], flush=True)
    label = "TinyUNet 16x16" if args.tiny else "DhariwalUNet 16x16, 64 ch" if args.tiny_adm else args.preset
    cold, cached = runs
    print(
        f"{label}, compile={args.compile}, batch {args.batch}, {args.device}: warm-up {cold['warmup_s']:.1f} s cold, "
        f"{cached['warmup_s']:.1f} s with the cache; steps {cold['step_s']:.3f} / {cached['step_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
