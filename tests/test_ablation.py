"""Ablation plan, run-folder reuse and report, on run folders made by hand (no training: seconds).

A finished run is what the trainer leaves: ``config.yaml`` (the resolved config),
``eval/metrics.json`` and ``metrics.jsonl``. Runs that would train go to a fake python that records
its arguments and fails fast.
"""

import csv
import json
import stat
import sys
from pathlib import Path

import pytest

from detector.ablation.plan import AblationError, parse_sweep, plan_runs
from detector.ablation.plots import PLOTS
from detector.evaluation.coco import COCO_METRIC_NAMES, IOU_THRESHOLDS

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import ablate  # noqa: E402
from helpers import one_error_line, run_tool_main  # noqa: E402

BUDGET = ["train.max_iters=2", "train.log_period=1"]


def finish_run(out: Path, run, **values: float) -> Path:
    """A finished run of ``run`` in ``out`` with the given metric values (the others 0.5; AP at each
    IoU falls from 0.9 at 0.50 to 0.45 at 0.95)."""
    run_dir = out / "runs" / run.name
    (run_dir / "eval").mkdir(parents=True)
    run.config(out).save(run_dir / "config.yaml")
    metrics = {name: 0.5 for name in COCO_METRIC_NAMES}
    metrics["AP_per_iou"] = [0.9 - 0.05 * i for i in range(len(IOU_THRESHOLDS))]
    metrics.update(values)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    records = [
        {
            "type": "train",
            "iter": i,
            "loss_box_reg": 0.4 / i,
            "total_loss": 1.0 / i,
            "images_per_s": 3.0,
        }
        for i in (1, 2)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def fake_python(tmp_path: Path, monkeypatch) -> Path:
    """Stand in for the python that runs tools/train.py: record the arguments, fail at once."""
    record = tmp_path / "argv.txt"
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\necho "$*" >> {record}\necho "error: fake trainer"\nexit 3\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(script))
    return record


