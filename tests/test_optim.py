"""The learning rate's linear scaling rule and the SyncBN option for from-scratch multi-GPU runs."""

import pytest
import torch
from helpers import make_backbone

from detector.config import ConfigError, load_config
from detector.engine import distributed as dist_utils
from detector.engine.optim import build_lr, build_optimizer


def test_linear_scaling_rule(monkeypatch):
    def lr(reference_batch, world_size):
        monkeypatch.setattr(dist_utils, "get_world_size", lambda: world_size)
        keys = [
            "train.lr=0.02",
            "train.batch_size=8",
            f"train.lr_reference_batch={reference_batch}",
        ]
        return build_lr(load_config([], keys))

    assert lr(16, 1) == pytest.approx(0.01)
    assert lr(16, 4) == pytest.approx(0.04)
    assert lr("null", 4) == 0.02  # null reference batch: the lr as given


def test_the_quickstart_trains_at_the_lr_it_was_tuned_with():
    assert (
        build_lr(load_config(["smoothl1.yaml"])) == 0.02
    )  # 0.08 per 16 images at batch 4, exactly
    assert build_lr(load_config(["smoothl1.yaml", "gpu.yaml"])) == pytest.approx(
        0.01
    )  # 0.02 per 16 at batch 8


def test_the_optimizer_scales_with_the_world_size(monkeypatch):
    cfg = load_config(["smoothl1.yaml", "gpu.yaml"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    monkeypatch.setattr(dist_utils, "get_world_size", lambda: 4)
    optimizer = build_optimizer(cfg, model)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.04] * len(optimizer.param_groups)
    )


def test_syncbn_in_one_process_computes_what_bn_does():
    torch.manual_seed(0)
    bn = make_backbone(name="resnet18", fpn=True, out_channels=16, norm="bn")
    torch.manual_seed(0)
    sync = make_backbone(name="resnet18", fpn=True, out_channels=16, norm="syncbn")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    x = torch.randn(2, 3, 64, 64)
    out_bn, out_sync = bn.train()(x), sync.train()(x)
    for key in out_bn:
        torch.testing.assert_close(out_sync[key], out_bn[key])


def test_syncbn_stages_freeze_like_bn():
    backbone = make_backbone(name="resnet18", fpn=False, norm="syncbn", freeze_at=2)
    body = backbone.body
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in body.layer1.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in body.layer2.modules())
    assert not any(p.requires_grad for p in body.layer1.parameters())


def test_syncbn_on_the_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="syncbn synchronises batch statistics over GPUs only"):
        load_config(["smoothl1.yaml"], ["model.backbone.norm=syncbn", "train.device=cpu"])
