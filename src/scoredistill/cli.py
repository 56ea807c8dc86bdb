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

    print(
        f"Distilling an 8-Gaussian ring into a one-step MLP generator: {args.steps} steps of {args.batch_size} "
        f"images, alpha={args.alpha}, seed={args.seed} ({args.device}, {args.precision})"
    )
    result = run_demo(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        alpha=args.alpha,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        progress=not args.quiet,
    )
    mixture = GaussianMixture.ring(8)
    print(f"\nmass per mode     {'  '.join(f'm{k}' for k in range(8))}")
    for name, mass in (
        ("true", result.true_mass),
        ("teacher (ODE)", result.teacher_mass),
        ("student (1 step)", result.student_mass),
    ):
        print(f"{name:<17} " + " ".join(f"{m:.3f}" for m in mass))
    worst = max(abs(s - t) for s, t in zip(result.student_mass, result.true_mass))
    print(f"\nlargest mode-mass error of the student: {worst:.3f}")
    print(
        f"energy distance to true samples: teacher (32-step Heun ODE, 63 NFE) {result.teacher_energy:.4f}, "
        f"student (1 NFE) {result.student_energy:.4f}"
    )
    print(
        f"samples within 3 std of a mode: truth {mixture.near_mode(mixture.sample(4000)):.3f}, "
        f"teacher {result.teacher_near:.3f}, student {result.student_near:.3f} "
        "(a continuous one-step map from 2-D noise must leave some mass between the modes)"
    )
    print(f"distillation took {result.seconds:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = mixture.sample(2000, rng=torch.Generator().manual_seed(0))
    png = write_scatter_png(
        out / "demo_samples.png", [(truth, (170, 170, 170)), (result.samples[:2000], (200, 30, 30))]
    )
    print(f"wrote {png} (grey: true samples, red: student samples)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .generator import OneStepGenerator

    if args.n < 1:
        raise SystemExit("--n must be at least 1")
    G = OneStepGenerator.from_pretrained(args.model, revision=args.revision, device=args.device)
    labels = None
    if args.labels:
        if G.label_dim == 0:
            raise SystemExit(f"{args.model} is unconditional: drop --labels")
        bad = [c for c in args.labels if not 0 <= c < G.label_dim]
        if bad:
            raise SystemExit(f"--labels {bad} out of range: this generator has {G.label_dim} classes")
        # A list shorter than --n repeats (--labels 3 gives only class 3).
        labels = torch.tensor(args.labels, device=args.device).repeat(-(-args.n // len(args.labels)))[: args.n]
    rng = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        x = G.sample(args.n, labels, rng=rng, device=args.device).cpu()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        from .imageio import image_grid, write_png

        write_png(out, image_grid(x, cols=args.cols))
    elif x.ndim == 2 and x.shape[1] == 2:
        from .demo import write_scatter_png

        extent = 1.1 * float(x.abs().max().clamp_min(1e-3))
        write_scatter_png(out, [(x, (200, 30, 30))], extent=extent)
    else:
        raise SystemExit(f"cannot draw samples of shape {tuple(G.sample_shape)}: only images [C, H, W] and 2-D points")
    print(f"wrote {out}: {args.n} samples of {args.model}, seed {args.seed}")
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
    demo.add_argument("--device", default="cpu", help="where the networks train, e.g. cuda")
    demo.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="network compute precision")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    sample = sub.add_parser("sample", help="draw samples from a saved or Hub generator into a PNG grid")
    sample.add_argument("--model", required=True, help="artefact directory or Hub repo id (org/name)")
    sample.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="class labels, repeated up to --n (default: uniform random for conditional models)",
    )
    sample.add_argument("--cols", type=int, default=None, help="images per grid row (default: square grid)")
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--out", default="grid.png", help="PNG file to write")
    sample.set_defaults(func=_sample)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
