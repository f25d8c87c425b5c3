"""Every tool in tools/ takes the one error path (detector.errors.run_tool): a usage or config error exits 2, a data
or file error exits 1, each with one ``error:`` line on stderr and no traceback. The table must name every tool."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))

# tool -> (argv of a config or usage error that run_tool reports, argv of a data or file error); "{tmp}" is a
# temporary folder holding a plain file "afile" (so "{tmp}/afile/x" cannot be made) and nothing else
CASES = {
    "ablate": (
        ["--cfgs", "smoothl1.yaml", "--report-only", "--force"],
        ["--cfgs", "smoothl1.yaml", "--seeds", "1", "--report-only", "--out", "{tmp}/afile/x"],
    ),
    "benchmark": (
        ["--data", "nosuch.key=1"],
        ["--data", "data.format=coco", "data.root={tmp}/nowhere"],
    ),
    "download_data": (
        ["voc2007", "--root", "{tmp}/d", "--remove-archives", "nosuch"],
        ["voc2007", "--root", "{tmp}/afile/x"],
    ),  # fails making the folder, before any download
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
