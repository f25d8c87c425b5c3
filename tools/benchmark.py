#!/usr/bin/env python
"""Benchmark our detector against torchvision's fasterrcnn_resnet50_fpn, side by side in one process.

    python tools/benchmark.py                       # GPU: batch 2 and 8, AMP off and on, 800x1067 images
    python tools/benchmark.py --device cpu          # a small CPU version (what the test runs)
    python tools/benchmark.py --json out.json       # every figure, the settings, device and versions
    python tools/benchmark.py --data [--cfg ...]    # data-loader throughput instead (images/s per worker count)
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--amp", choices=["off", "on", "both"], default=None)
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--backbone", default=None, help="resnet18/34/50/101 for both sides (default: resnet50, "
                                                         "resnet18 with --device cpu)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--data", action="store_true", help="measure data-loader throughput instead")
    parser.add_argument("--cfg", action="append", default=[], help="config for --data")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8, 16], help="worker counts for --data")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for --data")
    args = parser.parse_args(argv)

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.data:
        from detector.config import load_config
        from detector.data.benchmark import loader_throughput
        cfg = load_config(args.cfg, args.overrides)
        report = {"device": device, "results": [loader_throughput(cfg, "train", num_workers=w, num_batches=20)
                                                for w in args.workers]}
        for row in report["results"]:
            print(json.dumps(row))
    else:
        from detector.benchmark import format_table, run_benchmark
        small = device == "cpu"
        report = run_benchmark(
            device,
            batch_sizes=args.batch_sizes or ([1] if small else [2, 8]),
            amp_modes={"off": [False], "on": [True], "both": [False, True]}[args.amp or ("off" if small else "both")],
            height=(args.size or ([128, 160] if small else [800, 1067]))[0],
            width=(args.size or ([128, 160] if small else [800, 1067]))[1],
            backbone=args.backbone or ("resnet18" if small else "resnet50"),
            warmup=args.warmup if args.warmup is not None else (1 if small else 5),
            iters=args.iters if args.iters is not None else (2 if small else 20))
        print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
