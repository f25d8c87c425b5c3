"""Installation: a non-editable install (a wheel) ships the configs and finds them from any working
directory; setup.cfg lists every package; the tools run on the installed package, without editing
sys.path."""

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _setup_cfg_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def test_setup_cfg_lists_every_package_and_the_config_folders():
    code = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "detector").rglob("__init__.py")
    }
    configs = {
        ".".join(("detector",) + p.relative_to(REPO).parts)
        for p in [REPO / "configs"]
        + [d for d in (REPO / "configs").rglob("*") if d.is_dir() and any(d.glob("*.yaml"))]
    }
    assert _setup_cfg_packages() == code | configs


@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
    reason="building a wheel offline needs pip and setuptools in this environment",
)
def test_a_wheel_install_finds_its_configs_from_another_directory(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "detector", src / "detector", ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        pip
        + [
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(src),
            "-w",
            str(tmp_path / "wheels"),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheels").glob("detector-*.whl")
    subprocess.run(
        pip
        + ["install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import detector, detector.config as c; cfg = c.load_config(['smoothl1.yaml', "
        "'data/coco_tiny.yaml']); print(detector.__file__); print(c.CONFIG_DIR); "
        "print(cfg.model.roi_head.box_loss.name, cfg.data.format)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    module_file, config_dir, values = out.stdout.strip().splitlines()
    site = tmp_path / "site" / "detector"
    assert Path(module_file) == site / "__init__.py"  # the installed copy, not the checkout
    assert (
        Path(config_dir) == site / "configs"
        and (site / "configs" / "data" / "coco_tiny.yaml").is_file()
    )
    assert values == "smooth_l1 coco"


def test_tools_do_not_edit_sys_path_and_run_from_any_directory(tmp_path):
    for tool in sorted((REPO / "tools").glob("*.py")):
        assert "sys.path" not in tool.read_text(), (
            f"{tool.name} edits sys.path; the installed package is imported"
        )
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--help"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "--resume" in out.stdout, out.stderr
