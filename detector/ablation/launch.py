"""Running an ablation's runs on this machine: each run is ``tools/train.py`` in its own process and
session, ``jobs`` at once, slot ``i`` pinned to ``gpus[i % len(gpus)]`` with ``cores // jobs`` CPU
threads (:func:`plan_slots`). Ctrl-C (or SIGTERM) starts no new run and forwards one SIGINT to each
training (it writes ``last.pth`` and exits); a second Ctrl-C forwards the trainer's "stop at once".
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from detector.ablation.plan import NO_CHECKPOINT, AblationError, Step
from detector.ablation.record import RecordError, note_launch, prune_run, write_record
from detector.engine.runs import is_finished
from detector.errors import DetectorError, first_line

# the checkout whose tools/train.py and package train the runs, unless --code names another
REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = Path("tools") / "train.py"
NUM_WORKERS_KEY = "data.loader.num_workers"


@dataclass(frozen=True)
class Slot:
    gpu: str | None  # None: not pinned
    omp_threads: int
    num_workers: int  # data.loader.num_workers (unless the user passed one)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, which SLURM and taskset set), else the
    machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus(
    environ: Mapping[str, str], device_count: Callable[[], int] | None = None
) -> list[str]:
    """The user's ``CUDA_VISIBLE_DEVICES`` entries up to the first invalid one, as CUDA reads it
    (``""`` or ``-1``: no GPU); when unset ``0..device_count()-1`` (default: torch's count)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        import torch

        return [str(i) for i in range((device_count or torch.cuda.device_count)())]
    entries = (e.strip() for e in value.split(","))
    return list(
        itertools.takewhile(lambda e: e and not (e.lstrip("-").isdigit() and int(e) < 0), entries)
    )


def cpu_share(threads: int, on_gpu: bool) -> tuple[int, int]:
    """(OMP threads, loader workers) of ``threads`` (at least 1): a GPU run loads data with all but
    one."""
    threads = max(1, threads)
    return (1, threads - 1) if on_gpu else (threads, 0)


def plan_slots(jobs: int, gpus: list[str], cores: int) -> list[Slot]:
    omp, workers = cpu_share(cores // jobs, on_gpu=bool(gpus))
    return [Slot(gpus[i % len(gpus)] if gpus else None, omp, workers) for i in range(jobs)]


def child_env(environ: Mapping[str, str], slot: Slot, code: Path = REPO) -> dict[str, str]:
    """The user's environment, the checkout ``code`` prepended to ``PYTHONPATH`` (never replacing
    it), the slot's GPU and its share of threads (the user's own ``OMP_NUM_THREADS`` when
    smaller)."""
    env = dict(environ)
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(code)]
    env["PYTHONPATH"] = os.pathsep.join([str(code), *paths])
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    user = environ.get("OMP_NUM_THREADS", "")
    threads = (
        min(slot.omp_threads, int(user)) if user.isdigit() and int(user) > 0 else slot.omp_threads
    )
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def slot_overrides(overrides: list[str], slot: Slot) -> list[str]:
    if any(o.partition("=")[0].strip() == NUM_WORKERS_KEY for o in overrides):
        return list(overrides)
    return [*overrides, f"{NUM_WORKERS_KEY}={slot.num_workers}"]


def check_trainer(code: Path = REPO) -> None:
    """``code`` is a checkout that can train: its ``tools/train.py`` and ``detector`` package."""
    for needed in (TRAIN_SCRIPT, Path("detector") / "__init__.py"):
        if not (code / needed).is_file():
            fix = "pass --code a checkout of detector" if code != REPO else "pip install -e ."
            raise AblationError(
                f"{code / needed}: missing, so {code} cannot train the runs; run the ablation "
                f"from a checkout of detector ({fix})"
            )


def train_command(step: Step, overrides: list[str], nproc: int = 1, code: Path = REPO) -> list[str]:
    python = [sys.executable]
    if nproc > 1:
        python += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cfgs = [word for cfg in step.run.cfgs for word in ("--cfg", cfg)]
    return [
        *python,
        str(code / TRAIN_SCRIPT),
        *cfgs,
        *overrides,
        f"output_dir={step.run_dir}",
        # the trainer's own flag for a run it resumes or trains again from scratch
        *([f"--{step.action}"] if step.action in ("resume", "overwrite") else []),
    ]


def execute(
    step: Step,
    environ: Mapping[str, str],
    slot: Slot,
    nproc: int = 1,
    started: Callable[[subprocess.Popen], None] | None = None,
    keep_checkpoint: str = "last",
    code: Path = REPO,
) -> str | None:
    """Train one run in ``slot`` (:func:`child_env`, :func:`slot_overrides` of the user's
    ``environ``) with the checkout ``code``, appending to ``<run>/train.log``, then write its record
    and keep ``keep_checkpoint`` (:mod:`detector.ablation.record`); None when it finished, else the
    one-line reason. With ``started`` the trainer gets a session of its own (Ctrl-C reaches only
    the ablation) and is passed to it."""
    step.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = step.run_dir / "train.log"
    cmd = train_command(step, slot_overrides(step.run.overrides, slot), nproc, code)
    # a run started over is trained by this launch alone; the launch names the code that trains
    note_launch(step.run_dir, "train" if step.note == NO_CHECKPOINT else step.action, code)
    with open(log_path, "a") as log:
        start = log.tell()
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {step.action}: {shlex.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(
            cmd,
            env=child_env(environ, slot, code),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=started is not None,
        )
        if started is not None:
            started(process)
        code = process.wait()
    if code == 0 and is_finished(step.run_dir):
        try:
            write_record(step.run_dir, {})
        except Exception as exc:  # in a worker thread: the report writes it again, or shows why
            why = str(exc) if isinstance(exc, RecordError) else f"{type(exc).__name__}: {exc}"
            return f"{step.run.name} finished, but its record was not written: {why}"
        prune_run(step.run_dir, keep_checkpoint)
        return None
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    how += " without eval/metrics.json" if code == 0 else ""
    line = last_line(log_path, start)
    return f"{step.run.name} failed ({how}){': ' + line if line else ''}; log: {log_path}"


def last_line(log_path: Path, start: int = 0) -> str:
    """The last meaningful line of ``log_path`` after byte ``start`` (the trainer's error, a
    traceback's end)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # splitlines() also splits at the carriage returns tqdm redraws its bar with: the last piece is
    # what was shown
    lines = [ln for ln in map(str.strip, text.splitlines()) if ln and not ln.startswith("# ")]
    return lines[-1] if lines else ""


class Interrupted(DetectorError):
    exit_code = 130


def run_local(
    steps: list[Step],
    jobs: int = 1,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    keep_checkpoint: str = "last",
    code: Path = REPO,
) -> dict[str, str | None]:
    """Train every step that is not ``reuse`` with the checkout ``code``; ``{run name: None
    (finished) or why not}``."""
    todo = [s for s in steps if s.action != "reuse"]
    if not todo:
        return {}
    check_trainer(code)
    environ = dict(os.environ if environ is None else environ)
    gpus = [] if all(s.device == "cpu" for s in todo) else visible_gpus(environ)
    # each run's share of the cores follows --jobs, not how many runs are left: a resumed run gets
    # what it had
    cores = available_cores() if cores is None else cores
    slots = plan_slots(jobs, gpus, cores)[: len(todo)]
    if not gpus and len(slots) > cores:
        print(
            f"note: {len(slots)} runs at a time on {cores} core(s): they take turns on the cores, "
            "each slower than alone; --jobs at most the cores avoids it",
            file=sys.stderr,
            flush=True,
        )
    per_gpu = Counter(s.gpu for s in slots)
    where = " on the CPU"
    if gpus:
        where = ": " + ", ".join(f"GPU {gpu} x{n}" for gpu, n in per_gpu.items())
    print(
        f"{len(todo)} run(s), {len(slots)} at a time{where}; "
        f"{child_env(environ, slots[0])['OMP_NUM_THREADS']} "
        f"compute thread(s) + {slots[0].num_workers} loader worker(s) per run",
        flush=True,
    )
    # a deque's append and pop are atomic
    pending = deque(enumerate(todo, 1))
    running = deque()
    stop = threading.Event()
    results: dict[str, str | None] = {}

    def started(process: subprocess.Popen) -> None:
        running.append(process)
        if stop.is_set():  # started just as the ablation was stopped
            process.send_signal(signal.SIGINT)

    def forward() -> None:
        for process in list(running):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)

    def worker(slot: Slot, done: threading.Event) -> None:
        try:
            work(slot)
        finally:
            done.set()

    def work(slot: Slot) -> None:
        while not stop.is_set():
            try:
                k, step = pending.popleft()
            except IndexError:
                return
            where = f" on GPU {slot.gpu}" if slot.gpu is not None else ""
            print(
                f"[{k}/{len(todo)}] {step.run.name}: {step.action}{where}"
                f"{' (' + step.note + ')' if step.note else ''}",
                flush=True,
            )
            t0 = time.monotonic()
            try:
                error = execute(
                    step, environ, slot, started=started, keep_checkpoint=keep_checkpoint, code=code
                )
            except Exception as exc:
                # the run could not be launched (its folder, its log, the process): the next runs
                # still train in this slot; an unexpected error keeps its traceback on stderr
                if not isinstance(exc, OSError):
                    traceback.print_exc()
                error = f"{step.run.name} was not launched: {first_line(exc, typed=True)}"
            results[step.run.name] = error
            print(
                f"[{k}/{len(todo)}] "
                f"{error or f'{step.run.name}: finished in {time.monotonic() - t0:.0f} s'}",
                flush=True,
            )

    # a Ctrl-C that interrupts Thread.join can leave a running thread marked done (CPython 3.11):
    # each worker sets its own event when it ends
    done = [threading.Event() for _ in slots]
    for slot, event in zip(slots, done):
        threading.Thread(target=worker, args=(slot, event), daemon=True).start()
    # only the main thread gets signals; there a kill or a closed terminal acts as Ctrl-C
    main = threading.current_thread() is threading.main_thread()
    handled = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = [signal.signal(sig, signal.default_int_handler) for sig in handled] if main else []
    try:
        _join(done)
    except KeyboardInterrupt:
        stop.set()  # no new run starts
        forward()
        print(
            "stopping: each running training finishes its step, writes last.pth and exits (Ctrl-C "
            "again: at once); rerun the same command to resume",
            flush=True,
        )
        while True:
            try:
                _join(done)
                break
            except KeyboardInterrupt:
                forward()  # the trainers' next Ctrl-C: they exit at once
        raise Interrupted(
            "stopped: every running training has exited, with its last.pth where it had begun "
            "one; rerun the same command to resume"
        ) from None
    finally:
        for sig, handler in zip(handled, previous):
            signal.signal(sig, handler)
    return results


def _join(done: list[threading.Event]) -> None:
    for event in done:
        while not event.wait(0.2):
            pass
