"""Checkpoints: written atomically, read as data only (``--trust-checkpoint``: ``trust=True``),
resumed with a fallback.

A checkpoint is ``{"model", "optimizer", "scheduler", "scaler", "iteration", "best", "config",
"rng"}``; the model's state dict carries the RoI head's dynamic state through ``get_extra_state``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.serialization import safe_globals

from detector.engine import distributed as dist_utils
from detector.engine.runs import CONFIG_FILE, CORRUPT, LAST, PREVIOUS
from detector.engine.runtime import notice
from detector.errors import DetectorError, first_line, unsafe_global
from detector.modeling.fit import misfit_message


class CheckpointError(DetectorError, RuntimeError):
    """A checkpoint file is missing, truncated or not ours; the message names it and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds more than data (a pickled global outside the allowlist): loading it
    would run code."""


# The pickled globals of np.random.get_state()'s uint32 key array, by this numpy's own names, and
# its array constructor also by the name of the other numpy major (numpy.core became numpy._core in
# 2.0): the same function.
_KEY = np.zeros(0, dtype=np.uint32)
_RECONSTRUCT = _KEY.__reduce__()[0]
NUMPY_RNG_GLOBALS = [
    _RECONSTRUCT,
    *[(_RECONSTRUCT, f"{pkg}.multiarray._reconstruct") for pkg in ("numpy.core", "numpy._core")],
    np.ndarray,
    np.dtype,
    type(_KEY.dtype),
]


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); ``keep_previous``
    first renames ``path`` to ``last.prev.pth``. A failed write leaves the files as they were: one
    :class:`CheckpointError` line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
    except (OSError, RuntimeError) as exc:
        os.unlink(tmp)
        if (
            isinstance(exc, RuntimeError)
            and "unexpected pos" not in str(exc)
            and "write" not in str(exc).lower()
        ):
            raise
        full = isinstance(exc, RuntimeError) or exc.errno in (errno.ENOSPC, errno.EDQUOT)
        intact = f"{path} is intact" if path.exists() else "no earlier checkpoint was touched"
        reason = "the disk is full" if full else os.strerror(exc.errno) if exc.errno else str(exc)
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({reason}); {intact}. Free some space "
            f"and resume with --resume"
        ) from None
    try:
        if keep_previous and path.exists():
            os.replace(path, path.parent / PREVIOUS)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint (or a bare model state dict) onto the CPU as data only; ``trust=True``
    unpickles it whole."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; pass the .pth file of a run "
            f"(runs/<name>/checkpoints/last.pth or best.pth)"
        )
    try:
        # trust: the user's opt-in; may run code
        with contextlib.nullcontext() if trust else safe_globals(NUMPY_RNG_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=not trust)
    # a global that is code is named; truncated zip, garbage, wrong file: all alike
    except Exception as exc:
        unsafe = unsafe_global(exc) if not trust else None
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path}: holds {unsafe}, which is code, not checkpoint data, so it was not "
                f"loaded; if you trust the file (you made it, or know its source), load it with "
                f"--trust-checkpoint"
            ) from None
        lines = [line.strip() for line in str(exc).splitlines()]
        unsupported = next((line for line in lines if line.startswith("Unsupported")), None)
        reason = first_line(exc, typed=True)
        if unsupported:
            reason = f"{type(exc).__name__}: {first_line(Exception(unsupported))}"
        raise CheckpointError(
            f"{path}: cannot be read ({reason}); "
            f"the file is truncated or not a checkpoint: use another one (e.g. {PREVIOUS}) "
            f"or start the run again"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: expected a dict, got {type(state).__name__}; not a detector checkpoint"
        )
    if "model" not in state:  # a bare state dict of the model
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise CheckpointError(f"{path}: no 'model' entry; not a detector checkpoint")
    return state


def find_resume_checkpoint(
    checkpoint_dir: str | Path, trust: bool = False
) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run (``last.pth``, else ``last.prev.pth``), or None if
    there is none. A corrupt ``last.pth`` becomes ``last.corrupt.pth``: the next save must not
    rotate it over ``last.prev.pth``."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [
        checkpoint_dir / name for name in (LAST, PREVIOUS) if (checkpoint_dir / name).exists()
    ]
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path, trust=trust)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            errors.append(str(exc))
            if path.name == LAST and (checkpoint_dir / PREVIOUS).exists():
                os.replace(path, checkpoint_dir / CORRUPT)
                warnings.warn(
                    f"{exc}; moved it to {CORRUPT} and falling back to {PREVIOUS}", stacklevel=2
                )
            continue
        state["path"] = str(path)
        return state
    if errors:
        raise CheckpointError("no readable checkpoint to resume from: " + " | ".join(errors))
    return None


def load_model_weights(
    model: torch.nn.Module,
    path: str | Path,
    config: Mapping[str, Any],
    trust: bool = False,
    state: dict[str, Any] | None = None,
    fix: str | None = None,
) -> dict[str, Any]:
    """Load checkpoint ``path`` (``state``: its dict, already read) into ``model`` (built from
    ``config``, a plain dict); returns the checkpoint dict. A misfit is one :class:`CheckpointError`
    line ending with ``fix``, by default the config to use (the run's ``config.yaml``)."""
    if state is None:
        state = load_checkpoint(path, trust=trust)
    if fix is None:
        folder = Path(path).parent  # runs/x/checkpoints/best.pth -> runs/x
        run_config = (folder.parent if folder.name == "checkpoints" else folder) / CONFIG_FILE
        fix = (
            f"use the config it was trained with: --cfg {run_config}"
            if run_config.is_file()
            else "use the config it was trained with (the checkpoint stores it under 'config')"
        )
    message = misfit_message(
        path, model, state["model"], fix, stored_config=state.get("config"), config=config
    )
    if message:
        raise CheckpointError(message)
    model.load_state_dict(state["model"])
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


# compared and hashed by identity, as the objects it holds are
@dataclass(eq=False)
class Checkpointer:
    """Saves and restores all a run needs to continue exactly, every rank's RNG state included
    (gathered on save, which every rank calls; rank 0 writes)."""

    dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict[str, Any]

    def save(self, name: str, progress: "Progress", keep_previous: bool = False) -> Path | None:
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        rng = dist_utils.gather_objects(rng)  # every rank's state: each resumes its own
        if not dist_utils.is_main_process():
            return None
        return save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "config": self.config,
                "rng": rng,
                "iteration": progress.iteration,
                "best": progress.best,
            },
            self.dir / name,
            keep_previous=keep_previous,
        )

    def resume(self, rank: int, trust: bool = False) -> "Progress":
        """Load the newest readable checkpoint and say which; a fresh :class:`Progress` when there
        is none."""
        state = find_resume_checkpoint(self.dir, trust=trust)
        if state is None:
            return Progress()
        load_model_weights(
            self.model,
            state["path"],
            self.config,
            state=state,
            fix=f"it is not a checkpoint of this run: move it out of {self.dir} (the resume then "
            f"takes {PREVIOUS}, or starts from scratch), or replace the run with --overwrite",
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        restore_rng_state(rng[rank] if isinstance(rng, list) else rng)
        progress = Progress(int(state["iteration"]), float(state.get("best", float("-inf"))))
        notice(f"resumed from {state['path']} at iteration {progress.iteration}")
        return progress


@dataclass
class Progress:
    """The trainer's own changing state: iterations done and the best value of
    ``train.best_metric``."""

    iteration: int = 0
    best: float = float("-inf")
    # the console said once that the best metric is undefined (not saved)
    told_undefined: bool = False
