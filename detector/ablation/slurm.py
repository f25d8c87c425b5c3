"""``--launcher slurm``: the runs of an ablation as one SLURM job array through submitit. Each task
trains its run as the local launcher does (:func:`detector.ablation.launch.execute`), with the CPUs
and GPUs SLURM gave it; at the time limit the trainer writes ``last.pth`` and the same command
resumes. submitit's files: ``<out>/slurm/``.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from detector.ablation.launch import (
    REPO,
    Slot,
    available_cores,
    check_trainer,
    cpu_share,
    execute,
)
from detector.ablation.plan import AblationError, Step
from detector.errors import first_line


@dataclass(frozen=True)
class SlurmOptions:
    """submitit's parameters of the job array (by its names), what a finished run keeps and the
    checkout that trains (``--code``)."""

    slurm_partition: str | None = None
    timeout_min: int = 240  # submitit's own default (5 minutes) would kill most runs
    gpus_per_node: int = 1  # GPUs per run (>1: trained with torchrun)
    cpus_per_task: int = 4
    slurm_constraint: str | None = None
    slurm_account: str | None = None
    slurm_array_parallelism: int | None = None  # most tasks running at once (None: SLURM's limit)
    keep_checkpoint: str = "last"  # what a finished run keeps: last.pth, or none (its record stays)
    code: Path = REPO


def parse_time(text: str) -> int:
    """A SLURM time limit (``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours[:minutes[:seconds]]``) in whole minutes, seconds rounded up."""
    days, dash, rest = text.strip().partition("-")
    days, rest = (days, rest) if dash else ("0", days)
    parts = rest.split(":")
    if not all(p.isdigit() for p in [days, *parts]) or len(parts) > 3:
        raise AblationError(
            f"--time {text!r}: expected a SLURM time limit, e.g. 240 (minutes), 4:00:00 or "
            "1-00:00:00"
        )
    numbers = [int(p) for p in parts]
    if not dash and len(numbers) < 3:  # minutes[:seconds]; else hours[:minutes[:seconds]]
        numbers.insert(0, 0)
    hours, minutes, seconds = (numbers + [0, 0])[:3]
    total = int(days) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise AblationError(f"--time {text!r}: the time limit must be at least 1 minute")
    return total


def run_task(step: Step, options: SlurmOptions) -> str | None:
    nproc = max(1, options.gpus_per_node)
    on_gpu = options.gpus_per_node > 0 and step.device != "cpu"
    # no GPU of its own: SLURM already set CUDA_VISIBLE_DEVICES to the task's GPUs
    slot = Slot(None, *cpu_share(available_cores() // nproc, on_gpu=on_gpu))
    return execute(
        step, os.environ, slot, nproc, keep_checkpoint=options.keep_checkpoint, code=options.code
    )


def submit(steps: list[Step], out: Path, options: SlurmOptions, cluster: str = "slurm"):
    """Submit every step that is not ``reuse`` as one job array; [(step, job)]. ``cluster``:
    submitit's executor."""
    try:
        import submitit
    except ImportError:
        raise AblationError(
            "--launcher slurm needs submitit: pip install submitit (or pip install -e '.[slurm]')"
        ) from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise AblationError(
            "--launcher slurm: no sbatch on this machine; run the command on a SLURM login node, "
            "or use --launcher local"
        )
    todo = [s for s in steps if s.action != "reuse"]
    if not todo:
        return []
    check_trainer(options.code)
    executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
    parameters = asdict(options)
    # ours, not submitit's
    del parameters["keep_checkpoint"], parameters["code"]
    executor.update_parameters(name=f"ablate-{out.name}", nodes=1, tasks_per_node=1, **parameters)
    jobs = executor.map_array(run_task, todo, [options] * len(todo))
    return list(zip(todo, jobs))


def wait(submitted) -> dict[str, str | None]:
    from submitit.core.utils import UncompletedJobError

    results: dict[str, str | None] = {}
    for k, (step, job) in enumerate(submitted, 1):
        try:
            error = job.result()
        except UncompletedJobError as exc:
            # the task itself died (time limit, node failure, cancelled)
            error = (
                f"{step.run.name}: SLURM job {job.job_id} did not complete ({first_line(exc)}); "
                f"see {job.paths.stderr}"
            )
        results[step.run.name] = error
        print(f"[{k}/{len(submitted)}] {error or f'{step.run.name}: finished'}", flush=True)
    return results
