"""Run folders belong to one experiment: never overwritten, shared or mixed without the user asking (docs/runs.md).

:func:`check_run_folder` decides what a training may do before anything is written; :class:`RunLock` holds
``<run>/.lock`` while it trains.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.config import diff_configs, with_defaults
from detector.errors import UsageError

CONFIG_FILE, LOCK_FILE = "config.yaml", ".lock"
# What a run writes into its folder; --overwrite removes these and nothing else (a user's own files stay).
RUN_ARTIFACTS = ("config.yaml", "metrics.jsonl", "checkpoints", "eval", "final_errors.pt")
RUN_ARTIFACT_GLOBS = ("events.out.tfevents.*",)

# Keys that may differ between a run and its resume: they change how the run is observed or how fast it goes,
# not what it learns. train.max_iters: see check_run_folder. Every other key defines the experiment.
RESUME_SAFE_KEYS = (
    "output_dir",
    "train.resume",
    "train.log_period",
    "train.hist_period",
    "train.eval_period",
    "train.checkpoint_period",
    "train.num_vis_images",
    "train.device",
    "data.loader.num_workers",
    "eval.max_images",
    "eval.backend",
    "train.compile",
)


class RunFolderError(UsageError):
    """The run folder holds another run, is locked by another training, or cannot be resumed with this config."""


@dataclass
class RunFolderPlan:
    """What :func:`check_run_folder` decided: resume, start, or replace the run."""

    resume: bool
    overwrite: bool = False
    notes: list[str] = field(default_factory=list)  # one-line messages for the user


def run_files(run_dir: Path) -> list[str]:
    """The names of the files a training writes that ``run_dir`` holds (empty: no run there)."""
    run_dir = Path(run_dir)
    names = [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    return names + sorted(p.name for pattern in RUN_ARTIFACT_GLOBS for p in run_dir.glob(pattern))


def free_name(run_dir: Path) -> Path:
    """``runs/smoothl1`` -> the first of ``runs/smoothl1-2``, ``-3``, ... that holds no run."""
    n = 2
    while run_files(run_dir.with_name(f"{run_dir.name}-{n}")):
        n += 1
    return run_dir.with_name(f"{run_dir.name}-{n}")


def stored_config(run_dir: str | Path, fix: str) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (None if absent) completed with the schema's defaults
    (:func:`detector.config.with_defaults`); unreadable: a :class:`RunFolderError` ending with ``fix``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(f"{path}: cannot be read ({first}); {fix}") from None
    if not isinstance(stored, dict):
        raise RunFolderError(f"{path}: not a config; {fix}")
    return with_defaults(stored)


def check_run_folder(
    run_dir: str | Path, cfg, resume: bool, overwrite: bool, extend: bool = False
) -> RunFolderPlan:
    """Reads only. A new run into a run refuses; ``--resume`` refuses changed keys that define the experiment
    (:data:`RESUME_SAFE_KEYS` are reported) and a new ``train.max_iters`` schedules derive from unless ``extend``."""
    from detector.engine.optim import max_iters_dependents

    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError(
            "--resume and --overwrite exclude each other: continue the run, or replace it"
        )
    present = run_files(run_dir)
    if not present:
        notes = [f"--resume: {run_dir} holds no run yet; starting from scratch"] if resume else []
        return RunFolderPlan(resume=False, notes=notes)
    if overwrite:
        return RunFolderPlan(
            resume=False, overwrite=True, notes=[f"--overwrite: replacing the run in {run_dir}"]
        )
    if CONFIG_FILE not in present:
        raise RunFolderError(
            f"{run_dir} holds a run's files ({', '.join(present)}) but no {CONFIG_FILE}, so it cannot "
            f"be checked against this config; restore {CONFIG_FILE}, start a new run with "
            f"output_dir={free_name(run_dir)}, or replace it with --overwrite"
        )
    if not resume:
        state = (
            "a finished run"
            if (run_dir / "eval" / "metrics.json").is_file()
            else "an unfinished run"
        )
        raise RunFolderError(
            f"{run_dir} already holds {state}; continue it with --resume, start a new one with "
            f"output_dir={free_name(run_dir)}, or replace it with --overwrite"
        )
    stored = stored_config(
        run_dir, fix="this folder's run cannot be resumed: use another output_dir or --overwrite"
    )
    differ = diff_configs(stored, cfg.to_dict())
    unsafe = [k for k in differ if k not in RESUME_SAFE_KEYS and k != "train.max_iters"]
    if unsafe:
        raise RunFolderError(
            f"--resume: the config differs from {run_dir / CONFIG_FILE} in keys that define the "
            f"experiment: {', '.join(unsafe)}; resume with the run's own config, or start a new "
            f"run with output_dir={free_name(run_dir)}"
        )
    notes = []
    if "train.max_iters" in differ:
        length = f"train.max_iters {stored['train']['max_iters']} -> {cfg.train.max_iters}"
        derived = max_iters_dependents(stored, cfg.train.max_iters)
        if derived and not extend:
            raise RunFolderError(
                f"--resume: {length} changes what the run learns ({', '.join(derived)} derive from "
                f"it); resume with the run's own max_iters, or add --extend to continue the run to "
                f"the new length with those schedules recomputed from here on"
            )
        if derived:
            notes.append(
                f"--extend: {length}; {', '.join(derived)} are recomputed for the new length from the "
                f"resume point on, so this run differs from one trained for that length from the start"
            )
    safe = [k for k in differ if k not in ("output_dir", "train.resume", "train.max_iters")]
    if safe:
        notes.append(
            f"--resume: changed {', '.join(safe)} (allowed: they do not change what the run learns)"
        )
    return RunFolderPlan(resume=True, notes=notes)


def prepare_run_folder(run_dir: Path, cfg, plan: RunFolderPlan, notes: list[str] = ()) -> None:
    """After the checks passed and the lock is held (rank 0): say what was decided, remove the old run on
    ``--overwrite``, write ``config.yaml`` (the resolved config of this session) and clear orphaned temporaries."""
    from detector.engine.runtime import notice

    for line in [*plan.notes, *notes]:
        notice(line)
    if plan.overwrite:  # what the run wrote goes; the user's other files stay
        for path in [run_dir / name for name in run_files(run_dir)]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / CONFIG_FILE)
    for path in sorted(
        (run_dir / "checkpoints").glob(".*.pth.*.tmp")
    ):  # save_checkpoint's temporary files
        path.unlink(missing_ok=True)
        notice(f"removed {path}, left by a checkpoint write that did not finish")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


class RunLock:
    """``<run>/.lock`` (pid, host, start time), held inside ``with RunLock(run_dir)`` while a training writes the
    folder: linked into place, never half-written; a lock of a dead process on this host is taken over."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.notes: list[str] = []

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            holder = exc
        if not isinstance(holder, dict):
            reason = (
                f"{type(holder).__name__}: {holder}"
                if isinstance(holder, Exception)
                else "not a lock"
            )
            raise RunFolderError(
                f"{self.path} exists but cannot be read ({reason}); if no training uses "
                f"{self.path.parent}, delete it"
            )
        return holder

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{LOCK_FILE}.", suffix=".tmp")
        try:
            os.fchmod(
                fd, 0o644
            )  # readable by the other users of the folder, as a plain file would be
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(2):
                try:
                    os.link(
                        tmp, self.path
                    )  # exclusive and atomic: the lock appears complete, or not at all
                except FileExistsError:
                    holder = self._holder()
                    pid, host = holder.get("pid"), holder.get("host")
                    if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                        self.notes.append(
                            f"{self.path}: taking over a stale lock of process {pid} on {host} "
                            f"(started {holder.get('started', '?')}), which is no longer running"
                        )
                        self.path.unlink(missing_ok=True)
                        continue
                    raise RunFolderError(
                        f"{self.path.parent} is in use by another training (pid {pid} on {host}, "
                        f"started {holder.get('started', '?')}); wait for it, or use another "
                        f"output_dir. If that process is gone, delete {self.path}"
                    ) from None
                return self
        finally:
            os.unlink(tmp)
        raise RunFolderError(
            f"{self.path}: could not take the lock; delete it if no training uses the folder"
        )

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
