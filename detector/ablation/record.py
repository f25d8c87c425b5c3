"""A finished run's record: the small files an ablation keeps of it, committed beside its report.

``config.yaml``, ``metrics.jsonl`` and ``eval/metrics.json`` are the trainer's own files;
:data:`RECORD` holds what the report needs from the heavy ones (the true-positive IoUs and TIDE
numbers from ``eval/detections.json`` and the val data, the regression errors of
``final_errors.pt``) and the commits that trained the run (:data:`LAUNCHES`, one line per launch).
The report reads records only, so a clone without checkpoints, events or detections rebuilds it.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

from detector.ablation.localisation import run_localisation, tide_available
from detector.engine.outputs import write_output
from detector.errors import DetectorError, read_json

RECORD = "record.json"
# 2: TIDE at 0.75 and the realised label noise. A record of an older version is written again
# while its heavy files are there, else read as it is.
RECORD_VERSION = 2
RECORD_FILES = ("config.yaml", "metrics.jsonl", "eval/metrics.json", RECORD)
LAUNCHES = "launches.jsonl"
# bytes of RECORD_FILES per run; more is reported when the record is written
RECORD_BUDGET = 300_000
CHECKPOINT_CHOICES = ("last", "none")
# where the code that trains lives: a change there makes the checkout "dirty" (records do not)
CODE_PATHS = ("detector", "tools", "configs", "setup.cfg", "pyproject.toml")


class RecordError(DetectorError):
    """A run's record or final files cannot be read (exit 1)."""


def code_version(repo: Path) -> dict[str, Any]:
    """``{"commit": HEAD, "dirty": whether CODE_PATHS differ from it}`` of the checkout ``repo``
    (None where git cannot tell)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", *CODE_PATHS) if commit else None
    return {
        "commit": commit.strip() if commit else None,
        "dirty": None if status is None else bool(status.strip()),
    }


def note_launch(run_dir: Path, action: str, repo: Path) -> None:
    """Append this launch (its action, UTC time and code) to ``LAUNCHES``; a run trained from
    scratch starts it anew."""
    path = run_dir / LAUNCHES
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = json.dumps({"action": action, "time": when, **code_version(repo)}) + "\n"
    with open(path, "w" if action in ("train", "overwrite") else "a") as f:
        f.write(line)


def _rounded(values, digits: int = 5) -> list:
    return [round(float(v), digits) for v in values]


def label_noise(run_dir: Path) -> dict[str, Any] | None:
    """The label noise the run trained on, realised: the share of the non-crowd training boxes that
    differ from the clean ones (rebuilt from the run's config.yaml and data); None without noise."""
    from detector.config import load_config
    from detector.data.base import realised_noise
    from detector.data.build import build_dataset

    path = run_dir / "config.yaml"
    cfg = load_config([path])
    data = cfg.data
    if not data.label_noise > 0:
        return None
    noisy = build_dataset(cfg, "train", transforms=False).records
    clean = build_dataset(load_config([path], ["data.label_noise=0"]), "train", transforms=False)
    moved, total = realised_noise(clean.records, noisy)
    return {
        "kind": data.label_noise_kind,
        "seed": data.label_noise_seed,
        "nominal": data.label_noise,
        "boxes": total,
        "corrupted": moved,
        "realised": moved / total if total else None,
    }


def write_record(run_dir: Path, ground_truth: dict) -> dict[str, Any]:
    """Write ``RECORD`` of the finished run in ``run_dir`` from its heavy files and return it.
    ``ground_truth``: the caller's cache of val ground truth per data config. Without val data here
    the record says why, and has no TP IoUs; an unreadable final file is a :class:`RecordError`."""
    launches = run_dir / LAUNCHES
    record: dict[str, Any] = {"version": RECORD_VERSION}
    record["launches"] = read_json(launches, RecordError, lines=True) if launches.is_file() else []
    try:
        values, ious = run_localisation(run_dir, ground_truth)
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"{run_dir / 'eval' / 'detections.json'}: cannot be read ({exc})"
        ) from None
    except (DetectorError, OSError, ValueError) as exc:  # no val data here
        values, ious = {}, None
        record["localisation_error"] = f"{run_dir.name}: {exc}"
    if ious is None and "localisation_error" not in record:
        record["localisation_error"] = f"{run_dir.name}: no eval/detections.json"
    record["tp_ious"] = None if ious is None else _rounded(ious.tolist())
    try:
        record["label_noise"] = label_noise(run_dir)
    except (DetectorError, OSError, ValueError) as exc:  # no training data here
        record["label_noise"] = {"error": f"{run_dir.name}: {exc}"}
    record["tide"] = {k: v for k, v in values.items() if k.startswith("tide_")}
    if ious is not None and not tide_available():
        record["tide_error"] = (
            f"{run_dir.name}: tidecv was not importable when its record was written"
        )
    errors = run_dir / "final_errors.pt"
    record["pred_err"] = None
    if errors.is_file():
        import torch

        try:
            pred_err = torch.load(errors, weights_only=True).get("hist/pred_err")
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise RecordError(f"{errors}: cannot be read ({exc})") from None
        if pred_err is not None:
            record["pred_err"] = [_rounded(row) for row in pred_err.tolist()]
    write_output(run_dir / RECORD, json.dumps(record, separators=(",", ":")), overwrite=True)
    return record


def ensure_record(run_dir: Path, ground_truth: dict) -> dict[str, Any] | None:
    """The run's ``RECORD`` (None without one); written first when it is missing or of an older
    version and the heavy files are here."""
    path = run_dir / RECORD
    record = read_json(path, RecordError) if path.is_file() else None
    if record is not None and not isinstance(record, dict):
        raise RecordError(f"{path}: not a run record")
    old = record is None or record.get("version") != RECORD_VERSION
    heavy = [run_dir / "eval" / "detections.json", run_dir / "final_errors.pt"]
    if old and any(path.is_file() for path in heavy):
        record = write_record(run_dir, ground_truth)
    return record


def prune_run(run_dir: Path, keep: str) -> None:
    """A finished run keeps ``last.pth`` (``keep="last"``) or no checkpoint (``"none"``); a note
    when its record passes :data:`RECORD_BUDGET` bytes."""
    for path in sorted((run_dir / "checkpoints").glob("*.pth")):
        if keep == "none" or path.name != "last.pth":
            path.unlink()
    size = sum(
        (run_dir / name).stat().st_size for name in RECORD_FILES if (run_dir / name).is_file()
    )
    if size > RECORD_BUDGET:
        print(f"note: {run_dir.name}'s record is {size / 1e3:.0f} KB", flush=True)
