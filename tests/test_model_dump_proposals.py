"""tools/dump_proposals.py on a tiny synthetic dataset: JSON format, original-pixel boxes, model
round trip."""

import json
import sys
from pathlib import Path

import torch

from detector.config import load_config
from detector.modeling.detector import build_detector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import dump_proposals  # noqa: E402


def test_dump_proposals_writes_original_pixel_boxes(tmp_path):
    overrides = [
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.num_train=3",
        "data.synthetic.num_val=2",
        "data.synthetic.image_size=[96,128]",
        "data.synthetic.num_classes=2",
        "data.input.min_size_test=64",
        "data.input.max_size_test=200",
        "data.loader.num_workers=0",
        "train.batch_size=2",
        "train.device=cpu",
        "model.roi_head.fc_dim=32",
        "model.backbone.out_channels=32",
        "model.rpn.pre_nms_topk_test=50",
        "model.rpn.post_nms_topk_test=20",
    ]
    cfg = load_config([], overrides)
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=2)
    ckpt = tmp_path / "last.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "proposals" / "train.json"
    assert (
        dump_proposals.main(
            ["--cfg", "base.yaml", "--ckpt", str(ckpt), "--out", str(out), "--split", "train"]
            + overrides
        )
        == 0
    )
    proposals = json.loads(out.read_text())
    assert len(proposals) == 3 and all(isinstance(key, str) for key in proposals)
    rows = [row for per_image in proposals.values() for row in per_image]
    assert rows and all(len(row) == 5 for row in rows)
    boxes = torch.tensor(rows)
    assert len(max(proposals.values(), key=len)) <= 20
    assert (
        (boxes[:, 2] <= 128 + 1e-3).all()
        and (boxes[:, 3] <= 96 + 1e-3).all()
        and (boxes[:, :4] >= 0).all()
    )
    # mapped back from the 64-pixel-high input to the 96x128 original
    assert float(boxes[:, 2].max()) > 64
    assert ((boxes[:, 4] >= 0) & (boxes[:, 4] <= 1)).all()
    first = next(iter(proposals.values()))
    assert [row[4] for row in first] == sorted((row[4] for row in first), reverse=True)


def test_dump_proposals_with_a_checkpoint_of_another_backbone_is_one_line(tmp_path, capsys):
    overrides = [
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.num_train=1",
        "data.synthetic.num_val=1",
        "data.synthetic.image_size=[64,64]",
        "data.loader.num_workers=0",
        "train.device=cpu",
        "model.roi_head.fc_dim=32",
        "model.backbone.out_channels=32",
    ]
    cfg = load_config([], overrides)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {"model": build_detector(cfg, num_classes=4).state_dict(), "config": cfg.to_dict()}, ckpt
    )
    out = tmp_path / "p.json"
    assert (
        dump_proposals.main(
            [
                "--cfg",
                "base.yaml",
                "--ckpt",
                str(ckpt),
                "--out",
                str(out),
                *overrides,
                "model.backbone.out_channels=64",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {ckpt} does not fit the model built from the config: model.backbone.out_channels "
        "is 32 in the checkpoint but 64 in the config; use the config it was trained with (the "
        "checkpoint stores it under 'config')"
    ]
    assert not out.exists()
