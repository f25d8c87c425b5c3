"""The training loop: read ``train`` top to bottom.

``train(cfg, run_dir)`` checks the run folder (see :mod:`detector.engine.runs`: a run is never overwritten or
mixed without the user asking), takes its lock, builds data, model, optimizer and logger from the config,
resumes when asked, trains for ``train.max_iters`` iterations, evaluates every ``train.eval_period`` iterations,
writes ``last.pth`` and only then runs the final evaluation, and returns the final metrics.

Loss weights are applied here and only here; raw and weighted values are both logged. A non-finite loss stops
the run with a message naming the term and the iteration, after a diagnostic checkpoint written beside (never
over) the last good one. Ctrl-C or SIGTERM finishes the current step (under torchrun: up to the next log or
checkpoint step, where the ranks agree), writes ``last.pth`` and stops with a resume hint
(:class:`TrainingInterrupted`); a second Ctrl-C exits at once.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from detector.config import Config, ConfigError
from detector.data import build_dataloader, proposals_of
from detector.engine import distributed as dist_utils
from detector.engine.checkpoint import BEST, LAST, Checkpointer, Progress
from detector.engine.logger import RunLogger, format_value, stats_to_scalars
from detector.engine.optim import build_loss_weights, build_lr, build_lr_scheduler, build_optimizer
from detector.engine.runs import RunLock, check_run_folder, prepare_run_folder
from detector.engine.runtime import (GracefulStop, amp_settings, compile_submodules, cudnn_benchmark_enabled, notice,
                                     seed_everything, select_device, to_device)
from detector.errors import DetectorError
from detector.evaluation import metric_names
from detector.evaluation.results import draw_predictions, evaluate_model, write_eval_results
from detector.modeling import build_detector


class NonFiniteLossError(DetectorError, FloatingPointError):
    """A loss term became NaN/inf; the message names the term, the iteration and the saved files."""


class TrainingInterrupted(DetectorError):
    """SIGINT/SIGTERM stopped the run after a step; ``last.pth`` holds it and the message says how to resume."""


def check_best_metric(cfg: Config) -> None:
    valid = metric_names(cfg.eval.metric)
    if cfg.train.best_metric not in valid:
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not computed with "
                          f"eval.metric={cfg.eval.metric}; choose from {', '.join(valid)}")


def train(cfg: Config, run_dir: str | Path, overwrite: bool = False, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Train, evaluate and checkpoint one run into ``run_dir``; return the final metrics.

    ``cfg.train.resume`` continues the run in ``run_dir``; ``overwrite`` replaces the run there (the user asked);
    ``trust_checkpoint`` lets the resume unpickle a checkpoint that is more than data (``--trust-checkpoint``).
    """
    run_dir = Path(run_dir)
    check_best_metric(cfg)
    plan = check_run_folder(run_dir, cfg, resume=bool(cfg.train.resume), overwrite=overwrite)  # reads only
    device = select_device(cfg.train.device)
    distributed = dist_utils.init_distributed(device.type)
    main = dist_utils.is_main_process()
    lock = RunLock(run_dir)
    if main:
        lock.acquire()
    try:
        if main:
            prepare_run_folder(run_dir, cfg, plan, lock.notes)
        return _train(cfg, run_dir, device, distributed, resume=plan.resume, trust_checkpoint=trust_checkpoint)
    finally:
        lock.release()


