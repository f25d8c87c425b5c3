#!/usr/bin/env python
"""Generate a synthetic shapes dataset ahead of training, exactly as training would generate it.

    python tools/make_synthetic.py                                   # the default preset, in data/synthetic
    python tools/make_synthetic.py --cfg data/synthetic_hard.yaml    # the hard preset, in data/synthetic_hard
    python tools/make_synthetic.py --root data/synthetic1024 --num-train 1024 data.synthetic.noise=4

The parameters are the ``data.synthetic`` keys of the config (``--cfg``, ``key=value``, then the flags below);
training later needs the same keys and folder. A folder holding the dataset of these keys is reused; any other
content is refused (exit 1, one line) and left as it is.
"""
import argparse
import sys
import time

from detector.config import load_config
from detector.data.synthetic import SHAPES, ensure_synthetic
from detector.errors import run_tool

FLAGS = ("num_train", "num_val", "image_size", "num_classes", "max_objects", "seed")  # shortcuts for data.synthetic.*


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", action="append", default=[], help="config file or name in configs/ (repeatable)")
    parser.add_argument("--root", help="output folder (default: data.root of the config)")
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--num-val", type=int)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, choices=range(1, len(SHAPES) + 1),
                        help=f"shape classes, the first N of {', '.join(SHAPES)}")
    parser.add_argument("--max-objects", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.synthetic.min_size=12")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    overrides += [f"data.synthetic.{key}={getattr(args, key)}" for key in FLAGS if getattr(args, key) is not None]
    if args.root is not None:
        overrides.append(f"data.root={args.root}")
    return run_tool(lambda: run(args.cfg, overrides))


def run(cfgs: list[str], overrides: list[str]) -> int:
    data = load_config(cfgs, overrides).data
    start = time.perf_counter()
    root = ensure_synthetic(data.root, **data.synthetic.to_dict())
    print(f"synthetic dataset ready in {root} ({data.synthetic.num_train}+{data.synthetic.num_val} images, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
