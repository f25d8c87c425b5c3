#!/usr/bin/env python
"""Score a checkpoint, or an existing detections file, with COCO and/or PASCAL VOC box metrics.

    python tools/eval.py --cfg runs/a/config.yaml --ckpt runs/a/checkpoints/best.pth [--metric both]
    python tools/eval.py --cfg smoothl1.yaml --dets runs/a/eval/detections.json --metric voc

Scores the val split of the config's dataset (``eval.max_images``: its first N images). Nothing is
written without ``--out``.

Exit codes: 0 done; 2 a bad config, option or ``--out`` folder; 1 a bad detections file, checkpoint
or dataset (one line each; DETECTOR_TRACEBACK=1 adds the traceback).
"""

import sys
from pathlib import Path

from detector.config import METRIC_NAMES, load_config, tool_parser
from detector.engine.outputs import check_output_folder, write_eval_files
from detector.errors import DetectorError, run_tool
from detector.evaluation import evaluate_coco_results, format_metrics
from detector.evaluation.coco import (
    dataset_image_ids,
    detections_to_coco_results,
    load_coco_results,
)
from detector.evaluation.results import EVAL_FILES  # what --out receives, in the order written


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__, "required", example="train.device=cpu", checkpoint="a --ckpt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint .pth to run over the val split")
    source.add_argument(
        "--dets", type=Path, help="COCO-format detections JSON to score without a model"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder to write metrics.json (and detections.json with --ckpt) "
        "into (default: write nothing, print the table)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out replace files already there, a training run's eval/ folder included",
    )
    parser.add_argument(
        "--metric", choices=tuple(METRIC_NAMES), help="default: the config's eval.metric"
    )
    args = parser.parse_intermixed_args(argv)
    # looked up at call time: the tests substitute the dataset
    from detector.data.build import build_dataset

    # training keys such as train.best_metric are not checked here (config.check_training)
    metric = [f"eval.metric={args.metric}"] if args.metric else []
    cfg = load_config(args.cfg, list(args.overrides) + metric)
    files = EVAL_FILES if args.ckpt is not None else EVAL_FILES[-1:]
    if args.out is not None:  # before any work: the rule of every tool's output (docs/runs.md)
        inputs = [args.dets, args.ckpt, *args.cfg]
        out = check_output_folder(args.out, files, "--out", inputs, args.overwrite)
    try:
        if args.dets is not None:
            dataset = build_dataset(cfg, "val", transforms=False)
            results = load_coco_results(args.dets, dataset)
            metrics = evaluate_coco_results(
                dataset,
                results,
                metric=cfg.eval.metric,
                backend=cfg.eval.backend,
                image_ids=dataset_image_ids(dataset)[: cfg.eval.max_images],
            )
        else:
            metrics, results = evaluate_checkpoint(cfg, args.ckpt, args.trust_checkpoint)
    # a malformed detections file, a missing evaluation backend
    except (ValueError, ImportError) as exc:
        if isinstance(exc, DetectorError):
            raise
        raise DetectorError(str(exc)) from exc
    print(format_metrics(metrics))
    if args.out is None:
        print(f"\nnothing written; pass --out DIR to save {' and '.join(files)}")
        return 0
    write_eval_files(out, metrics, results if args.ckpt is not None else None, args.overwrite)
    print(f"\nwrote {' and '.join(str(args.out / name) for name in files)}")
    return 0


def evaluate_checkpoint(cfg, checkpoint: Path, trust: bool = False) -> tuple[dict, list[dict]]:
    """Run the checkpoint's model over the val loader -> (metrics, COCO results); ``trust``:
    --trust-checkpoint."""
    from detector.data.build import build_dataloader
    from detector.engine.checkpoint import load_model_weights
    from detector.engine.runtime import amp_settings, select_device
    from detector.evaluation.results import evaluate_model
    from detector.modeling.detector import build_detector

    loader = build_dataloader(cfg, "val")
    dataset = loader.dataset
    device = select_device(cfg.train.device)
    amp_dtype, _ = amp_settings(cfg.train.amp, device)
    model = build_detector(cfg, num_classes=len(dataset.classes) - 1)
    load_model_weights(model, checkpoint, cfg.to_dict(), trust=trust)
    model.to(device)
    # the eval section's keys (metric, backend, max_images) are the function's parameters
    metrics, detections = evaluate_model(model, loader, device, amp_dtype=amp_dtype, **cfg.eval)
    return metrics, detections_to_coco_results(dataset, detections)


if __name__ == "__main__":
    sys.exit(main())
