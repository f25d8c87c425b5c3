"""tools/eval.py: --dets scores a COCO results file, --ckpt runs a model; the table is printed and
nothing is written unless --out asks (a run's results are never replaced unasked); a checkpoint that
does not fit the config is one line saying what differs."""

import errno
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import FakeDetector, make_loader, perfect_detections, random_dataset

import detector.data.build
import detector.modeling.detector
from detector.config import load_config
from detector.engine.checkpoint import CheckpointError, load_model_weights
from detector.engine.runs import RUN_CONFIG_HEADER
from detector.evaluation import evaluate
from detector.evaluation.coco import detections_to_coco_results

EVAL_TOOL = Path(__file__).resolve().parent.parent / "tools" / "eval.py"
# a small real model: the mismatch tests build two of them
SMALL = [
    "model.roi_head.fc_dim=32",
    "model.backbone.out_channels=32",
    "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20",
    "data.loader.num_workers=0",
    "train.device=cpu",
]


@pytest.fixture
def eval_tool():
    spec = importlib.util.spec_from_file_location("tools_eval", EVAL_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_val(monkeypatch):
    """build_dataset(cfg, "val") returns a small in-memory dataset."""
    ds = random_dataset(seed=21, num_images=6)
    monkeypatch.setattr(
        detector.data.build, "build_dataset", lambda cfg, split, transforms=True: ds
    )
    return ds


@pytest.fixture(scope="module")
def synthetic_overrides(tmp_path_factory):
    """A 1 + 2 image synthetic set with 3 classes, generated once for the module."""
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    return [
        f"data.root={root}",
        "data.synthetic.num_train=1",
        "data.synthetic.num_val=2",
        "data.synthetic.image_size=[96,128]",
        "data.synthetic.num_classes=3",
        "data.input.min_size_test=96",
        "data.input.max_size_test=128",
        *SMALL,
    ]


def finished_run(root: Path, ds) -> Path:
    """A training run's folder: its config.yaml, eval/detections.json (perfect) and
    eval/metrics.json."""
    (root / "eval").mkdir(parents=True)
    (root / "config.yaml").write_text(RUN_CONFIG_HEADER + load_config([]).to_yaml())
    dets = perfect_detections(ds)
    (root / "eval" / "detections.json").write_text(json.dumps(detections_to_coco_results(ds, dets)))
    (root / "eval" / "metrics.json").write_text(
        json.dumps(evaluate(ds, dets, metric="coco"), indent=2)
    )
    return root


def test_readme_voc_rescoring_leaves_the_runs_metrics_untouched(
    tmp_path, eval_tool, fake_val, capsys
):
    run = finished_run(tmp_path / "runs" / "x", fake_val)
    before = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}
    dets = run / "eval" / "detections.json"
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets), "--metric", "voc"]) == 0
    # the override form too: train.best_metric (AP, a training key) is not checked by evaluation
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets), "eval.metric=voc"]) == 0
    assert {p.name: p.read_bytes() for p in (run / "eval").iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "eval"]
    out = capsys.readouterr().out
    assert "AP07" in out and "nothing written; pass --out DIR to save metrics.json" in out


def test_dets_file_with_out_writes_metrics_json(tmp_path, eval_tool, fake_val, capsys):
    run = finished_run(tmp_path / "run", fake_val)
    out_dir = tmp_path / "rescored" / "voc"
    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--dets",
                str(run / "eval" / "detections.json"),
                "--metric",
                "both",
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    assert [p.name for p in out_dir.iterdir()] == ["metrics.json"]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == json.loads(
        json.dumps(evaluate(fake_val, perfect_detections(fake_val), metric="both"))
    )
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP_voc"] == 1.0
    out = capsys.readouterr().out
    assert "AR100" in out and "AP07" in out and f"wrote {out_dir / 'metrics.json'}" in out


