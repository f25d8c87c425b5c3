"""The training loop: read ``train`` and ``_train`` top to bottom; the run-folder promises are in
docs/runs.md.

``config.yaml`` is written only once data, model and optimizer are built; ``last.pth`` before the
final evaluation. Loss weights are applied here only. Losses stay on the device until
:class:`LossWatch` reads them.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from detector.config import Config, check_training
from detector.data.build import build_dataloader, build_dataset, proposals_of
from detector.engine import distributed as dist_utils
from detector.engine.checkpoint import Checkpointer, Progress
from detector.engine.logger import DYNAMIC_KEYS, RunLogger, format_value, stats_to_scalars
from detector.engine.optim import build_loss_weights, build_lr, build_lr_scheduler, build_optimizer
from detector.engine.outputs import write_eval_files
from detector.engine.runs import (
    BEST,
    LAST,
    RunLock,
    check_resume_point,
    check_run_folder,
    prepare_run_folder,
)
from detector.engine.runtime import (
    GracefulStop,
    amp_settings,
    compile_submodules,
    notice,
    seed_everything,
    select_device,
    to_device,
)
from detector.errors import DetectorError
from detector.evaluation.coco import detections_to_coco_results
from detector.evaluation.results import draw_predictions, evaluate_model
from detector.modeling.detector import build_detector


class NonFiniteLossError(DetectorError, FloatingPointError):
    """A loss term became NaN/inf; the message names the term, the iteration and the files
    written."""


class TrainingInterrupted(DetectorError):
    """SIGINT/SIGTERM stopped the run; the message says what ``last.pth`` holds and how to
    resume."""

    exit_code = 130


def train(
    cfg: Config,
    run_dir: str | Path,
    overwrite: bool = False,
    extend: bool = False,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and checkpoint one run into ``run_dir``; return the final metrics.
    ``extend``/``overwrite``: see :func:`detector.engine.runs.check_run_folder`;
    ``trust_checkpoint``: ``--trust-checkpoint`` on resume."""
    run_dir = Path(run_dir)
    check_training(cfg)
    plan = check_run_folder(
        run_dir, cfg, resume=bool(cfg.train.resume), overwrite=overwrite, extend=extend
    )
    device = select_device(cfg.train.device)
    distributed = dist_utils.init_distributed(device.type)
    lock = RunLock(run_dir)  # held by rank 0, released however the run ends
    try:
        with GracefulStop(graceful=False), lock if dist_utils.is_main_process() else nullcontext():
            return _train(cfg, run_dir, plan, device, distributed, lock.notes, trust_checkpoint)
    except KeyboardInterrupt as exc:  # a signal outside the training steps: set-up or evaluation
        last = run_dir / "checkpoints" / LAST
        where = (
            f"{last} holds the run; continue with the same command plus --resume"
            if last.is_file()
            else "no checkpoint was written yet; run the same command again"
        )
        raise TrainingInterrupted(
            f"stopped by {exc.args[0] if exc.args else 'SIGINT'} before the run finished; {where}"
        ) from None


