"""Under load: 4 tiny runs packed at once through tools/ablate.py --jobs 4, one SIGKILLed mid-run;
the same command then resumes that one, reuses the other three, and the report is complete; every
checkpoint loads."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import tiny_run_overrides

from detector.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
MAX_ITERS = 6


def test_four_packed_runs_one_killed_then_resumed_and_the_rest_reused(tmp_path):
    out = tmp_path / "abl"
    overrides = [
        o
        for o in tiny_run_overrides(
            tmp_path / "data",
            tmp_path / "unused",
            **{
                "train.max_iters": MAX_ITERS,
                "train.checkpoint_period": 2,
                "train.num_vis_images": 0,
            },
        )
        if not o.startswith("output_dir=")
    ]
    cmd = [
        sys.executable,
        str(REPO / "tools" / "ablate.py"),
        "--cfgs",
        "smoothl1.yaml",
        "dynamic_smoothl1.yaml",
        "--seeds",
        "2",
        "--jobs",
        "4",
        "--out",
        str(out),
        *overrides,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    victim = out / "runs" / "smoothl1-seed1"

    ablation = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 300
    while not (
        victim / "checkpoints" / "last.pth"
    ).is_file():  # its first checkpoint: iteration 2 of 6
        assert ablation.poll() is None and time.monotonic() < deadline, ablation.communicate()[0]
        time.sleep(0.05)
    trainer = json.loads((victim / ".lock").read_text())[
        "pid"
    ]  # the training process holds the run's lock
    os.kill(trainer, signal.SIGKILL)
    output = ablation.communicate(timeout=300)[0]
    assert ablation.returncode == 1, output
    assert "smoothl1-seed1 failed (killed by SIGKILL)" in output
    assert not (victim / "eval" / "metrics.json").exists()
    others = sorted(d for d in (out / "runs").iterdir() if d != victim)
    assert len(others) == 3 and all((d / "eval" / "metrics.json").is_file() for d in others), output
    before = {
        d: ((d / "eval" / "metrics.json").stat().st_mtime_ns, (d / "train.log").read_text())
        for d in others
    }

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 runs into" in again.stdout and "3 reuse, 1 resume" in again.stdout
    assert before == {
        d: ((d / "eval" / "metrics.json").stat().st_mtime_ns, (d / "train.log").read_text())
        for d in others
    }  # reused: not a line written
    log = (victim / "train.log").read_text()
    assert "resumed from" in log and "at iteration" in log and "taking over a stale lock" in log

    md = (out / "summary.md").read_text()
    assert "4 of 4 runs finished" in md and "partial" not in md
    assert "| smoothl1 | 2 |" in md and "| dynamic_smoothl1 | 2 |" in md
    assert "## Paired differences to smoothl1" in md and "| dynamic_smoothl1 | AP | 2 |" in md
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["run"] for r in rows if r["kind"] == "run"} == {
        d.name for d in (out / "runs").iterdir()
    }
    assert not [r for r in rows if r["kind"] == "unfinished"]
    for name in ("ap_vs_iou.png", "loss_curves.png", "beta.png", "pred_err.png"):
        assert (out / name).stat().st_size > 0
    for run_dir in (out / "runs").iterdir():
        # a finished run keeps its record and one checkpoint, last.pth
        checkpoints = sorted((run_dir / "checkpoints").glob("*.pth"))
        assert [p.name for p in checkpoints] == ["last.pth"], run_dir
        record = json.loads((run_dir / "record.json").read_text())
        assert record["tp_ious"] is not None and len(record["pred_err"][0]) == 4
        actions = [launch["action"] for launch in record["launches"]]
        assert actions == (["train", "resume"] if run_dir == victim else ["train"])
        for path in checkpoints:
            state = load_checkpoint(path)
            assert state["model"] and state["config"]["seed"] in (0, 1)
        assert load_checkpoint(run_dir / "checkpoints" / "last.pth")["iteration"] == MAX_ITERS