def test_out_refuses_existing_results_and_a_runs_eval_folder_unless_overwrite(
    tmp_path, eval_tool, fake_val, capsys
):
    run = finished_run(tmp_path / "run", fake_val)
    dets = str(run / "eval" / "detections.json")
    before = (run / "eval" / "metrics.json").read_bytes()
    assert (
        eval_tool.main(
            ["--cfg", "base.yaml", "--dets", dets, "--metric", "voc", "--out", str(run / "eval")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and f"--out {run / 'eval'} already holds metrics.json" in err[0]
        and "--overwrite" in err[0]
    )
    assert (run / "eval" / "metrics.json").read_bytes() == before

    (
        run / "eval" / "metrics.json"
    ).unlink()  # a run still training: its eval/ has no metrics.json yet
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", dets, "--out", str(run / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the eval folder of the training run" in err[0]
    assert not (run / "eval" / "metrics.json").exists()

    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--dets",
                dets,
                "--metric",
                "voc",
                "--out",
                str(run / "eval"),
                "--overwrite",
            ]
        )
        == 0
    )
    assert set(json.loads((run / "eval" / "metrics.json").read_text())) == {
        "mAP_voc07",
        "mAP_voc",
        "per_class_voc",
    }


def test_impossible_out_is_one_line_before_any_work(tmp_path, eval_tool, fake_val, capsys):
    dets = finished_run(tmp_path / "run", fake_val) / "eval" / "detections.json"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert (
        eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets), "--out", str(blocker / "out")])
        == 1
    )
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"error: {blocker}: Not a directory; choose a path you can write to "
        f"(output_dir, data.root or --out)"
    )
    assert captured.out == ""  # refused before scoring: no table


def test_read_only_out_is_one_line(tmp_path, eval_tool, fake_val, capsys, monkeypatch):
    dets = finished_run(tmp_path / "run", fake_val) / "eval" / "detections.json"
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode)
    )
    assert (
        eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets), "--out", str(locked / "new")])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {locked}: Permission denied; choose a path you can write to "
        "(output_dir, data.root or --out)"
    ]
    assert list(locked.iterdir()) == []


def test_a_full_disk_while_writing_is_one_line_after_the_table(
    tmp_path, eval_tool, fake_val, capsys, monkeypatch
):
    dets = finished_run(tmp_path / "run", fake_val) / "eval" / "detections.json"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    assert (
        eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets), "--out", str(tmp_path / "o")])
        == 1
    )
    captured = capsys.readouterr()
    assert "AR100" in captured.out  # the numbers were shown before the write failed
    assert (
        captured.err.strip()
        == f"error: {tmp_path / 'o' / 'metrics.json'}: No space left on device; free some space"
    )


def test_bad_dets_file_is_rejected_with_the_entry(tmp_path, eval_tool, fake_val, capsys):
    dets_file = tmp_path / "detections.json"
    dets_file.write_text(
        json.dumps([{"image_id": 1000, "category_id": 11, "bbox": [0, 0, 5, 5], "score": None}])
    )
    assert (
        eval_tool.main(
            ["--cfg", "base.yaml", "--dets", str(dets_file), "--out", str(tmp_path / "o")]
        )
        == 1
    )
    assert "entry 0 (image_id 1000): field 'score' None" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_config_override_exits_2(eval_tool, capsys, tmp_path):
    assert (
        eval_tool.main(
            ["--cfg", "base.yaml", "--dets", str(tmp_path / "d.json"), "eval.metrix=voc"]
        )
        == 2
    )
    assert "error: override 'eval.metrix=voc': unknown key" in capsys.readouterr().err


