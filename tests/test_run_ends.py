"""Issue 28's run-folder cases, with tools/train.py as a subprocess: --overwrite never deletes
what no training wrote, a resume never passes its end, a finished run is left as it is, a torn
metrics.jsonl line never blocks a resume, two processes never both take over one stale lock,
leftover temporary locks go, and a start that fails on the first batch leaves nothing that blocks
the fixed command."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, one_error_line, run_tool_process, tiny_run_overrides

from detector.config import load_config
from detector.data.synthetic import ensure_synthetic
from detector.engine import trainer as trainer_mod
from detector.engine.runs import RunLock

# iteration milestones and no warm-up: nothing derives from train.max_iters, so a plain --resume may
# change it
STEPS = {"train.lr_schedule": "multistep", "train.milestones": "[100]", "train.warmup_iters": 0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    """A 2-iteration run, trained and evaluated."""
    run = tmp_path_factory.mktemp("finished") / "run"
    cfg = load_config(["smoothl1.yaml"], tiny_run_overrides(data_root, run, **STEPS))
    trainer_mod.train(cfg, run)
    return run


def train(data_root: Path, run: Path, *flags: str, **extra) -> subprocess.CompletedProcess:
    argv = ["--cfg", "smoothl1.yaml", *tiny_run_overrides(data_root, run, **STEPS, **extra)]
    return run_tool_process("train", *argv, *flags)


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_into_a_folder_that_never_held_a_run_deletes_nothing(data_root, tmp_path):
    folder = tmp_path / "mine"
    (folder / "eval").mkdir(parents=True)
    (folder / "config.yaml").write_text("train:\n  lr: 0.1\n")  # the user's own config
    (folder / "eval" / "metrics.json").write_text('{"AP": 0.3}')  # an earlier tools/eval.py --out
    before = snapshot(folder)
    for flags in ([], ["--overwrite"]):
        proc = train(data_root, folder, *flags)
        line = one_error_line(proc)
        assert proc.returncode == 2 and "unfinished run" not in line
        assert "config.yaml, eval/metrics.json, which no training wrote" in line
        assert "output_dir" in line and snapshot(folder) == before


def test_a_resume_never_passes_its_end(data_root, finished_run):
    before = snapshot(finished_run)
    for flags in (["--resume"], ["--resume", "--extend"]):
        proc = train(data_root, finished_run, *flags, **{"train.max_iters": 1})
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert "holds iteration 2, and train.max_iters=1 is not beyond it" in line
        assert snapshot(finished_run) == before
    proc = train(data_root, finished_run, "--resume")  # the same length: finished, nothing to do
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{finished_run} is a finished run (iteration 2 of 2" in proc.stderr
    assert snapshot(finished_run) == before  # no second final evaluation logged
    assert "AP" in proc.stdout  # its metrics, from eval/metrics.json


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_on_resume(data_root, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "eval" / "metrics.json").unlink()  # killed during the final evaluation
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "iter": 3, "lo')  # and mid-write
    proc = train(data_root, run, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: {run / 'metrics.jsonl'}: dropped 1 unreadable line" in proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2]
    assert (run / "eval" / "metrics.json").is_file()


RACER = """
import sys, time
from pathlib import Path
from detector.engine import runs
alive = runs._pid_alive
# widen the window between the check and the take-over
runs._pid_alive = lambda pid: (time.sleep(0.3), alive(pid))[1]
run, me = Path(sys.argv[1]), sys.argv[2]
(run.parent / f"ready-{me}").touch()
while len(list(run.parent.glob("ready-*"))) < 2:
    time.sleep(0.001)
try:
    runs.RunLock(run).acquire()
except runs.RunFolderError:
    print("refused")
else:
    print("held")
    time.sleep(1.5)
"""


def test_two_processes_taking_over_one_stale_lock_never_both_hold_it(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # three races at once, each in its own folder (its two racers meet there): the interpreter
    # starts overlap, each race stays a race
    races = []
    for trial in range(3):
        run = tmp_path / f"trial{trial}" / "run"
        run.mkdir(parents=True)
        (run / ".lock").write_text(
            json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
        )
        command = [sys.executable, "-c", RACER, str(run)]
        races.append(
            [
                subprocess.Popen([*command, str(k)], stdout=subprocess.PIPE, text=True, env=env)
                for k in range(2)
            ]
        )
    for trial, racers in enumerate(races):
        outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in racers)
        assert outcomes == ["held", "refused"], (trial, outcomes)


def test_leftover_temporary_locks_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    of_dead = run / f".lock.{dead.pid}@{socket.gethostname()}.abc123.tmp"
    old = run / ".lock.k3j4h5.tmp"  # the name an earlier version gave it, an hour old
    fresh = run / f".lock.{os.getpid()}@{socket.gethostname()}.xyz789.tmp"  # a live writer's
    for path in (of_dead, old, fresh):
        path.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with RunLock(run) as lock:
        assert not of_dead.exists() and not old.exists() and fresh.exists()
        assert sum("left by a training that did not start" in note for note in lock.notes) == 2


def test_a_bad_image_in_the_first_batch_leaves_nothing_that_blocks_the_fixed_command(tmp_path):
    root, run = tmp_path / "synthetic", tmp_path / "run"
    cfg = load_config(["smoothl1.yaml"], tiny_run_overrides(root, run))
    ensure_synthetic(root, **cfg.data.synthetic.to_dict())
    images = {p: p.read_bytes() for p in (root / "train").iterdir() if p.suffix in (".png", ".jpg")}
    assert images
    for path, data in images.items():
        path.write_bytes(data[:100])  # truncated: found when the first batch is read
    proc = train(root, run, **{"train.max_iters": 1})
    assert proc.returncode == 1 and "cannot decode image" in one_error_line(proc)
    assert not run.exists() or not list(run.iterdir())
    for path, data in images.items():
        path.write_bytes(data)
    proc = train(root, run, **{"train.max_iters": 1})  # the same command, data fixed
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "eval" / "metrics.json").is_file()