def _train(cfg: Config, run_dir: Path, device: torch.device, distributed: bool, resume: bool,
           trust_checkpoint: bool = False) -> dict[str, Any]:
    rank, main = dist_utils.get_rank(), dist_utils.is_main_process()
    if distributed and device.type != "cuda" and cfg.model.backbone.norm == "syncbn":
        raise ConfigError("model.backbone.norm=syncbn synchronises batch statistics over GPUs only; use "
                          "model.backbone.norm=bn for a multi-process CPU run")
    seed_everything(cfg.seed + rank, cfg.deterministic)
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device, cfg.train.amp_dtype)
    cudnn_benchmark = device.type == "cuda" and cudnn_benchmark_enabled(
        cfg.train.cudnn_benchmark, bucketed=cfg.data.input.pad_buckets > 0, deterministic=cfg.deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark

    # ---------------------------------------------------------------- data, model, optimizer, state
    train_loader = build_dataloader(cfg, "train", start_iter=0, distributed=distributed)
    val_loader = build_dataloader(cfg, "val", distributed=distributed)
    classes = train_loader.dataset.classes
    if main:
        warn_if_no_boxes(train_loader.dataset, "training")
    model = build_detector(cfg, num_classes=len(classes) - 1).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model.use_channels_last()
    compiled = compile_submodules(model, cfg.train.compile)
    optimizer = build_optimizer(cfg, model)
    if main and cfg.train.lr_reference_batch is not None:
        notice(f"lr {build_lr(cfg):.4g} = train.lr {cfg.train.lr:g} per {cfg.train.lr_reference_batch} images x "
               f"{cfg.train.batch_size} images x {dist_utils.get_world_size()} process(es) (linear scaling rule)")
    scheduler = build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_weights = build_loss_weights(cfg)
    checkpointer = Checkpointer(run_dir / "checkpoints", model, optimizer, scheduler, scaler, cfg.to_dict())
    progress = Progress()
    if resume:
        resumed = checkpointer.resume(rank, trust=trust_checkpoint)
        if resumed is not None:
            progress, path = resumed
            notice(f"resumed from {path} at iteration {progress.iteration}")
        else:
            notice(f"--resume: {checkpointer.dir} holds no checkpoint yet; starting from iteration 0")
    start_iter = progress.iteration
    if start_iter:
        train_loader = build_dataloader(cfg, "train", start_iter=start_iter, distributed=distributed)
    logger = RunLogger(run_dir, enabled=main, resumed_at=start_iter if start_iter else None)
    if main and start_iter == 0:
        logger.log("start", 0, {"num_train_images": len(train_loader.dataset), "num_classes": len(classes) - 1,
                                "num_val_images": len(val_loader.dataset), "device": str(device),
                                "world_size": dist_utils.get_world_size(), "amp": str(amp_dtype),
                                "dist_backend": torch.distributed.get_backend() if distributed else None,
                                "pad_buckets": list(model.pad_buckets), "cudnn_benchmark": cudnn_benchmark,
                                "compiled": compiled, "optimizer_impl": optimizer.impl,
                                "nonfinite_check": cfg.train.nonfinite_check})
    raw_model = model
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    told: set[str] = set()  # notices given once per run

    def evaluate_and_log(iteration: int) -> tuple[dict[str, Any], list]:
        metrics, detections = evaluate_model(raw_model, val_loader, device, metric=cfg.eval.metric,
                                             backend=cfg.eval.backend, amp_dtype=amp_dtype,
                                             max_images=cfg.eval.max_images)
        logger.log("eval", iteration, metrics)
        if main and cfg.train.num_vis_images:
            logger.images(iteration, "val", draw_predictions(raw_model, val_loader.dataset,
                                                             cfg.train.num_vis_images, device, classes))
        if keep_best(progress, metrics, cfg.train.best_metric, told):  # identical on every rank
            checkpointer.save(BEST, progress)
        raw_model.train()
        return metrics, detections

    # ---------------------------------------------------------------- the loop
    model.train()
    bar = tqdm(total=cfg.train.max_iters, initial=start_iter, disable=not main, dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr, desc="train")
    data_iter = iter(train_loader)
    window = StepWindow()
    watch = NonFiniteWatch(cfg.train.nonfinite_check, device, distributed, window=cfg.train.log_period)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with GracefulStop() as stop:
            for iteration in range(start_iter, cfg.train.max_iters):
                t0 = time.perf_counter()
                images, targets = to_device(*next(data_iter), device)
                t1 = time.perf_counter()
                autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
                with autocast:
                    losses, stats = model(images, targets, proposals=proposals_of(targets))
                total = sum(losses[k] * loss_weights[k] for k in losses)
                check_finite(losses, iteration, watch, checkpointer, progress)

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
                max_norm = cfg.train.clip_grad_norm if cfg.train.clip_grad_norm > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                raw_model.update_dynamic_state(iteration, stats)  # Dynamic R-CNN beta / IoU threshold, every rank
                progress.iteration = done = iteration + 1
                window.add(len(images) * dist_utils.get_world_size(), data_time=t1 - t0)
                bar.update(1)

                is_last = done == cfg.train.max_iters
                log_now = done % cfg.train.log_period == 0 or is_last
                eval_now = bool(cfg.train.eval_period) and done % cfg.train.eval_period == 0 and not is_last
                saved = done % cfg.train.checkpoint_period == 0 or is_last
                # Ctrl-C/SIGTERM: at once in one process; under torchrun the signal may reach the ranks at different
                # steps, so they agree at the next log or checkpoint step (a collective every rank makes there)
                if distributed:
                    stopping = (log_now or saved) and dist_utils.any_rank(stop.requested is not None)
                else:
                    stopping = stop.requested is not None
                if log_now or eval_now or saved or stopping:  # no checkpoint is written past a NaN loss
                    watch.settle(checkpointer, progress)
                if log_now:
                    log_train_step(logger, bar, cfg, done, losses, total, stats, loss_weights, optimizer,
                                   grad_norm, window, device)
                t_aside = time.perf_counter()
                if eval_now:
                    evaluate_and_log(done)
                if saved:
                    checkpointer.save(LAST, progress, keep_previous=True)
                window.start += time.perf_counter() - t_aside  # evaluation and checkpoints are not training speed
                if stopping and not is_last:
                    if not saved:
                        checkpointer.save(LAST, progress, keep_previous=True)
                    raise TrainingInterrupted(
                        f"stopped by {stop.requested or 'a signal to another rank'} at iteration {done} of "
                        f"{cfg.train.max_iters}; "
                        f"{checkpointer.dir / LAST} holds it. Continue with the same command plus --resume")
    finally:
        bar.close()

    # ---------------------------------------------------------------- final evaluation (last.pth is on disk)
    metrics, detections = evaluate_and_log(cfg.train.max_iters)
    if main:
        logger.hparams(cfg, metrics)
        write_eval_results(run_dir / "eval", metrics, val_loader.dataset, detections)
    logger.close()
    return metrics


class StepWindow:
    """Images, steps and data-loading time summed since the last log step (see :func:`log_train_step`)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.steps, self.data_time = time.perf_counter(), 0, 0, 0.0

    def add(self, images: int, data_time: float) -> None:
        self.images += images
        self.steps += 1
        self.data_time += data_time


class NonFiniteWatch:
    """The non-finite-loss check, ``train.nonfinite_check``: ``step`` or ``log``.

    Each step's loss values go into a small buffer on the device (``[steps, T]``, T loss terms; no sync).
    ``step``: the buffer is read on the host every step (one host-device sync per step) and the run stops before
    the bad step reaches the weights; the diagnostic checkpoint holds the weights that produced the NaN. ``log``:
    :meth:`settle` reads it at each log step and before every evaluation and checkpoint write (``last.pth``,
    ``best.pth``, the Ctrl-C save), so the buffer holds at most ``train.log_period``
    steps. The run may go on for up to ``log_period - 1`` steps past the bad one (the weights are NaN by then), but
    the message still names the first bad iteration and its values, and ``last.pth`` is the last one written after
    a clean read: no periodic checkpoint holds a NaN step.
    """

    def __init__(self, mode: str, device: torch.device, distributed: bool, window: int = 1):
        self.mode, self.device, self.distributed = mode, device, distributed
        self.window = window if mode == "log" else 1
        self.names: list[str] = []
        self.rows: torch.Tensor | None = None  # [window, T] loss values of the steps since the last read
        self.count = 0  # rows filled
        self.start = 0  # iteration of row 0

    def observe(self, losses: dict[str, torch.Tensor], iteration: int) -> None:
        """Keep this iteration's loss values on the device (no host sync)."""
        terms = torch.stack([v.detach().float() for v in losses.values()])  # [T]
        if self.rows is None:
            self.names = list(losses)
            self.rows = terms.new_empty((self.window, terms.shape[0]))
        elif self.count == self.rows.shape[0]:  # more steps than expected between two reads: grow
            self.rows = torch.cat([self.rows, torch.empty_like(self.rows)])
        if self.count == 0:
            self.start = iteration
        self.rows[self.count] = terms
        self.count += 1

    def settle(self, checkpointer: Checkpointer, progress: Progress) -> None:
        """``log`` mode: read the buffer (the sync) and stop the run (every rank) if a loss was not finite."""
        if self.mode == "log":
            self.raise_if_bad(checkpointer, progress)

    def raise_if_bad(self, checkpointer: Checkpointer | None, progress: Progress | None) -> None:
        """Read the buffer (one host sync) and, if a loss was not finite, write a diagnostic checkpoint beside
        ``last.pth`` (none without a ``checkpointer``: a benchmark) and raise :class:`NonFiniteLossError` on every
        rank, naming the first bad iteration."""
        if not self.count:
            return
        rows, self.count = self.rows[:self.count], 0
        bad = ~torch.isfinite(rows)  # [k,T]
        flags = bad.any(dim=1).int()  # [k] this rank
        if self.distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if not int(flags.any()):  # the host sync of this check
            return
        flags = flags.tolist()
        row = flags.index(1)
        first = self.start + row
        names = [n for n, b in zip(self.names, bad[row].tolist()) if b] or ["a loss on another rank"]
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.names, rows[row].tolist()))
        verb = "is" if len(names) == 1 else "are"
        message = f"{' and '.join(names)} {verb} not finite at iteration {first} ({values})"
        if self.mode == "log":
            message += (f"; found at the check after iteration {self.start + len(flags) - 1} "
                        f"(train.nonfinite_check=log reads it every train.log_period steps)")
        if checkpointer is not None:
            path = checkpointer.save(f"nonfinite_iter{first}.pth", progress)
            message += f"; diagnostic checkpoint: {path}; last good checkpoint: {checkpointer.dir / LAST}"
        raise NonFiniteLossError(f"{message}. Try a lower train.lr, train.clip_grad_norm>0 or another box loss.")


