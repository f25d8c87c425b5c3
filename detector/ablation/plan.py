"""The plan of an ablation: its runs (config × sweep value × seed, in ``<out>/runs/<name>``), and
what each run folder allows before anything trains (:func:`check_runs`): ``train`` (empty);
``reuse`` (a finished run whose stored config equals this one up to :data:`REUSE_SAFE_KEYS`);
``resume`` (an interrupted run that passes the trainer's resume check; with no checkpoint it
starts over); else stop naming the keys that differ, or with ``force`` ``overwrite`` (train again
from scratch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from detector.config import Config, diff_configs, load_config
from detector.engine.runs import (
    RESUME_SAFE_KEYS,
    REUSE_SAFE_KEYS,
    RunFolderError,
    has_checkpoint,
    is_finished,
    stored_config,
)
from detector.errors import UsageError

NOISE_SEED_KEY = "data.label_noise_seed"
# a resume with nothing to resume from: the trainer starts the run over
NO_CHECKPOINT = "no checkpoint: starts over"
# the keys that only watch a run (the loader's workers are the runner's per slot: how fast, not how
# a run was watched)
WATCH_KEYS = [k for k in REUSE_SAFE_KEYS if k.startswith("train.") and k != "train.resume"]


class AblationError(UsageError):
    """The ablation's command line, or a run folder it would use, does not allow the ablation to
    run."""


@dataclass
class Run:
    group: str  # what the report averages over seeds: "smoothl1" or "smoothl1 beta=0.5"
    seed: int
    cfgs: list[str]
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``smoothl1_beta0.5-seed3``."""
        group = re.sub(r"[^A-Za-z0-9._+-]", "_", self.group.replace(" ", "_").replace("=", ""))
        return f"{group}-seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.name

    def config(self, out: Path):
        return load_config(self.cfgs, [*self.overrides, f"output_dir={self.run_dir(out)}"])


