"""--launcher slurm through submitit, run on this CPU with submitit's local executor (each array
task a process of its own, as on a cluster): two tiny runs, then --report-only; the same command
with --launcher local then reuses both runs and writes the same report (the run folders do not
depend on the launcher)."""

import csv
import sys
from pathlib import Path

import pytest
from helpers import tiny_run_overrides

from detector.ablation import slurm

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import ablate  # noqa: E402


def test_time_limits_in_slurm_formats():
    assert [
        slurm.parse_time(t) for t in ("90", "1:30", "4:00:00", "1-2", "1-2:30", "2-00:00:00")
    ] == [90, 2, 240, 1560, 1590, 2880]
    for bad in ("x", "1:2:3:4", "0", "-5"):
        with pytest.raises(slurm.AblationError, match="--time"):
            slurm.parse_time(bad)


def test_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    assert (
        ablate.main(
            [
                "--cfgs",
                "smoothl1.yaml",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
                "--launcher",
                "slurm",
                "train.max_iters=2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch" in err and "--launcher local" in err


def test_job_array_on_submitits_local_executor_then_report_only(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    overrides = [
        o
        for o in tiny_run_overrides(
            tmp_path / "data", tmp_path / "unused", **{"train.num_vis_images": 0}
        )
        if not o.startswith("output_dir=")
    ]
    args = ["--cfgs", "smoothl1.yaml", "--seeds", "2", "--out", str(out), *overrides]
    submitted = []

    def submit_here(steps, out_dir, options, cluster="slurm"):
        jobs = real_submit(
            steps, out_dir, options, cluster="local"
        )  # this machine instead of sbatch
        submitted.append((options, jobs))
        return jobs

    real_submit = slurm.submit
    monkeypatch.setattr(slurm, "submit", submit_here)
    assert (
        ablate.main(
            [
                *args,
                "--launcher",
                "slurm",
                "--no-wait",
                "--partition",
                "gpu",
                "--time",
                "0:10:00",
                "--gpus-per-run",
                "0",
                "--cpus-per-run",
                "1",
                "--constraint",
                "h100",
                "--account",
                "lab",
            ]
        )
        == 0
    )
    ((options, jobs),) = submitted
    assert options == slurm.SlurmOptions(
        slurm_partition="gpu",
        timeout_min=10,
        gpus_per_node=0,
        cpus_per_task=1,
        slurm_constraint="h100",
        slurm_account="lab",
    )
    assert len(jobs) == 2  # one array, one task per run
    assert "--report-only" in capsys.readouterr().out
    assert slurm.wait(jobs) == {"smoothl1-seed0": None, "smoothl1-seed1": None}

    assert ablate.main([*args, "--report-only"]) == 0
    report = (out / "summary.csv").read_text()
    runs = {r["run"] for r in csv.DictReader(open(out / "summary.csv")) if r["kind"] == "run"}
    assert runs == {"smoothl1-seed0", "smoothl1-seed1"}
    for run_dir in (out / "runs").iterdir():
        for name in (
            "config.yaml",
            "metrics.jsonl",
            "eval/metrics.json",
            "checkpoints/last.pth",
            "train.log",
        ):
            assert (run_dir / name).is_file(), run_dir / name
    capsys.readouterr()
    assert (
        ablate.main(args) == 0
    )  # the local launcher takes the folders as its own: nothing trains again
    assert "2 reuse" in capsys.readouterr().out
    assert (out / "summary.csv").read_text() == report