def check_finite(losses: dict[str, torch.Tensor], iteration: int, watch: NonFiniteWatch, checkpointer: Checkpointer,
                 progress: Progress) -> None:
    """The per-step part of the non-finite-loss check: record, and with ``train.nonfinite_check=step`` stop the
    run at once (before the backward) when a loss term is NaN/inf."""
    watch.observe(losses, iteration)
    if watch.mode == "step":
        watch.raise_if_bad(checkpointer, progress)


def log_train_step(logger: RunLogger, bar, cfg: Config, done: int, losses: dict[str, torch.Tensor],
                   total: torch.Tensor, stats: dict[str, torch.Tensor], loss_weights: dict[str, float], optimizer,
                   grad_norm: torch.Tensor, window: StepWindow, device: torch.device) -> None:
    """One log step: losses (raw and weighted), stats, lr, speed split into data and compute time, memory.

    Speed over the window since the last log step, honest under CUDA's asynchrony because this step first waits
    for the device: ``images_per_s`` is images / wall time; ``data_time`` the mean time per step the host waited
    for the loader (the loader is the limit when it is a large part of the step; the device may still have been
    busy with the previous step meanwhile); ``step_time`` the rest of the wall time per step (forward, backward,
    update, and whatever the host does), so ``data_time + step_time`` is the wall time per step.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - window.start
    reduced = dist_utils.reduce_mean({**losses, "total_loss": total.detach()})
    scalars, hists = stats_to_scalars(stats)
    values = {k: float(v.detach()) for k, v in reduced.items()}
    values.update({f"weighted/{k}": values[k] * loss_weights[k] for k in losses})
    values.update(scalars)
    steps = max(window.steps, 1)
    data_time = window.data_time / steps
    values.update({"lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                   "images_per_s": window.images / max(elapsed, 1e-9), "data_time": data_time,
                   "step_time": max(elapsed / steps - data_time, 0.0)})
    if device.type == "cuda":
        values["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    logger.log("train", done, values)
    if logger.enabled:
        if done % cfg.train.hist_period == 0 or done == cfg.train.max_iters:
            logger.histograms(done, hists)
        if done == cfg.train.max_iters:  # the end-of-training error distribution, for ablation plots
            torch.save({k: v.detach().float().cpu() for k, v in hists.items()}, logger.run_dir / "final_errors.pt")
        beta = f"  beta {format_value(values['beta'])}" if "beta" in values else ""
        bar.set_postfix(loss=format_value(values["total_loss"], 3), lr=f"{values['lr']:.2g}")
        bar.write(f"iter {done}/{cfg.train.max_iters}  loss {format_value(values['total_loss'])}  "
                  + "  ".join(f"{k} {format_value(values[k])}" for k in losses)
                  + f"{beta}  lr {values['lr']:.4g}  {values['images_per_s']:.1f} img/s  "
                  f"data {values['data_time'] * 1e3:.0f} ms  step {values['step_time'] * 1e3:.0f} ms")
    window.reset()


def keep_best(progress: Progress, metrics: dict[str, Any], metric: str, told: set[str]) -> bool:
    """Whether ``metrics`` is a new best of ``metric`` (recorded in ``progress``); undefined values never are.

    COCO reports -1 (and VOC NaN) when the val split has no ground truth: such a value is not a score, so it
    picks no ``best.pth``, and the user is told why once (``told`` remembers it).
    """
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        if metric not in told:
            told.add(metric)
            notice(f"{metric} is undefined ({value}): the val split has no ground-truth boxes to score "
                   f"against, so no best.pth is kept; check the val annotations and data.classes")
        return False
    if value > progress.best:
        progress.best = value
        return True
    return False


def warn_if_no_boxes(dataset, split: str) -> None:
    """Once, before training: a split with no boxes trains the classifier on background only."""
    if len(dataset) and not any(len(r.boxes) for r in dataset.records):
        notice(f"warning: the {split} split ({dataset.name}, {len(dataset)} images) has no boxes at all: "
               f"the box losses stay 0 and the detector can only learn background; check the annotation file "
               f"and data.classes")
