"""Ablation: a tiny 2 configs × 2 seeds ablation writes the summary and every plot; a second call reuses runs."""
import csv
import sys
from pathlib import Path

import pytest

from detector.ablation import parse_sweep, plan_runs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import ablate  # noqa: E402

TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=[128,128]",
        "data.input.min_size_train=[128]", "data.input.max_size_train=160", "data.input.min_size_test=128",
        "data.input.max_size_test=160", "data.loader.num_workers=0", "train.batch_size=2", "train.max_iters=3",
        "train.log_period=1", "train.warmup_iters=1", "train.device=cpu", "train.num_vis_images=0",
        "model.roi_head.fc_dim=64", "model.roi_head.batch_size_per_image=32", "model.backbone.out_channels=32",
        "model.rpn.post_nms_topk_train=50", "model.rpn.post_nms_topk_test=50",
        "model.roi_head.box_loss.schedule.interval=1"]


def test_plan_and_sweep():
    runs = plan_runs(["smoothl1.yaml"], ["data/synthetic.yaml"], 2, ["train.max_iters=5"],
                     "model.roi_head.box_loss.beta=0.11,1.0")
    assert [r.name for r in runs] == ["smoothl1_beta0.11-seed0", "smoothl1_beta0.11-seed1",
                                      "smoothl1_beta1.0-seed0", "smoothl1_beta1.0-seed1"]
    assert runs[0].overrides[-2:] == ["model.roi_head.box_loss.beta=0.11", "seed=0"]
    assert runs[0].cfgs == ["smoothl1.yaml", "data/synthetic.yaml"]
    with pytest.raises(ValueError, match="expected key=v1,v2"):
        parse_sweep("model.roi_head.box_loss.beta")


def test_tiny_ablation_writes_report_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--cfgs", "smoothl1.yaml", "dynamic_smoothl1.yaml", "--seeds", "2", "--out", str(out),
            *TINY, f"data.root={tmp_path / 'data'}"]
    assert ablate.main(args) == 0
    for name in ("summary.md", "summary.csv", "ap_vs_iou.png", "loss_curves.png", "beta.png", "pred_err.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["config"] for r in rows] == ["smoothl1", "dynamic_smoothl1"]
    assert all(r["seeds"] == "2" for r in rows)
    assert "| smoothl1 | 2 |" in (out / "summary.md").read_text()
    logs = sorted(out.glob("runs/*/train.log"))
    assert len(logs) == 4
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/metrics.json")}
    capsys.readouterr()
    assert ablate.main(args) == 0  # everything reused: no run trains again
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/metrics.json")} == stamps
    assert capsys.readouterr().out.count(": done") == 4


def test_bad_config_is_rejected_before_any_run(tmp_path, capsys):
    assert ablate.main(["--cfgs", "smoothl1.yaml", "--out", str(tmp_path), "train.max_iter=3"]) == 2
    assert "did you mean max_iters?" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
