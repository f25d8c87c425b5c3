"""The faster GPU paths train like the plain one (issue 29, item 6): channels_last, bf16 autocast
and a compiled backbone, each against eager float32 (TF32 off) from the same weights over the same
batches.

Tolerance, stated: every loss finite, and the mean total loss of the last half of the steps within
10% of eager float32's. Every candidate anchor and RoI is sampled, so only the numbers can part the
paths.
"""

import copy

import pytest
import torch
from helpers import tiny_model, two_images

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="CUDA is not available (python -m pytest -m cuda tests on a GPU machine)",
    ),
]

DEVICE = "cuda"
STEPS = 30
LR = 0.003
# every candidate anchor and RoI sampled: no sampling left to part the paths, only their numbers
EVERY = (
    "model.rpn.batch_size_per_image=100000",
    "model.roi_head.batch_size_per_image=100000",
    "model.rpn.positive_fraction=1.0",
    "model.roi_head.positive_fraction=1.0",
)
TOLERANCE = 0.10


def _batches(n: int) -> list:
    """n fixed batches of two images each (two_images with its boxes shifted per batch)."""
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        images, targets = two_images()
        shift = float(i % 5)
        targets = [{**t, "boxes": t["boxes"] + shift} for t in targets]
        out.append((images, targets))
    return out


def _train(model, batches, amp: bool = False) -> list[float]:
    device = torch.device(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    model.train()
    curve = []
    for images, targets in batches:
        images = [img.to(device) for img in images]
        targets = [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
        ]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses, _ = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        curve.append(float(total.detach()))
    return curve


@pytest.fixture(scope="module")
def reference():
    """(initial weights, batches, the eager float32 curve)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_model(*EVERY).to(DEVICE)
    initial = copy.deepcopy(model.state_dict())
    batches = _batches(STEPS)
    return initial, batches, _train(model, batches)


@pytest.mark.parametrize("path", ["channels_last", "bf16", "compiled_backbone"])
def test_faster_paths_follow_the_float32_loss_curve(path, reference):
    initial, batches, eager = reference
    model = tiny_model(*EVERY).to(DEVICE)
    model.load_state_dict(initial)
    if path == "channels_last":
        model.use_channels_last()
    if path == "compiled_backbone":
        model.backbone.forward = torch.compile(model.backbone.forward)
    curve = _train(model, batches, amp=path == "bf16")
    assert all(torch.isfinite(torch.tensor(curve))), curve
    tail = STEPS // 2
    ours, theirs = sum(curve[tail:]) / len(curve[tail:]), sum(eager[tail:]) / len(eager[tail:])
    print(f"{path}: last-half mean loss {ours:.4f} vs eager float32 {theirs:.4f}")
    assert abs(ours - theirs) <= TOLERANCE * theirs, (path, curve, eager)
