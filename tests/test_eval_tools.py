"""tools/eval.py: --dets scores a COCO results file, --ckpt runs a model; both write metrics.json."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import FakeDetector, make_loader, perfect_detections, random_dataset

import detector.data
import detector.modeling
from detector.evaluation import detections_to_coco_results, evaluate

EVAL_TOOL = Path(__file__).resolve().parent.parent / "tools" / "eval.py"


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
    monkeypatch.setattr(detector.data, "build_dataset", lambda cfg, split, transforms=True: ds)
    return ds


def test_dets_file_writes_metrics_json_beside_it(tmp_path, eval_tool, fake_val, capsys):
    dets = perfect_detections(fake_val)
    dets_file = tmp_path / "run" / "eval" / "detections.json"
    dets_file.parent.mkdir(parents=True)
    dets_file.write_text(json.dumps(detections_to_coco_results(fake_val, dets)))
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets_file), "--metric", "both"]) == 0
    metrics = json.loads((dets_file.parent / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(evaluate(fake_val, dets, metric="both")))
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP_voc"] == 1.0
    out = capsys.readouterr().out
    assert "AR100" in out and "AP07" in out and "metrics.json" in out


def test_bad_dets_file_is_rejected_with_the_entry(tmp_path, eval_tool, fake_val, capsys):
    dets_file = tmp_path / "detections.json"
    dets_file.write_text(json.dumps([{"image_id": 1000, "category_id": 11, "bbox": [0, 0, 5, 5], "score": None}]))
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets_file), "--out", str(tmp_path / "o")]) == 2
    assert "entry 0 (image_id 1000): field 'score' None" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_config_override_exits_2(eval_tool, capsys, tmp_path):
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(tmp_path / "d.json"), "eval.metrix=voc"]) == 2
    assert "config error" in capsys.readouterr().err


def test_ckpt_runs_the_model_and_writes_into_the_run_eval_folder(tmp_path, eval_tool, fake_val, monkeypatch):
    import detector.engine.trainer  # noqa: F401  (imported before the patch below, so it keeps the real builder)
    image_ids = [fake_val.get_image_info(i)["image_id"] for i in range(len(fake_val))]

    class Loader(list):
        dataset = fake_val

    built = {}

    def build_detector(cfg, num_classes=None):
        built["num_classes"] = num_classes
        return FakeDetector()

    monkeypatch.setattr(detector.data, "build_dataloader", lambda cfg, split: Loader(make_loader(image_ids)))
    monkeypatch.setattr(detector.modeling, "build_detector", build_detector)
    checkpoint = tmp_path / "runs" / "x" / "checkpoints" / "last.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": {"weight": torch.full((1,), 0.5)}, "config": {}}, checkpoint)

    assert eval_tool.main(["--cfg", "base.yaml", "--ckpt", str(checkpoint), "train.device=cpu"]) == 0
    assert built["num_classes"] == 3
    eval_dir = tmp_path / "runs" / "x" / "eval"
    results = json.loads((eval_dir / "detections.json").read_text())
    assert len(results) == len(image_ids) and {r["category_id"] for r in results} == {11}
    assert results[0]["bbox"][2:] == [0.5 * (20 + image_ids[0]), 0.5 * (16 + image_ids[0])]  # loaded weight 0.5
    assert set(json.loads((eval_dir / "metrics.json").read_text())) >= {"AP", "AP_per_iou", "per_class"}


def test_coco_tiny_gt_as_dets_file_gives_ap_1(coco_tiny, tmp_path, eval_tool):
    from detector.config import load_config
    overrides = ["data.format=coco", f"data.root={coco_tiny}", "data.train_split=train2017", "data.val_split=val2017"]
    ds = detector.data.build_dataset(load_config([], overrides), "val", transforms=False)
    dets_file = tmp_path / "detections.json"
    dets_file.write_text(json.dumps(detections_to_coco_results(ds, perfect_detections(ds))))
    assert eval_tool.main(["--cfg", "base.yaml", "--dets", str(dets_file), "--metric", "both", *overrides]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP_voc"] == 1.0


def test_ckpt_with_a_real_model_on_synthetic_data(tmp_path, eval_tool):
    """End to end: build_dataloader + build_detector + load_checkpoint + inference + both metric families."""
    from detector.config import load_config
    overrides = [f"data.root={tmp_path / 'synthetic'}", "data.synthetic.num_train=1", "data.synthetic.num_val=2",
                 "data.synthetic.image_size=[96,128]", "data.input.min_size_test=96", "data.input.max_size_test=128",
                 "data.loader.num_workers=0", "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
                 "train.device=cpu"]
    cfg = load_config([], overrides)
    dataset = detector.data.build_dataset(cfg, "val", transforms=False)
    model = detector.modeling.build_detector(cfg, num_classes=len(dataset.classes) - 1)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, checkpoint)
    assert eval_tool.main(["--cfg", "base.yaml", "--ckpt", str(checkpoint), "--metric", "both", *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert len(metrics["AP_per_iou"]) == 10 and set(metrics["per_class_voc"]) == set(dataset.classes[1:])
    results = json.loads((tmp_path / "run" / "eval" / "detections.json").read_text())
    assert {r["image_id"] for r in results} <= {dataset.get_image_info(i)["image_id"] for i in range(len(dataset))}
