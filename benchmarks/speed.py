"""Speed measurements behind ``tools/benchmark.py`` (results: docs/performance.md), outside the
package: they use it as any user would. Each measurement can run in its own process
(``python benchmarks/speed.py SPEC_JSON``), so no autotuning, allocator cache or peak-memory counter
carries over. The full-size settings are configs/gpu.yaml's, read, not restated."""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from detector.config import load_config
from detector.data.build import build_dataloader, build_dataset, make_dataloader, proposals_of
from detector.data.transforms import batch_padded_size, build_pad_buckets
from detector.engine.optim import build_loss_weights, build_optimizer
from detector.engine.runtime import amp_settings, compile_submodules, to_device
from detector.engine.trainer import LossWatch, train
from detector.modeling.detector import build_detector

SETTINGS = ("scratch", "finetune")
TIMING_LR = 0.001  # both sides' SGD learning rate
NUM_BOXES, NUM_CLASSES = 8, 80  # per synthetic image; foreground classes of the synthetic table
FIGURES = ("train_images_per_s", "infer_images_per_s", "peak_memory_gib")  # compared side by side
RESULT_MARK = "BENCHMARK_RESULT "  # a worker's last stdout line: this mark, then its JSON result
SYNC_OPS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::masked_select",
    "aten::repeat_interleave",
    "torchvision::nms",
)
CUDA_RUNTIME_SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaMemcpyAsync",
)