def _train(
    cfg: Config,
    run_dir: Path,
    plan,
    device: torch.device,
    distributed: bool,
    lock_notes: list[str],
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    rank, main = dist_utils.get_rank(), dist_utils.is_main_process()
    seed_everything(cfg.seed + rank, cfg.deterministic)
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    # cudnn's autotuning pays off only over the few shapes of bucketed padding
    bucketed = cfg.data.input.pad_buckets > 0
    cudnn_benchmark = device.type == "cuda" and bucketed and not cfg.deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark

    # ---------------------------------------------------------------- data, model, optimizer, state
    train_set = build_dataset(cfg, "train")  # its loader is made once the resume point is known
    val_loader = build_dataloader(cfg, "val", distributed=distributed)
    classes = train_set.classes
    model = build_detector(cfg, num_classes=len(classes) - 1).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model.use_channels_last()
    compiled = compile_submodules(model, cfg.train.compile)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_weights = build_loss_weights(cfg)
    checkpointer = Checkpointer(
        run_dir / "checkpoints", model, optimizer, scheduler, scaler, cfg.to_dict()
    )
    progress = checkpointer.resume(rank, trust=trust_checkpoint) if plan.resume else Progress()
    start_iter = progress.iteration
    if plan.resume:  # a resume never passes its end; a finished run is left as it is
        finished = check_resume_point(run_dir, plan, start_iter, cfg.train.max_iters)
        if finished is not None:
            return finished
    train_loader = build_dataloader(
        cfg, "train", start_iter=start_iter, distributed=distributed, dataset=train_set
    )
    data_iter = iter(train_loader)
    if start_iter < cfg.train.max_iters:  # a bad image in the first batch is found before any write
        data_iter = itertools.chain([next(data_iter)], data_iter)
    # everything that can fail on the user's data has been built: the folder becomes a run now
    if main:
        scaling = (
            f"lr {build_lr(cfg):.4g} = train.lr {cfg.train.lr:g} per "
            f"{cfg.train.lr_reference_batch} images x {cfg.train.batch_size} images x "
            f"{dist_utils.get_world_size()} process(es)"
        )
        prepare_run_folder(
            run_dir, cfg, plan, lock_notes + ([scaling] if cfg.train.lr_reference_batch else [])
        )
        warn_if_no_boxes(train_loader.dataset, "training")
    resumed_at = start_iter if plan.resume else None
    final = start_iter == cfg.train.max_iters
    logger = RunLogger(run_dir, resumed_at, final) if main else None
    if main and start_iter == 0:
        logger.log_scalars(
            0,
            "start",
            num_train_images=len(train_loader.dataset),
            num_classes=len(classes) - 1,
            num_val_images=len(val_loader.dataset),
            device=str(device),
            world_size=dist_utils.get_world_size(),
            amp=str(amp_dtype),
            dist_backend=torch.distributed.get_backend() if distributed else None,
            pad_buckets=list(model.pad_buckets),
            cudnn_benchmark=cudnn_benchmark,
            compiled=compiled,
            optimizer=optimizer.impl,
        )
    raw_model = model
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def evaluate(iteration: int) -> tuple[dict[str, Any], list]:
        """Evaluate on the val split, log the metrics and a few drawn images, keep best.pth."""
        # the eval section's keys (metric, backend, max_images) are the function's parameters
        metrics, detections = evaluate_model(
            raw_model, val_loader, device, amp_dtype=amp_dtype, **cfg.eval
        )
        if main:
            logger.log_scalars(iteration, "eval", **metrics)
            if cfg.train.num_vis_images:
                drawn = draw_predictions(
                    raw_model, val_loader.dataset, cfg.train.num_vis_images, device, classes
                )
                logger.images(iteration, "val", drawn)
        # the metrics are identical on every rank
        if keep_best(progress, metrics, cfg.train.best_metric):
            checkpointer.save(BEST, progress)
        raw_model.train()
        return metrics, detections

    # ---------------------------------------------------------------- the loop
    max_iters, clip = cfg.train.max_iters, cfg.train.clip_grad_norm or math.inf
    watch = LossWatch(distributed)
    # the speed window since the last log step: its start, images, steps and loader waits
    window_start = time.perf_counter()
    window_images, window_steps, data_time = 0, 0, 0.0
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with (
        tqdm(
            total=max_iters,
            initial=start_iter,
            disable=not main,
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
            desc="train",
        ) as bar,
        GracefulStop() as stop,
    ):
        for iteration in range(start_iter, max_iters):
            t0 = time.perf_counter()
            images, targets = to_device(*next(data_iter), device)
            data_time += time.perf_counter() - t0
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                losses, stats = model(images, targets, proposals=proposals_of(targets))
            total = sum(losses[k] * loss_weights[k] for k in losses)
            watch.record(losses, iteration)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            # Dynamic R-CNN beta / IoU threshold, on every rank: the states that updated
            updated = raw_model.update_dynamic_state(iteration, stats)
            progress.iteration = done = iteration + 1
            window_images += len(images) * dist_utils.get_world_size()
            window_steps += 1
            bar.update(1)

            last_step = done == max_iters
            log_now = done % cfg.train.log_period == 0 or last_step
            eval_now = (
                bool(cfg.train.eval_period) and done % cfg.train.eval_period == 0 and not last_step
            )
            save_now = done % cfg.train.checkpoint_period == 0 or last_step
            # a signal may reach torchrun's ranks at different steps: they agree at log and
            # checkpoint steps
            stopping = (not distributed or log_now or save_now) and dist_utils.any_rank(
                stop.requested is not None
            )
            # no checkpoint is ever written past a NaN loss
            if log_now or eval_now or save_now or stopping:
                watch.raise_if_bad(checkpointer, progress)
            if log_now:
                # after a device sync: data_time is the mean wait per step for the loader,
                # step_time the rest of the window's wall time per step
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - window_start
                # the losses averaged over the ranks (raw, weighted and their total), the
                # scalar stats; the hist/ stats apart
                reduced = dist_utils.reduce_mean({**losses, "total_loss": total.detach()})
                scalars = {k: float(v.detach()) for k, v in reduced.items()}
                scalars.update({f"weighted/{k}": scalars[k] * loss_weights[k] for k in losses})
                stat_scalars, hists = stats_to_scalars(stats)
                scalars.update(
                    stat_scalars,
                    lr=optimizer.param_groups[0]["lr"],
                    grad_norm=float(grad_norm),
                    images_per_s=window_images / max(elapsed, 1e-9),
                    data_time=data_time / window_steps,
                    step_time=max(elapsed - data_time, 0.0) / window_steps,
                )
                if device.type == "cuda":
                    scalars["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                if main:
                    log_train_step(logger, bar, cfg, done, scalars, hists, list(losses))
                window_start = time.perf_counter()
                window_images, window_steps, data_time = 0, 0, 0.0
            if updated and main:
                # every feedback update in a short record: the beta and IoU threshold trajectories
                # exact (a replay reads them) at any train.log_period, each update once
                keys = [k for part in (*updated, "sampling") for k in DYNAMIC_KEYS[part]]
                dynamic = stats_to_scalars({k: stats[k] for k in keys if k in stats})[0]
                for computed in updated.values():
                    dynamic.update(computed)
                logger.log_scalars(done, "dynamic", **dynamic)
            t_aside = time.perf_counter()
            if eval_now:
                evaluate(done)
            if save_now or (stopping and not last_step):
                checkpointer.save(LAST, progress, keep_previous=True)
            # evaluation and checkpoints are not training speed
            window_start += time.perf_counter() - t_aside
            if stopping and not last_step:
                raise TrainingInterrupted(
                    f"stopped by {stop.requested or 'a signal to another rank'} at iteration "
                    f"{done} of {max_iters}; {checkpointer.dir / LAST} holds it. Continue "
                    f"with the same command plus --resume"
                )

    # ------------------------------------------------------- final evaluation (last.pth is on disk)
    if main and start_iter < max_iters:
        # the end-of-training error distribution, for the ablation plots
        hists = {k: v.detach().float().cpu() for k, v in stats.items() if k.startswith("hist/")}
        torch.save(hists, run_dir / "final_errors.pt")
    metrics, detections = evaluate(max_iters)
    if main:
        logger.hparams(cfg, metrics)
        results = detections_to_coco_results(val_loader.dataset, detections)
        write_eval_files(run_dir / "eval", metrics, results, overwrite=True)
        logger.close()
    return metrics


class LossWatch:
    """The non-finite-loss check without a host sync per step: :meth:`raise_if_bad` reads the
    buffered losses at log steps and before every evaluation and checkpoint write, naming the first
    bad iteration."""

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.rows: list[torch.Tensor] = []  # [T] loss values of each step since the last read
        self.names: list[str] = []
        self.first = 0  # iteration of rows[0]

    def record(self, losses: dict[str, torch.Tensor], iteration: int) -> None:
        if not self.rows:
            self.names, self.first = list(losses), iteration
        self.rows.append(torch.stack([v.detach().float() for v in losses.values()]))

    def raise_if_bad(self, checkpointer: Checkpointer | None, progress: Progress | None) -> None:
        if not self.rows:
            return
        rows, self.rows = torch.stack(self.rows), []  # [k,T]
        bad = (~torch.isfinite(rows)).any(dim=1).int()  # [k]
        if self.distributed:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not int(bad.any()):
            return
        # counted from 1, as the log and the console count iterations
        row, values = int(bad.argmax()), rows[int(bad.argmax())].tolist()
        first_bad, checked = self.first + row + 1, self.first + len(rows)
        names = [n for n, v in zip(self.names, values) if not math.isfinite(v)] or [
            "a loss on another rank"
        ]
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.names, values))
        message = (
            f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not finite at iteration "
            f"{first_bad} ({values}); found at the check after iteration {checked}"
        )
        if checkpointer is not None:
            diagnostic = checkpointer.save(f"nonfinite_iter{first_bad}.pth", progress)
            last = checkpointer.dir / LAST
            good = (
                f"last good checkpoint: {last}"
                if last.is_file()
                else "no checkpoint was written before it"
            )
            message += f"; diagnostic checkpoint: {diagnostic}; {good}"
        raise NonFiniteLossError(
            f"{message}. Try a lower train.lr, train.clip_grad_norm>0 or another box loss."
        )


