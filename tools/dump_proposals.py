#!/usr/bin/env python
"""Dump the RPN proposals of a trained model, for Fast R-CNN training on precomputed proposals.

    python tools/dump_proposals.py --cfg smoothl1.yaml --ckpt runs/smoothl1/checkpoints/best.pth \\
        --out data/proposals_train.json --split train [key=value ...]

Every image of the split (never ``eval.max_images``) at the RPN's test settings, as ``{"<image_id>":
[[x1, y1, x2, y2, objectness], ...]}`` best first, in the original image's pixels (to 0.01). Train
with ``model.proposals=precomputed model.proposal_file=FILE.json``.
"""

import json
import sys
from pathlib import Path

import torch

from detector.boxes import scale_boxes
from detector.config import ConfigError, load_config, tool_parser
from detector.engine.outputs import check_output, write_output
from detector.errors import run_tool


def dump_proposals(
    cfg, checkpoint: Path, split: str, device: torch.device, trust: bool = False
) -> dict[str, list[list[float]]]:
    """The proposals of every image of ``split`` in the format above; ``trust``:
    --trust-checkpoint."""
    from detector.data.build import build_dataset, make_dataloader
    from detector.data.transforms import build_transforms
    from detector.engine.checkpoint import load_model_weights
    from detector.modeling.detector import build_detector

    dataset = build_dataset(cfg, split, transforms=False)
    # deterministic test-time resize, also for the train split
    dataset.transforms = build_transforms(cfg, "val")
    loader = make_dataloader(
        dataset,
        train=False,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.loader.num_workers,
    )
    model = build_detector(cfg, num_classes=len(dataset.classes) - 1)
    if model.rpn is None:
        raise ConfigError(
            "dump_proposals: the config has model.proposals=precomputed; use the config of the "
            "model whose RPN made the checkpoint (model.proposals=rpn)"
        )
    load_model_weights(model, checkpoint, cfg.to_dict(), trust=trust)
    model.to(device).eval()
    out: dict[str, list[list[float]]] = {}
    for images, targets in loader:
        for image, target, (boxes, scores) in zip(images, targets, model.propose(images)):
            orig_h, orig_w = target["orig_size"]
            boxes = scale_boxes(boxes, orig_w / image.shape[2], orig_h / image.shape[1])
            rows = torch.cat([boxes, scores[:, None]], dim=1).cpu()  # [P,5]
            out[str(target["image_id"])] = [
                [round(v, 2) for v in row[:4]] + [round(row[4], 4)] for row in rows.tolist()
            ]
    return out


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__, "required", example="train.device=cpu", checkpoint="a --ckpt")
    parser.add_argument(
        "--ckpt", type=Path, required=True, help="checkpoint .pth of a model trained with an RPN"
    )
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument(
        "--overwrite", action="store_true", help="let --out replace a file that is there"
    )
    parser.add_argument(
        "--split", choices=("train", "val"), default="train", help="dataset split (default: train)"
    )
    args = parser.parse_intermixed_args(argv)
    from detector.engine.runtime import select_device

    cfg = load_config(args.cfg, args.overrides)
    # before any work: the rule of every tool's output (docs/runs.md)
    out = check_output(args.out, "--out", [args.ckpt, *args.cfg], args.overwrite)
    proposals = dump_proposals(
        cfg, args.ckpt, args.split, select_device(cfg.train.device), args.trust_checkpoint
    )
    write_output(out, json.dumps(proposals), args.overwrite)
    count = sum(len(v) for v in proposals.values())
    print(f"wrote {count} proposals of {len(proposals)} images ({args.split}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
