"""Loss ablations: plan (config × sweep value × seed) runs, run them, and report.

Every run of an ablation shares the data, schedule and budget (the same configs and overrides); only the loss
config, the swept value and the seed differ. Runs live in ``<out>/runs/<name>`` (one TensorBoard log directory
for all: the HParams tab compares them); a run whose ``eval/metrics.json`` exists is reused, one with a
``checkpoints/last.pth`` resumes. The report is ``summary.md``, ``summary.csv`` and PNG plots.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.box_coder import DELTA_NAMES

REPO = Path(__file__).resolve().parent.parent
SUMMARY_METRICS = ("AP", "AP50", "AP75", "AP90", "APs", "APm", "APl")


@dataclass
class Run:
    """One (config, sweep value, seed) training run."""
    group: str                   # what the report averages over seeds: "smoothl1" or "smoothl1 beta=0.5"
    seed: int
    cfgs: list[str]
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.group.replace(' ', '_').replace('=', '')}-seed{self.seed}"


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"model.roi_head.box_loss.beta=0.05,0.11,0.5"`` -> (key, ["0.05", "0.11", "0.5"])."""
    key, sep, values = text.partition("=")
    if not sep or not values:
        raise ValueError(f"--sweep {text!r}: expected key=v1,v2,... e.g. model.roi_head.box_loss.beta=0.11,1.0")
    return key, [v.strip() for v in values.split(",") if v.strip()]


def plan_runs(loss_cfgs: list[str], data_cfgs: list[str], seeds: int, overrides: list[str],
              sweep: str | None = None) -> list[Run]:
    """Every (loss config, sweep value, seed); seeds are 0..seeds-1 (the ``seed`` key)."""
    sweep_key, sweep_values = parse_sweep(sweep) if sweep else (None, [None])
    runs = []
    for cfg in loss_cfgs:
        stem = Path(cfg).stem
        for value in sweep_values:
            group = stem if value is None else f"{stem} {sweep_key.split('.')[-1]}={value}"
            extra = [] if value is None else [f"{sweep_key}={value}"]
            for seed in range(seeds):
                runs.append(Run(group, seed, [cfg, *data_cfgs], [*overrides, *extra, f"seed={seed}"]))
    return runs


def run_state(run_dir: Path) -> str:
    if (run_dir / "eval" / "metrics.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.pth").is_file():
        return "partial"
    return "new"


def execute(run: Run, out: Path, device_env: dict[str, str] | None = None, quiet: bool = True) -> Path:
    """Train one run in a subprocess (a crash stays inside it); reuse or resume what is there."""
    run_dir = out / "runs" / run.name
    state = run_state(run_dir)
    if state == "done":
        return run_dir
    cmd = [sys.executable, str(REPO / "tools" / "train.py")]
    for cfg in run.cfgs:
        cmd += ["--cfg", cfg]
    cmd += [*run.overrides, f"output_dir={run_dir}"]
    if state == "partial":
        cmd.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(device_env or {}), "PYTHONPATH": str(REPO)}
    with open(run_dir / "train.log", "a") as log:
        result = subprocess.run(cmd, env=env, stdout=log if quiet else None, stderr=subprocess.STDOUT if quiet
                                else None)
    if result.returncode != 0:
        raise RuntimeError(f"run {run.name} failed (exit {result.returncode}); see {run_dir / 'train.log'}")
    return run_dir


def run_all(runs: list[Run], out: Path, jobs: int = 1, quiet: bool = True) -> list[str]:
    """Run everything, ``jobs`` at a time (each job pinned to one GPU when there are several, else given
    an equal share of the CPU cores);
    return the error messages of the runs that failed (the others still finish)."""
    errors: list[str] = []
    gpus = _visible_gpus()

    def job(indexed: tuple[int, Run]) -> None:
        i, run = indexed
        env = None
        if jobs > 1 and gpus:
            env = {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}
        elif jobs > 1:  # CPU: share the cores instead of oversubscribing them
            env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
        try:
            execute(run, out, env, quiet)
            print(f"[{i + 1}/{len(runs)}] {run.name}: {run_state(out / 'runs' / run.name)}", flush=True)
        except RuntimeError as exc:
            errors.append(str(exc))
            print(f"[{i + 1}/{len(runs)}] {exc}", flush=True)

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(job, enumerate(runs)))
    else:
        for item in enumerate(runs):
            job(item)
    return errors


