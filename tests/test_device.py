"""The device contract, checked on CPU: every tensor the model returns in training is on its inputs'
device.

A CPU-only machine has one device, so a tensor built without ``device=`` cannot be told apart from
one built on the inputs' device. Running the forward under ``torch.device("meta")`` makes the
default device differ from the inputs' (CPU): any tensor our code creates without naming its device
lands on ``meta`` and shows up here (this is how the GPU crash of a CPU-built ``beta`` stat beside
CUDA tensors is caught without a GPU). torchvision's ``MultiScaleRoIAlign`` builds its scales with
the default device itself, so it runs outside the meta context. The CUDA suite (``-m cuda``) checks
the same contract on a real GPU.
"""

import pytest
import torch
from helpers import tiny_model, two_images

from detector.engine.logger import stats_to_scalars
from detector.losses.regression import LOSSES


def _pooler_on_default_cpu(model):
    pool = model.roi_heads.pooler.forward

    def pooled(*args, **kwargs):
        with torch.device("cpu"):
            return pool(*args, **kwargs)

    model.roi_heads.pooler.forward = pooled
    return model


@pytest.mark.parametrize(
    "overrides",
    [[f"model.roi_head.box_loss.name={name}"] for name in sorted(LOSSES)]
    + [
        [
            "model.roi_head.box_loss.name=dynamic_smooth_l1",
            "model.roi_head.dynamic_label_assignment.enabled=true",
        ]
    ],
    ids=str,
)
def test_training_outputs_stay_on_the_inputs_device(overrides):
    model = _pooler_on_default_cpu(tiny_model(*overrides).train())
    images, targets = two_images()
    with torch.device("meta"):
        losses, stats = model(images, targets)
    off = {k: str(v.device) for k, v in {**losses, **stats}.items() if v.device != images[0].device}
    assert not off, f"built without device=: {off}"
    scalars, hists = stats_to_scalars(stats)
    assert all(isinstance(v, float) for v in scalars.values()), scalars
    assert ("beta" in scalars) == ("beta" in stats), (sorted(scalars), sorted(stats))
    assert set(hists) == {"hist/target_abs", "hist/pred_err"}


def test_stats_to_scalars_reads_each_device_once():
    stats = {
        "a": torch.tensor(1.5),
        "b": torch.tensor(2, dtype=torch.long),
        "hist/x": torch.ones(3, 4),
        "c": torch.tensor([[0.25]]),
    }
    scalars, hists = stats_to_scalars(stats)
    assert scalars == {"a": 1.5, "b": 2.0, "c": 0.25} and list(scalars) == ["a", "b", "c"]
    assert list(hists) == ["hist/x"]
