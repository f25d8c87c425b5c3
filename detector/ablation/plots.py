"""The plots of an ablation report. ``groups`` maps each config with a finished run to its
finished runs: seed -> the :func:`detector.ablation.report.read_run` results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detector.box_coder import DELTA_NAMES
from detector.evaluation.coco import IOU_THRESHOLDS

# the figures plot_all writes (tests/test_ablation.py checks the list against a report)
PLOTS = (
    "ap_vs_iou.png",
    "loss_curves.png",
    "ap_curve.png",
    "beta.png",
    "pred_err.png",
    "tp_iou.png",
)
# the bins of the true positives' IoU histogram (tp_iou.png, the report's tp_iou.csv)
TP_IOU_BINS = [0.5 + 0.025 * i for i in range(21)]
# the loss curves of loss_curves.png: the metrics.jsonl key -> its label
LOSS_CURVES = {"loss_box_reg": "loss_box_reg", "total_loss": "total loss"}
Groups = dict[str, dict[int, dict[str, Any]]]


def plot_all(groups: Groups, out: Path, baseline: str = "") -> None:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no display, no global figure state

    plot_ap_vs_iou(groups, out, baseline)
    axes = Figure(figsize=(12, 4.5)).subplots(1, 2)
    for group, results in groups.items():
        for ax, (key, label) in zip(axes, LOSS_CURVES.items()):
            # at the iterations every seed logged (their log periods may differ)
            series = [dict(_train_series(r, key)) for r in results.values()]
            iters = sorted(set.intersection(*(set(s) for s in series)))
            if iters:
                values = np.array([[s[it] for it in iters] for s in series])
                ax.plot(iters, values.mean(0), label=group)
            ax.set(xlabel="iteration", ylabel=label, title=f"{label} (mean over seeds)")
    save_figure(axes, out / "loss_curves.png", legend=bool(groups))

    ax = Figure(figsize=(7, 4.5)).subplots()
    for group, results in groups.items():
        iters = sorted(set.intersection(*(set(r["evals"]) for r in results.values())))
        if len(iters) > 1:
            values = np.array([[r["evals"][it] for it in iters] for r in results.values()]) * 100
            # the sample std, as the report's tables (one seed: no bar)
            std = values.std(0, ddof=1) if len(values) > 1 else None
            ax.errorbar(iters, values.mean(0), yerr=std, label=group, marker="o", capsize=3)
    ax.set(xlabel="iteration", ylabel="AP (%)", title="AP during training (mean ± std over seeds)")
    save_figure([ax], out / "ap_curve.png", legend=bool(groups))

    ax = Figure(figsize=(7, 4.5)).subplots()
    dynamic = False
    for color, (group, results) in enumerate(groups.items()):
        for i, r in enumerate(results.values()):
            points = _train_series(r, "beta", "beta_log")
            if points and len({b for _, b in points}) > 1:
                dynamic = True
                ax.plot(
                    *zip(*points), label=group if i == 0 else None, color=f"C{color}", alpha=0.8
                )
    ax.set(
        xlabel="iteration",
        ylabel="beta",
        title="Smooth L1 beta during training (dynamic runs, every seed)",
    )
    save_figure([ax], out / "beta.png", dynamic, "no run with a changing beta in this ablation")

    axes = Figure(figsize=(14, 4)).subplots(1, 4, sharey=True)
    errors = _pooled(groups, "pred_err")
    for i, coord in enumerate(DELTA_NAMES):
        data = [errs[:, i].clamp(min=1e-4).log10().numpy() for errs in errors.values()]
        if data:
            axes[i].boxplot(data, showfliers=False)
            axes[i].set_xticks(
                range(1, len(errors) + 1), list(errors), rotation=45, ha="right", fontsize=8
            )
        axes[i].set(title=f"|pred − target| {coord}", ylabel="log10 error" if i == 0 else None)
    axes[0].figure.suptitle(
        "Regression error on the positive RoIs of each run's last training minibatch (pooled "
        "over seeds; clamped at 1e-4; whiskers 1.5 IQR, no outliers drawn)"
    )
    save_figure(axes, out / "pred_err.png", legend=False)

    ax = Figure(figsize=(7, 4.5)).subplots()
    pooled = _pooled(groups, "tp_ious")
    for group, ious in pooled.items():
        # the counts of the report's tp_iou.csv, as a density
        density = np.array(tp_iou_counts(ious)) / len(ious) / np.diff(TP_IOU_BINS)
        ax.stairs(density, TP_IOU_BINS, linewidth=1.5, label=group)
    ax.set(
        xlabel="IoU with the matched ground truth",
        ylabel="density",
        title="IoU of true-positive detections (score >= 0.05, all seeds)",
    )
    empty = "no run with eval/detections.json and its val data"
    save_figure([ax], out / "tp_iou.png", bool(pooled), empty)


def tp_iou_counts(ious) -> list[int]:
    """The true positives' IoUs [T] (float32) per bin of :data:`TP_IOU_BINS`: bin i holds [edge i,
    edge i+1), IoU 1.0 the last."""
    import torch

    edges = torch.tensor(TP_IOU_BINS, dtype=ious.dtype)
    index = (torch.bucketize(ious, edges, right=True) - 1).clamp(0, len(edges) - 2)
    return torch.bincount(index, minlength=len(edges) - 1).tolist()


def plot_ap_vs_iou(groups: Groups, out: Path, baseline: str) -> None:
    """AP at each IoU threshold, mean and 95% t interval over seeds (uncorrected); beside it each
    config's paired difference to ``baseline`` by seed, with its 95% t interval."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no display, no global figure state
    from scipy import stats

    def curve(run) -> list[float] | None:
        # a curve with an undefined AP (COCO's -1: no ground truth) is left out
        values = run["metrics"].get("AP_per_iou")
        return values if values and min(values) >= 0 else None

    def mean_ci(values):
        values = np.array(values)
        mean = values.mean(0)
        # one seed: no interval (a zero-width bar would look like certainty)
        if len(values) < 2:
            return mean, None
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(0, ddof=1) / np.sqrt(len(values))
        return mean, half

    thresholds = np.array(IOU_THRESHOLDS)
    axes = Figure(figsize=(13, 4.5)).subplots(1, 2)
    base = groups.get(baseline, {})
    for group, results in groups.items():
        curves = [curve(r) for r in results.values() if curve(r)]
        if curves:
            mean, half = mean_ci(np.array(curves) * 100)
            axes[0].errorbar(thresholds, mean, yerr=half, label=group, marker="o", capsize=3)
        if group == baseline:
            continue
        pairs = [
            np.subtract(curve(r), curve(base[seed]))
            for seed, r in results.items()
            if seed in base and curve(r) and curve(base[seed])
        ]
        if pairs:
            mean, half = mean_ci(np.array(pairs) * 100)
            axes[1].errorbar(thresholds, mean, yerr=half, label=group, marker="o", capsize=3)
    axes[0].set(
        xlabel="IoU threshold", ylabel="AP (%)", title="AP vs IoU (mean, 95% CI over seeds)"
    )
    axes[1].axhline(0, color="k", linewidth=0.8)
    axes[1].set(
        xlabel="IoU threshold",
        ylabel="AP difference (points)",
        title=f"paired difference to {baseline or 'the baseline'} (95% CI, uncorrected)",
    )
    save_figure(list(axes), out / "ap_vs_iou.png", legend=bool(groups))


def _train_series(run: dict[str, Any], key: str, series: str = "train") -> list[tuple[int, float]]:
    """(iteration, ``key``) at each record of ``run[series]`` that has it (``"beta_log"``: the beta
    trajectory)."""
    return [(r["iter"], r[key]) for r in run[series] if r.get(key) is not None]


def _pooled(groups: Groups, key: str) -> dict:
    """Per config, its runs' non-empty ``key`` tensors concatenated (or left out)."""
    import torch

    pooled = {
        g: [r[key] for r in rs.values() if r.get(key) is not None and len(r[key])]
        for g, rs in groups.items()
    }
    return {g: torch.cat(tensors) for g, tensors in pooled.items() if tensors}


def save_figure(axes, path: Path, legend: bool = True, empty: str = "") -> None:
    """Grid (and legend) on each of ``axes``, then their figure to ``path`` as a PNG; without a
    legend, ``empty`` is written in the middle of the first."""
    for ax in axes:
        ax.grid(alpha=0.3)
        # an axis with nothing labelled (e.g. a config's runs logged no evaluation) gets none
        if legend and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if empty and not legend:
        axes[0].text(0.5, 0.5, empty, ha="center", transform=axes[0].transAxes)
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(path, dpi=120)
