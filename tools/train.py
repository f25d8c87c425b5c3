#!/usr/bin/env python
"""Train a detector: ``python tools/train.py --cfg smoothl1.yaml [--cfg data/coco_tiny.yaml]
[key=value ...]``.

Configs layer in order, then ``key=value`` overrides. The run folder (``runs/<cfg names>`` unless
``output_dir``) holds ``config.yaml``, ``metrics.jsonl``, TensorBoard events, ``checkpoints/`` and
``eval/``; a folder that holds a run is never reused silently (docs/runs.md). Ctrl-C or SIGTERM
writes ``last.pth``. Several GPUs: ``torchrun``.

Exit codes: 0 done, 1 a data, weights, checkpoint or disk error or a non-finite loss, 2 a config,
usage or run-folder error (one line each; DETECTOR_TRACEBACK=1 adds the traceback), 130 stopped by
Ctrl-C/SIGTERM.
"""

import sys
from pathlib import Path

from detector.config import load_config, tool_parser
from detector.errors import run_tool


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(
        __doc__, "optional", example="train.max_iters=200", checkpoint="a --resume checkpoint"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="--resume to a new train.max_iters where the lr or "
        "beta schedule derives from it (recomputed for the new length from the resume point on)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in the run folder"
    )
    args = parser.parse_intermixed_args(argv)
    from detector.engine import distributed
    from detector.engine.trainer import train
    from detector.evaluation import format_metrics

    cfg = load_config(
        args.cfg,
        list(args.overrides) + (["train.resume=auto"] if args.resume or args.extend else []),
    )
    run_dir = Path(
        cfg.output_dir
        or Path("runs") / "-".join([Path(name).stem for name in args.cfg] or ["base"])
    )
    try:
        metrics = train(
            cfg,
            run_dir,
            overwrite=args.overwrite,
            extend=args.extend,
            trust_checkpoint=args.trust_checkpoint,
        )
        # asked before cleanup: after it every rank is "the main process"
        rank0 = distributed.is_main_process()
    finally:
        distributed.cleanup()
    if rank0:
        print(format_metrics(metrics))
        print(f"run folder: {run_dir}  (tensorboard --logdir {run_dir.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
