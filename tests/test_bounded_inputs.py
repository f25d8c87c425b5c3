"""Bounded inputs (issue 28, cases 7, 8 and 11): YAML aliases are refused in config files and
overrides (an alias bomb would expand to gigabytes), deeply nested JSON and the other malformed
inputs of the issue are one line naming the file and field (each tool's main or, for training and
one eval, the tool as a subprocess), and a checkpoint pickled under numpy 1.x loads as data."""

import json
import os
import zipfile

import numpy as np
import pytest
import torch
from helpers import one_error_line, run_tool_main, run_tool_process, tiny_run_overrides

from detector.config import load_config
from detector.engine.checkpoint import load_checkpoint, save_checkpoint
from detector.engine.runs import RUN_CONFIG_HEADER


def alias_bomb(levels: int) -> str:
    """A YAML list whose each level lists the one before nine times through aliases: 9**levels
    leaves from a few hundred bytes (the issue's 401-byte bomb as a config value ran out of 2
    GiB)."""
    text = "&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for k in range(1, levels + 1):
        text = f"&a{k} [{text}, {', '.join([f'*a{k - 1}'] * 8)}]"
    return text


DEEP = "[" * 100_000 + "]" * 100_000  # beyond Python's recursion limit in json.loads


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "cannot be read (No such file or directory)"),
        (b"\x80PK\x03\x04", "not UTF-8 JSON text"),
        (b'{"1": [[0, 0', "not valid JSON (Expecting"),
        (DEEP.encode(), "JSON nested too deeply to read (no file these tools read nests beyond"),
    ],
    ids=["missing", "binary", "torn", "deep"],
)
def test_every_json_input_is_one_line_naming_the_file(tmp_path, content, why):
    """One reader (errors.read_json) for the JSON files a user gives: the annotations, the
    detections, the proposals, the run records. A binary proposal file was a UnicodeDecodeError
    traceback before."""
    from detector.data.base import DatasetError
    from detector.data.build import load_proposals
    from detector.errors import read_json

    path = tmp_path / "file.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_proposals(str(path), [1], "train")
    message = str(info.value)
    assert message.startswith(f"{path}: {why}") and "\n" not in message
    assert message.endswith("set model.proposal_file to a file of tools/dump_proposals.py")
    with pytest.raises(ValueError, match=f"^{path}: {why[:12]}"):
        read_json(path, ValueError, lines=True)


def test_yaml_aliases_are_refused_in_config_files_and_overrides(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"train:\n  milestones: {alias_bomb(4)}\n")  # 9**5 leaves: harmless unrefused
    missing = tmp_path / "missing.json"
    proc = run_tool_process("eval", "--cfg", bomb, "--dets", missing)
    line = one_error_line(proc)
    assert proc.returncode == 2 and line.startswith(f"error: {bomb}: not valid YAML")
    assert "aliases (*name) are not allowed" in line
    proc = run_tool_main(
        "eval", "--cfg", "base.yaml", "--dets", missing, "train.milestones=[&m 1, *m]"
    )
    line = one_error_line(proc)
    assert proc.returncode == 2 and "override 'train.milestones=[&m 1, *m]'" in line
    assert "aliases (*name) are not allowed" in line


def test_deeply_nested_json_is_one_line_naming_the_file(tiny_data, tmp_path):
    ann = tmp_path / "instances_train.json"
    ann.write_text('{"images": ' + DEEP + ', "categories": []}')
    proc = run_tool_main(
        "make_subset", "--format", "coco", "--ann", ann, "--out", tmp_path / "o.json"
    )
    assert proc.returncode == 1 and str(ann) in one_error_line(proc)
    assert "nested too deeply" in proc.stderr
    dets = tmp_path / "dets.json"
    dets.write_text(DEEP)
    data = tiny_run_overrides(tiny_data, tmp_path / "unused")
    proc = run_tool_main("eval", "--cfg", "base.yaml", "--dets", dets, *data)
    assert proc.returncode == 1 and str(dets) in one_error_line(proc)
    assert "nested too deeply" in proc.stderr


@pytest.mark.parametrize(
    "image, said",
    [
        (
            {"id": 1, "file_name": "a.jpg", "height": 20, "width": float("nan")},
            "field 'width' is nan",
        ),
        ([1, "a.jpg"], "entry 0 of the images is a list, not a JSON object"),
    ],
)
def test_a_nan_or_non_object_image_entry_is_one_line(tmp_path, image, said):
    ann = tmp_path / "instances_train.json"
    ann.write_text(json.dumps({"images": [image], "categories": [{"id": 1, "name": "a"}]}))
    proc = run_tool_main(
        "make_subset", "--format", "coco", "--ann", ann, "--out", tmp_path / "o.json"
    )
    line = one_error_line(proc)
    assert proc.returncode == 1 and line.startswith(f"error: {ann}: ") and said in line


def test_non_utf8_bytes_are_one_line_naming_the_file(tiny_data, tmp_path):
    ann = tmp_path / "instances_train.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
                "categories": [{"id": 1, "name": "a"}],
            }
        )
    )
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"1\n\xff\xfe2\n")
    argv = ["--format", "coco", "--ann", ann, "--image-ids-file", ids, "--out", tmp_path / "o.json"]
    proc = run_tool_main("make_subset", *argv)
    line = one_error_line(proc)
    assert proc.returncode == 1 and line.startswith(f"error: {ids}: ") and "UTF-8" in line

    run = tmp_path / "run"  # a run whose config.yaml took a stray byte
    run.mkdir()
    cfg = load_config([], tiny_run_overrides(tiny_data, tmp_path / "unused"))
    text = RUN_CONFIG_HEADER + cfg.to_yaml()
    (run / "config.yaml").write_bytes(text.encode() + b"# \xff\n")
    (run / "metrics.jsonl").write_text('{"type": "train", "iter": 1}\n')
    argv = ["--cfg", "base.yaml", "--resume", *tiny_run_overrides(tiny_data, run)]
    proc = run_tool_process("train", *argv)
    line = one_error_line(proc)
    assert proc.returncode == 2 and line.startswith(f"error: {run / 'config.yaml'}: cannot be read")


def test_backbone_weights_that_hold_code_are_one_clean_line(tiny_data, tmp_path):
    weights = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.ones(1), "hook": os.getcwd}, weights)
    argv = ["--cfg", "smoothl1.yaml", *tiny_run_overrides(tiny_data, tmp_path / "run")]
    proc = run_tool_process("train", *argv, f"model.backbone.weights={weights}")
    line = one_error_line(proc)
    assert proc.returncode == 1 and "\x1b" not in proc.stderr
    assert f"{weights} holds posix.getcwd, which is code" in line


def test_a_checkpoint_written_under_numpy_1_loads_as_data(tmp_path):
    """numpy 2 renamed numpy.core to numpy._core; a checkpoint of numpy 1.x names the same
    reconstruct function by its old name."""
    np.random.seed(3)
    state = np.random.get_state()
    path = save_checkpoint(
        {"model": {"w": torch.ones(1)}, "rng": {"numpy": state}}, tmp_path / "a.pth"
    )
    old = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n_reconstruct" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            dst.writestr(info, data)
    loaded = load_checkpoint(old)
    np.random.set_state(state)
    expected = np.random.rand(3)
    np.random.seed(0)
    np.random.set_state(loaded["rng"]["numpy"])
    assert np.array_equal(np.random.rand(3), expected)
