"""Regression losses against torch.nn.functional / torchvision.ops, closed forms, gradients, the
registry."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from detector.config import ConfigError, load_config
from detector.losses.regression import (
    LOSSES,
    BoxLoss,
    balanced_l1_loss,
    build_box_loss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    l2_loss,
    smooth_l1_loss,
    weight_reduce_loss,
)

IOU_LOSSES = {"iou": iou_loss, "giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def deltas(n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) * scale


def boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    return torch.cat((xy, xy + wh), dim=1)  # [N,4] xyxy, overlapping and disjoint pairs


# -------------------------------------------------------------- delta losses vs torch.nn.functional


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.5, 2.0])
def test_smooth_l1_matches_torch(beta):
    pred, target = deltas(64, 0), deltas(64, 1)
    expected = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta), expected)
    # Huber(delta=beta) = beta * SmoothL1(beta)
    huber = F.huber_loss(pred, target, reduction="none", delta=beta)
    torch.testing.assert_close(beta * smooth_l1_loss(pred, target, beta), huber)


def test_l1_and_l2_match_torch():
    pred, target = deltas(64, 2), deltas(64, 3)
    torch.testing.assert_close(l1_loss(pred, target), F.l1_loss(pred, target, reduction="none"))
    torch.testing.assert_close(l2_loss(pred, target), F.mse_loss(pred, target, reduction="none"))


def test_l2_gradient_is_2x_and_smooth_l1_gradient_is_bounded():
    x = torch.linspace(-5, 5, 101, requires_grad=True)
    target = torch.zeros(101)
    (g_l2,) = torch.autograd.grad(l2_loss(x, target).sum(), x)
    torch.testing.assert_close(g_l2, 2 * x.detach())
    for beta in (1.0, 1 / 9, 0.0):
        (g,) = torch.autograd.grad(smooth_l1_loss(x, target, beta).sum(), x)
        assert g.abs().max() <= 1.0 + 1e-6
    (g,) = torch.autograd.grad(smooth_l1_loss(x, target, 1.0).sum(), x)
    inside = x.detach().abs() < 1
    torch.testing.assert_close(g[inside], x.detach()[inside])  # quadratic part: x / beta


@pytest.mark.parametrize("beta", [0.0, 1e-7, 9e-6])
def test_small_beta_is_exact_l1_with_finite_gradients(beta):
    pred = torch.tensor([-1.0, -1e-6, 0.0, 1e-8, 0.3, 2.0], requires_grad=True)
    target = torch.zeros(6)
    loss = smooth_l1_loss(pred, target, beta)
    torch.testing.assert_close(loss, pred.detach().abs())
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1


def test_smooth_l1_tends_to_l1():
    pred, target = deltas(32, 4), deltas(32, 5)
    gap = (smooth_l1_loss(pred, target, 2e-5) - l1_loss(pred, target)).abs().max()
    assert gap <= 0.5 * 2e-5 + 1e-6  # the two differ by at most beta / 2


# ---------------------------------------------------------------- Balanced L1


def balanced_l1_reference(x: float, alpha=0.5, gamma=1.5, beta=1.0) -> float:
    b = math.e ** (gamma / alpha) - 1
    x = abs(x)
    if x < beta:
        return alpha / b * (b * x + 1) * math.log(b * x / beta + 1) - alpha * x
    return gamma * x + gamma / b - alpha * beta


@pytest.mark.parametrize("alpha, gamma, beta", [(0.5, 1.5, 1.0), (0.3, 1.0, 0.5), (1.0, 2.0, 2.0)])
def test_balanced_l1_closed_form_and_continuity(alpha, gamma, beta):
    xs = [-3.0, -1.2, -0.4, 0.0, 0.01, 0.25, 0.9, 1.7, 3.0]
    got = balanced_l1_loss(
        torch.tensor(xs, dtype=torch.float64),
        torch.zeros(len(xs), dtype=torch.float64),
        alpha,
        gamma,
        beta,
    )
    torch.testing.assert_close(
        got,
        torch.tensor(
            [balanced_l1_reference(x, alpha, gamma, beta) for x in xs], dtype=torch.float64
        ),
    )
    at = torch.tensor([beta - 1e-9, beta + 1e-9], dtype=torch.float64)
    left, right = balanced_l1_loss(at, torch.zeros(2, dtype=torch.float64), alpha, gamma, beta)
    assert abs(left - right) < 1e-6  # the two pieces meet at |x| = beta


def test_balanced_l1_gradient():
    x = torch.tensor([0.0, 1.0 - 1e-6, 1.0 + 1e-6, 2.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(balanced_l1_loss(x, torch.zeros_like(x)).sum(), x)
    assert grad[0] == 0  # zero at zero error
    # continuous at beta=1; gamma outside
    assert abs(grad[1] - grad[2]) < 1e-4 and abs(grad[2] - 1.5) < 1e-9
    small = torch.tensor([0.1], requires_grad=True)
    (g_small,) = torch.autograd.grad(balanced_l1_loss(small, torch.zeros(1)).sum(), small)
    # alpha log(b x + 1)
    assert g_small.item() == pytest.approx(0.5 * math.log((math.e**3 - 1) * 0.1 + 1))
    assert g_small.item() > 0.1  # inliers get more gradient than under Smooth L1 (x / beta)


# ---------------------------------------------------------------- IoU family vs torchvision.ops


def test_iou_losses_match_torchvision():
    pred, target = boxes(128, 6), boxes(128, 7)
    torch.testing.assert_close(iou_loss(pred, target), 1 - box_iou(pred, target).diagonal())
    torch.testing.assert_close(
        giou_loss(pred, target), generalized_box_iou_loss(pred, target, reduction="none")
    )
    torch.testing.assert_close(
        diou_loss(pred, target), distance_box_iou_loss(pred, target, reduction="none")
    )
    torch.testing.assert_close(
        ciou_loss(pred, target), complete_box_iou_loss(pred, target, reduction="none")
    )


def test_iou_losses_gradients_match_torchvision():
    pred, target = boxes(32, 8), boxes(32, 9)
    refs = {
        "giou": generalized_box_iou_loss,
        "diou": distance_box_iou_loss,
        "ciou": complete_box_iou_loss,
    }
    for name, ref in refs.items():
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        IOU_LOSSES[name](p1, target).sum().backward()
        ref(p2, target, reduction="sum").backward()
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


@pytest.mark.parametrize("name", sorted(IOU_LOSSES))
def test_iou_losses_degenerate_inputs_are_finite(name):
    pred = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # a point
            [5.0, 5.0, 5.0, 9.0],  # zero width
            [0.0, 0.0, 1.0, 1.0],  # far from its target
            [4.0, 4.0, 2.0, 2.0],  # inverted
            [1.0, 1.0, 3.0, 3.0],  # identical to its target
            [0.0, 0.0, 0.0, 0.0],  # a point on a point
        ],
        requires_grad=True,
    )
    target = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],
            [4.0, 4.0, 8.0, 8.0],
            [100.0, 100.0, 110.0, 120.0],
            [0.0, 0.0, 3.0, 3.0],
            [1.0, 1.0, 3.0, 3.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    loss = IOU_LOSSES[name](pred, target)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    assert abs(loss[4]) < 1e-5 and (loss >= -1e-6).all()
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert torch.isfinite(grad).all()


def test_giou_pulls_disjoint_boxes_together():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[10.0, 10.0, 12.0, 12.0]])
    (grad,) = torch.autograd.grad(giou_loss(pred, target).sum(), pred)
    assert grad[0, 2] < 0 and grad[0, 3] < 0  # x2, y2 move towards the target
    assert iou_loss(pred, target).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- reduction


def test_weight_reduce_loss_semantics():
    loss = torch.arange(8.0).view(2, 4)
    weight = torch.tensor([[1.0], [0.0]])
    assert weight_reduce_loss(loss).item() == pytest.approx(3.5)
    assert weight_reduce_loss(loss, reduction="sum").item() == pytest.approx(28.0)
    torch.testing.assert_close(weight_reduce_loss(loss, weight, reduction="none"), loss * weight)
    assert weight_reduce_loss(loss, weight, reduction="sum").item() == pytest.approx(6.0)
    assert weight_reduce_loss(loss, weight, avg_factor=3).item() == pytest.approx(2.0)
    assert weight_reduce_loss(loss, avg_factor=torch.tensor(4.0)).item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        weight_reduce_loss(loss, reduction="sum", avg_factor=2)
    with pytest.raises(ValueError, match="reduction must be"):
        weight_reduce_loss(loss, reduction="avg")
    assert weight_reduce_loss(torch.zeros(0, 4)).item() == 0  # empty mean is 0, not NaN
    assert weight_reduce_loss(torch.zeros(0, 4), avg_factor=0).item() == 0


# ---------------------------------------------------------------- BoxLoss and the registry


def test_build_from_config_sections():
    cfg = load_config(
        [], ["model.roi_head.box_loss.name=balanced_l1", "model.roi_head.box_loss.alpha=0.3"]
    )
    loss = build_box_loss(cfg.model.roi_head.box_loss)
    assert (loss.name, loss.on_boxes, loss.beta) == ("balanced_l1", False, 1.0)
    assert loss.params == {"alpha": 0.3, "gamma": 1.5}
    rpn = build_box_loss(cfg.model.rpn.box_loss)
    assert rpn.name == "smooth_l1" and rpn.beta == pytest.approx(1 / 9)
    rpn_cfg = load_config(
        [], ["model.rpn.box_loss.name=balanced_l1", "model.rpn.box_loss.gamma=2"]
    ).model.rpn.box_loss
    # the RPN's own section, base.yaml's defaults
    assert build_box_loss(rpn_cfg).params == {"alpha": 0.5, "gamma": 2.0}
    with pytest.raises(ConfigError, match=r"model\.rpn\.box_loss\.alpha.*must be > 0"):
        load_config([], ["model.rpn.box_loss.alpha=0"])
    caffe = build_box_loss(
        load_config([], ["model.roi_head.box_loss.sigma=3"]).model.roi_head.box_loss
    )
    assert caffe.beta == pytest.approx(1 / 9)
    assert build_box_loss({"name": "giou"}).on_boxes and build_box_loss({"name": "l2"}).beta is None


def test_box_loss_sum_weight_avg_factor():
    pred, target = deltas(6, 10), deltas(6, 11)
    loss = build_box_loss({"name": "smooth_l1", "beta": 0.5, "sigma": None})
    elementwise = F.smooth_l1_loss(pred, target, reduction="none", beta=0.5)
    torch.testing.assert_close(loss(pred, target), elementwise.sum())
    torch.testing.assert_close(
        loss(pred, target, avg_factor=512), elementwise.sum() / 512, rtol=1e-5, atol=1e-7
    )
    weight = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # [P] broadcast over the 4 deltas
    torch.testing.assert_close(loss(pred, target, weight=weight), elementwise[::2].sum())
    torch.testing.assert_close(
        loss(pred, target, beta=2.0), F.smooth_l1_loss(pred, target, reduction="sum", beta=2.0)
    )
    with pytest.raises(ValueError, match="has no beta"):
        build_box_loss({"name": "l1"})(pred, target, beta=0.5)
    with pytest.raises(ValueError, match=r"must both be \[P,4\]"):
        loss(pred, target[:3])


def test_box_loss_iou_weight_and_half_precision():
    pred, target = boxes(8, 12), boxes(8, 13)
    loss = build_box_loss({"name": "giou"})
    weight = torch.ones(8, 4)
    expected = generalized_box_iou_loss(pred, target, reduction="sum")
    torch.testing.assert_close(loss(pred, target, weight=weight), expected)
    out = loss(pred.bfloat16(), target)
    assert out.dtype == torch.float32


def inputs_for(loss: BoxLoss, n: int):
    if loss.on_boxes:
        return boxes(n, 20).requires_grad_(), boxes(n, 21)
    return deltas(n, 20).requires_grad_(), deltas(n, 21)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("n", [10, 0])
def test_every_registered_loss(name, n):
    loss = build_box_loss({"name": name, "beta": 1.0, "sigma": None, "alpha": 0.5, "gamma": 1.5})
    pred, target = inputs_for(loss, n)
    value = loss(pred, target, avg_factor=max(n, 1))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert pred.grad is not None and pred.grad.shape == (n, 4) and torch.isfinite(pred.grad).all()
    if n == 0:
        assert value.item() == 0
    else:
        assert value.item() > 0
        elementwise = loss.fn(
            pred.detach(), target, **({"beta": loss.beta} if loss.beta else {}), **loss.params
        )
        assert elementwise.shape == ((n,) if loss.on_boxes else (n, 4))
    empty_sum = loss(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4))
    assert empty_sum.item() == 0
