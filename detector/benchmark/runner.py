"""Running measurements, each in its own process or in this one, and the side-by-side table."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .sides import SETTINGS, measure

RESULT_MARK = "BENCHMARK_RESULT "  # a worker's last stdout line: this mark, then its JSON result


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process: the real loop (``spec["kind"] == "real"``) or :func:`measure`."""
    if spec.get("kind") == "real":
        from .real import real_loop_worker
        return real_loop_worker(spec)
    return measure(spec)


def run_isolated(spec: dict[str, Any], isolation: str = "process", timeout: float = 1800) -> dict[str, Any]:
    """``measure(spec)`` (or the real loop, ``spec["kind"] == "real"``) in a fresh Python process
    (``isolation="process"``) or in this one (``"none"``, quicker, for tests); the worker's result dict."""
    if isolation == "none":
        return run_spec(spec)
    repo = str(Path(__file__).resolve().parent.parent.parent)
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "detector.benchmark", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker failed (exit code {proc.returncode}) for {json.dumps(spec)}:\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def worker_main(argv: list[str]) -> int:
    """``python -m detector.benchmark SPEC_JSON``: one measurement, its result on the last stdout line."""
    print(RESULT_MARK + json.dumps(run_spec(json.loads(argv[0]))), flush=True)
    return 0


def run_benchmark(device: str, batch_sizes: list[int], amp_modes: list[bool], height: int, width: int,
                  settings: tuple[str, ...] = SETTINGS, num_boxes: int = 8, num_classes: int = 80,
                  backbone: str = "resnet50", warmup: int = 5, iters: int = 20, compile: str = "none",
                  cudnn_benchmark: bool = True, isolation: str = "process",
                  overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Both sides over settings x batch sizes x AMP modes; ``{"settings", "device", "torch", "torchvision",
    "results": [{"setting", "batch_size", "amp", "ours", "torchvision", "ratio"}, ...]}``."""
    results = []
    for setting in settings:
        for batch_size in batch_sizes:
            for amp in amp_modes:
                row: dict[str, Any] = {"setting": setting, "batch_size": batch_size}
                for side in ("ours", "torchvision"):
                    spec = {"side": side, "setting": setting, "batch_size": batch_size, "amp": amp,
                            "size": [height, width], "backbone": backbone, "warmup": warmup, "iters": iters,
                            "device": device, "compile": compile, "cudnn_benchmark": cudnn_benchmark,
                            "num_boxes": num_boxes, "num_classes": num_classes, "overrides": list(overrides)}
                    row[side] = run_isolated(spec, isolation)
                row["amp"] = row["ours"]["amp"]
                keys = ("train_images_per_s", "infer_images_per_s", "peak_memory_gib")
                row["ratio"] = {k: ratio(row["ours"][k], row["torchvision"][k]) for k in keys}
                results.append(row)
    return {
        "settings": {"image_size": [height, width], "boxes_per_image": num_boxes, "num_classes": num_classes,
                     "backbone": f"{backbone}-fpn, random init; scratch: BN, all stages trainable; finetune: frozen "
                                 f"BN, stem + res2 frozen",
                     "rpn_proposals_train": "2000 pre-NMS / 1000 post-NMS", "roi_per_image": 512,
                     "positive_fraction": 0.25, "ours": "gpu.yaml (buckets, channels_last on CUDA, fused SGD, "
                                                        f"clipping, nonfinite_check) compile={compile}",
                     "torchvision": "FasterRCNN + resnet_fpn_backbone, SGD lr 0.02 momentum 0.9 wd 1e-4",
                     "ours_overrides": list(overrides), "cudnn_benchmark": cudnn_benchmark,
                     "isolation": isolation, "warmup_iters": warmup,
                     "timed_iters": iters},
        **environment(device), "results": results,
    }


def environment(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
            "date": time.strftime("%Y-%m-%d")}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) and not math.isnan(a) else float("nan")


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"device: {report['device']}  torch {report['torch']}  torchvision {report['torchvision']}  "
             f"{report['date']}", f"images {s['image_size'][0]}x{s['image_size'][1]}, {s['backbone']}; "
             f"cudnn.benchmark {s['cudnn_benchmark']}, isolation {s['isolation']}",
             "| setting | batch | AMP | train img/s ours | tv | ratio | infer img/s ours | tv | ratio "
             "| peak GiB ours | tv | ratio |", "|---" * 12 + "|"]
    for r in report["results"]:
        o, t, q = r["ours"], r["torchvision"], r["ratio"]
        lines.append(
            f"| {r['setting']} | {r['batch_size']} | {r['amp']} | {o['train_images_per_s']:.2f} | "
            f"{t['train_images_per_s']:.2f} | {q['train_images_per_s']:.2f}x | {o['infer_images_per_s']:.2f} | "
            f"{t['infer_images_per_s']:.2f} | {q['infer_images_per_s']:.2f}x | {o['peak_memory_gib']:.2f} | "
            f"{t['peak_memory_gib']:.2f} | {q['peak_memory_gib']:.2f}x |")
    return "\n".join(lines)