def _visible_gpus() -> list[str]:
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def read_run(run_dir: Path) -> dict[str, Any]:
    """Final metrics, training curves and end-of-training errors of one finished run."""
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["type"] == "train"]
    tail = train[-max(1, len(train) // 10):]
    speeds = [r["images_per_s"] for r in train[1:] or train if r.get("images_per_s")]
    errors = None
    if (run_dir / "final_errors.pt").is_file():
        import torch
        errors = torch.load(run_dir / "final_errors.pt", weights_only=True).get("hist/pred_err")
    return {
        "metrics": metrics,
        "curve": [(r["iter"], r.get("loss_box_reg"), r.get("total_loss"), r.get("beta")) for r in train],
        "final_loss_box_reg": statistics.fmean(r["loss_box_reg"] for r in tail if r.get("loss_box_reg") is not None)
        if any(r.get("loss_box_reg") is not None for r in tail) else float("nan"),
        "images_per_s": statistics.fmean(speeds) if speeds else float("nan"),
        "pred_err": errors,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and v == v and v >= 0]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[Run], out: Path, title: str = "", command: str = "") -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and the plots; return the summary rows (one per group)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        run_dir = out / "runs" / run.name
        if run_state(run_dir) == "done":
            groups.setdefault(run.group, []).append(read_run(run_dir))
    rows = []
    for group, results in groups.items():
        row: dict[str, Any] = {"config": group, "seeds": len(results)}
        for key in SUMMARY_METRICS:
            row[key] = _mean_std([r["metrics"].get(key) for r in results])
        row["loss_box_reg"] = _mean_std([r["final_loss_box_reg"] for r in results])
        row["images_per_s"] = _mean_std([r["images_per_s"] for r in results])
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    columns = [*SUMMARY_METRICS, "loss_box_reg", "images_per_s"]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "seeds"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")])
        for row in rows:
            writer.writerow([row["config"], row["seeds"]] + [f"{v:.6g}" for c in columns for v in row[c]])
    lines = [f"# {title or 'Loss ablation'}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += ["AP numbers are COCO-style (pycocotools), in percent, mean ± std over seeds; loss_box_reg is the mean "
              "over the last 10% of logged iterations; images/s is training throughput.", "",
              "| config | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for row in rows:
        cells = [_fmt(row[c], percent=c in SUMMARY_METRICS) for c in columns]
        lines.append(f"| {row['config']} | {row['seeds']} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot_all(groups, out)
    return rows


def _fmt(mean_std: tuple[float, float], percent: bool) -> str:
    mean, std = mean_std
    if mean != mean:
        return "n/a"
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def plot_all(groups: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """ap_vs_iou.png, loss_curves.png, beta.png, pred_err.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    thresholds = np.arange(0.50, 0.96, 0.05)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, results in groups.items():
        curves = np.array([r["metrics"]["AP_per_iou"] for r in results if r["metrics"].get("AP_per_iou")]) * 100
        if len(curves):
            ax.errorbar(thresholds, curves.mean(0), yerr=curves.std(0), label=group, marker="o", capsize=3)
    ax.set(xlabel="IoU threshold", ylabel="AP (%)", title="AP vs IoU threshold (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ap_vs_iou.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for group, results in groups.items():
        for col, (ax, label) in enumerate(zip(axes, ("loss_box_reg", "total loss"))):
            series = [[(it, v[col]) for it, *v in r["curve"] if v[col] is not None] for r in results]
            iters = [it for it, _ in series[0]]
            values = np.array([[v for _, v in s][: len(iters)] for s in series if len(s) >= len(iters)])
            if len(values):
                ax.plot(iters, values.mean(0), label=group)
            ax.set(xlabel="iteration", ylabel=label, title=f"{label} (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    dynamic = False
    for group, results in groups.items():
        for i, r in enumerate(results):
            points = [(it, b) for it, _, _, b in r["curve"] if b is not None]
            if points and len({b for _, b in points}) > 1:
                dynamic = True
                ax.plot(*zip(*points), label=group if i == 0 else None, color=f"C{list(groups).index(group)}",
                        alpha=0.8)
    if not dynamic:
        ax.text(0.5, 0.5, "no run with a changing beta in this ablation", ha="center", transform=ax.transAxes)
    ax.set(xlabel="iteration", ylabel="beta", title="Smooth L1 beta during training (dynamic runs, every seed)")
    ax.grid(alpha=0.3)
    if dynamic:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "beta.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(14, 4), sharey=True)
    names = [g for g, rs in groups.items() if any(r["pred_err"] is not None and len(r["pred_err"]) for r in rs)]
    for i, coord in enumerate(DELTA_NAMES):
        data = []
        for group in names:
            import torch
            errs = [r["pred_err"][:, i] for r in groups[group] if r["pred_err"] is not None and len(r["pred_err"])]
            data.append(torch.cat(errs).clamp(min=1e-4).log10().numpy())
        if data:
            axes[i].boxplot(data, showfliers=False)
            axes[i].set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right", fontsize=8)
        axes[i].set(title=f"|pred − target| {coord}", ylabel="log10 error" if i == 0 else None)
        axes[i].grid(alpha=0.3)
    fig.suptitle("Distribution of the regression error on positive RoIs at the end of training")
    fig.tight_layout()
    fig.savefig(out / "pred_err.png", dpi=120)
    plt.close(fig)
