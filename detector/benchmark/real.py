"""The real training loop beside the synthetic figure (:func:`real_loop`), and a profile of training steps
(:func:`profile_step`)."""
from __future__ import annotations

import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .runner import ratio, environment, run_isolated
from .sides import build_ours, step_side, synchronize

_SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
             "aten::unique_consecutive", "aten::masked_select", "aten::repeat_interleave", "torchvision::nms")
_CUDA_RUNTIME_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                       "cudaMemcpyAsync")


def real_loop(configs: list[str], overrides: list[str], iters: int = 100, log_period: int | None = None,
              device: str | None = None, isolation: str = "process", synthetic_warmup: int = 3,
              synthetic_iters: int = 10) -> dict[str, Any]:
    """Time ``detector.engine.trainer.train`` on ``configs`` + ``overrides`` for ``iters`` iterations (a temporary
    run folder, a short final evaluation), and the synthetic benchmark of the same model, batch and AMP on the
    run's most frequent padded batch shape; ``{"real": {...}, "synthetic": {...}, "ratio", "shape"}``."""
    from detector.config import load_config
    from detector.data.benchmark import padded_shapes
    cfg = load_config(configs, overrides)
    log_period = log_period or max(1, iters // 5)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = padded_shapes(cfg, "train", num_batches=200, pad_buckets=(cfg.data.input.pad_buckets,))
    shapes = {**report["rows"][0], "num_classes": report["num_classes"]}
    height, width = (int(v) for v in next(iter(shapes["shape_counts"])).split("x"))
    real = run_isolated({"kind": "real", "configs": configs, "overrides": overrides, "iters": iters,
                         "log_period": log_period, "device": device}, isolation)
    synthetic = run_isolated({"side": "ours", "as_configured": True, "configs": configs, "overrides": overrides,
                              "batch_size": cfg.train.batch_size, "amp": cfg.train.amp, "size": [height, width],
                              "num_classes": shapes["num_classes"], "warmup": synthetic_warmup,
                              "iters": synthetic_iters,
                              "device": device, "cudnn_benchmark": bool(real["cudnn_benchmark"])}, isolation)
    return {"configs": configs, "overrides": overrides, "iters": iters, "log_period": log_period,
            "shape": [height, width], "distinct_shapes": shapes["distinct_shapes"], "real": real,
            "synthetic": synthetic, "ratio": ratio(real["images_per_s"], synthetic["train_images_per_s"]),
            **environment(device)}


def real_loop_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The real loop of :func:`real_loop`, in the calling process."""
    from detector.config import load_config
    from detector.engine.trainer import train
    with tempfile.TemporaryDirectory(prefix="detector-bench-") as run_dir:
        cfg = load_config(spec["configs"], [
            *spec["overrides"], f"output_dir={run_dir}", f"train.max_iters={spec['iters']}",
            f"train.log_period={spec['log_period']}", f"train.checkpoint_period={spec['iters']}",
            f"train.hist_period={spec['iters']}", "train.eval_period=0", "train.num_vis_images=0",
            f"eval.max_images={2 * load_config(spec['configs'], spec['overrides']).train.batch_size}",
            f"train.device={spec['device']}"])
        start = time.perf_counter()
        train(cfg, run_dir)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["type"] == "start")
    windows = [r for r in records if r["type"] == "train"]
    steady = windows[1:] or windows  # the first window holds cudnn autotuning and compilation
    return {"images_per_s": statistics.median([r["images_per_s"] for r in steady]),
            "data_time_s": statistics.median([r["data_time"] for r in steady]),
            "step_time_s": statistics.median([r["step_time"] for r in steady]),
            "first_window_images_per_s": windows[0]["images_per_s"], "windows": len(windows),
            "peak_memory_gib": windows[-1].get("peak_memory_gib", float("nan")), "wall_s": wall,
            "cudnn_benchmark": first.get("cudnn_benchmark"), "compiled": first.get("compiled"),
            "optimizer_impl": first.get("optimizer_impl"), "pad_buckets": first.get("pad_buckets"), "pid": os.getpid()}


def format_real(report: dict[str, Any]) -> str:
    r, s = report["real"], report["synthetic"]
    return (f"real loop ({' '.join(report['configs'])}, {report['iters']} iterations, windows of "
            f"{report['log_period']}, first left out): {r['images_per_s']:.2f} img/s (data "
            f"{r['data_time_s'] * 1e3:.0f} ms, step {r['step_time_s'] * 1e3:.0f} ms per iteration; first window "
            f"{r['first_window_images_per_s']:.2f} img/s); synthetic, same model and settings at "
            f"{report['shape'][0]}x{report['shape'][1]}: "
            f"{s['train_images_per_s']:.2f} img/s; real / synthetic {report['ratio']:.2f}; "
            f"{report['distinct_shapes']} padded shapes in 200 batches; cudnn.benchmark {r['cudnn_benchmark']}, "
            f"optimizer {r['optimizer_impl']}, compiled {r['compiled']}")


def profile_step(configs: list[str], overrides: list[str], device: str | None = None, warmup: int = 3,
                 steps: int = 2, row_limit: int = 25) -> dict[str, Any]:
    """Profile ``steps`` training steps (after ``warmup``) of the config's model on real loader batches.

    Returns ``{"step_s", "ops_per_step", "sync_ops_per_step": {op: count}, "cuda_runtime_per_step": {call: count},
    "table"}``: ops counted from the profiler's events; ``sync_ops_per_step`` are those that make the host wait for
    the device (``_local_scalar_dense`` is ``.item()``/``float()``/``int()`` of a tensor); on CUDA the runtime's
    synchronisations and memcpys per step are counted too (a copy from pageable host memory also waits).
    """
    from torch.profiler import ProfilerActivity, profile

    from detector.config import load_config
    from detector.data import build_dataloader
    from detector.engine.runtime import to_device
    cfg = load_config(configs, [*overrides, "data.loader.num_workers=0"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loader = build_dataloader(cfg, "train")
    batches = iter(loader)
    spec = {"as_configured": True, "configs": configs, "overrides": overrides}
    side = build_ours(spec, torch.device(device), num_classes=len(loader.dataset.classes) - 1)
    side.model.train()
    dev = torch.device(device)

    scaler = torch.amp.GradScaler("cuda", enabled=side.amp_dtype == torch.float16)

    def step() -> None:
        step_side(side, *to_device(*next(batches), dev), scaler)

    for _ in range(warmup):
        step()
    synchronize(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(dev)
    step_s = (time.perf_counter() - start) / steps
    counts = collections.Counter(e.name for e in prof.events())
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    ops = sum(v for k, v in counts.items() if k.startswith(("aten::", "torchvision::")))
    return {"step_s": step_s, "device": str(dev), "ops_per_step": ops / steps,
            "sync_ops_per_step": {k: counts[k] / steps for k in _SYNC_OPS if counts[k]},
            "cuda_runtime_per_step": {k: counts[k] / steps for k in _CUDA_RUNTIME_SYNCS if counts[k]},
            "table": prof.key_averages().table(sort_by=sort, row_limit=row_limit)}
