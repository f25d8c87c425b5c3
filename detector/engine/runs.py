"""Run folders belong to one experiment: never overwritten, shared or mixed without the user asking
(docs/runs.md).

:func:`check_run_folder` decides what a training may do before anything is written; :class:`RunLock`
holds ``<run>/.lock`` while it trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.config import diff_configs, safe_yaml, with_defaults
from detector.engine.optim import max_iters_dependents
from detector.engine.runtime import notice
from detector.errors import UsageError, first_line
from detector.evaluation.results import EVAL_FILES

CONFIG_FILE, LOCK_FILE, METRICS_FILE = "config.yaml", ".lock", "metrics.jsonl"
# written by the trainer after the final evaluation: a finished run
FINAL_METRICS = Path("eval") / EVAL_FILES[-1]
LAST, PREVIOUS, BEST, CORRUPT = "last.pth", "last.prev.pth", "best.pth", "last.corrupt.pth"
# The first line of the config.yaml a training writes: it tells a run's config from a user's file of
# that name.
RUN_CONFIG_HEADER = "# written by tools/train.py: the resolved config of this run (docs/runs.md)\n"
# What a run writes into its folder (eval/ and checkpoints/: only the files of EVAL_FILES and
# CHECKPOINT_GLOBS); --overwrite removes these and nothing else (a user's own files stay).
RUN_ARTIFACTS = (CONFIG_FILE, METRICS_FILE, "checkpoints", "eval", "final_errors.pt")
RUN_ARTIFACT_GLOBS = ("events.out.tfevents.*",)
CHECKPOINT_GLOBS = ("*.pth", ".*.pth.*.tmp")
# A temporary lock file (RunLock.acquire) lives for milliseconds; one older than this was left by a
# dead process.
STALE_TEMP_S = 600

# Keys that change how a run was watched or where it lives, never its results: a finished run is
# reused under others (train.eval_period: the evaluations along the way; evaluation leaves training
# as it is and the final one is at train.max_iters whatever the period, tests/test_train.py).
REUSE_SAFE_KEYS = (
    "output_dir",
    "train.resume",
    "train.log_period",
    "train.hist_period",
    "train.eval_period",
    "train.checkpoint_period",
    "train.num_vis_images",
    "data.loader.num_workers",
)
# Keys that may differ between a run and its resume: those, and how fast it goes or how its final
# evaluation is made, not what it learns. train.max_iters: see check_run_folder. Every other key
# defines the experiment.
RESUME_SAFE_KEYS = (
    *REUSE_SAFE_KEYS,
    "train.device",
    "train.compile",
    "eval.max_images",
    "eval.backend",
)


class RunFolderError(UsageError):
    """The run folder holds another run, is locked by another training, or cannot be resumed with
    this config."""


@dataclass
class RunFolderPlan:
    """What :func:`check_run_folder` decided: resume, start, or replace the run."""

    resume: bool
    overwrite: bool = False
    stored_max_iters: int | None = None  # the run's train.max_iters, on resume
    notes: list[str] = field(default_factory=list)  # one-line messages for the user


def run_files(run_dir: Path) -> dict[str, list[Path]]:
    """The files a training wrote that ``run_dir`` holds, by :data:`RUN_ARTIFACTS` name (empty:
    no run there). ``eval/`` counts only beside another of them (alone it is tools/eval.py's);
    ``config.yaml`` only if a training wrote it (:data:`RUN_CONFIG_HEADER`, or a complete config
    beside a run's other files)."""
    run_dir = Path(run_dir)
    found = {
        name: [run_dir / name]
        for name in (METRICS_FILE, "final_errors.pt")
        if (run_dir / name).is_file()
    }
    checkpoints = sorted(p for g in CHECKPOINT_GLOBS for p in (run_dir / "checkpoints").glob(g))
    if checkpoints:
        found["checkpoints"] = checkpoints
    for pattern in RUN_ARTIFACT_GLOBS:
        found.update({p.name: [p] for p in sorted(run_dir.glob(pattern)) if p.is_file()})
    config = run_dir / CONFIG_FILE
    if config.is_file() and _is_run_config(config, legacy=bool(found)):
        found[CONFIG_FILE] = [config]
    evaluated = [
        run_dir / "eval" / name for name in EVAL_FILES if (run_dir / "eval" / name).is_file()
    ]
    if found and evaluated:
        found["eval"] = evaluated
    order = [*RUN_ARTIFACTS, *sorted(found)]
    return {name: found[name] for name in sorted(found, key=order.index)}


def _is_run_config(path: Path, legacy: bool) -> bool:
    """Whether a training wrote ``path``: its header, or (``legacy``: beside a run's other files,
    as runs made before the header have it) a complete config with no ``_base_``."""
    try:
        data = path.read_bytes()
        if data.startswith(RUN_CONFIG_HEADER.encode()):
            return True
        stored = safe_yaml(data.decode("utf-8")) if legacy else None
    except OSError:
        return False
    # a run's, damaged: resuming it says so (stored_config)
    except (UnicodeDecodeError, yaml.YAMLError):
        return legacy
    sections = ("data", "model", "train", "eval")
    return (
        isinstance(stored, dict) and "_base_" not in stored and all(k in stored for k in sections)
    )


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINAL_METRICS).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a resume has a checkpoint file to start from (readable or not)."""
    return any((run_dir / "checkpoints" / name).exists() for name in (LAST, PREVIOUS))


def logged_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none if it is missing); unreadable lines are skipped."""
    if not path.is_file():
        return []
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    return [r for r in map(parse_record, lines) if r is not None]


def parse_record(line: str) -> dict[str, Any] | None:
    """One ``metrics.jsonl`` line as its record; None if it is not one (or its iter is not)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("iter", 0), int) else None


def foreign_files(run_dir: Path) -> list[str]:
    """What a training would write over in ``run_dir`` that no training wrote: a ``config.yaml``
    that is not a run's, or the evaluation files of an ``eval/`` where no run is."""
    run_dir, own = Path(run_dir), run_files(run_dir)
    foreign = [CONFIG_FILE] if (run_dir / CONFIG_FILE).exists() and CONFIG_FILE not in own else []
    if "eval" not in own:
        foreign += [f"eval/{n}" for n in EVAL_FILES if (run_dir / "eval" / n).exists()]
    return foreign


def free_name(run_dir: Path) -> Path:
    """``runs/smoothl1`` -> the first of ``runs/smoothl1-2``, ``-3``, ... that holds no run and
    no file in the way."""
    for n in itertools.count(2):
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
        if not (run_files(candidate) or foreign_files(candidate)):
            return candidate


def stored_config(run_dir: str | Path, fix: str) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (None if absent) completed with the schema's defaults
    (:func:`detector.config.with_defaults`); unreadable: a :class:`RunFolderError` ending with
    ``fix``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        stored = safe_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RunFolderError(
            f"{path}: cannot be read (byte {exc.start} is not UTF-8 text); {fix}"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise RunFolderError(f"{path}: cannot be read ({first_line(exc)}); {fix}") from None
    if not isinstance(stored, dict):
        raise RunFolderError(f"{path}: not a config; {fix}")
    return with_defaults(stored)


def check_run_folder(
    run_dir: str | Path, cfg, resume: bool, overwrite: bool, extend: bool = False
) -> RunFolderPlan:
    """Reads only. A new run into a run refuses; ``--resume`` refuses changed keys that define the
    experiment (:data:`RESUME_SAFE_KEYS` are reported) and a new ``train.max_iters`` schedules
    derive from unless ``extend``."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError(
            "--resume and --overwrite exclude each other: continue the run, or replace it"
        )
    if run_dir.resolve() == Path(cfg.data.root).resolve():
        raise RunFolderError(
            f"output_dir {run_dir} is data.root: the run's files would mix with the dataset's; "
            f"use another output_dir"
        )
    foreign = foreign_files(run_dir)
    if foreign:
        them = "it" if len(foreign) == 1 else "them"
        raise RunFolderError(
            f"{run_dir} holds {', '.join(foreign)}, which no training wrote, and a training would "
            f"write over {them} (--overwrite replaces only a run's own files): move {them} away, "
            f"or use another output_dir such as {free_name(run_dir)}"
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
            f"{run_dir} holds a run's files ({', '.join(present)}) but no {CONFIG_FILE}, so it "
            f"cannot be checked against this config; restore {CONFIG_FILE}, start a new run with "
            f"output_dir={free_name(run_dir)}, or replace it with --overwrite"
        )
    if not resume:
        finished = is_finished(run_dir)
        go_on = "continue it with --resume"
        if finished:
            go_on = "train it longer with --resume and a larger train.max_iters"
        if not has_checkpoint(run_dir):
            go_on = "it has no checkpoint to go on from" if finished else "--resume starts it over"
        raise RunFolderError(
            f"{run_dir} already holds {'a finished' if finished else 'an unfinished'} run; "
            f"{go_on}, start a new one with output_dir={free_name(run_dir)}, or replace it with "
            f"--overwrite"
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
        # no checkpoint: the run starts over at the new length (check_resume_point), so nothing
        # is extended and nothing mixes two schedules
        derived = derived if has_checkpoint(run_dir) else []
        if derived and not extend:
            raise RunFolderError(
                f"--resume: {length} changes what the run learns ({', '.join(derived)} derive from "
                f"it); resume with the run's own max_iters, or add --extend to continue the run to "
                f"the new length with those schedules recomputed from here on"
            )
        if derived:
            notes.append(
                f"--extend: {length}; {', '.join(derived)} are recomputed for the new length from "
                "the resume point on, so this run differs from one trained for "
                "that length from the start"
            )
    safe = [k for k in differ if k not in ("output_dir", "train.resume", "train.max_iters")]
    if safe:
        notes.append(
            f"--resume: changed {', '.join(safe)} (allowed: they do not change what the run learns)"
        )
    return RunFolderPlan(resume=True, notes=notes, stored_max_iters=stored["train"]["max_iters"])


def check_resume_point(
    run_dir: Path, plan: RunFolderPlan, iteration: int, max_iters: int
) -> dict[str, Any] | None:
    """Once the checkpoint is loaded, before anything is written: a resume never passes its end.
    A new ``train.max_iters`` at or below the checkpoint's iteration refuses; a finished run is
    left as it is and its ``eval/metrics.json`` returned (None: train on, or only the final
    evaluation is left). ``iteration`` 0 is no checkpoint: a finished run's record stays as it is,
    another evaluated run refuses, an unfinished one starts over."""
    changed = plan.stored_max_iters is not None and plan.stored_max_iters != max_iters
    if iteration > max_iters or (changed and iteration == max_iters):
        raise RunFolderError(
            f"--resume: {run_dir / 'checkpoints'} holds iteration {iteration}, and "
            f"train.max_iters={max_iters} is not beyond it (a run cannot be shortened); resume "
            f"with train.max_iters above {iteration}, or start a new run with "
            f"output_dir={free_name(run_dir)}"
        )
    metrics_file = run_dir / FINAL_METRICS
    if iteration == 0:
        # no checkpoint (kept none, or lost): the records say whether the run was evaluated at its
        # end, and only an unfinished one may start over (its records are dropped)
        records = logged_records(run_dir / METRICS_FILE)
        ends = {r.get("iter") for r in records if r.get("type") == "eval"}
        ends &= {max_iters, plan.stored_max_iters}
        best = run_dir / "checkpoints" / BEST
        if best.exists() and not (ends or metrics_file.is_file()):
            raise RunFolderError(
                f"--resume: {best} is there but nothing to resume from, and a start from iteration "
                f"0 would write over it; move it away to train the run again, or replace the run "
                f"with --overwrite (tools/ablate.py: --force)"
            )
        if not (ends or metrics_file.is_file()):
            notice(f"--resume: {run_dir} holds no checkpoint; starting from iteration 0")
        elif changed or max_iters not in ends or not metrics_file.is_file():
            raise RunFolderError(
                f"--resume: {run_dir} holds an evaluated run and no checkpoint to train on from; "
                f"train it again from scratch with --overwrite (tools/ablate.py: --force; its "
                f"records are replaced), or start a new run with output_dir={free_name(run_dir)}"
            )
        else:
            iteration = max_iters
    if iteration < max_iters or not metrics_file.is_file():
        return None
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        raise RunFolderError(
            f"{metrics_file}: cannot be read ({type(exc).__name__}); the run is finished "
            f"(iteration {iteration} of {max_iters}): restore it, or delete it to evaluate the "
            f"run again with --resume (from its checkpoint)"
        ) from None
    notice(
        f"--resume: {run_dir} is a finished run (iteration {iteration} of {max_iters}, evaluated "
        f"in {metrics_file}); nothing to do. To train it longer, resume with a larger "
        f"train.max_iters"
    )
    return metrics


def prepare_run_folder(run_dir: Path, cfg, plan: RunFolderPlan, notes: list[str] = ()) -> None:
    """After the checks passed and the lock is held (rank 0): say what was decided, remove the old
    run on ``--overwrite``, write ``config.yaml`` (the resolved config of this session) and clear
    orphaned temporaries."""
    for line in [*plan.notes, *notes]:
        notice(line)
    # what the run wrote goes; the user's other files stay, eval/ and checkpoints/ too
    if plan.overwrite:
        for paths in run_files(run_dir).values():
            for path in paths:
                path.unlink()
        for folder in (run_dir / "eval", run_dir / "checkpoints"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(RUN_CONFIG_HEADER + cfg.to_yaml())
    # save_checkpoint's temporary files
    for path in sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOBS[-1])):
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
    """``<run>/.lock`` (pid, host, start time), held inside ``with RunLock(run_dir)`` while a
    training writes the folder: linked into place, never half-written. A lock of a dead process
    on this host is taken over under an ``flock`` of the folder, re-checked there, so of two
    processes taking over one stale lock only one holds it; the flock is the kernel's, released
    when its process dies."""

    def __init__(self, run_dir: str | Path, fix: str = "use another output_dir"):
        self.path = Path(run_dir) / LOCK_FILE
        self.notes: list[str] = []
        self.fix = fix  # what the error of a held lock suggests

    def _holder(self) -> dict[str, Any] | None:
        """The lock's content; None when it is gone (released since the link failed)."""
        try:
            holder, reason = json.loads(self.path.read_text()), "not a lock"
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            holder, reason = None, f"{type(exc).__name__}: {exc}"
        if not isinstance(holder, dict):
            raise RunFolderError(
                f"{self.path} exists but cannot be read ({reason}); if no training uses "
                f"{self.path.parent}, delete it"
            )
        return holder

    def _is_stale(self, holder: dict[str, Any], host: str) -> bool:
        pid = holder.get("pid")
        return holder.get("host") == host and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # the name says whose it is, so the next start can remove one its dead writer left
        prefix = f"{LOCK_FILE}.{me['pid']}@{me['host']}."
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=prefix, suffix=".tmp")
        try:
            # readable by the other users of the folder, as a plain file would be
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(3):
                # exclusive and atomic: the lock appears complete, or not at all
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.path)
                    self._remove_stale_temporaries(me["host"])
                    return self
                holder = self._holder()
                if holder is not None and self._is_stale(holder, me["host"]):
                    self._take_over(holder, me["host"])
                elif holder is not None:
                    pid, host = holder.get("pid"), holder.get("host")
                    raise RunFolderError(
                        f"{self.path.parent} is in use by another training (pid {pid} on {host}, "
                        f"started {holder.get('started', '?')}); wait for it, or {self.fix}. If "
                        f"that process is gone, delete {self.path}"
                    )
        finally:
            os.unlink(tmp)
        raise RunFolderError(
            f"{self.path}: could not take the lock; delete it if no training uses the folder"
        )

    def _take_over(self, holder: dict[str, Any], host: str) -> None:
        """Remove the stale lock of ``holder`` if, under the folder's flock, it is still there
        and still stale."""
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            now = self._holder()
            if now == holder and self._is_stale(now, host):
                self.notes.append(
                    f"{self.path}: taking over a stale lock of process {holder['pid']} on {host} "
                    f"(started {holder.get('started', '?')}), which is no longer running"
                )
                self.path.unlink()
        finally:
            os.close(folder)  # releases the flock

    def _remove_stale_temporaries(self, host: str) -> None:
        """The temporary lock files a dead writer left (docs/runs.md: leftovers are removed at
        the next start)."""
        for path in self.path.parent.glob(f"{LOCK_FILE}.*.tmp"):
            owner = path.name[len(LOCK_FILE) + 1 :].rsplit(".", 2)[0]
            pid, _, where = owner.partition("@")
            with contextlib.suppress(OSError):
                dead = where == host and pid.isdigit() and not _pid_alive(int(pid))
                if dead or time.time() - path.stat().st_mtime > STALE_TEMP_S:
                    path.unlink()
                    self.notes.append(f"removed {path}, left by a training that did not start")

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
