#!/usr/bin/env python
"""Plot the box-regression losses and the beta schedules: ``python tools/plot_losses.py --out DIR``.

Writes ``DIR/losses.png`` (value and derivative of L1, L2, Smooth L1 with beta = 1 and 1/9, and
Balanced L1 over x = pred - target in [-3, 3]) and ``DIR/beta_schedules.png`` (beta over the
iterations of each Dynamic Smooth L1 schedule at the defaults of ``configs/base.yaml``; the adaptive
one on simulated targets whose spread shrinks).
"""

import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from detector.ablation.plots import save_figure
from detector.config import load_config, tool_parser
from detector.engine.outputs import check_output_folder
from detector.errors import run_tool
from detector.losses.dynamic import BETA_SCHEDULES, build_beta_schedule
from detector.losses.regression import balanced_l1_loss, l1_loss, l2_loss, smooth_l1_loss

CURVES = {
    "L1": l1_loss,
    "L2 (x²)": l2_loss,
    "Smooth L1, β=1": lambda x, t: smooth_l1_loss(x, t, beta=1.0),
    "Smooth L1, β=1/9": lambda x, t: smooth_l1_loss(x, t, beta=1 / 9),
    "Balanced L1 (α=0.5, γ=1.5, β=1)": balanced_l1_loss,
}
# the explicit schedules (adaptive is measured: simulated below)
SCHEDULES = [kind for kind, beta in BETA_SCHEDULES.items() if beta is not None]
PLOTS = ("losses.png", "beta_schedules.png")  # what --out receives


def plot_losses(path: Path) -> None:
    """Two panels: loss value and its derivative with respect to x."""
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    ax_value, ax_grad = Figure(figsize=(11, 4.2)).subplots(1, 2)
    for label, fn in CURVES.items():
        value = fn(x, torch.zeros_like(x))
        (grad,) = torch.autograd.grad(value.sum(), x)
        ax_value.plot(x.detach(), value.detach(), label=label)
        ax_grad.plot(x.detach(), grad, label=label)
    ax_value.set(
        xlabel="regression error x = pred − target",
        ylabel="loss",
        title="Loss value",
        ylim=(0, 4.5),
    )
    ax_grad.set(
        xlabel="regression error x = pred − target",
        ylabel="∂loss / ∂x",
        title="Derivative (L2 grows as 2x)",
        ylim=(-3.2, 3.2),
    )
    save_figure([ax_value, ax_grad], path)


def simulate_adaptive(roi_cfg, iters: int) -> list[float]:
    """Adaptive beta over a run of 4 images and 128 positives per iteration whose (tx, ty) spread
    shrinks linearly from 1.0 to 0.25."""
    schedule = build_beta_schedule(roi_cfg, iters)
    g = torch.Generator().manual_seed(0)
    betas = []
    for it in range(iters):
        # [P,4], spread 1 -> 0.25
        targets = torch.randn(128, 4, generator=g) * (1.0 - 0.75 * it / iters)
        betas.append(schedule.beta)
        schedule.step(it, schedule.observe(targets, 4))
    return betas


def roi_head_config(schedule: str):
    """base.yaml's RoI head with Dynamic Smooth L1 on the ``schedule`` of beta."""
    overrides = ["model.roi_head.box_loss.name=dynamic_smooth_l1"]
    overrides.append(f"model.roi_head.box_loss.schedule.type={schedule}")
    return load_config([], overrides).model.roi_head


def plot_beta_schedules(path: Path, iters: int) -> None:
    ax = Figure(figsize=(7, 4.2)).subplots()
    steps = range(iters + 1)
    for kind in SCHEDULES:
        schedule = build_beta_schedule(roi_head_config(kind), iters)
        ax.plot(list(steps), [schedule.value_at(it) for it in steps], label=kind)
    betas = simulate_adaptive(roi_head_config("adaptive"), iters)
    ax.plot(range(iters), betas, label="adaptive (simulated targets)", color="black")
    ax.set(
        xlabel="iteration",
        ylabel="Smooth L1 β",
        title="Dynamic Smooth L1: β schedules",
        ylim=(0, 1.05),
    )
    save_figure([ax], path)


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for losses.png and beta_schedules.png"
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=load_config([]).train.max_iters,
        help="iterations on the beta-schedule plot (default: train.max_iters of base.yaml)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="let --out replace plots that are there"
    )
    args = parser.parse_args(argv)
    out = check_output_folder(args.out, PLOTS, "--out", overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    plot_losses(out / PLOTS[0])
    plot_beta_schedules(out / PLOTS[1], args.iters)
    print(f"wrote {out / PLOTS[0]} and {out / PLOTS[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
