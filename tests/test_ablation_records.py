"""Run records (detector/ablation/record.py): what a finished run keeps in git, the runner's reuse
of a folder holding records only, --report-only from records, unreadable records (no training:
seconds).
"""

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ablation import BUDGET, ablate, calls, fake_python, finish_run
from test_ablation_stats import tiny_case

from detector.ablation import localisation
from detector.ablation.plan import plan_runs
from detector.ablation.record import RECORD, RECORD_FILES, code_version, ensure_record

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--cfgs", "smoothl1.yaml", "l1.yaml", "--seeds", "2", *BUDGET]


def finish_with_heavy_files(out: Path, monkeypatch) -> None:
    """Two configs × 2 seeds, each with eval/detections.json, final_errors.pt and three checkpoints;
    the tiny case's ground truth stands in for the val data."""
    gt, dets = tiny_case()
    monkeypatch.setattr(localisation, "load_ground_truth", lambda cfg: gt)
    for run in plan_runs(["smoothl1.yaml", "l1.yaml"], [], 2, BUDGET):
        run_dir = finish_run(out, run, AP=0.5 + 0.01 * run.seed + 0.02 * (run.group == "l1"))
        (run_dir / "eval" / "detections.json").write_text(
            json.dumps(dets if run.group == "l1" else dets[:3])
        )
        errors = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.01, 0.02, 0.03, 0.04]]) * (1 + run.seed)
        torch.save({"hist/pred_err": errors}, run_dir / "final_errors.pt")
        (run_dir / "checkpoints").mkdir()
        for name in ("last.pth", "best.pth", "last.prev.pth"):
            (run_dir / "checkpoints" / name).write_bytes(b"weights")


