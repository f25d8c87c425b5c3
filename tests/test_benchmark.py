"""tools/benchmark.py runs every mode on CPU in small versions and reports what the GPU table needs;
no speed is asserted (speed targets are measured by the benchmark itself, never by a timed test)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import poison_third_training_forward, tiny_run_overrides

from benchmarks import speed as bench
from detector.config import load_config
from detector.engine.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import benchmark  # noqa: E402

SMALL = [
    "--device",
    "cpu",
    "--size",
    "64",
    "96",
    "--iters",
    "1",
    "--warmup",
    "0",
    "--settings",
    "scratch",
]


@pytest.fixture
def tiny(tiny_data, tmp_path) -> list[str]:
    """A tiny synthetic config's overrides (no output_dir: the real loop makes its own run
    folder)."""
    return [
        o
        for o in tiny_run_overrides(tiny_data, tmp_path / "unused")
        if not o.startswith("output_dir=")
    ]


def test_synthetic_table_has_both_sides_their_ratios_and_what_ours_ran_with(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        benchmark.main(
            [*SMALL, "--settings", "finetune", "--isolation", "none", "--json", str(out)]
        )
        == 0
    )
    assert "| finetune | 1 | off |" in capsys.readouterr().out
    report = json.loads(out.read_text())["synthetic"]
    assert [r["setting"] for r in report["results"]] == ["finetune"]
    for row in report["results"]:
        for side in ("ours", "torchvision"):
            assert row[side]["train_images_per_s"] > 0 and row[side]["infer_images_per_s"] > 0
        assert row["ratio"]["train_images_per_s"] == (
            row["ours"]["train_images_per_s"] / row["torchvision"]["train_images_per_s"]
        )
        info = row["ours"]["side_info"]
        # as gpu.yaml has it
        assert info["optimizer"] in ("fused", "foreach") and info["pad_buckets"] == [
            64,
            96,
        ]
    assert {"settings", "device", "torch", "torchvision", "date"} <= set(report)
    # both sides' RPN and RoI settings are gpu.yaml's, read from it
    gpu = load_config(["gpu.yaml"]).model
    assert report["settings"]["roi_per_image"] == gpu.roi_head.batch_size_per_image
    assert report["settings"]["rpn_proposals_train"] == (
        f"{gpu.rpn.pre_nms_topk_train} pre-NMS / {gpu.rpn.post_nms_topk_train} post-NMS"
    )


def test_each_side_runs_in_its_own_process(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark.main([*SMALL, "--json", str(out)]) == 0
    row = json.loads(out.read_text())["synthetic"]["results"][0]
    assert row["ours"]["pid"] != row["torchvision"]["pid"] and os.getpid() not in (
        row["ours"]["pid"],
        row["torchvision"]["pid"],
    )


def test_real_loop_beside_the_synthetic_figure(tmp_path, tiny, capsys):
    out = tmp_path / "real.json"
    assert (
        benchmark.main(
            [
                "--real",
                "--device",
                "cpu",
                "--cfg",
                "smoothl1.yaml",
                *tiny,
                "--real-iters",
                "2",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--isolation",
                "none",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "real loop (smoothl1.yaml, 2 iterations" in capsys.readouterr().out
    report = json.loads(out.read_text())["real"]
    assert report["real"]["images_per_s"] > 0 and report["real"]["windows"] == 2
    assert report["synthetic"]["train_images_per_s"] > 0 and report["shape"] == [128, 128]
    assert (
        report["ratio"]
        == report["real"]["images_per_s"] / report["synthetic"]["train_images_per_s"]
    )
    assert (
        report["real"]["optimizer"] in ("fused", "foreach")
        and report["real"]["cudnn_benchmark"] is False
    )


def test_shapes_mode_counts_shapes_and_padding(tmp_path, tiny, capsys):
    out = tmp_path / "shapes.json"
    assert (
        benchmark.main(
            [
                "--shapes",
                "--cfg",
                "smoothl1.yaml",
                *tiny,
                "data.input.min_size_train=[96,112,128]",
                "--batches",
                "40",
                "--buckets",
                "0",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "| pad_buckets | bucket sides |" in capsys.readouterr().out
    train = json.loads(out.read_text())["shapes"]["train"]
    off, one = train["rows"]
    assert train["batches"] == 40 and off["distinct_shapes"] > 1 and one["distinct_shapes"] == 1
    assert off["padded_over_unbucketed"] == 1.0 and one["padded_over_unbucketed"] > 1.0
    assert one["shape_counts"] == {"160x160": 40}


def test_profile_mode_counts_the_host_syncs_of_a_step(tiny, capsys):
    assert (
        benchmark.main(
            [
                "--profile",
                "--device",
                "cpu",
                "--cfg",
                "smoothl1.yaml",
                *tiny,
                "--iters",
                "1",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{") :])
    assert report["step_s"] > 0 and report["ops_per_step"] > 100
    assert report["sync_ops_per_step"]["aten::nonzero"] >= 1  # the positives' compaction at least


def test_ours_steps_as_the_trainer_and_reads_the_losses_at_log_steps(
    tmp_path, monkeypatch, tiny_data
):
    """A NaN at iteration 3 (the third step, counted from 1 as the log counts) with
    train.log_period=2 stops our side at the read after iteration 4, named as the trainer names it
    (weighted losses, clipping and the dynamic-state update run in between)."""
    poison_third_training_forward(monkeypatch, bench)
    cfg = load_config(
        ["smoothl1.yaml"],
        tiny_run_overrides(tiny_data, tmp_path / "run", **{"train.log_period": 2}),
    )
    side = bench.OursSide(cfg, torch.device("cpu"), num_classes=3, amp=False)
    images, targets = bench.synthetic_batch(2, 128, 128, 3, 3, torch.device("cpu"))
    side.model.train()
    for _ in range(3):
        side.step(images, targets)
    with pytest.raises(
        NonFiniteLossError, match="at iteration 3 .*found at the check after iteration 4"
    ):
        side.step(images, targets)
    assert side.info["optimizer"] in ("fused", "foreach")
