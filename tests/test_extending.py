"""Adding a box loss is one function and one registry line, plus its leaf config: registered at run time, it is a
valid config choice at once and trains through the config like the built-in losses."""

import json

import torch
from helpers import tiny_run_overrides

from detector.config import load_config
from detector.engine import trainer as trainer_mod
from detector.losses import LOSSES, BoxLoss


def log_cosh_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log(cosh(x)) elementwise: quadratic near zero, linear beyond, like Smooth L1 without a beta."""
    x = pred - target
    return x.abs() + torch.nn.functional.softplus(-2 * x.abs()) - torch.log(torch.tensor(2.0))


def test_a_loss_registered_at_run_time_trains_through_its_leaf_config(monkeypatch, tmp_path):
    monkeypatch.setitem(
        LOSSES, "log_cosh", lambda cfg: BoxLoss("log_cosh", log_cosh_loss)
    )  # the registry line
    leaf = tmp_path / "log_cosh.yaml"  # the leaf config
    leaf.write_text("_base_: base.yaml\nmodel:\n  roi_head:\n    box_loss:\n      name: log_cosh\n")
    run = tmp_path / "run"
    cfg = load_config([str(leaf)], tiny_run_overrides(tmp_path / "data", run))
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
