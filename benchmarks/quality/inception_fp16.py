"""How much float16 Inception weights move FID: the same two real sets scored with float32 and float16 weights.

    python benchmarks/quality/inception_fp16.py A.zip B.zip [--max-images 1000] [--device cpu]

Both runs compute in float32; only the stored weights differ (the float16 copy that
``scoredistill fid export-inception`` writes, 44 MB instead of 87 MB). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from scoredistill.metrics import dataset_stats, export_inception_safetensors, frechet_distance, load_inception


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="dataset zip or image folder")
    p.add_argument("b", help="dataset zip or image folder")
    p.add_argument("--max-images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fp16 = export_inception_safetensors(Path(tmp) / "inception-fp16.safetensors")
        record: dict = {"a": args.a, "b": args.b, "max_images": args.max_images}
        features = {}
        for name, source in (("float32", None), ("float16", fp16)):
            net = load_inception(source, device=args.device)
            sa, fa = dataset_stats(args.a, net, batch_size=args.batch, max_images=args.max_images, device=args.device,
                                   return_features=True, progress=False)  # fmt: skip
            sb, fb = dataset_stats(args.b, net, batch_size=args.batch, max_images=args.max_images, device=args.device,
                                   return_features=True, progress=False)  # fmt: skip
            record[f"fid_{name}"] = frechet_distance(sa, sb)
            features[name] = torch.cat([fa, fb])
        ref = features["float32"]
        record["feature_rel_error"] = float((features["float16"] - ref).norm() / ref.norm())
        record["fid_difference"] = record["fid_float16"] - record["fid_float32"]
        record["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        record["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
