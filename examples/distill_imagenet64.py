"""SiD / SiDA / SiD²A on class-conditional ImageNet 64x64 with EDM's ADM teacher.

    torchrun --nproc_per_node=8 examples/distill_imagenet64.py --method sida \\
        --teacher edm-imagenet-64x64-cond-adm.pkl --data imagenet-64x64.zip --outdir runs/in64-sida

All options: ``python examples/distill_edm.py --help``.
"""

from distill_edm import main

if __name__ == "__main__":
    main(recipe="imagenet64")
