#!/usr/bin/env python
"""Speed: ours against torchvision's Faster R-CNN (the default table: GPU scratch + finetune, batch
2 and 8, AMP off/on, 800x1067; a small one with --device cpu), or one of the modes below. Prints
tables; --json writes every figure. The configs (--cfg) and key=value overrides set --real,
--shapes, --profile and --data; in the synthetic table the overrides change our side only.

    python tools/benchmark.py --all --cfg smoothl1.yaml --cfg data/coco_tiny.yaml --cfg gpu.yaml \
        --json bench.json
"""

import importlib.util
import json
import sys
from pathlib import Path

from detector.config import tool_parser
from detector.errors import run_tool

# --amp -> the autocast settings timed
AMP_MODES = {"off": [False], "on": [True], "both": [False, True]}


def load_speed():
    """benchmarks/speed.py: the measurements live beside the package in the checkout, not installed
    with it, so they load from this file's checkout (the package itself is the installed one)."""
    name = "benchmarks.speed"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__, "optional", example="train.clip_grad_norm=0")
    mode = parser.add_mutually_exclusive_group()
    for flag, text in (
        (
            "--real",
            "time the trainer for --real-iters iterations beside the synthetic figure on the "
            "run's most frequent padded shape",
        ),
        ("--shapes", "count padded batch shapes and their pixels over the real ones"),
        ("--profile", "torch.profiler of training steps, host syncs counted"),
        ("--data", "data-loader images/s for each of --workers"),
        ("--all", "the synthetic table, --real and --shapes together"),
    ):
        mode.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--device", help="cuda (default when available) or cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--amp", choices=["off", "on", "both"])
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--settings", nargs="+", choices=["scratch", "finetune"])
    parser.add_argument(
        "--backbone",
        help="resnet18/34/50/101 for both sides (default: resnet50, resnet18 with --device cpu)",
    )
    parser.add_argument(
        "--compile",
        choices=["none", "backbone", "all"],
        default="none",
        help="ours: train.compile (torch.compile of our backbone or all of it)",
    )
    parser.add_argument(
        "--isolation",
        choices=["process", "none"],
        default="process",
        help="each side of each row in its own process (default), or all in this one",
    )
    parser.add_argument("--warmup", type=int)
    parser.add_argument(
        "--iters",
        type=int,
        help="timed iterations of the synthetic benchmark and of --real's "
        "synthetic figure (--profile: profiled steps)",
    )
    parser.add_argument("--real-iters", type=int, default=100, help="--real: training iterations")
    parser.add_argument(
        "--batches", type=int, default=1000, help="--shapes: batches simulated per split"
    )
    parser.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        help="--shapes: data.input.pad_buckets values to compare (default: 0 and the config's)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument(
        "--overwrite", action="store_true", help="let --json replace a file that is there"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2, 4, 8, 16], help="worker counts for --data"
    )
    args = parser.parse_intermixed_args(argv)
    import torch

    benchmark = load_speed()
    from detector.config import load_config
    from detector.engine.outputs import check_output, write_output

    # before any work: the rule of every tool's output (docs/runs.md)
    out = check_output(args.json, "--json", args.cfg, args.overwrite) if args.json else None

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    small = device == "cpu"
    # of --profile and of --real's synthetic figure
    warmup = 3 if args.warmup is None else args.warmup
    report = {"device": device}
    if args.data:
        cfg = load_config(args.cfg, args.overrides)
        report["results"] = [
            benchmark.loader_throughput(cfg, "train", num_workers=w, num_batches=20)
            for w in args.workers
        ]
        print("\n".join(json.dumps(row) for row in report["results"]))
    if args.shapes or args.all:
        report["shapes"] = shapes(load_config(args.cfg, args.overrides), args)
    if args.profile:
        report = benchmark.profile_step(
            args.cfg, args.overrides, device, warmup=warmup, steps=args.iters or 2
        )
        print(report["table"])
        print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=1))
    if not (args.data or args.shapes or args.profile or args.real):
        # what every measurement shares: a small table on the CPU
        spec = {
            "device": device,
            "size": args.size or ([128, 160] if small else [800, 1067]),
            "backbone": args.backbone or ("resnet18" if small else "resnet50"),
            "warmup": args.warmup if args.warmup is not None else (1 if small else 5),
            "iters": args.iters if args.iters is not None else (2 if small else 20),
            "compile": args.compile,
            "overrides": [] if args.all else args.overrides,
        }
        # --amp: off on the CPU by default, both on a GPU
        amp = args.amp or ("off" if small else "both")
        report["synthetic"] = benchmark.run_benchmark(
            spec,
            args.batch_sizes or ([1] if small else [2, 8]),
            AMP_MODES[amp],
            tuple(args.settings or benchmark.SETTINGS),
            args.isolation,
        )
        print(benchmark.format_table(report["synthetic"]))
    if args.real or args.all:
        report["real"] = benchmark.real_loop(
            args.cfg,
            args.overrides,
            device,
            iters=args.real_iters,
            isolation=args.isolation,
            synthetic_warmup=warmup,
            synthetic_iters=args.iters or 10,
        )
        print(benchmark.format_real(report["real"]))
    if out is not None:
        write_output(out, json.dumps(report, indent=2), args.overwrite)
    return 0


def shapes(cfg, args) -> dict:
    """--shapes: the padded shapes of ``--batches`` training and val batches for each
    ``pad_buckets`` value."""
    padded_shapes = load_speed().padded_shapes

    buckets = tuple(args.buckets or sorted({0, cfg.data.input.pad_buckets}))
    out = {split: padded_shapes(cfg, split, args.batches, buckets) for split in ("train", "val")}
    for split in ("train", "val"):
        print(
            f"{split}: {out[split]['batches']} batches of {out[split]['batch_size']} "
            f"({' '.join(args.cfg)} {' '.join(args.overrides)})"
        )
        print(
            "| pad_buckets | bucket sides | distinct shapes | padded / real pixels | vs unbucketed "
            "| most frequent |"
        )
        print("|---|---|---|---|---|---|")
        for row in out[split]["rows"]:
            common = ", ".join(f"{k} ({v})" for k, v in list(row["shape_counts"].items())[:4])
            print(
                f"| {row['pad_buckets']} | {row['bucket_sides'] or '-'} | {row['distinct_shapes']} "
                f"| {row['padded_over_real']:.3f} | {row['padded_over_unbucketed']:.3f} "
                f"| {common} |"
            )
    out["distinct_shapes_train_and_val"] = {
        t["pad_buckets"]: len(set(t["shape_counts"]) | set(v["shape_counts"]))
        for t, v in zip(out["train"]["rows"], out["val"]["rows"])
    }
    print(
        "distinct shapes over training and evaluation together:",
        ", ".join(f"pad_buckets={k}: {v}" for k, v in out["distinct_shapes_train_and_val"].items()),
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
