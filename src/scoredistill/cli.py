"""The ``scoredistill`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .analytic import GaussianMixture
    from .demo import run_demo, write_scatter_png

    print(f"Distilling an 8-Gaussian ring into a one-step MLP generator: {args.steps} steps of {args.batch_size} "
          f"images, alpha={args.alpha}, seed={args.seed} (CPU)")
    result = run_demo(steps=args.steps, batch_size=args.batch_size, lr=args.lr, alpha=args.alpha, seed=args.seed,
                      progress=not args.quiet)
    mixture = GaussianMixture.ring(8)
    print(f"\nmass per mode     {'  '.join(f'm{k}' for k in range(8))}")
    for name, mass in (("true", result.true_mass), ("teacher (ODE)", result.teacher_mass),
                       ("student (1 step)", result.student_mass)):
        print(f"{name:<17} " + " ".join(f"{m:.3f}" for m in mass))
    worst = max(abs(s - t) for s, t in zip(result.student_mass, result.true_mass))
    print(f"\nlargest mode-mass error of the student: {worst:.3f}")
    print(f"energy distance to true samples: teacher (32-step Heun ODE, 63 NFE) {result.teacher_energy:.4f}, "
          f"student (1 NFE) {result.student_energy:.4f}")
    print(f"distillation took {result.seconds:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = mixture.sample(2000, rng=torch.Generator().manual_seed(0))
    png = write_scatter_png(out / "demo_samples.png", [(truth, (170, 170, 170)), (result.samples[:2000], (200, 30, 30))])
    print(f"wrote {png} (grey: true samples, red: student samples)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scoredistill`` console script."""
    parser = argparse.ArgumentParser(prog="scoredistill", description="One-step generators by score distillation.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="distil an analytic 2-D Gaussian mixture on the CPU (about a minute)")
    demo.add_argument("--steps", type=int, default=1500, help="distillation iterations")
    demo.add_argument("--batch-size", type=int, default=256, help="images per iteration")
    demo.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate of both networks")
    demo.add_argument("--alpha", type=float, default=1.2, help="SiD's alpha")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo-out", help="directory for the samples PNG")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