def calls(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_plan_and_sweep():
    runs = plan_runs(
        ["smoothl1.yaml"],
        ["data/synthetic.yaml"],
        2,
        ["train.max_iters=5"],
        "model.roi_head.box_loss.beta=0.11,1.0",
    )
    assert [r.name for r in runs] == [
        "smoothl1_beta0.11-seed0",
        "smoothl1_beta0.11-seed1",
        "smoothl1_beta1.0-seed0",
        "smoothl1_beta1.0-seed1",
    ]
    assert runs[0].overrides[-2:] == ["model.roi_head.box_loss.beta=0.11", "seed=0"]
    assert runs[0].cfgs == ["smoothl1.yaml", "data/synthetic.yaml"]
    assert parse_sweep("train.lr=0.01, 0.02") == ("train.lr", ["0.01", "0.02"])
    with pytest.raises(AblationError, match="expected key=v1,v2"):
        parse_sweep("model.roi_head.box_loss.beta")


def test_default_is_five_seeds():
    args = ablate.build_parser().parse_intermixed_args(["--cfgs", "smoothl1.yaml"])
    assert args.seeds == 5


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seeds", "0"], ["--seeds 0", "at least 1 seed"]),
        (["--seeds", "-3"], ["--seeds -3"]),
        (["--sweep", "model.roi_head.box_loss.beta"], ["--sweep", "key=v1,v2"]),
        (["--sweep", "model.roi_head.box_loss.beta="], ["--sweep", "key=v1,v2"]),
        (["--cfgs", "smoothl1.yaml", "smoothl1.yaml"], ["listed twice"]),
        (["--baseline", "nosuch"], ["--baseline", "smoothl1"]),
        (["--jobs", "0"], ["--jobs 0"]),
        (["--partition", "gpu"], ["--partition", "--launcher slurm"]),
        (["--report-only", "--force"], ["--report-only", "--force"]),
        (["train.max_iter=3"], ["did you mean max_iters?"]),
        (["seed=7"], ["seed", "--seeds"]),
        (["output_dir=/tmp/x"], ["output_dir", "--out"]),
    ],
)
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, capsys, args, words):
    cfgs = [] if "--cfgs" in args else ["--cfgs", "smoothl1.yaml"]
    assert ablate.main([*cfgs, "--out", str(tmp_path / "abl"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "abl" / "runs").exists()


def test_finished_run_of_another_config_stops_before_training(tmp_path, monkeypatch, capsys):
    """Rerunning into the same --out with another budget must not report the old results as the new
    ones."""
    out = tmp_path / "abl"
    run_dir = finish_run(out, plan_runs(["smoothl1.yaml"], [], 1, BUDGET)[0], AP=0.61)
    record = fake_python(tmp_path, monkeypatch)
    before = (run_dir / "eval" / "metrics.json").read_text()
    assert (
        ablate.main(
            [
                "--cfgs",
                "smoothl1.yaml",
                "--seeds",
                "1",
                "--out",
                str(out),
                "train.max_iters=3",
                "train.log_period=1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(run_dir) in err and "train.max_iters" in err and "--force" in err and "--out" in err
    assert calls(record) == [] and (run_dir / "eval" / "metrics.json").read_text() == before
    assert not (out / "summary.md").exists()


def test_finished_run_differing_in_observational_keys_is_reused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    finish_run(out, plan_runs(["smoothl1.yaml"], [], 1, BUDGET)[0], AP=0.61)
    record = fake_python(tmp_path, monkeypatch)
    assert (
        ablate.main(
            [
                "--cfgs",
                "smoothl1.yaml",
                "--seeds",
                "1",
                "--out",
                str(out),
                "train.max_iters=2",
                "train.log_period=2",
                "data.loader.num_workers=3",
                "train.num_vis_images=0",
                "train.eval_period=7",
            ]
        )
        == 0
    )
    assert calls(record) == []
    summary = (out / "summary.md").read_text()
    assert "| smoothl1 | 1 | 61.0 |" in summary
    # the header names the settings the reused run was watched with, where they are not the
    # command's (its config.yaml: log_period 1, workers and drawn images as base.yaml has them)
    watched = next(line for line in summary.splitlines() if line.startswith("Reused with"))
    assert "train.log_period=1," in watched and "smoothl1-seed0" in watched
    assert "train.eval_period=" in watched and "train.num_vis_images=" in watched
    # the loader's workers are set per slot by the runner: not a setting the run was watched with
    assert "num_workers" not in watched


def test_force_trains_a_stale_run_again_with_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    run_dir = finish_run(out, plan_runs(["smoothl1.yaml"], [], 1, BUDGET)[0])
    record = fake_python(tmp_path, monkeypatch)
    ablate.main(
        [
            "--cfgs",
            "smoothl1.yaml",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--force",
            "train.max_iters=3",
            "train.log_period=1",
        ]
    )
    (argv,) = calls(record)
    assert (
        "--overwrite" in argv.split()
        and "train.max_iters=3" in argv
        and f"output_dir={run_dir}" in argv
    )


def test_interrupted_run_resumes_unless_its_experiment_differs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    run = plan_runs(["smoothl1.yaml"], [], 1, BUDGET)[0]
    run_dir = out / "runs" / run.name
    (run_dir / "checkpoints").mkdir(parents=True)
    run.config(out).save(run_dir / "config.yaml")
    (run_dir / "checkpoints" / "last.pth").write_bytes(b"")
    record = fake_python(tmp_path, monkeypatch)
    base = ["--cfgs", "smoothl1.yaml", "--seeds", "1", "--out", str(out), "train.log_period=1"]
    assert (
        ablate.main([*base, "train.max_iters=2"]) == 1
    )  # the same experiment resumes (the fake trainer fails)
    assert calls(record)[-1].split()[-1] == "--resume"
    capsys.readouterr()
    for change in (
        "train.max_iters=4",
        "model.roi_head.box_loss.beta=0.5",
    ):  # a longer run is never extended
        assert ablate.main([*base, "train.max_iters=2", change]) == 2
        err = capsys.readouterr().err
        assert "unfinished run" in err and change.split("=")[0] in err and len(calls(record)) == 1


def test_a_run_with_nothing_to_resume_from_is_started_over_by_this_launch_alone(
    tmp_path, monkeypatch, capsys
):
    # its checkpoints lost (a new machine): the trainer starts over, and the record names only
    # the launch that trains it, not the dead one
    out = tmp_path / "abl"
    run = plan_runs(["smoothl1.yaml"], [], 1, BUDGET)[0]
    run_dir = out / "runs" / run.name
    run_dir.mkdir(parents=True)
    run.config(out).save(run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text('{"type": "train", "iter": 1}\n')
    (run_dir / "launches.jsonl").write_text('{"action": "train", "commit": "elsewhere"}\n')
    record = fake_python(tmp_path, monkeypatch)
    base = ["--cfgs", "smoothl1.yaml", "--seeds", "1", "--out", str(out), "train.log_period=1"]
    assert ablate.main([*base, "train.max_iters=2"]) == 1  # the fake trainer fails
    assert calls(record)[-1].split()[-1] == "--resume"
    assert f"{run.name}: resume (no checkpoint: starts over)" in capsys.readouterr().out
    (launch,) = map(json.loads, (run_dir / "launches.jsonl").read_text().splitlines())
    assert launch["action"] == "train" and launch["commit"] != "elsewhere"
    # where the trainer refuses to start it over (a best.pth left), --force trains it again
    ablate.main([*base, "train.max_iters=2", "--force"])
    assert calls(record)[-1].split()[-1] == "--overwrite"


def make_paired_ablation(out: Path) -> list:
    """smoothl1 (baseline) and l1, 4 seeds, with per-seed differences (l1 − smoothl1) known by hand:
    AP +1, +2, +3, +2 points; AP50 +2, -1, 0, +1; AP75 -3, -4, -2, -3."""
    runs = plan_runs(["smoothl1.yaml", "l1.yaml"], [], 4, BUDGET)
    base = {
        "AP": [0.50, 0.52, 0.47, 0.51],
        "AP50": [0.80, 0.82, 0.81, 0.81],
        "AP75": [0.60, 0.62, 0.58, 0.60],
    }
    diff = {
        "AP": [0.01, 0.02, 0.03, 0.02],
        "AP50": [0.02, -0.01, 0.00, 0.01],
        "AP75": [-0.03, -0.04, -0.02, -0.03],
    }
    for run in runs:
        shift = {k: (diff[k][run.seed] if run.group == "l1" else 0.0) for k in base}
        finish_run(out, run, **{k: base[k][run.seed] + shift[k] for k in base}, APl=-1.0)
    return runs


def test_paired_differences_match_a_hand_computation(tmp_path, capsys):
    """mean ± t(0.975, 3) · sd / √4 with t = 3.182446 (a t-table); t statistic mean / (sd / √4), df
    3: AP   d = 1,2,3,2 points: mean 2.0, sd 0.8165 -> [0.7008, 3.2992], t 4.899, p 0.01628; AP50 d
    = 2,-1,0,1:       mean 0.5, sd 1.2910 -> [-1.5543, 2.5543], t 0.775, p 0.4950; AP75 d =
    -3,-4,-2,-3:    mean -3.0, sd 0.8165 -> [-4.2992, -1.7008], t -7.348, p 0.005209. The other
    summary metrics differ by exactly 0 (sd 0: too few seeds, no test), so Holm's family is 3 tests:
    sorted p 0.005209 · 3 = 0.01563, 0.01628 · 2 = 0.03255, 0.4950 · 1 -> AP75 worse, AP better,
    AP50 none."""
    out = tmp_path / "abl"
    make_paired_ablation(out)
    assert (
        ablate.main(
            [
                "--cfgs",
                "smoothl1.yaml",
                "l1.yaml",
                "--seeds",
                "4",
                "--out",
                str(out),
                *BUDGET,
                "--report-only",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "summary.csv")))
    paired = {r["metric"]: r for r in rows if r["kind"] == "paired"}
    expected = {
        "AP": (0.02, 0.007008, 0.032992, "better", 0.01628, 0.03255),
        "AP50": (0.005, -0.015543, 0.025543, "no evidence", 0.4950, 0.4950),
        "AP75": (-0.03, -0.042992, -0.017008, "worse", 0.005209, 0.01563),
    }
    for metric, (mean, low, high, verdict, p, p_holm) in expected.items():
        row = paired[metric]
        assert (row["config"], row["baseline"], row["n"], row["verdict"]) == (
            "l1",
            "smoothl1",
            "4",
            verdict,
        )
        assert float(row["value"]) == pytest.approx(mean, abs=1e-9)
        assert float(row["ci95_low"]) == pytest.approx(low, abs=2e-6)
        assert float(row["ci95_high"]) == pytest.approx(high, abs=2e-6)
        assert float(row["p"]) == pytest.approx(p, rel=1e-3) and float(
            row["p_holm"]
        ) == pytest.approx(p_holm, rel=1e-3)
        assert float(row["detectable"]) > 0
    assert paired["AP90"]["verdict"] == "too few seeds" and paired["AP90"]["p"] == ""
    assert paired["APl"]["n"] == "0" and paired["APl"]["value"] == ""  # -1 (undefined) never counts
    md = (out / "summary.md").read_text()
    detectable = {m: f"±{100 * float(paired[m]['detectable']):.1f}" for m in expected}
    assert (
        f"| l1 | AP | 4 | +2.0 | [+0.7, +3.3] | 0.016 | 0.033 | {detectable['AP']} | **better** |"
        in md
    )
    assert (
        f"| l1 | AP50 | 4 | +0.5 | [-1.6, +2.6] | 0.5 | 0.5 | {detectable['AP50']} | no evidence |"
        in md
    )
    assert (
        f"| l1 | AP75 | 4 | -3.0 | [-4.3, -1.7] | 0.0052 | 0.016 | {detectable['AP75']} | "
        "**worse** |" in md
    )
    assert "| l1 | AP90 | 4 | +0.0 | [+0.0, +0.0] | – | – | – | too few seeds |" in md
    assert (
        "Student-t interval over the paired differences" in md and "Multiple testing: 3 tests" in md
    )
    # the summary columns, AP90 and AP95 from AP_per_iou; mean ± sample std over seeds
    assert (
        "| config | seeds | AP | AP50 | AP75 | AP90 | AP95 | APs | APm | APl | loss_box_reg | "
        "images_per_s |" in md
    )
    assert (
        "| smoothl1 | 4 | 50.0 ± 2.2 | 81.0 ± 0.8 | 60.0 ± 1.6 | 50.0 ± 0.0 | 45.0 ± 0.0 | 50.0 ± "
        "0.0 | "
        "50.0 ± 0.0 | n/a |" in md
    )
    # summary.csv: every run's AP at each IoU 0.50..0.95, and per-group mean/std
    run_rows = [r for r in rows if r["kind"] == "run" and r["run"] == "l1-seed2"]
    per_iou = {
        r["metric"]: float(r["value"]) for r in run_rows if r["metric"] in ("AP55", "AP60", "AP95")
    }
    assert per_iou == pytest.approx({"AP55": 0.85, "AP60": 0.80, "AP95": 0.45})
    assert {f"AP{round(t * 100)}" for t in IOU_THRESHOLDS} <= {r["metric"] for r in run_rows}
    group = next(
        r
        for r in rows
        if r["kind"] == "group" and r["config"] == "smoothl1" and r["metric"] == "AP"
    )
    assert group["n"] == "4" and float(group["value"]) == pytest.approx(0.5)
    assert float(group["std"]) == pytest.approx(0.0216025)  # sample std of 0.50, 0.52, 0.47, 0.51
    for name in ("ap_vs_iou.png", "loss_curves.png", "beta.png", "pred_err.png", "tp_iou.png"):
        assert (out / name).stat().st_size > 0


def test_report_never_replaces_files_that_no_ablation_wrote(tmp_path, capsys):
    """The report's files in --out are replaced when its summary.csv is an ablation's, else only
    with --overwrite (docs/runs.md, "Outputs")."""
    out = tmp_path / "abl"
    make_paired_ablation(out)
    argv = ["--cfgs", "smoothl1.yaml", "l1.yaml", "--seeds", "4", "--out", str(out), *BUDGET]
    argv.append("--report-only")
    (out / "summary.md").write_text("my notes")
    proc = run_tool_main("ablate", *argv)
    assert proc.returncode == 2 and "already holds summary.md" in one_error_line(proc)
    assert (out / "summary.md").read_text() == "my notes" and not (out / "summary.csv").exists()
    assert run_tool_main("ablate", *argv, "--overwrite").returncode == 0
    assert sorted(path.name for path in out.glob("*.png")) == sorted(PLOTS)
    # the folder is an ablation's now: the same command replaces its report
    (out / "summary.md").write_text("an earlier report")
    assert ablate.main(argv) == 0
    assert (out / "summary.md").read_text().startswith("# Loss ablation")


def test_a_config_whose_runs_all_failed_is_listed_as_failed(tmp_path, capsys):
    out = tmp_path / "abl"
    runs = plan_runs(["smoothl1.yaml", "giou.yaml", "l1.yaml"], [], 2, BUDGET)
    for run in runs:
        if run.group == "smoothl1" or (run.group == "l1" and run.seed == 0):
            finish_run(out, run)
        else:  # what a failed run leaves: its log
            (out / "runs" / run.name).mkdir(parents=True)
            (out / "runs" / run.name / "train.log").write_text(f"error: {run.name} broke\n")
    assert (
        ablate.main(
            [
                "--cfgs",
                "smoothl1.yaml",
                "giou.yaml",
                "l1.yaml",
                "--seeds",
                "2",
                "--out",
                str(out),
                *BUDGET,
                "--report-only",
            ]
        )
        == 1
    )
    md = (out / "summary.md").read_text()
    assert "3 of 6 runs finished" in md and "This report is partial" in md
    assert "| giou | 0 of 2: **failed** |" in md
    assert "- **giou**: all runs failed: no results" in md
    for name in ("giou-seed0", "giou-seed1", "l1-seed1"):
        assert (
            f"{name}: did not finish: error: {name} broke; log: {out / 'runs' / name / 'train.log'}"
            in md
        )
    assert "| l1 | 1 of 2; failed 1 of 2 seeds |" in md
    assert (
        "| l1 | AP | 1 | +0.0 | n/a | – | – | – | too few seeds |" in md
    )  # one pair: no interval, no test
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["run"] for r in rows if r["kind"] == "unfinished"} == {
        "giou-seed0",
        "giou-seed1",
        "l1-seed1",
    }


def test_missing_scipy_is_one_line_and_report_only_rebuilds(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    make_paired_ablation(out)
    args = [
        "--cfgs",
        "smoothl1.yaml",
        "l1.yaml",
        "--seeds",
        "4",
        "--out",
        str(out),
        *BUDGET,
        "--report-only",
    ]
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert ablate.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install scipy" in err and "--report-only" in err
    assert not (out / "summary.md").exists()
    monkeypatch.undo()
    assert ablate.main(args) == 0 and (out / "summary.md").is_file()


def test_the_tp_iou_plot_and_csv_bin_alike():
    """One histogram serves tp_iou.png and tp_iou.csv: an IoU on a bin's edge (as the records
    round it) falls in the same bin in both, IoU 1.0 in the last."""
    import torch

    from detector.ablation.plots import TP_IOU_BINS, tp_iou_counts

    counts = tp_iou_counts(torch.tensor([0.5, 0.95, 0.97499, 1.0]))
    assert len(counts) == len(TP_IOU_BINS) - 1 and sum(counts) == 4
    assert counts[0] == 1 and counts[18] == 2 and counts[19] == 1


def test_the_ap_curve_bars_are_the_sample_std_and_an_undefined_ap_curve_is_left_out(
    tmp_path, monkeypatch
):
    """ap_curve.png's bars are the std over seeds of the report's tables (n - 1), none for one
    seed; ap_vs_iou.png leaves out a curve with COCO's -1 (no ground truth), not drawn at -100."""
    from matplotlib.axes import Axes

    from detector.ablation.plots import plot_all

    drawn, errorbar = [], Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((kwargs.get("label"), len(x), None if yerr is None else list(yerr)))
        return errorbar(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)

    def run(ap, curve):
        metrics = {"AP_per_iou": curve}
        return dict(evals={1: ap, 2: ap}, train=[], beta_log=[], metrics=metrics, pred_err=None)

    groups = {"a": {0: run(0.5, [0.5] * 10), 1: run(0.7, [0.7] * 10)}}
    groups["b"] = {0: run(0.6, [-1.0] * 10)}
    plot_all(
        {g: {s: {**r, "tp_ious": None} for s, r in rs.items()} for g, rs in groups.items()},
        tmp_path,
        "a",
    )
    curves = {label: yerr for label, points, yerr in drawn if points == 2}
    assert curves["a"] == pytest.approx([20 / 2**0.5] * 2) and curves["b"] is None
    assert [label for label, points, _ in drawn if points == 10] == ["a"]