def test_dets_scores_the_eval_max_images_prefix_as_the_trainer_did(tmp_path, eval_tool, fake_val):
    """A run evaluated with eval.max_images=3 has detections for 3 images; rescoring counts only
    those 3."""
    dets = perfect_detections(fake_val)[:3]
    dets_file = tmp_path / "detections.json"
    dets_file.write_text(json.dumps(detections_to_coco_results(fake_val, dets)))
    args = ["--cfg", "base.yaml", "--dets", str(dets_file), "--metric", "both"]
    assert eval_tool.main([*args, "--out", str(tmp_path / "prefix"), "eval.max_images=3"]) == 0
    prefix = json.loads((tmp_path / "prefix" / "metrics.json").read_text())
    assert prefix["AP"] == pytest.approx(1.0, abs=1e-12) and prefix["mAP_voc"] == 1.0
    assert eval_tool.main([*args, "--out", str(tmp_path / "all")]) == 0
    # 3 images' GT missed
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["mAP_voc"] < 1.0


def test_ckpt_writes_nothing_into_the_run_and_out_gets_both_files(
    tmp_path, eval_tool, fake_val, monkeypatch, capsys
):
    # imported before the patch below, so it keeps the real builder
    import detector.engine.trainer  # noqa: F401

    image_ids = [fake_val.get_image_info(i)["image_id"] for i in range(len(fake_val))]

    class Loader(list):
        dataset = fake_val

    built = {}

    def build_detector(cfg, num_classes=None):
        built["num_classes"] = num_classes
        return FakeDetector()

    monkeypatch.setattr(
        detector.data.build, "build_dataloader", lambda cfg, split: Loader(make_loader(image_ids))
    )
    monkeypatch.setattr(detector.modeling.detector, "build_detector", build_detector)
    run = tmp_path / "runs" / "x"
    checkpoint = run / "checkpoints" / "last.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": {"weight": torch.full((1,), 0.5)}, "config": {}}, checkpoint)

    assert (
        eval_tool.main(["--cfg", "base.yaml", "--ckpt", str(checkpoint), "train.device=cpu"]) == 0
    )
    assert built["num_classes"] == 3
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [
        "checkpoints",
        "checkpoints/last.pth",
    ]
    assert (
        "nothing written; pass --out DIR to save detections.json and metrics.json"
        in capsys.readouterr().out
    )

    out_dir = tmp_path / "evals" / "x-last"
    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--ckpt",
                str(checkpoint),
                "--out",
                str(out_dir),
                "train.device=cpu",
            ]
        )
        == 0
    )
    results = json.loads((out_dir / "detections.json").read_text())
    assert len(results) == len(image_ids) and {r["category_id"] for r in results} == {11}
    # loaded weight 0.5
    assert results[0]["bbox"][2:] == [
        0.5 * (20 + image_ids[0]),
        0.5 * (16 + image_ids[0]),
    ]
    assert set(json.loads((out_dir / "metrics.json").read_text())) >= {
        "AP",
        "AP_per_iou",
        "per_class",
    }
    # a second evaluation into the same --out is refused
    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--ckpt",
                str(checkpoint),
                "--out",
                str(out_dir),
                "train.device=cpu",
            ]
        )
        == 2
    )
    assert (
        f"--out {out_dir} already holds detections.json and metrics.json" in capsys.readouterr().err
    )


def test_coco_tiny_gt_as_dets_file_gives_ap_1(coco_tiny, tmp_path, eval_tool):
    overrides = [
        "data.format=coco",
        f"data.root={coco_tiny}",
        "data.train_split=train2017",
        "data.val_split=val2017",
    ]
    ds = detector.data.build.build_dataset(load_config([], overrides), "val", transforms=False)
    dets_file = tmp_path / "detections.json"
    dets_file.write_text(json.dumps(detections_to_coco_results(ds, perfect_detections(ds))))
    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--dets",
                str(dets_file),
                "--metric",
                "both",
                "--out",
                str(tmp_path / "o"),
                *overrides,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP_voc"] == 1.0


def save_run_checkpoint(run: Path, cfg, num_classes: int) -> Path:
    """A run folder with config.yaml and checkpoints/last.pth of a model built from ``cfg``."""
    torch.manual_seed(0)
    model = detector.modeling.detector.build_detector(cfg, num_classes=num_classes)
    checkpoint = run / "checkpoints" / "last.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "iteration": 1}, checkpoint)
    cfg.save(run / "config.yaml")
    return checkpoint


