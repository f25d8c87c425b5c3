#!/usr/bin/env python
"""Generate the synthetic shapes dataset: ``python tools/make_synthetic.py --root data/synthetic --num-train 1024``.

Defaults are those of ``data.synthetic`` in configs/base.yaml. Training on it later needs the same parameters in
the config (``data.synthetic.num_train=1024 ...``), otherwise ``build_dataset`` regenerates it to match.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.config import load_config  # noqa: E402
from detector.data.synthetic import SHAPES, ensure_synthetic  # noqa: E402


def main(argv=None) -> int:
    defaults = load_config().data
    syn = defaults.synthetic
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=defaults.root, help=f"output folder (default: {defaults.root})")
    parser.add_argument("--num-train", type=int, default=syn.num_train)
    parser.add_argument("--num-val", type=int, default=syn.num_val)
    parser.add_argument("--image-size", type=int, nargs=2, default=list(syn.image_size), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=syn.num_classes, choices=range(1, len(SHAPES) + 1),
                        help=f"shape classes, the first N of {', '.join(SHAPES)}")
    parser.add_argument("--max-objects", type=int, default=syn.max_objects)
    parser.add_argument("--seed", type=int, default=syn.seed)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = ensure_synthetic(args.root, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                            num_classes=args.num_classes, max_objects=args.max_objects, seed=args.seed)
    print(f"synthetic dataset ready in {root} ({args.num_train}+{args.num_val} images, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
