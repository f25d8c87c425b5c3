"""Adding a box loss is one function and one registry line, plus its leaf config: registered at run
time, it is a valid config choice at once and trains through the config like the built-in losses. A
dataset format is one parser and one registry line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_run_overrides
from PIL import Image

from detector.config import ConfigError, load_config
from detector.data.base import ImageRecord
from detector.data.build import FORMATS, build_dataset
from detector.engine import trainer as trainer_mod
from detector.losses.regression import LOSSES, BoxLoss


def log_cosh_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log(cosh(x)) elementwise: quadratic near zero, linear beyond, like Smooth L1 without a
    beta."""
    x = pred - target
    return x.abs() + torch.nn.functional.softplus(-2 * x.abs()) - torch.log(torch.tensor(2.0))


def test_a_loss_registered_at_run_time_trains_through_its_leaf_config(
    monkeypatch, tmp_path, tiny_data
):
    # the registry line
    monkeypatch.setitem(LOSSES, "log_cosh", lambda cfg: BoxLoss("log_cosh", log_cosh_loss))
    leaf = tmp_path / "log_cosh.yaml"  # the leaf config
    leaf.write_text("_base_: base.yaml\nmodel:\n  roi_head:\n    box_loss:\n      name: log_cosh\n")
    run = tmp_path / "run"
    cfg = load_config([str(leaf)], tiny_run_overrides(tiny_data, run))
    assert cfg.model.roi_head.box_loss.name == "log_cosh"
    calls = []
    monkeypatch.setitem(
        LOSSES, "log_cosh", lambda c: calls.append(c) or BoxLoss("log_cosh", log_cosh_loss)
    )
    trainer_mod.train(cfg, run)
    assert calls, "the model was built with the registered loss"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_box_reg"] for r in records if r["type"] == "train"]
    assert len(losses) == 2 and all(v is not None and v >= 0 for v in losses)
    assert (run / "eval" / "metrics.json").is_file()


def parse_toy(data, split: str):
    """A toy format: ``<root>/<split>.txt`` lines "file x1 y1 x2 y2 label", one box per image."""
    records = []
    for image_id, line in enumerate((Path(data.root) / f"{split}.txt").read_text().splitlines()):
        name, *box, label = line.split()
        records.append(
            ImageRecord(
                image_id=image_id,
                path=str(Path(data.root) / name),
                file_name=name,
                height=48,
                width=64,
                boxes=np.array([box], dtype=np.float32),
                labels=np.array([int(label)]),
                iscrowd=np.zeros(1, dtype=bool),
                area=np.array([100.0], dtype=np.float32),
            )
        )
    return records, ["__background__", "dot"], {1: 1}, f"toy {split} under {data.root}"


def test_a_dataset_format_is_one_parser_and_one_registry_line(monkeypatch, tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "val.txt").write_text("a.png 10 10 30 20 1\n")
    overrides = ["data.format=toy", f"data.root={tmp_path}"]
    with pytest.raises(ConfigError, match="data.format='toy' is not valid; choose from synthetic"):
        build_dataset(load_config([], overrides), "val")
    monkeypatch.setitem(FORMATS, "toy", parse_toy)  # the registry line
    dataset = build_dataset(load_config([], overrides), "val", transforms=False)
    assert (
        dataset.classes == ["__background__", "dot"]
        and dataset.name == f"toy val under {tmp_path} (val)"
    )
    image, target = dataset[0]
    assert image.shape == (3, 48, 64) and target["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]]