class Side:
    """A model, its optimizer and AMP choice, and one training step: the same code times both
    sides. ``clip``: the max gradient norm (None: no clipping)."""

    def __init__(self, model, optimizer, amp: bool, device: torch.device, info: dict, clip=None):
        self.model = model
        self.optimizer = optimizer
        self.info = info
        self.clip = clip
        # bf16 where supported, else fp16 with a scaler
        self.amp_dtype, use_scaler = amp_settings(amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def autocast(self, device: torch.device):
        return (
            torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        )

    def step(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> None:
        with self.autocast(images[0].device):
            total = self.losses(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def losses(self, images, targets) -> torch.Tensor:
        return sum(self.model(images, targets).values())


class OursSide(Side):
    """Our detector stepped as :func:`detector.engine.trainer.train` steps it (weighted losses,
    :class:`LossWatch` read every ``train.log_period`` steps, clipping, the dynamic-state
    update)."""

    def __init__(self, cfg, device: torch.device, num_classes: int, amp: bool):
        model = build_detector(cfg, num_classes=num_classes).to(device)
        if cfg.train.channels_last and device.type == "cuda":
            model.use_channels_last()
        compiled = compile_submodules(model, cfg.train.compile)
        optimizer = build_optimizer(cfg, model)
        info = {
            "optimizer": optimizer.impl,
            "compiled": compiled,
            "pad_buckets": list(model.pad_buckets),
            "channels_last": model.input_memory_format == torch.channels_last,
        }
        super().__init__(model, optimizer, amp, device, info, cfg.train.clip_grad_norm or math.inf)
        self.weights = build_loss_weights(cfg)
        self.watch = LossWatch(False)
        self.log_period = cfg.train.log_period
        self.iteration = 0

    def losses(self, images, targets) -> torch.Tensor:
        losses, self.stats = self.model(images, targets, proposals=proposals_of(targets))
        self.watch.record(losses, self.iteration)
        return sum(losses[k] * self.weights[k] for k in losses)

    def step(self, images, targets) -> None:
        super().step(images, targets)
        self.model.update_dynamic_state(self.iteration, self.stats)
        self.iteration += 1
        if self.iteration % self.log_period == 0:
            # the trainer's read at log steps (a NaN stops the benchmark)
            self.watch.raise_if_bad(None, None)


def ours_config(spec: dict[str, Any], overrides: bool = True):
    """configs/gpu.yaml at the spec's image size, backbone and setting: both sides' settings.
    ``overrides=False`` leaves out the spec's overrides (ours only)."""
    norm, freeze_at = ("bn", 0) if spec["setting"] == "scratch" else ("frozen_bn", 2)
    # the configured sizes place the pad buckets: pad as torchvision does
    short, long = sorted(spec["size"])
    return load_config(
        ["gpu.yaml"],
        [
            f"data.input.min_size_train=[{short}]",
            f"data.input.max_size_train={long}",
            f"data.input.min_size_test={short}",
            f"data.input.max_size_test={long}",
            f"model.backbone.name={spec['backbone']}",
            f"model.backbone.norm={norm}",
            f"model.backbone.freeze_at={freeze_at}",
            # torchvision's box loss: Smooth L1 at beta 1/9
            "model.roi_head.box_loss.beta=0.1111111111111111",
            # timing only: a small lr keeps random weights finite
            f"train.lr={TIMING_LR}",
            "train.lr_reference_batch=null",
            f"train.compile={spec.get('compile', 'none')}",
            *(spec.get("overrides", []) if overrides else []),
        ],
    )


def torchvision_side(spec: dict[str, Any], device: torch.device, num_classes: int) -> Side:
    """torchvision's ``FasterRCNN`` with ``resnet_fpn_backbone``, as its reference script trains
    it."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    scratch = spec["setting"] == "scratch"
    cfg = ours_config(spec, overrides=False)
    rpn, roi = cfg.model.rpn, cfg.model.roi_head
    body = resnet_fpn_backbone(
        backbone_name=spec["backbone"],
        weights=None,
        trainable_layers=5 if scratch else 3,
        norm_layer=torch.nn.BatchNorm2d if scratch else FrozenBatchNorm2d,
    )
    model = FasterRCNN(
        body,
        num_classes=num_classes + 1,
        min_size=min(spec["size"]),
        max_size=max(spec["size"]),
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train,
        rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction,
    ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=TIMING_LR, momentum=0.9, weight_decay=1e-4)
    return Side(model, optimizer, spec["amp"], device, {"optimizer": "default"})


def synthetic_batch(
    batch_size: int,
    height: int,
    width: int,
    num_boxes: int,
    num_classes: int,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """float images in 0..1 [3,H,W] and targets with ``num_boxes`` random valid xyxy boxes each
    (labels 1..K), drawn from seed 0."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, height, width, generator=g).to(device)
    # [N,B,2]
    wh = (
        torch.rand(batch_size, num_boxes, 2, generator=g)
        * torch.tensor([width * 0.4, height * 0.4])
        + 16
    )
    xy = torch.rand(batch_size, num_boxes, 2, generator=g) * (torch.tensor([width, height]) - wh)
    boxes = torch.cat([xy, xy + wh], dim=2).to(device)  # [N,B,4]
    labels = torch.randint(1, num_classes + 1, (batch_size, num_boxes), generator=g).to(device)
    return list(images), [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]


def timed(fn, device: torch.device, iters: int) -> tuple[float, float]:
    """(seconds per call of ``fn`` over ``iters`` calls, the peak GiB allocated during them: NaN off
    CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(iters, 1)
    return seconds, torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and infer one side (``spec["side"]``) on one synthetic batch; peak memory (NaN off
    CUDA) is over the timed training iterations, the warm-up's apart."""
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(spec.get("cudnn_benchmark", True))
    torch.manual_seed(0)
    num_classes = spec.get("num_classes", NUM_CLASSES)
    images, targets = synthetic_batch(
        spec["batch_size"], *spec["size"], NUM_BOXES, num_classes, device
    )
    if spec["side"] == "torchvision":
        side = torchvision_side(spec, device, num_classes)
    elif spec.get("as_configured"):
        # the real loop's comparator: the run's config untouched
        cfg = load_config(spec["configs"], spec["overrides"])
        side = OursSide(cfg, device, num_classes, spec["amp"])
    else:
        side = OursSide(ours_config(spec), device, num_classes, spec["amp"])
    side.model.train()
    _, warmup_peak = timed(lambda: side.step(images, targets), device, spec["warmup"])
    train_s, peak = timed(lambda: side.step(images, targets), device, spec["iters"])
    side.model.eval()
    with torch.inference_mode(), side.autocast(device):
        timed(lambda: side.model(images), device, spec["warmup"])
        infer_s, _ = timed(lambda: side.model(images), device, spec["iters"])
    n = spec["batch_size"]
    return {
        "train_images_per_s": n / train_s,
        "infer_images_per_s": n / infer_s,
        "peak_memory_gib": peak,
        "warmup_peak_memory_gib": warmup_peak,
        "train_step_s": train_s,
        "amp": str(side.amp_dtype) if side.amp_dtype else "off",
        "side_info": side.info,
        "pid": os.getpid(),
    }


def run_isolated(
    spec: dict[str, Any], isolation: str = "process", timeout: float = 1800
) -> dict[str, Any]:
    """:func:`measure` or :func:`real_loop_worker` in a fresh Python process, or in this one
    (``isolation="none"``)."""
    if isolation == "none":
        return real_loop_worker(spec) if spec.get("kind") == "real" else measure(spec)
    repo = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": path},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark worker failed (exit code {proc.returncode}) for {json.dumps(spec)}:\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(RESULT_MARK) :])


def environment(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # NaN (peak memory off CUDA) stays NaN


def run_benchmark(
    spec: dict[str, Any],
    batch_sizes: list[int],
    amp_modes: list[bool],
    settings: tuple[str, ...] = SETTINGS,
    isolation: str = "process",
) -> dict[str, Any]:
    """Ours against torchvision's Faster R-CNN (ResNet-FPN, random weights, the same RPN/RoI, SGD
    and AMP settings) on one seeded synthetic batch of ``spec["size"]`` = [H, W] images, over
    settings x batch sizes x AMP modes. ``spec``: what every :func:`measure` shares (``device``,
    ``size``, ``backbone``, ``warmup``, ``iters``, ``compile``; ``overrides``: ours only)."""
    results = []
    for setting, batch_size, amp in itertools.product(settings, batch_sizes, amp_modes):
        row: dict[str, Any] = {"setting": setting, "batch_size": batch_size}
        for side in ("ours", "torchvision"):
            one = {**spec, "side": side, "setting": setting, "batch_size": batch_size, "amp": amp}
            row[side] = run_isolated(one, isolation)
        row["amp"] = row["ours"]["amp"]
        row["ratio"] = {k: ratio(row["ours"][k], row["torchvision"][k]) for k in FIGURES}
        results.append(row)
    cfg = ours_config({**spec, "setting": settings[0]}, overrides=False)
    rpn, roi = cfg.model.rpn, cfg.model.roi_head
    backbone = spec["backbone"]
    settings_report = {
        "image_size": spec["size"],
        "boxes_per_image": NUM_BOXES,
        "num_classes": NUM_CLASSES,
        "backbone": f"{backbone}-fpn, random init; scratch: BN, all stages trainable; finetune: "
        f"frozen BN, stem + res2 frozen",
        "rpn_proposals_train": f"{rpn.pre_nms_topk_train} pre-NMS / "
        f"{rpn.post_nms_topk_train} post-NMS",
        "roi_per_image": roi.batch_size_per_image,
        "positive_fraction": roi.positive_fraction,
        "ours": f"gpu.yaml, compile={spec['compile']}",
        "ours_overrides": spec["overrides"],
        "torchvision": f"FasterRCNN + resnet_fpn_backbone, SGD lr {TIMING_LR} momentum 0.9 wd 1e-4",
        "cudnn_benchmark": True,
        "isolation": isolation,
        "warmup_iters": spec["warmup"],
        "timed_iters": spec["iters"],
    }
    return {"settings": settings_report, **environment(spec["device"]), "results": results}


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"device: {report['device']}  torch {report['torch']}  torchvision {report['torchvision']} "
        f" {report['date']}",
        f"images {s['image_size'][0]}x{s['image_size'][1]}, {s['backbone']}; "
        f"cudnn.benchmark {s['cudnn_benchmark']}, isolation {s['isolation']}",
        "| setting | batch | AMP | train img/s ours | tv | ratio | infer img/s ours | tv | ratio "
        "| peak GiB ours | tv | ratio |",
        "|---" * 12 + "|",
    ]
    for r in report["results"]:
        cells = [
            f"{r[side][k]:.2f}" + ("x" if side == "ratio" else "")
            for k in FIGURES
            for side in ("ours", "torchvision", "ratio")
        ]
        lines.append(
            f"| {r['setting']} | {r['batch_size']} | {r['amp']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def real_loop(
    configs: list[str],
    overrides: list[str],
    device: str,
    iters: int = 100,
    isolation: str = "process",
    synthetic_warmup: int = 3,
    synthetic_iters: int = 10,
) -> dict[str, Any]:
    """The trainer for ``iters`` iterations (log windows of ``iters // 5``) beside the synthetic
    figure of the same model, batch and AMP on the run's most frequent padded shape."""
    cfg = load_config(configs, overrides)
    log_period = max(1, iters // 5)
    shapes = padded_shapes(cfg, "train", num_batches=200, pad_buckets=(cfg.data.input.pad_buckets,))
    row = shapes["rows"][0]
    height, width = (int(v) for v in next(iter(row["shape_counts"])).split("x"))
    real = run_isolated(
        {
            "kind": "real",
            "configs": configs,
            "overrides": [
                *overrides,
                f"train.max_iters={iters}",
                f"train.log_period={log_period}",
                f"train.checkpoint_period={iters}",
                f"train.hist_period={iters}",
                "train.eval_period=0",
                "train.num_vis_images=0",
                f"eval.max_images={2 * cfg.train.batch_size}",
                f"train.device={device}",
            ],
        },
        isolation,
    )
    synthetic = run_isolated(
        {
            "side": "ours",
            "as_configured": True,
            "configs": configs,
            "overrides": overrides,
            "batch_size": cfg.train.batch_size,
            "amp": cfg.train.amp,
            "size": [height, width],
            "num_classes": shapes["num_classes"],
            "warmup": synthetic_warmup,
            "iters": synthetic_iters,
            "device": device,
            "cudnn_benchmark": bool(real["cudnn_benchmark"]),
        },
        isolation,
    )
    return {
        "configs": configs,
        "overrides": overrides,
        "iters": iters,
        "log_period": log_period,
        "shape": [height, width],
        "distinct_shapes": row["distinct_shapes"],
        "real": real,
        "synthetic": synthetic,
        "ratio": ratio(real["images_per_s"], synthetic["train_images_per_s"]),
        **environment(device),
    }


def real_loop_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The trainer on ``spec``'s configs and overrides (set by :func:`real_loop`) in this process,
    into a temporary run folder; medians over the log windows but the first."""
    with tempfile.TemporaryDirectory(prefix="detector-bench-") as run_dir:
        cfg = load_config(spec["configs"], [*spec["overrides"], f"output_dir={run_dir}"])
        start = time.perf_counter()
        train(cfg, run_dir)
        wall = time.perf_counter() - start
        records = [
            json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        ]
    first = next(r for r in records if r["type"] == "start")
    windows = [r for r in records if r["type"] == "train"]
    steady = windows[1:] or windows  # the first window holds cudnn autotuning and compilation
    return {
        "images_per_s": statistics.median([r["images_per_s"] for r in steady]),
        "data_time_s": statistics.median([r["data_time"] for r in steady]),
        "step_time_s": statistics.median([r["step_time"] for r in steady]),
        "first_window_images_per_s": windows[0]["images_per_s"],
        "windows": len(windows),
        "peak_memory_gib": windows[-1].get("peak_memory_gib", float("nan")),
        "wall_s": wall,
        **{k: first.get(k) for k in ("cudnn_benchmark", "compiled", "optimizer", "pad_buckets")},
        "pid": os.getpid(),
    }


def format_real(report: dict[str, Any]) -> str:
    r, s = report["real"], report["synthetic"]
    return (
        f"real loop ({' '.join(report['configs'])}, {report['iters']} iterations, windows of "
        f"{report['log_period']}, first left out): {r['images_per_s']:.2f} img/s (data "
        f"{r['data_time_s'] * 1e3:.0f} ms, step {r['step_time_s'] * 1e3:.0f} ms per iteration; "
        f"first window {r['first_window_images_per_s']:.2f} img/s); synthetic, same model and "
        f"settings at {report['shape'][0]}x{report['shape'][1]}: {s['train_images_per_s']:.2f} "
        f"img/s; real / synthetic {report['ratio']:.2f}; {report['distinct_shapes']} padded shapes "
        f"in 200 batches; cudnn.benchmark {r['cudnn_benchmark']}, optimizer {r['optimizer']}, "
        f"compiled {r['compiled']}"
    )


def profile_step(
    configs: list[str], overrides: list[str], device: str, warmup: int = 3, steps: int = 2
) -> dict:
    """``torch.profiler`` over ``steps`` training steps on real loader batches: ops per step, the
    ops that make the host wait (``_local_scalar_dense`` is ``.item()``), on CUDA the runtime's
    synchronisations and memcpys."""
    from torch.profiler import ProfilerActivity, profile

    cfg = load_config(configs, [*overrides, "data.loader.num_workers=0"])
    dev = torch.device(device)
    loader = build_dataloader(cfg, "train")
    batches = iter(loader)
    side = OursSide(cfg, dev, len(loader.dataset.classes) - 1, cfg.train.amp)
    side.model.train()
    timed(lambda: side.step(*to_device(*next(batches), dev)), dev, warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step_s, _ = timed(lambda: side.step(*to_device(*next(batches), dev)), dev, steps)
    counts = collections.Counter(e.name for e in prof.events())
    ops = sum(v for k, v in counts.items() if k.startswith(("aten::", "torchvision::")))
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return {
        "step_s": step_s,
        "device": str(dev),
        "ops_per_step": ops / steps,
        "sync_ops_per_step": {k: counts[k] / steps for k in SYNC_OPS if counts[k]},
        "cuda_runtime_per_step": {k: counts[k] / steps for k in CUDA_RUNTIME_SYNCS if counts[k]},
        "table": prof.key_averages().table(sort_by=sort, row_limit=25),
    }


def loader_throughput(
    cfg, split: str = "train", num_workers: int = 0, num_batches: int = 50
) -> dict:
    """Images/s through decode + transforms + collate over ``num_batches`` batches, the first
    (start-up) timed apart."""
    dataset, loader = _loader(cfg, split, num_workers)
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - start
    start = time.perf_counter()
    batch_lengths = [len(images) for images, _ in itertools.islice(iterator, num_batches)]
    seconds = max(time.perf_counter() - start, 1e-9)
    batches, images = len(batch_lengths), sum(batch_lengths)
    del iterator, loader  # stop persistent workers
    return {
        "split": split,
        "num_workers": num_workers,
        "batch_size": cfg.train.batch_size,
        "num_batches": batches,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "batches_per_s": batches / seconds,
        "first_batch_s": first_batch_s,
        "dataset_images": len(dataset),
    }


def _loader(cfg, split: str, num_workers: int):
    """(the split's dataset, a loader of it as a run of ``cfg`` builds it, ``num_workers``)."""
    dataset = build_dataset(cfg, split)
    loader = make_dataloader(
        dataset,
        train=split == "train",
        batch_size=cfg.train.batch_size,
        num_workers=num_workers,
        seed=cfg.seed,
        group_by_aspect_ratio=cfg.data.loader.aspect_ratio_grouping,
        pin_memory=cfg.data.loader.pin_memory,
    )
    return dataset, loader


def padded_shapes(
    cfg, split: str = "train", num_batches: int = 1000, pad_buckets: tuple[int, ...] = (0,)
) -> dict:
    """The padded batch shapes a run of ``cfg`` would see, simulated without decoding an image: the
    loader's batch sampler and each sample's transform plan, padded as the model would for each
    ``pad_buckets`` value (0: off). ``padded_over_real``: padded over real pixels (the backbone's
    FLOPs per real pixel); ``padded_over_unbucketed``: against padding to ``size_divisibility``
    only; ``shape_counts``: most frequent first."""
    dataset, loader = _loader(cfg, split, num_workers=0)

    def planned_size(key) -> tuple[int, int]:
        """One sample's (H', W') after the transforms, drawn as the dataset does."""
        index, sample_seed = key if isinstance(key, (tuple, list)) else (key, key)
        record = dataset.records[index]
        generator = torch.Generator().manual_seed(int(sample_seed))
        return dataset.transforms.plan(
            record.height, record.width, dataset.get_target(index), generator
        )[1]

    # the batch sampler only: nothing is loaded
    sizes = [
        [planned_size(key) for key in batch]
        for batch in itertools.islice(loader.batch_sampler, num_batches)
    ]
    div = cfg.data.input.size_divisibility
    real = sum(h * w for batch in sizes for h, w in batch)
    unbucketed = sum(len(b) * math.prod(batch_padded_size(b, div)) for b in sizes)
    rows = []
    for n in pad_buckets:
        buckets = build_pad_buckets(cfg, n)
        shapes = [batch_padded_size(b, div, buckets) for b in sizes]
        counts = collections.Counter(shapes)
        padded = sum(len(b) * h * w for b, (h, w) in zip(sizes, shapes))
        rows.append(
            {
                "pad_buckets": n,
                "bucket_sides": list(buckets),
                "distinct_shapes": len(counts),
                "shape_counts": {f"{h}x{w}": c for (h, w), c in counts.most_common()},
                "padded_over_real": padded / real,
                "padded_over_unbucketed": padded / unbucketed,
            }
        )
    return {
        "split": split,
        "batches": len(sizes),
        "batch_size": cfg.train.batch_size,
        "num_classes": len(dataset.classes) - 1,
        "rows": rows,
    }


# the worker of one isolated measurement: its result on the last stdout line
if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(run_isolated(json.loads(sys.argv[1]), "none")), flush=True)