def test_ckpt_with_a_real_model_on_synthetic_data(tmp_path, eval_tool, synthetic_overrides):
    """End to end: build_dataloader + build_detector + load_model_weights + inference + both metric
    families."""
    cfg = load_config([], synthetic_overrides)
    dataset = detector.data.build.build_dataset(cfg, "val", transforms=False)
    checkpoint = save_run_checkpoint(tmp_path / "run", cfg, len(dataset.classes) - 1)
    out_dir = tmp_path / "scored"
    assert (
        eval_tool.main(
            [
                "--cfg",
                "base.yaml",
                "--ckpt",
                str(checkpoint),
                "--metric",
                "both",
                "--out",
                str(out_dir),
                *synthetic_overrides,
            ]
        )
        == 0
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert len(metrics["AP_per_iou"]) == 10 and set(metrics["per_class_voc"]) == set(
        dataset.classes[1:]
    )
    results = json.loads((out_dir / "detections.json").read_text())
    assert {r["image_id"] for r in results} <= {
        dataset.get_image_info(i)["image_id"] for i in range(len(dataset))
    }
    assert not (tmp_path / "run" / "eval").exists()


def test_ckpt_of_another_backbone_is_one_line_naming_the_key_and_the_config(
    tmp_path, eval_tool, capsys, synthetic_overrides
):
    checkpoint = save_run_checkpoint(
        tmp_path / "runs" / "r18", load_config([], synthetic_overrides), 3
    )
    code = eval_tool.main(
        [
            "--cfg",
            "base.yaml",
            "--ckpt",
            str(checkpoint),
            *synthetic_overrides,
            "model.backbone.name=resnet34",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err  # a checkpoint of another model: a file error
    assert err[0] == (
        f"error: {checkpoint} does not fit the model built from the config: model.backbone.name is "
        "resnet18 in the checkpoint but resnet34 in the config; use the config it was trained "
        f"with: --cfg {tmp_path / 'runs' / 'r18' / 'config.yaml'}"
    )


def test_ckpt_of_another_class_count_says_both_counts(tmp_path, synthetic_overrides):
    cfg = load_config([], synthetic_overrides)
    checkpoint = save_run_checkpoint(tmp_path / "run", cfg, num_classes=2)
    model = detector.modeling.detector.build_detector(cfg, num_classes=3)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model built from the config: the checkpoint has 2 "
        r"foreground classes but the config's dataset has 3; use the config",
    ):
        load_model_weights(model, checkpoint, cfg.to_dict())
    # no stored config, no run
    torch.save({"model": torch.load(checkpoint)["model"]}, tmp_path / "bare.pth")
    with pytest.raises(
        CheckpointError,
        match=r"bare.pth does not fit .*: the checkpoint has 2 foreground classes "
        r"but the config's dataset has 3; use the config it was trained "
        r"with \(the checkpoint stores it under 'config'\)",
    ):
        load_model_weights(model, tmp_path / "bare.pth", cfg.to_dict())


def test_ckpt_that_fits_loads_and_a_foreign_state_dict_is_described(tmp_path, synthetic_overrides):
    cfg = load_config([], synthetic_overrides)
    checkpoint = save_run_checkpoint(tmp_path / "run", cfg, num_classes=3)
    model = detector.modeling.detector.build_detector(cfg, num_classes=3)
    assert load_model_weights(model, checkpoint, cfg.to_dict())["iteration"] == 1
    expected = torch.load(checkpoint)["model"]
    assert all(
        torch.equal(v, expected[k])
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    )
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(
        CheckpointError, match=r"0 tensors differ in shape, \d+ are missing and 1 unexpected"
    ):
        load_model_weights(model, tmp_path / "other.pth", cfg.to_dict())
