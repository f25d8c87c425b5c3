#!/usr/bin/env python
"""Score a checkpoint, or an existing detections file, with COCO and/or PASCAL VOC box metrics.

    python tools/eval.py --cfg runs/smoothl1/config.yaml --ckpt runs/smoothl1/checkpoints/best.pth [--metric both]
    python tools/eval.py --cfg smoothl1.yaml --dets runs/smoothl1/eval/detections.json --metric voc [--out DIR]

Scores the val split of the config's dataset (``eval.max_images``: its first N images). Nothing is written
without ``--out``.

Exit codes: 0 done; 2 a bad config, option or ``--out`` folder; 1 a bad detections file, checkpoint or dataset
(one line each; DETECTOR_TRACEBACK=1 adds the traceback).
"""

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from detector.config import METRIC_NAMES, load_config
from detector.errors import DetectorError, run_tool
from detector.evaluation import (
    dataset_image_ids,
    detections_to_coco_results,
    evaluate_coco_results,
    format_metrics,
    load_coco_results,
)

OUTPUT_FILES = (
    "detections.json",
    "metrics.json",
)  # what --out receives, in the order written (--dets: metrics)


@run_tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cfg", action="append", required=True, help="config file or name in configs/ (repeatable)"
    )
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
        "--trust-checkpoint",
        action="store_true",
        help="load a --ckpt that holds more than data (it may run code when loaded); only for a "
        "file you made or trust",
    )
    parser.add_argument(
        "--metric", choices=tuple(METRIC_NAMES), help="default: the config's eval.metric"
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides, e.g. train.device=cpu"
    )
    args = parser.parse_intermixed_args(argv)
    from detector.data import (
        build_dataset,
    )  # looked up at call time: the tests substitute the dataset

    # training keys such as train.best_metric are not checked here (config.check_training)
    metric = [f"eval.metric={args.metric}"] if args.metric else []
    cfg = load_config(args.cfg, list(args.overrides) + metric)
    files = OUTPUT_FILES if args.ckpt is not None else ("metrics.json",)
    if args.out is not None:
        check_out_dir(args.out, files, args.overwrite)
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
    except (
        ValueError,
        ImportError,
    ) as exc:  # a malformed detections file, a missing evaluation backend
        if isinstance(exc, DetectorError):
            raise
        raise DetectorError(str(exc)) from exc
    print(format_metrics(metrics))
    if args.out is None:
        print(f"\nnothing written; pass --out DIR to save {' and '.join(files)}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ckpt is not None:
        (args.out / "detections.json").write_text(json.dumps(results))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\nwrote {' and '.join(str(args.out / name) for name in files)}")
    return 0


def check_out_dir(out: Path, files: tuple[str, ...], overwrite: bool) -> None:
    """Before any work: a ``RunFolderError`` when ``out`` holds one of ``files`` or is a run's ``eval/`` (unless
    ``overwrite``), an ``OSError`` naming the path when it cannot be written."""
    from detector.engine.runs import RunFolderError, run_files

    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(existing))
    if overwrite:
        return
    present = [name for name in files if (out / name).exists()]
    if present:
        raise RunFolderError(
            f"--out {out} already holds {' and '.join(present)} (a run's results or an earlier "
            f"evaluation); pass another --out, or --overwrite to replace them"
        )
    if out.name == "eval" and run_files(out.parent):
        raise RunFolderError(
            f"--out {out} is the eval folder of the training run {out.parent}, whose metrics.json "
            f"marks the run finished; pass another --out, or --overwrite to write there"
        )


def evaluate_checkpoint(cfg, checkpoint: Path, trust: bool = False) -> tuple[dict, list[dict]]:
    """Run the checkpoint's model over the val loader -> (metrics, COCO results); ``trust``: --trust-checkpoint."""
    from detector.data import build_dataloader
    from detector.engine.checkpoint import load_model_weights
    from detector.engine.runtime import amp_settings, select_device
    from detector.evaluation.results import evaluate_model
    from detector.modeling import build_detector

    loader = build_dataloader(cfg, "val")
    dataset = loader.dataset
    device = select_device(cfg.train.device)
    amp_dtype, _ = amp_settings(cfg.train.amp, device)
    model = build_detector(cfg, num_classes=len(dataset.classes) - 1)
    load_model_weights(model, checkpoint, cfg.to_dict(), trust=trust)
    model.to(device)
    metrics, detections = evaluate_model(
        model,
        loader,
        device,
        metric=cfg.eval.metric,
        backend=cfg.eval.backend,
        amp_dtype=amp_dtype,
        max_images=cfg.eval.max_images,
    )
    return metrics, detections_to_coco_results(dataset, detections)


if __name__ == "__main__":
    sys.exit(main())