def log_train_step(
    logger: RunLogger,
    bar,
    cfg: Config,
    done: int,
    scalars: dict[str, float],
    hists: dict[str, torch.Tensor],
    loss_names: list[str],
) -> None:
    """One log step on rank 0: the scalars, the histograms every ``train.hist_period``, a console
    line."""
    logger.log_scalars(done, **scalars)
    if done % cfg.train.hist_period == 0 or done == cfg.train.max_iters:
        logger.histograms(done, hists)
    beta = f"  beta {format_value(scalars['beta'])}" if "beta" in scalars else ""
    bar.set_postfix(loss=format_value(scalars["total_loss"], 3), lr=f"{scalars['lr']:.2g}")
    losses = "  ".join(f"{k} {format_value(scalars[k])}" for k in loss_names)
    bar.write(
        f"iter {done}/{cfg.train.max_iters}  loss {format_value(scalars['total_loss'])}  "
        f"{losses}{beta}  lr {scalars['lr']:.4g}  {scalars['images_per_s']:.1f} img/s  "
        f"data {scalars['data_time'] * 1e3:.0f} ms  step {scalars['step_time'] * 1e3:.0f} ms"
    )


def keep_best(progress: Progress, metrics: dict[str, Any], metric: str) -> bool:
    """Whether ``metrics`` is a new best of ``metric`` (recorded in ``progress``). Undefined values
    (COCO's -1 and VOC's NaN when the val split has no ground truth) never are, and say so once."""
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        if not progress.told_undefined:
            progress.told_undefined = True
            notice(
                f"{metric} is undefined ({value}): the val split has no ground-truth boxes to "
                "score against, so no best.pth is kept; check the val annotations and data.classes"
            )
        return False
    if value > progress.best:
        progress.best = value
        return True
    return False


def warn_if_no_boxes(dataset, split: str) -> None:
    """Once, before training: a split with no boxes trains the classifier on background only."""
    if len(dataset) and not any(len(r.boxes) for r in dataset.records):
        notice(
            f"warning: the {split} split ({dataset.name}, {len(dataset)} images) has no boxes at "
            "all: the box losses stay 0 and the detector can only learn background; check the "
            "annotation file and data.classes"
        )
