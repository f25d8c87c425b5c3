"""Every tool in tools/ takes the one error path (detector.errors.run_tool): a usage or config error
exits 2, a data or file error exits 1, each with one ``error:`` line on stderr and no traceback. The
table must name every tool."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_error_line, run_tool_main

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))

# tool -> (argv of a config or usage error that run_tool reports, argv of a data or file error);
# "{tmp}" is a temporary folder holding a plain file "afile" (so "{tmp}/afile/x" cannot be made) and
# nothing else
CASES = {
    "ablate": (
        ["--cfgs", "smoothl1.yaml", "--report-only", "--force"],
        ["--cfgs", "smoothl1.yaml", "--seeds", "1", "--report-only", "--out", "{tmp}/afile/x"],
    ),
    "benchmark": (
        ["--data", "nosuch.key=1"],
        ["--data", "data.format=coco", "data.root={tmp}/nowhere"],
    ),
    # fails making the folder, before any download
    "download_data": (
        ["voc2007", "--root", "{tmp}/d", "--remove-archives", "nosuch"],
        ["voc2007", "--root", "{tmp}/afile/x"],
    ),
    "dump_proposals": (
        [
            "--cfg",
            "smoothl1.yaml",
            "--ckpt",
            "{tmp}/c.pth",
            "--out",
            "{tmp}/p.json",
            "nosuch.key=1",
        ],
        ["--cfg", "smoothl1.yaml", "--ckpt", "{tmp}/missing.pth", "--out", "{tmp}/p.json"],
    ),
    "eval": (
        ["--cfg", "smoothl1.yaml", "--dets", "{tmp}/d.json", "nosuch.key=1"],
        ["--cfg", "smoothl1.yaml", "--dets", "{tmp}/missing.json"],
    ),
    "make_subset": (
        ["--format", "coco", "--out", "{tmp}/o.json"],  # coco needs --ann
        ["--format", "coco", "--ann", "{tmp}/missing.json", "--out", "{tmp}/o.json"],
    ),
    "make_synthetic": (
        ["nosuch.key=1"],
        ["--root", "{tmp}/afile/x", "--num-train", "1", "--num-val", "1"],
    ),
    "parity": (
        ["--arm", "no colon here"],
        ["--seeds", "1", "--out", "{tmp}/afile/x"],
    ),
    "plot_losses": (["--out", "{tmp}/plots", "--iters", "many"], ["--out", "{tmp}/afile/x"]),
    "train": (
        ["--cfg", "smoothl1.yaml", "nosuch.key=1"],
        [
            "--cfg",
            "smoothl1.yaml",
            "data.format=coco",
            "data.root={tmp}/nowhere",
            "output_dir={tmp}/run",
        ],
    ),
}


def load_tool(tool: str):
    spec = importlib.util.spec_from_file_location(f"tool_{tool}", REPO / "tools" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_code(tool: str, argv: list[str]) -> int:
    try:
        return load_tool(tool).main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return exc.code


def test_the_table_names_every_tool():
    assert sorted(CASES) == TOOLS


@pytest.mark.parametrize("tool", TOOLS)
def test_a_usage_or_config_error_exits_2_and_a_data_or_file_error_exits_1(
    tool, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("DETECTOR_TRACEBACK", raising=False)
    (tmp_path / "afile").write_text("")
    usage, data = ([a.format(tmp=tmp_path) for a in argv] for argv in CASES[tool])
    assert exit_code(tool, ["--no-such-option"]) == 2
    capsys.readouterr()
    for argv, code in ((usage, 2), (data, 1)):
        assert exit_code(tool, argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and "error:" in err[-1] and "Traceback" not in "\n".join(err), (argv, err)
    assert not (tmp_path / "d").exists()  # nothing was downloaded


def test_a_failed_download_is_one_line_naming_the_archive(tmp_path, capsys):
    from urllib.error import URLError

    module = load_tool("download_data")

    def offline(url, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    module.download_and_extract_archive = offline  # the test never touches the network
    assert module.main(["voc2012", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: https://")
        and "VOCtrainval_11-May-2012.tar" in err[0]
    ), err


def test_run_tool_main_gives_what_the_process_gives_and_lets_a_bug_raise(tmp_path, monkeypatch):
    """helpers.run_tool_main, which most tool tests use in place of a subprocess: argparse's exit
    code, the one error line without the traceback DETECTOR_TRACEBACK would add (the variable is
    set again after the call), and a bug's exception."""
    monkeypatch.setenv("DETECTOR_TRACEBACK", "1")
    proc = run_tool_main("make_subset", "--no-such-option")
    assert proc.returncode == 2 and "make_subset.py: error: " in proc.stderr and not proc.stdout
    missing = tmp_path / "missing.json"
    out = tmp_path / "o.json"
    proc = run_tool_main("make_subset", "--format", "coco", "--ann", missing, "--out", out)
    assert proc.returncode == 1 and str(missing) in one_error_line(proc)
    assert os.environ["DETECTOR_TRACEBACK"] == "1"
    module = sys.modules["helpers_tool_make_subset"]

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(module, "load_coco_json", bug)
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    with pytest.raises(ZeroDivisionError, match="a bug"):
        run_tool_main("make_subset", "--format", "coco", "--ann", ann, "--out", out)
    assert os.environ["DETECTOR_TRACEBACK"] == "1"


def tiny_coco(root: Path, split: str = "s") -> Path:
    """One 64 x 64 image with one box of one class, as
    ``root/annotations/instances_<split>.json``."""
    from PIL import Image

    (root / split).mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / split / "1.jpg")
    (root / "annotations").mkdir()
    annotations = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 64, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024.0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(annotations))
    return root


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.num_classes=5"], "model.num_classes=5 but the dataset has 1 classes"),
        (["model.rpn.anchor_sizes=[32,64]"], "model.rpn.anchor_sizes has 2 sizes"),
    ],
)
def test_a_config_mistake_found_by_the_model_is_one_line_exit_2(overrides, message, tmp_path):
    """Through the real tool in its own process: the model's config mistakes are config errors
    too."""
    data = [
        "data.format=coco",
        f"data.root={tiny_coco(tmp_path / 'data')}",
        "data.train_split=s",
        "data.val_split=s",
    ]
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), *data, f"output_dir={run}", *overrides],
        env={**os.environ, "PYTHONPATH": str(REPO), "DETECTOR_TRACEBACK": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (run / "config.yaml").exists()