def test_report_only_from_records_alone_matches_and_the_runner_reuses_them(
    tmp_path, monkeypatch, capsys
):
    """The report writes each run's record from its heavy files; a copy of the records alone (a
    fresh clone: no checkpoint, detections or val data) gives the same summary.csv, and the same
    training command reuses every run: nothing trains."""
    out = tmp_path / "abl"
    finish_with_heavy_files(out, monkeypatch)
    assert ablate.main([*ARGS, "--out", str(out), "--report-only"]) == 0
    clone = tmp_path / "clone"
    for run_dir in (out / "runs").iterdir():
        record = json.loads((run_dir / RECORD).read_text())
        assert len(record["tp_ious"]) == (3 if run_dir.name.startswith("l1") else 2)
        seed = int(run_dir.name[-1])
        assert record["pred_err"][0] == pytest.approx([0.1 * (1 + seed) * k for k in (1, 2, 3, 4)])
        for name in RECORD_FILES:
            (clone / "runs" / run_dir.name / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(run_dir / name, clone / "runs" / run_dir.name / name)
    monkeypatch.setattr(localisation, "load_ground_truth", lambda cfg: 1 / 0)  # no val data
    record = fake_python(tmp_path, monkeypatch)
    assert ablate.main([*ARGS, "--out", str(clone)]) == 0
    assert calls(record) == [] and "4 reuse" in capsys.readouterr().out
    assert (clone / "summary.csv").read_text() == (out / "summary.csv").read_text()
    md = (clone / "summary.md").read_text()
    assert "| l1 | 2 | 3 ± 0 | 0.800 ± 0.000 | 66.7 ± 0.0 | 33.3 ± 0.0 |" in md
    for name in ("pred_err.png", "tp_iou.png", "ap_vs_iou.png"):
        assert (clone / name).stat().st_size > 0
    assert ablate.main([*ARGS, "--out", str(clone), "--report-only"]) == 0
    assert (clone / "summary.csv").read_text() == (out / "summary.csv").read_text()


def fake_trainer(tmp_path: Path, monkeypatch) -> None:
    """A python that 'trains' by writing what a finished run leaves: its config, metrics, events,
    detections and three checkpoints."""
    script = tmp_path / "fake-trainer"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        "arg = next(a for a in sys.argv if a.startswith('output_dir='))\n"
        "run = pathlib.Path(arg.split('=', 1)[1])\n"
        "(run / 'checkpoints').mkdir(parents=True, exist_ok=True)\n"
        "(run / 'eval').mkdir(exist_ok=True)\n"
        "for name in ('last.pth', 'best.pth', 'last.prev.pth'):\n"
        "    (run / 'checkpoints' / name).write_bytes(b'w')\n"
        "(run / 'events.out.tfevents.1').write_bytes(b'e')\n"
        "(run / 'eval' / 'detections.json').write_text('[]')\n"
        "(run / 'metrics.jsonl').write_text(json.dumps({'type': 'train', 'iter': 2}) + '\\n')\n"
        "(run / 'config.yaml').write_text('seed: 0\\n')\n"
        "(run / 'eval' / 'metrics.json').write_text(json.dumps({'AP': 0.5}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(script))


def test_a_finished_run_keeps_its_record_one_checkpoint_and_the_commit(tmp_path, monkeypatch):
    gt, _ = tiny_case()
    monkeypatch.setattr(localisation, "load_ground_truth", lambda cfg: gt)
    fake_trainer(tmp_path, monkeypatch)
    base = ["--cfgs", "smoothl1.yaml", "--seeds", "1", *BUDGET]
    ablate.main([*base, "--out", str(tmp_path / "a")])
    run_dir = tmp_path / "a" / "runs" / "smoothl1-seed0"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pth"]
    (launch,) = json.loads((run_dir / RECORD).read_text())["launches"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    assert launch["action"] == "train" and launch["commit"] == head.stdout.decode().strip()
    assert launch["dirty"] == code_version(REPO)["dirty"] and launch["dirty"] in (True, False)
    ablate.main([*base, "--out", str(tmp_path / "b"), "--keep-checkpoint", "none"])
    assert not list((tmp_path / "b" / "runs" / "smoothl1-seed0" / "checkpoints").iterdir())


def test_git_keeps_the_record_and_nothing_heavy():
    run = "docs/results/grid/runs/smoothl1-seed0/"
    heavy = ["checkpoints/last.pth", "eval/detections.json", "final_errors.pt", "train.log"]
    heavy += ["events.out.tfevents.1.host", "launches.jsonl"]
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", *[run + n for n in heavy]],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == [run + n for n in heavy]
    kept = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", *[run + n for n in RECORD_FILES]],
        capture_output=True,
        text=True,
    )
    assert kept.returncode == 1 and kept.stdout == ""  # none of them ignored


def test_an_unreadable_record_is_one_line_counted_failed_and_the_report_written(
    tmp_path, monkeypatch, capsys
):
    """Issue 28 case 9: a torn eval/metrics.json and a torn final_errors.pt."""
    out = tmp_path / "abl"
    finish_with_heavy_files(out, monkeypatch)
    (out / "runs" / "l1-seed1" / "eval" / "metrics.json").write_text('{"AP": 0.5')
    (out / "runs" / "smoothl1-seed1" / "final_errors.pt").write_bytes(b"PK\x03\x04torn")
    assert ablate.main([*ARGS, "--out", str(out), "--report-only"]) == 1
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2
    assert "l1-seed1" in skipped[1] and "eval/metrics.json: not valid JSON" in skipped[1]
    assert "smoothl1-seed1" in skipped[0] and "final_errors.pt: cannot be read" in skipped[0]
    md = (out / "summary.md").read_text()
    assert "| l1 | 1 of 2; failed 1 of 2 seeds |" in md
    assert "| smoothl1 | 1 of 2; failed 1 of 2 seeds |" in md


def test_an_old_record_is_written_again_while_the_heavy_files_are_there(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    finish_with_heavy_files(out, monkeypatch)
    assert ablate.main([*ARGS, "--out", str(out), "--report-only"]) == 0
    path = out / "runs" / "l1-seed0" / RECORD
    old = {**json.loads(path.read_text()), "version": 1, "tp_ious": [0.6]}
    path.write_text(json.dumps(old))
    clone = tmp_path / "clone" / "runs" / "l1-seed0"
    clone.mkdir(parents=True)
    shutil.copy(path, clone / RECORD)
    assert ablate.main([*ARGS, "--out", str(out), "--report-only"]) == 0
    assert len(json.loads(path.read_text())["tp_ious"]) == 3  # rebuilt from the detections
    assert ensure_record(clone, {}) == old  # no heavy files: read as it is


def test_a_record_without_its_log_or_tide_says_so(tmp_path, monkeypatch, capsys):
    """A finished run whose metrics.jsonl is gone is unreadable, counted failed (its curves and
    training means would drop out unsaid); a record written without tidecv names why TIDE is
    blank."""
    out = tmp_path / "abl"
    finish_with_heavy_files(out, monkeypatch)
    monkeypatch.setattr("detector.ablation.record.tide_available", lambda: False)
    (out / "runs" / "l1-seed1" / "metrics.jsonl").unlink()
    assert ablate.main([*ARGS, "--out", str(out), "--report-only"]) == 1
    skipped = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "l1-seed1" in skipped[0] and "metrics.jsonl: missing" in skipped[0]
    md = (out / "summary.md").read_text()
    assert "| l1 | 1 of 2; failed 1 of 2 seeds |" in md
    assert "l1-seed0: tidecv was not importable when its record was written" in md
