"""One rule for every file a tool writes (detector/engine/outputs.py, docs/runs.md "Outputs"): a
file that is there is replaced only with --overwrite, an output that is an input is refused, and
a path is resolved (symlinks, ..) before it is checked, so a run's own files are never written by
another tool unasked. Each tool that writes is run once as the user runs it, a subprocess (issue
28, cases 1 and 6); its other calls run its main in this process (helpers.run_tool_main)."""

import json
from pathlib import Path

import pytest
import torch
from helpers import one_error_line, run_tool_main, run_tool_process, tiny_run_overrides

from detector.config import load_config
from detector.data.build import build_dataset
from detector.engine.outputs import write_eval_files
from detector.engine.runs import RUN_CONFIG_HEADER
from detector.modeling.detector import build_detector

COCO = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "height": 20, "width": 30},
        {"id": 2, "file_name": "b.jpg", "height": 20, "width": 30},
    ],
    "categories": [{"id": 1, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 2, 5, 5]},
    ],
}


def unfinished_run(run: Path) -> Path:
    """A training run's folder before its final evaluation: its config.yaml and metrics.jsonl, no
    eval/."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(RUN_CONFIG_HEADER + load_config([]).to_yaml())
    (run / "metrics.jsonl").write_text('{"type": "train", "iter": 1}\n')
    return run


def test_make_subset_never_replaces_its_input_or_a_file_unasked(tmp_path):
    ann = tmp_path / "instances_train.json"
    ann.write_text(json.dumps(COCO))
    original = ann.read_bytes()
    (tmp_path / "link.json").symlink_to(ann)
    # an output that is an input, by its name or through a link: refused even with --overwrite
    for out, flags in (
        (ann, []),
        (ann, ["--overwrite"]),
        (tmp_path / "link.json", ["--overwrite"]),
    ):
        proc = run_tool_main("make_subset", "--format", "coco", "--ann", ann, "--out", out, *flags)
        assert proc.returncode == 2
        assert "an input of this command" in one_error_line(proc)
        assert ann.read_bytes() == original
    theirs = tmp_path / "other.json"
    theirs.write_text("a user's file\n")
    args = ["--format", "coco", "--ann", ann, "--out", theirs, "--max-images", "1"]
    proc = run_tool_process("make_subset", *args)
    assert proc.returncode == 2 and "already exists" in one_error_line(proc)
    assert "--overwrite" in proc.stderr and theirs.read_text() == "a user's file\n"
    assert run_tool_main("make_subset", *args, "--overwrite").returncode == 0
    assert len(json.loads(theirs.read_text())["images"]) == 1


def test_dump_proposals_never_replaces_a_file_unasked(tiny_data, tmp_path):
    data = tiny_run_overrides(tiny_data, tmp_path / "unused")
    cfg = load_config([], data)
    classes = build_dataset(cfg, "val", transforms=False).classes
    torch.manual_seed(0)
    ckpt = tmp_path / "last.pth"
    torch.save({"model": build_detector(cfg, num_classes=len(classes) - 1).state_dict()}, ckpt)
    metrics = unfinished_run(tmp_path / "run") / "eval" / "metrics.json"  # a run's result
    metrics.parent.mkdir()
    metrics.write_text('{"AP": 0.5}')
    argv = ["--cfg", "base.yaml", "--ckpt", ckpt, "--split", "val", *data]
    proc = run_tool_process("dump_proposals", *argv, "--out", metrics)
    assert proc.returncode == 2 and str(metrics) in one_error_line(proc)
    assert metrics.read_text() == '{"AP": 0.5}'
    proc = run_tool_main("dump_proposals", *argv, "--out", ckpt, "--overwrite")
    assert proc.returncode == 2 and "an input of this command" in one_error_line(proc)
    mine = tmp_path / "proposals.json"
    mine.write_text("an earlier dump")
    proc = run_tool_main("dump_proposals", *argv, "--out", mine)
    assert proc.returncode == 2 and "already exists" in one_error_line(proc)
    assert run_tool_main("dump_proposals", *argv, "--out", mine, "--overwrite").returncode == 0
    assert len(json.loads(mine.read_text())) == 4  # the val images
    assert not list(tmp_path.glob(".*.tmp"))


def test_eval_out_is_resolved_before_it_is_checked(tiny_data, tmp_path):
    """``--out run/eval/x/..`` and a link to ``run/eval`` are the run's eval folder: metrics.json
    there would mark the unfinished run finished, for training and for the ablation runner."""
    run = unfinished_run(tmp_path / "run")
    (run / "eval" / "x").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run / "eval")
    data = tiny_run_overrides(tiny_data, tmp_path / "unused")
    cfg = load_config([], data)
    dataset = build_dataset(cfg, "val", transforms=False)
    dets = tmp_path / "dets.json"
    records = [dataset.get_image_info(i) for i in range(len(dataset))]
    cat = dataset.label_to_cat_id[1]
    dets.write_text(
        json.dumps(
            [
                {"image_id": r["image_id"], "category_id": cat, "bbox": [1, 1, 9, 9], "score": 0.5}
                for r in records
            ]
        )
    )
    for out in (run / "eval" / "x" / "..", tmp_path / "link"):
        proc = run_tool_main("eval", "--cfg", "base.yaml", "--dets", dets, "--out", out, *data)
        assert proc.returncode == 2
        assert f"is the eval folder of the training run {run}" in one_error_line(proc)
        assert not (run / "eval" / "metrics.json").exists()


def test_plot_losses_never_replaces_a_plot_unasked(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "losses.png").write_bytes(b"my own figure")
    proc = run_tool_process("plot_losses", "--out", tmp_path / "plots", "--iters", "50")
    assert proc.returncode == 2 and "already holds losses.png" in one_error_line(proc)
    assert (tmp_path / "plots" / "losses.png").read_bytes() == b"my own figure"
    assert not (tmp_path / "plots" / "beta_schedules.png").exists()


def test_make_synthetic_never_writes_into_a_folder_of_other_content(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    argv = ["--root", tmp_path / "data", "--num-train", "1", "--num-val", "1"]
    proc = run_tool_process("make_synthetic", *argv)
    assert proc.returncode == 1 and str(tmp_path / "data") in one_error_line(proc)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["notes.txt"]


def test_benchmark_json_never_replaces_a_file_unasked(tmp_path):
    mine = tmp_path / "bench.json"
    mine.write_text('{"mine": true}')
    proc = run_tool_process("benchmark", "--device", "cpu", "--iters", "1", "--json", mine)
    assert proc.returncode == 2 and "already exists" in one_error_line(proc)
    assert mine.read_text() == '{"mine": true}'


def test_download_data_never_extracts_over_a_dataset_folder_unasked(tmp_path):
    """Refused before any download: the test never touches the network."""
    mine = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    mine.parent.mkdir(parents=True)
    mine.write_text("<annotation>my fix</annotation>")
    proc = run_tool_process("download_data", "voc2012", "voc2007", "--root", tmp_path)
    assert proc.returncode == 2 and "VOC2007 is there" in one_error_line(proc)
    assert mine.read_text() == "<annotation>my fix</annotation>"
    assert not (tmp_path / "VOCdevkit" / "VOC2012").exists()  # nothing began


def test_eval_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """eval/metrics.json marks a run finished: a write of it that fails (a full disk) leaves the
    earlier file as it was, never a truncated one, and no temporary file."""
    result = {"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    write_eval_files(tmp_path, {"AP": 0.5}, [result], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.json", "metrics.json"]
    write_text = Path.write_text

    def full_disk(self, text):
        if "metrics" in self.name:
            write_text(self, text[:3])
            raise OSError(28, "No space left on device")
        return write_text(self, text)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="metrics.json"):
        write_eval_files(tmp_path, {"AP": 0.7}, [result] * 2, overwrite=True)
    monkeypatch.undo()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"AP": 0.5}
    assert len(json.loads((tmp_path / "detections.json").read_text())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.json", "metrics.json"]
