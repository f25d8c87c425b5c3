#!/usr/bin/env python
"""Score a checkpoint, or an existing detections file, with COCO and/or PASCAL VOC box metrics.

    python tools/eval.py --cfg smoothl1.yaml --ckpt runs/smoothl1/checkpoints/best.pth [--metric both]
    python tools/eval.py --cfg smoothl1.yaml --dets runs/smoothl1/eval/detections.json [--metric voc]

The val split of the dataset named by the config is scored (trailing ``key=value`` arguments override the config,
e.g. ``train.device=cpu eval.backend=faster_coco_eval``). With ``--ckpt`` the model is built from the config, the
checkpoint's weights are loaded and run over the split; ``metrics.json`` and ``detections.json`` (COCO results:
original category ids, xywh) land in ``<run dir of the checkpoint>/eval/`` unless ``--out`` is given. With
``--dets`` a COCO-format results file (image and category ids of that dataset) is scored without a model and
``metrics.json`` lands beside it (or in ``--out``). The metrics table is printed either way.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.config import ConfigError, load_config  # noqa: E402
from detector.evaluation import METRICS  # noqa: E402


def run_dir_of(checkpoint: Path) -> Path:
    """``runs/x/checkpoints/best.pth`` -> ``runs/x``; a checkpoint elsewhere -> its folder."""
    folder = checkpoint.resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", action="append", required=True, help="config file or name in configs/ (repeatable)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint .pth to run over the val split")
    source.add_argument("--dets", type=Path, help="COCO-format detections JSON to score without a model")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/eval for --ckpt, the folder of --dets)")
    parser.add_argument("--metric", choices=METRICS, help="metric family (default: the config's eval.metric)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.device=cpu")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"eval.metric={args.metric}"] if args.metric else [])
    try:
        cfg = load_config(args.cfg, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from detector.data import build_dataset
    from detector.engine.checkpoint import CheckpointError
    from detector.evaluation import evaluate_coco_results, format_metrics, load_coco_results

    try:
        if args.dets is not None:
            dataset = build_dataset(cfg, "val", transforms=False)
            results = load_coco_results(args.dets, dataset)
            metrics = evaluate_coco_results(dataset, results, metric=cfg.eval.metric, backend=cfg.eval.backend)
            out_dir = args.out or args.dets.parent
        else:
            metrics, results = evaluate_checkpoint(cfg, args.ckpt)
            out_dir = args.out or run_dir_of(args.ckpt) / "eval"
    except (ValueError, ImportError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out_dir.mkdir(parents=True, exist_ok=True)
    if args.ckpt is not None:
        (out_dir / "detections.json").write_text(json.dumps(results))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics(metrics))
    print(f"\nwrote {out_dir / 'metrics.json'}" + (f" and {out_dir / 'detections.json'}" if args.ckpt else ""))
    return 0


def evaluate_checkpoint(cfg, checkpoint: Path) -> tuple[dict, list[dict]]:
    """Run the checkpoint's model over the val loader -> (metrics, COCO results)."""
    from detector.data import build_dataloader
    from detector.engine.checkpoint import load_checkpoint
    from detector.engine.runtime import amp_settings, select_device
    from detector.evaluation import detections_to_coco_results
    from detector.evaluation.results import evaluate_model
    from detector.modeling import build_detector

    loader = build_dataloader(cfg, "val")
    dataset = loader.dataset
    device = select_device(cfg.train.device)
    amp_dtype, _ = amp_settings(cfg.train.amp, device, cfg.train.amp_dtype)
    model = build_detector(cfg, num_classes=len(dataset.classes) - 1)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.to(device)
    metrics, detections = evaluate_model(model, loader, device, metric=cfg.eval.metric, backend=cfg.eval.backend,
                                         amp_dtype=amp_dtype, max_images=cfg.eval.max_images)
    return metrics, detections_to_coco_results(dataset, detections)


if __name__ == "__main__":
    sys.exit(main())
