"""Checkpoints: written atomically, read with clear errors, resumed with a fallback.

A checkpoint is a dict ``{"model", "optimizer", "scheduler", "scaler", "iteration", "config", "rng"}``. The
model's state dict carries the RoI head's dynamic state (β schedule, label assigner) through
``get_extra_state``. Files in ``<run>/checkpoints/``:

- ``last.pth``: the newest; the one it replaced is kept as ``last.prev.pth`` so a corrupt newest file
  (a machine dying mid-``fsync``) can fall back one step.
- ``best.pth``: the best evaluation by ``train.best_metric``.
- ``nonfinite_iter<k>.pth``: a diagnostic snapshot written when a loss becomes NaN/inf, never over the others.
"""
from __future__ import annotations

import errno
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from detector.errors import DetectorError
from detector.modeling.fit import misfit_message

LAST, PREVIOUS, BEST, CORRUPT = "last.pth", "last.prev.pth", "best.pth", "last.corrupt.pth"


class CheckpointError(DetectorError, RuntimeError):
    """A checkpoint file is missing, truncated or not ours; the message names it and the fix."""


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    With ``keep_previous`` an existing file at ``path`` is first renamed to ``last.prev.pth``. A full disk (or
    any failed write) leaves the existing files as they were and raises one :class:`CheckpointError` line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
        os.unlink(tmp)
        if isinstance(exc, RuntimeError) and "unexpected pos" not in str(exc) and "write" not in str(exc).lower():
            raise
        full = isinstance(exc, RuntimeError) or exc.errno in (errno.ENOSPC, errno.EDQUOT)
        intact = f"{path} is intact" if path.exists() else "no earlier checkpoint was touched"
        reason = "the disk is full" if full else os.strerror(exc.errno) if exc.errno else str(exc)
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); {intact}. Free some space "
                              f"and resume with --resume") from None
    try:
        if keep_previous and path.exists():
            os.replace(path, path.parent / PREVIOUS)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_orphaned_temporaries(checkpoint_dir: str | Path) -> list[Path]:
    """Delete ``.<name>.pth.*.tmp`` files left by a writer that died mid-save (call while holding the run lock)."""
    removed = sorted(Path(checkpoint_dir).glob(".*.pth.*.tmp"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a bare model state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the .pth file of a run "
                              f"(runs/<name>/checkpoints/last.pth or best.pth)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, wrong file type: all are the same to the user
        raise CheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                              f"the file is truncated or not a checkpoint: use another one (e.g. {PREVIOUS}) "
                              f"or start the run again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}; not a detector checkpoint")
    if "model" not in state:  # a bare state dict of the model
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise CheckpointError(f"{path}: no 'model' entry; not a detector checkpoint")
    return state


def find_resume_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run (``last.pth``, else ``last.prev.pth``), or None if there is none.

    A corrupt ``last.pth`` is reported and renamed to ``last.corrupt.pth`` (kept for inspection), so that the
    next save does not rotate it over the good ``last.prev.pth``; if no file can be read, the error is raised.
    """
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [checkpoint_dir / name for name in (LAST, PREVIOUS) if (checkpoint_dir / name).exists()]
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            if path.name == LAST and (checkpoint_dir / PREVIOUS).exists():
                os.replace(path, checkpoint_dir / CORRUPT)
                warnings.warn(f"{exc}; moved it to {CORRUPT} and falling back to {PREVIOUS}", stacklevel=2)
            continue
        state["path"] = str(path)
        return state
    if errors:
        raise CheckpointError("no readable checkpoint to resume from: " + " | ".join(errors))
    return None


def run_dir_of(checkpoint: str | Path) -> Path:
    """``runs/x/checkpoints/best.pth`` -> ``runs/x``; a checkpoint elsewhere -> its folder."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == "checkpoints" else folder


def load_model_weights(model: torch.nn.Module, path: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model`` (built from ``config``, a plain dict) to run it.

    A checkpoint of another architecture or class count raises one :class:`CheckpointError` line saying what
    differs (:func:`detector.modeling.fit.misfit_message`) and which config to use (the run's ``config.yaml``
    beside ``checkpoints/``), instead of torch's list of every mismatched key. Returns the checkpoint dict.
    """
    state = load_checkpoint(path)
    run_config = run_dir_of(path) / "config.yaml"
    use = (f"use the config it was trained with: --cfg {run_config}" if run_config.is_file()
           else "use the config it was trained with (the checkpoint stores it under 'config')")
    _load_fitting_weights(model, state, path, config, use)
    return state


def _load_fitting_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path,
                          config: Mapping[str, Any], fix: str) -> None:
    """``model.load_state_dict(state["model"])`` once the weights are known to fit; else the one-line error."""
    message = misfit_message(path, model, state["model"], fix, stored_config=state.get("config"), config=config)
    if message:
        raise CheckpointError(message)
    model.load_state_dict(state["model"])


def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly: model (with its schedule state through
    ``get_extra_state``), optimizer, LR scheduler, grad scaler, the :class:`Progress` and every rank's RNG state.

    Every rank calls :meth:`save` (the RNG states are gathered); rank 0 writes.
    """

    def __init__(self, checkpoint_dir: str | Path, model, optimizer, scheduler, scaler, config: dict[str, Any]):
        self.dir = Path(checkpoint_dir)
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config = config

    def save(self, name: str, progress: "Progress", keep_previous: bool = False) -> Path | None:
        from detector.engine import distributed as dist_utils
        rng = dist_utils.gather_objects(capture_rng_state())
        if not dist_utils.is_main_process():
            return None
        return save_checkpoint({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                                "config": self.config, "rng": rng, **progress.state_dict()},
                               self.dir / name, keep_previous=keep_previous)

    def resume(self, rank: int) -> tuple["Progress", str] | None:
        """Load the newest readable checkpoint into the objects; (progress, path), or None when there is none.

        Weights of another model are one :class:`CheckpointError` line.
        """
        state = find_resume_checkpoint(self.dir)
        if state is None:
            return None
        _load_fitting_weights(self.model, state, state["path"], self.config,
                              f"it is not a checkpoint of this run: move it out of {self.dir} (the resume then "
                              f"takes {PREVIOUS}, or starts from scratch), or replace the run with --overwrite")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        restore_rng_state(rng[rank] if isinstance(rng, list) else rng)
        progress = Progress()
        progress.load_state_dict(state)
        return progress, state["path"]


class Progress:
    """The trainer's own changing state: iterations done and the best value of ``train.best_metric``."""

    def __init__(self, iteration: int = 0, best: float = float("-inf")):
        self.iteration, self.best = iteration, best

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.best = int(state["iteration"]), float(state.get("best", float("-inf")))
