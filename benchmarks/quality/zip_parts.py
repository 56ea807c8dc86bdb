"""Split an EDM-style dataset zip into parts, and join the parts back, byte for byte per image.

    python benchmarks/quality/zip_parts.py split cifar10-train-jpeg75.zip --parts 2 --out .devdata/train
    python benchmarks/quality/zip_parts.py join .devdata/train-0of2.zip .devdata/train-1of2.zip --out /tmp/train.zip

Why: a GPU run's inputs are limited in size (the 53 MB CIFAR-10 training zip and this repository do not fit in one
run), so the study carries the parts in separate calls and joins them on the GPU machine. Images are dealt to the
parts in turn, so each part of a class-sorted zip holds every class; each part is itself a valid dataset zip (its
own ``dataset.json``), which the study's reference statistics read one by one and merge exactly. ``join`` writes
the images in name order, the order the dataset reader uses, so the joined zip reads like the original (same
images, names, labels and order).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

LABELS = "dataset.json"
ORDER = "parts.json"  # which part of how many (and of which zip) this is: join checks that none is missing


def split(src: Path, parts: int, out: str) -> list[Path]:
    with zipfile.ZipFile(src) as zin:
        names = sorted(n for n in zin.namelist() if n != LABELS and not n.endswith("/"))
        labels = dict(json.loads(zin.read(LABELS))["labels"] or []) if LABELS in zin.namelist() else None
        paths = []
        for k in range(parts):
            mine = names[k::parts]
            path = Path(f"{out}-{k}of{parts}.zip")
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
                for name in mine:
                    zout.writestr(zin.getinfo(name), zin.read(name))
                if labels is not None:
                    zout.writestr(LABELS, json.dumps({"labels": [[n, labels[n]] for n in mine if n in labels]}))
                zout.writestr(ORDER, json.dumps({"part": k, "parts": parts, "source": src.name}))
            paths.append(path)
    return paths


def join(parts: list[Path], out: Path) -> Path:
    entries, labels, seen = {}, [], set()
    for path in parts:
        with zipfile.ZipFile(path) as zin:
            meta = json.loads(zin.read(ORDER))
            seen.add(meta["part"])
            for info in zin.infolist():
                if info.filename not in (LABELS, ORDER):
                    entries[info.filename] = (info, zin.read(info))
            if LABELS in zin.namelist():
                labels += json.loads(zin.read(LABELS))["labels"]
    expected = set(range(meta["parts"]))
    if seen != expected:
        raise SystemExit(f"join: parts {sorted(expected - seen)} of {meta['parts']} are missing")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for name in sorted(entries):
            info, data = entries[name]
            zout.writestr(info, data)
        if labels:
            zout.writestr(LABELS, json.dumps({"labels": sorted(labels)}))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("--parts", type=int, default=2)
    s.add_argument("--out", required=True, help="path prefix: PREFIX-KofN.zip")
    j = sub.add_parser("join")
    j.add_argument("parts", type=Path, nargs="+")
    j.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "split":
        for path in split(args.src, args.parts, args.out):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(f"wrote {join(args.parts, args.out)}")


if __name__ == "__main__":
    main()
