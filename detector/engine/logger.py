"""Run logging: ``metrics.jsonl`` (one JSON object per log step, per evaluation and, for Dynamic
R-CNN's feedback, per update of its state: :data:`DYNAMIC_KEYS`) and TensorBoard events,
rank 0 only: every loss term (raw and weighted), lr, beta, IoU threshold, positives, per-coordinate
|target| and |pred - target| statistics and histograms, gradient norm, images/s, peak memory,
metrics, drawn val images, HParams."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from detector.box_coder import DELTA_NAMES
from detector.engine.outputs import write_output
from detector.engine.runs import METRICS_FILE, parse_record
from detector.engine.runtime import notice
from detector.losses.dynamic import SCHEDULED_LOSSES
from detector.losses.regression import build_box_loss

# What a "dynamic" record holds, written at every update of Dynamic R-CNN's feedback: the stats of
# each state that updated (the beta, the label assigner's IoU threshold) and of the sampling they
# read, as the step's training forward saw them (the state iteration ``iter`` - 1 trained with, the
# statistic and sampling of that iteration), and what the update computed from its interval (the
# median that sets the next beta, the share of its statistics that were 0).
DYNAMIC_KEYS = {
    "beta": ("beta", "beta_statistic", "beta_median", "beta_zero_share"),
    "iou": ("iou_thresh", "iou_statistic"),
    "sampling": ("num_pos_per_image", "num_zero_target_per_image"),
}
# What every run's HParams record; beta and beta_schedule are added where the loss has them.
HPARAM_KEYS = {
    "box_loss": "model.roi_head.box_loss.name",
    "normalizer": "model.roi_head.box_loss.normalizer",
    "box_loss_weight": "model.roi_head.box_loss.weight",
    "dynamic_label_assignment": "model.roi_head.dynamic_label_assignment.enabled",
    "backbone": "model.backbone.name",
    "lr": "train.lr",
    "max_iters": "train.max_iters",
    "batch_size": "train.batch_size",
    "data": "data.format",
    "label_noise": "data.label_noise",
    "seed": "seed",
}
HPARAM_METRICS = ("AP", "AP50", "AP75", "AP90", "mAP_voc")


def run_hparams(cfg) -> dict[str, Any]:
    """The HParams of a run: ``HPARAM_KEYS``, the box loss's beta where it has one and the beta
    schedule where the loss follows one (a plain Smooth L1 run shows no schedule)."""
    hp = {name: cfg.select(key) for name, key in HPARAM_KEYS.items()}
    box_loss = cfg.model.roi_head.box_loss
    # resolved from sigma where that is set; None for a loss without a beta
    beta = build_box_loss(box_loss).beta
    if beta is not None:
        hp["beta"] = beta
    if box_loss.name in SCHEDULED_LOSSES:
        hp["beta_schedule"] = box_loss.schedule.type
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hp.items()}


def format_value(value: float, digits: int = 4) -> str:
    """A float for the console, never ``-0.0000``."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _drop_records_after(path: Path, iteration: int, evaluation_too: bool = False) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) without the records of iterations after
    ``iteration`` (``evaluation_too``: nor its evaluation's). A line that is not a record (the
    torn last line of a kill or a full disk mid-write) is dropped with a warning."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_bytes().decode("utf-8", "replace").splitlines() if line]
    records = [parse_record(line) for line in lines]
    torn = records.count(None)
    if torn:
        notice(
            f"warning: {path}: dropped {torn} unreadable line(s), left by a write that did not "
            f"finish"
        )
    keep = []
    for line, r in zip(lines, records):
        if r is None or r.get("iter", 0) > iteration:
            continue
        # the evaluation at ``iteration`` is done again
        if evaluation_too and r.get("iter", 0) == iteration and r.get("type") == "eval":
            continue
        keep.append(line)
    write_output(path, "".join(line + "\n" for line in keep), overwrite=True)
    return len(lines) - torn - len(keep)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunLogger:
    """Writes scalars, histograms and images of one run (rank 0 only). ``resumed_at=k``: the records
    after iteration k are dropped from ``metrics.jsonl`` and purged from TensorBoard, so no
    iteration counts twice (``k=0``, no checkpoint: every record; ``final``, only the final
    evaluation is left: its record at k too)."""

    def __init__(self, run_dir: str | Path, resumed_at: int | None = None, final: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        purge = None
        if resumed_at:
            dropped = _drop_records_after(self.run_dir / METRICS_FILE, resumed_at, final)
            purge = resumed_at + 1
        elif resumed_at == 0:
            # a resume with no checkpoint starts over: what was logged, its start included, goes
            dropped = _drop_records_after(self.run_dir / METRICS_FILE, -1)
            purge = 0
            if dropped:
                notice(
                    f"--resume: no checkpoint holds the {dropped} records in "
                    f"{self.run_dir / METRICS_FILE}: they are dropped"
                )
        self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a")
        if resumed_at:
            self.log_scalars(resumed_at, "resume", dropped_records=dropped)

    def log_scalars(self, step: int, kind: str = "train", /, **scalars: Any) -> None:
        """One JSON line ``{"type": kind, "iter": step, **scalars}`` and a TensorBoard scalar per
        number (``eval/<name>`` for an evaluation's)."""
        values = _jsonable(scalars)
        self._jsonl.write(json.dumps({"type": kind, "iter": step, **values}) + "\n")
        self._jsonl.flush()
        prefix = "eval/" if kind == "eval" else ""
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(prefix + key, value, step)
            elif key == "AP_per_iou" and isinstance(value, list):
                for thr, ap in zip(range(50, 100, 5), value):
                    self._writer.add_scalar(f"{prefix}AP_per_iou/AP{thr}", ap, step)

    def histograms(self, iteration: int, tensors: dict[str, torch.Tensor]) -> None:
        """``hist/<name>`` tensors of shape [P,4] become one histogram per coordinate."""
        for key, value in tensors.items():
            value = value.detach().float().cpu()
            if value.numel() == 0:
                continue
            if value.dim() == 2 and value.shape[1] == len(DELTA_NAMES):
                for i, coord in enumerate(DELTA_NAMES):
                    self._writer.add_histogram(f"{key}/{coord}", value[:, i], iteration)
            else:
                self._writer.add_histogram(key, value.flatten(), iteration)

    def images(self, iteration: int, tag: str, images: list[torch.Tensor]) -> None:
        """uint8 [3,H,W] images (already drawn on)."""
        for i, image in enumerate(images):
            self._writer.add_image(f"{tag}/{i}", image, iteration)

    def hparams(self, cfg, metrics: dict[str, Any]) -> None:
        """The run's hyper-parameters and final metrics, in this run's own event file (HParams
        tab)."""
        from torch.utils.tensorboard.summary import hparams

        hp = run_hparams(cfg)
        final = {
            f"hparam/{k}": float(metrics[k])
            for k in HPARAM_METRICS
            if isinstance(metrics.get(k), (int, float))
        }
        for summary in hparams(hp, final):  # experiment, session start and session end summaries
            self._writer._get_file_writer().add_summary(summary)
        for key, value in final.items():
            self._writer.add_scalar(key, value)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
        self._jsonl.close()


def stats_to_scalars(
    stats: dict[str, torch.Tensor],
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Split the model's stats into 0-d scalars (one host copy per device) and ``hist/`` tensors."""
    scalars = {k: v for k, v in stats.items() if not k.startswith("hist/") and v.numel() == 1}
    hists = {k: v for k, v in stats.items() if k.startswith("hist/")}
    values: dict[str, float] = {}
    for device in {v.device for v in scalars.values()}:
        keys = [k for k, v in scalars.items() if v.device == device]
        values.update(
            zip(keys, torch.stack([scalars[k].detach().float().reshape(()) for k in keys]).tolist())
        )
    return {k: values[k] for k in scalars}, hists
