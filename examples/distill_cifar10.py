"""SiD / SiDA / SiD²A on CIFAR-10 32x32 (unconditional by default; --recipe cifar10-cond for labels).

    python examples/distill_cifar10.py --method sida --teacher edm-cifar10-32x32-uncond-vp.pkl \\
        --data cifar10-32x32.zip --outdir runs/c10-sida

All options: ``python examples/distill_edm.py --help``.
"""

from distill_edm import main

if __name__ == "__main__":
    main(recipe="cifar10-uncond")
