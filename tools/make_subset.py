#!/usr/bin/env python
"""Write a dataset subset, selected as ``build_dataset`` selects training images: a COCO JSON
keeping the category ids, or a VOC image-name list (``data.image_ids_file``); how to train on
either: data/README.md ("Subsets").

    python tools/make_subset.py --format voc --root data/VOCdevkit --split 2007/trainval --classes
    dog cat --out a.txt
"""

import json
import sys
from pathlib import Path

from detector.config import tool_parser
from detector.data.base import sanitize_records
from detector.data.coco import load_coco_json, parse_coco
from detector.data.subsets import subset_coco_json, subset_records
from detector.data.voc import parse_voc
from detector.engine.outputs import check_output, write_output
from detector.errors import run_tool


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--format", required=True, choices=("coco", "voc"))
    parser.add_argument("--ann", help="coco: instances_<split>.json to subset")
    parser.add_argument("--root", help="voc: the folder holding VOCdevkit (or VOCdevkit itself)")
    parser.add_argument("--split", help="voc: e.g. 2007/trainval or 2007/trainval+2012/trainval")
    parser.add_argument("--classes", nargs="+", help="keep only these class names")
    parser.add_argument(
        "--keep-empty", action="store_true", help="keep images without any (non-crowd) kept box"
    )
    parser.add_argument(
        "--image-ids-file", help="keep only the ids listed in this file (one a line)"
    )
    parser.add_argument(
        "--fraction", type=float, help="keep a random fraction (0, 1] of the images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --fraction draw")
    parser.add_argument("--max-images", type=int, help="keep at most this many images")
    parser.add_argument("--out", required=True, help="output file (.json for coco, .txt for voc)")
    parser.add_argument(
        "--overwrite", action="store_true", help="let --out replace a file that is there"
    )
    args = parser.parse_args(argv)
    if args.format == "coco" and not args.ann:
        parser.error("--format coco needs --ann")
    if args.format == "voc" and not (args.root and args.split):
        parser.error("--format voc needs --root and --split")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    # before any work: the rule of every tool's output (docs/runs.md); --ann a.json --out a.json is
    # refused
    out = check_output(args.out, "--out", [args.ann, args.image_ids_file], args.overwrite)
    if args.format == "coco":
        coco = load_coco_json(args.ann)
        parsed = parse_coco(coco, Path(args.ann).parent, args.ann)
    else:
        parsed = parse_voc(args.root, args.split, args.split)
    parsed = subset_records(
        sanitize_records(parsed),
        keep_classes=args.classes,
        keep_empty=args.keep_empty,
        image_ids_file=args.image_ids_file,
        fraction=args.fraction,
        seed=args.seed,
        max_images=args.max_images,
    )
    records = parsed.records
    if args.format == "coco":
        cat_ids = list(parsed.label_to_cat_id.values()) if args.classes else None
        subset = subset_coco_json(coco.dataset, {r.image_id for r in records}, cat_ids)
        write_output(out, json.dumps(subset), args.overwrite)
        print(
            f"{args.out}: {len(subset['images'])} images, "
            f"{len(subset['annotations'])} annotations, "
            f"{len(subset['categories'])} categories"
        )
    else:
        write_output(out, "".join(f"{Path(r.file_name).stem}\n" for r in records), args.overwrite)
        print(f"{args.out}: {len(records)} image ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
