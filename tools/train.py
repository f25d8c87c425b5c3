#!/usr/bin/env python
"""Train a detector: ``python tools/train.py --cfg smoothl1.yaml [--cfg data/coco_tiny.yaml] [key=value ...]``.

Configs are looked up in ``configs/`` when the name is not a path and layer in order; trailing ``key=value``
arguments override any key. With no data at hand the default synthetic dataset is generated under
``data/synthetic`` on first use. The run folder (``runs/<cfg names>`` unless ``output_dir`` is set) holds
``config.yaml``, ``metrics.jsonl``, TensorBoard events (``tensorboard --logdir runs``), ``checkpoints/`` and
``eval/`` (metrics.json, detections.json). Several GPUs: ``torchrun --nproc_per_node=N tools/train.py --cfg ...``.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.config import ConfigError, load_config  # noqa: E402


def default_run_dir(cfg_names: list[str]) -> Path:
    stems = [Path(name).stem for name in cfg_names] or ["base"]
    return Path("runs") / "-".join(stems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", action="append", default=[], help="config file or name in configs/ (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/checkpoints/last.pth")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_iters=200")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + (["train.resume=auto"] if args.resume else [])
    try:
        cfg = load_config(args.cfg, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from detector.engine import distributed
    from detector.engine.checkpoint import CheckpointError
    from detector.engine.trainer import NonFiniteLossError, train
    from detector.evaluation.report import format_metrics

    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(args.cfg)
    try:
        metrics = train(cfg, run_dir)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # bad data, weights, checkpoints or values: one line naming the file/field (traceback on request)
        if os.environ.get("DETECTOR_TRACEBACK"):
            raise
        print(f"error: {exc}\n(set DETECTOR_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    if distributed.is_main_process():
        print(format_metrics(metrics))
        print(f"run folder: {run_dir}  (tensorboard --logdir {run_dir.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
