#!/usr/bin/env python
"""Generate the synthetic dataset of the config's ``data.synthetic`` keys (``--cfg``, ``key=value``,
then the flags) ahead of training, exactly as training would; a folder holding it is reused, other
content refused (exit 1).

    # the hard preset, in data/synthetic_hard
    python tools/make_synthetic.py --cfg data/synthetic_hard.yaml
"""

import sys
import time

from detector.config import load_config, tool_parser
from detector.data.synthetic import SHAPES, ensure_synthetic
from detector.errors import run_tool

# shortcuts for data.synthetic.*
FLAGS = ("num_train", "num_val", "image_size", "num_classes", "max_objects", "seed")


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__, "optional", example="data.synthetic.min_size=12")
    parser.add_argument("--root", help="output folder (default: data.root of the config)")
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--num-val", type=int)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument(
        "--num-classes",
        type=int,
        choices=range(1, len(SHAPES) + 1),
        help=f"shape classes, the first N of {', '.join(SHAPES)}",
    )
    parser.add_argument("--max-objects", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    overrides += [
        f"data.synthetic.{key}={getattr(args, key)}"
        for key in FLAGS
        if getattr(args, key) is not None
    ]
    if args.root is not None:
        overrides.append(f"data.root={args.root}")
    data = load_config(args.cfg, overrides).data
    start = time.perf_counter()
    root = ensure_synthetic(data.root, **data.synthetic.to_dict())
    print(
        f"synthetic dataset ready in {root} ({data.synthetic.num_train}+{data.synthetic.num_val} "
        f"images, {time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