@dataclass
class Step:
    run: Run
    run_dir: Path
    action: str  # train, reuse, resume or overwrite
    device: str = "auto"  # the run's train.device (a CPU-only ablation is never pinned to GPUs)
    note: str = ""
    # a reused run's WATCH_KEYS as ``key=value`` of its config.yaml, where they are not this plan's
    watched: list[str] = field(default_factory=list)


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"model.roi_head.box_loss.beta=0.05,0.11,0.5"`` -> (key, ["0.05", "0.11", "0.5"])."""
    key, sep, values = text.partition("=")
    parsed = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not parsed:
        raise AblationError(
            f"--sweep {text!r}: expected key=v1,v2,... (e.g. --sweep "
            f"model.roi_head.box_loss.beta=0.11,1.0)"
        )
    if len(set(parsed)) != len(parsed):
        raise AblationError(f"--sweep {text!r}: a value is listed twice")
    return key.strip(), parsed


def plan_runs(
    loss_cfgs: list[str],
    data_cfgs: list[str],
    seeds: int,
    overrides: list[str],
    sweep: str | None = None,
    noise_per_seed: bool = False,
) -> list[Run]:
    """Every (config, sweep value, seed) as a :class:`Run`; ``noise_per_seed``: each run draws its
    label noise from its own seed (``data.label_noise_seed``), not one draw for every seed."""
    if seeds < 1:
        raise AblationError(
            f"--seeds {seeds}: an ablation needs at least 1 seed per config (5 by default; paired "
            f"confidence intervals need 2 or more)"
        )
    reserved = [
        ("seed", "each run's seed is set by --seeds (0..N-1)"),
        ("output_dir", "each run's folder is <out>/runs/<name>: pick the folder with --out"),
    ]
    if noise_per_seed:
        reserved.append((NOISE_SEED_KEY, "--noise-per-seed sets it to each run's seed"))
    for key, why in reserved:
        if any(o.partition("=")[0].strip() == key for o in overrides):
            raise AblationError(f"{key}=...: not an override of an ablation; {why}")
    stems = [Path(cfg).stem for cfg in loss_cfgs]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise AblationError(
            f"--cfgs: {', '.join(twice)} listed twice; each config is one group of the report"
        )
    sweep_key, sweep_values = parse_sweep(sweep) if sweep is not None else (None, [None])
    runs = []
    for cfg, stem in zip(loss_cfgs, stems):
        for value in sweep_values:
            group = stem if value is None else f"{stem} {sweep_key.split('.')[-1]}={value}"
            extra = [] if value is None else [f"{sweep_key}={value}"]
            for seed in range(seeds):
                noise = [f"{NOISE_SEED_KEY}={seed}"] if noise_per_seed else []
                per_run = [*overrides, *extra, *noise, f"seed={seed}"]
                runs.append(Run(group, seed, [cfg, *data_cfgs], per_run))
    return runs


def groups_of(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(run.group for run in runs))


def resolve_baseline(runs: list[Run], baseline: str | None) -> str:
    """The group the paired differences are taken against: ``baseline`` (a group or config name),
    else the first."""
    groups = groups_of(runs)
    if baseline is None:
        return groups[0]
    for candidate in (baseline, Path(baseline).stem):
        if candidate in groups:
            return candidate
    raise AblationError(
        f"--baseline {baseline!r} is not a config of this ablation; expected one of: "
        f"{', '.join(groups)}"
    )


def check_runs(
    runs: list[Run], out: Path, force: bool = False, starts_over: bool = True
) -> list[Step]:
    """The :class:`Step` of every run; reads only. Without ``force`` a stale run raises one
    :class:`AblationError`, and so does an unfinished run with no checkpoint unless the trainer
    ``starts_over`` such a run cleanly (this checkout's does; another's, ``--code``, may not)."""
    steps, stale = [], []
    for run in runs:
        run_dir = run.run_dir(out)
        cfg = run.config(out)
        finished = is_finished(run_dir)
        try:
            stored = stored_config(run_dir, fix="rerun that run with --force, or use another --out")
        except RunFolderError as exc:
            if not force:
                raise AblationError(str(exc)) from None
            steps.append(
                Step(run, run_dir, "overwrite", cfg.train.device, "unreadable config.yaml")
            )
            continue
        watched = []
        if stored is None:
            # finished without a config: nothing says which experiment it is
            differ = ["everything (no config.yaml)"] if finished else []
        else:
            safe = REUSE_SAFE_KEYS if finished else RESUME_SAFE_KEYS
            changed = diff_configs(stored, cfg.to_dict())
            differ = [k for k in changed if k not in safe]
            if finished:
                watched = [f"{k}={Config(stored).select(k)}" for k in changed if k in WATCH_KEYS]
        note = ""
        if differ:
            action = "overwrite"
            state = "finished" if finished else "unfinished"
            note = f"{state} run of another config (differs in {', '.join(differ)})"
        elif finished:
            action = "reuse"
        elif stored is None:
            action = "train"
        elif has_checkpoint(run_dir):
            action = "resume"
        elif force:
            action, note = "overwrite", "nothing to resume from"
        else:
            action, note = "resume", NO_CHECKPOINT
        if differ and not force:
            stale.append((run_dir, finished, differ))
        steps.append(Step(run, run_dir, action, cfg.train.device, note, watched))
    if stale:
        run_dir, finished, differ = stale[0]
        keys = list(dict.fromkeys(k for _, _, d in stale for k in d))
        more = f" (and {len(stale) - 1} more run(s))" if len(stale) > 1 else ""
        raise AblationError(
            f"{run_dir}{more} holds {'a finished' if finished else 'an unfinished'} run of another "
            f"config: it differs in {', '.join(keys)}; rerun with --force to train such runs again "
            f"(their old results are replaced), or write this ablation to another --out"
        )
    over = [step.run.name for step in steps if step.note == NO_CHECKPOINT]
    if over and not starts_over:
        raise AblationError(
            f"{', '.join(over)}: unfinished, with no checkpoint to resume from; with --code, add "
            f"--force to train them again from scratch (their records are replaced)"
        )
    return steps
