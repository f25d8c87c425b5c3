"""Config: layering order, _base_, overrides of nested keys and lists, every error path."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detector import config as config_module
from detector.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    check_training,
    default_config,
    load_config,
    parse_override,
)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_hold_every_documented_key():
    cfg = load_config()
    assert cfg.data.format == "synthetic"
    assert cfg.model.roi_head.box_loss.name == "smooth_l1"
    # every key in base.yaml has a one-line comment
    for line in (CONFIG_DIR / "base.yaml").read_text().splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"base.yaml key without a comment: {line.strip()}"


def test_layering_order_and_base(tmp_path):
    base = write(tmp_path / "mid.yaml", "_base_: base.yaml\ntrain:\n  lr: 0.5\n  max_iters: 7\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: mid.yaml\ntrain:\n  lr: 0.25\n")
    second = write(tmp_path / "second.yaml", "train:\n  batch_size: 3\n  lr: 0.125\n")
    cfg = load_config([leaf])
    assert cfg.train.lr == 0.25 and cfg.train.max_iters == 7  # leaf over its _base_
    cfg = load_config([leaf, second])
    # later file wins
    assert cfg.train.lr == 0.125 and cfg.train.batch_size == 3 and cfg.train.max_iters == 7
    cfg = load_config([second, base])
    assert cfg.train.lr == 0.5  # order matters


def test_base_yaml_as_base_does_not_reset_earlier_layers(tmp_path):
    a = write(tmp_path / "a.yaml", "train:\n  lr: 0.3\n")
    b = write(tmp_path / "b.yaml", "_base_: base.yaml\ntrain:\n  batch_size: 5\n")
    cfg = load_config([a, b])
    assert cfg.train.lr == 0.3 and cfg.train.batch_size == 5


def test_overrides_nested_and_lists():
    cfg = load_config(
        [],
        [
            "model.roi_head.box_loss.beta=0.5",
            "data.input.min_size_train=[100, 200]",
            "data.classes=[cat, dog]",
            "output_dir=/tmp/x",
            "train.resume=auto",
            "model.roi_head.box_loss.sigma=3",
        ],
    )
    assert cfg.model.roi_head.box_loss.beta == 0.5
    assert list(cfg.data.input.min_size_train) == [100, 200]
    assert list(cfg.data.classes) == ["cat", "dog"]
    assert cfg.output_dir == "/tmp/x" and cfg.train.resume == "auto"
    assert parse_override("a.b=null") == ("a.b", None)


def test_names_resolve_in_configs_dir(tmp_path):
    (tmp_path / "x.yaml").write_text("seed: 3\n")
    assert load_config([str(tmp_path / "x.yaml")]).seed == 3
    with pytest.raises(ConfigError, match="not found"):
        load_config(["no_such_config.yaml"])


def test_frozen_printable_saveable(tmp_path):
    cfg = load_config([], ["train.max_iters=9"])
    with pytest.raises(AttributeError):
        cfg.seed = 1
    with pytest.raises(TypeError):
        cfg.train["max_iters"] = 1
    cfg.save(tmp_path / "c.yaml")
    again = load_config([str(tmp_path / "c.yaml")])
    assert again == cfg and "max_iters: 9" in str(cfg)
    assert isinstance(cfg.train, Config) and cfg.select("train.max_iters") == 9
    assert yaml.safe_load(cfg.to_yaml())["train"]["max_iters"] == 9


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.roi_head.box_los.name=l1",
            "unknown key model.roi_head.box_los; did you mean box_loss?",
        ),
        ("beta=1", "it exists as"),
        ("train.max_iters=abc", "train.max_iters must be int"),
        ("train.max_iters=1.5", "train.max_iters must be int"),
        ("train.amp=1", "train.amp must be bool"),
        ("train.max_iters=0", "must be > 0"),
        ("model.roi_head.box_loss.name=smoth_l1", "did you mean smooth_l1"),
        ("model.rpn.anchor_sizes=[32,64]", "has 2 sizes but the FPN has 5 levels"),
        # checked here only, not again where they are used (box coder, losses, evaluation)
        ("model.roi_head.box_coder_weights=[1,1,0,1]", "must be 4 numbers > 0"),
        ("model.roi_head.box_loss.beta=-1", "box_loss.beta=-1 must be >= 0"),
        ("model.rpn.box_loss.alpha=0", "box_loss.alpha=0 must be > 0"),
        ("model.roi_head.box_loss.gamma=0", "box_loss.gamma=0 must be > 0"),
        ("model.roi_head.box_loss.name=nosuch", "choose from l2, l1, smooth_l1"),
        ("eval.backend=fast", "choose from pycocotools, faster_coco_eval"),
        ("eval.metric=map", "choose from coco, voc, both"),
        ("data.label_noise_kind=gauss", "choose from jitter, outlier"),
        ("model.rpn=3", "is a section"),
        ("train.lr=null", "cannot be null"),
        ("data.input.min_size_train=[a]", "list of int"),
        ("model.roi_head.fg_iou_thresh=1.5", "must be in [0, 1]"),
        ("train.max_iters", "expected key.sub=value"),
        ("model.roi_head.bg_iou_thresh=0.9", "bg_iou_thresh must be <="),
        ("model.proposals=precomputed", "needs model.proposal_file"),
    ],
)
def test_error_paths(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config([], [override])
    assert message in str(err.value)


def test_anchor_sizes_without_fpn_all_go_on_the_one_level():
    cfg = load_config([], ["model.backbone.fpn=false", "model.rpn.anchor_sizes=[32,64]"])
    assert cfg.model.rpn.anchor_sizes == (32, 64)


def test_best_metric_is_a_training_relation_that_evaluation_does_not_check():
    cfg = load_config([], ["eval.metric=voc"])  # train.best_metric stays AP
    with pytest.raises(
        ConfigError, match="train.best_metric='AP' is not computed with eval.metric"
    ):
        check_training(cfg)
    check_training(load_config([], ["eval.metric=voc", "train.best_metric=mAP_voc"]))


def test_file_errors(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad])
    scalar = write(tmp_path / "scalar.yaml", "3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([scalar])
    unknown = write(tmp_path / "unknown.yaml", "trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown key trian; did you mean train\?"):
        load_config([unknown])
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config([a])


def test_a_file_that_is_not_utf8_text_is_one_config_error(tmp_path):
    """A checkpoint passed as --cfg by mistake: one ConfigError line naming the file, no
    UnicodeDecodeError."""
    pth = tmp_path / "last.pth"
    torch.save({"model": torch.arange(300.0)}, pth)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    for path in (pth, latin1):
        with pytest.raises(ConfigError, match=rf"{path.name}: not a UTF-8 YAML text file") as err:
            load_config([str(path)])
        assert "\n" not in str(err.value)


def test_train_tool_with_a_checkpoint_as_cfg_prints_one_line(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    pth = tmp_path / "model_final.pth"
    torch.save({"model": torch.arange(300.0)}, pth)
    result = subprocess.run(
        [sys.executable, str(repo / "tools" / "train.py"), "--cfg", str(pth)],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_final.pth: not a UTF-8 YAML text file" in lines[0], (
        result.stderr
    )


def test_every_config_file_loads():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        load_config([str(path)])


# ----------------------------------------------------------------------------------- float literals
@pytest.mark.parametrize(
    "literal, value",
    [
        ("1e-3", 1e-3),
        ("1e10", 1e10),
        ("1.0e6", 1e6),
        ("1E-3", 1e-3),
        ("2.5e-2", 0.025),
        (".5e-1", 0.05),
        ("1.0e+6", 1e6),
        ("0.02", 0.02),
    ],
)
def test_every_python_float_literal_is_a_float_on_the_cli_and_in_files(literal, value, tmp_path):
    assert load_config([], [f"train.lr={literal}"]).train.lr == value
    leaf = write(tmp_path / "leaf.yaml", f"train:\n  lr: {literal}\n")
    cfg = load_config([leaf])
    assert cfg.train.lr == value and isinstance(cfg.train.lr, float)
    cfg.save(tmp_path / "saved.yaml")  # a float that YAML 1.1 writes back as a float
    assert load_config([tmp_path / "saved.yaml"]).train.lr == value


def test_float_literals_in_lists_and_number_keys_but_not_where_a_string_or_int_is_expected(
    tmp_path,
):
    cfg = load_config(
        [],
        [
            "model.roi_head.box_coder_weights=[1e1, 1e1, 5e0, 5]",
            "data.fraction=5e-1",
            "model.roi_head.box_loss.sigma=3e0",
            "output_dir=1e3",
        ],
    )
    assert list(cfg.model.roi_head.box_coder_weights) == [10.0, 10.0, 5.0, 5]
    assert cfg.data.fraction == 0.5 and cfg.model.roi_head.box_loss.sigma == 3.0
    assert cfg.output_dir == "1e3"  # a string key keeps the string
    leaf = write(tmp_path / "leaf.yaml", "model:\n  rpn:\n    aspect_ratios: [5e-1, 1, 2e0]\n")
    assert list(load_config([leaf]).model.rpn.aspect_ratios) == [0.5, 1, 2.0]
    with pytest.raises(ConfigError, match="train.max_iters must be int, got str '1e3'"):
        load_config([], ["train.max_iters=1e3"])  # an int key takes no float literal
    with pytest.raises(ConfigError, match="train.lr must be float, got str '1e-3x'"):
        load_config([], ["train.lr=1e-3x"])


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=nan",
        "train.lr=.inf",
        "train.lr=inf",
        "train.lr=-Infinity",
        "model.roi_head.box_loss.alpha=NaN",
        "model.rpn.aspect_ratios=[1, nan]",
    ],
)
def test_nan_and_inf_are_refused_where_a_float_is_expected(override):
    with pytest.raises(ConfigError, match="is not a finite number"):
        load_config([], [override])


# ---------------------------------------------------------------------------------- no hidden state
def test_loading_a_config_changes_no_module_state():
    def snapshot():
        return {
            name: (id(value), copy.deepcopy(value))
            for name, value in vars(config_module).items()
            if isinstance(value, (dict, list, set)) and not name.startswith("__")
        }

    load_config(["giou.yaml"])
    before = snapshot()
    load_config(["smoothl1.yaml"], ["train.lr=0.5"])
    assert default_config() is not default_config()
    assert snapshot() == before


def test_merge_takes_the_schema_it_checks_against():
    schema = default_config()
    cfg = copy.deepcopy(schema)
    config_module._merge(cfg, {"train": {"lr": "1e-2"}}, schema, "layer")
    assert cfg["train"]["lr"] == 0.01 and schema["train"]["lr"] != 0.01
    with pytest.raises(
        ConfigError, match=r"layer: unknown key beta \(it exists as model.rpn.box_loss.beta\)"
    ):
        config_module._merge(cfg, {"beta": 1}, schema, "layer")


# ---------------------------------------------------------------------- choices from the registries
def test_loss_backbone_and_schedule_names_come_from_their_registries(monkeypatch):
    from detector.config import BACKBONES
    from detector.losses.dynamic import BETA_SCHEDULES
    from detector.losses.regression import LOSSES, BoxLoss, iou_loss, l1_loss

    monkeypatch.setitem(LOSSES, "my_l1", lambda cfg: BoxLoss("my_l1", l1_loss))
    monkeypatch.setitem(LOSSES, "my_iou", lambda cfg: BoxLoss("my_iou", iou_loss, on_boxes=True))
    monkeypatch.setitem(BETA_SCHEDULES, "my_schedule", object)
    monkeypatch.setitem(BACKBONES, "resnet152", "resnet")
    cfg = load_config(
        [],
        [
            "model.roi_head.box_loss.name=my_iou",
            "model.rpn.box_loss.name=my_l1",
            "model.roi_head.box_loss.schedule.type=my_schedule",
            "model.backbone.name=resnet152",
        ],
    )
    assert cfg.model.roi_head.box_loss.name == "my_iou" and cfg.model.rpn.box_loss.name == "my_l1"
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.roi_head.box_loss.name=nosuch"])
    assert str(err.value).endswith("choose from " + ", ".join(LOSSES))
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.backbone.name=nosuch"])
    assert str(err.value).endswith("choose from " + ", ".join(BACKBONES))


@pytest.mark.parametrize("name", ["giou", "dynamic_smooth_l1", "my_iou"])
def test_the_rpn_takes_only_registered_delta_losses_without_a_schedule(name, monkeypatch):
    from detector.losses.regression import LOSSES, BoxLoss, iou_loss, l1_loss

    monkeypatch.setitem(LOSSES, "my_l1", lambda cfg: BoxLoss("my_l1", l1_loss))
    monkeypatch.setitem(LOSSES, "my_iou", lambda cfg: BoxLoss("my_iou", iou_loss, on_boxes=True))
    with pytest.raises(ConfigError) as err:
        load_config([], [f"model.rpn.box_loss.name={name}"])
    assert str(err.value) == (
        f"model.rpn.box_loss.name={name!r}: the RPN regresses anchor deltas with a fixed "
        f"beta; choose a delta loss: l2, l1, smooth_l1, balanced_l1, my_l1"
    )


def test_every_registered_loss_is_a_valid_roi_head_loss():
    from detector.losses.regression import LOSSES

    for name in LOSSES:
        assert (
            load_config([], [f"model.roi_head.box_loss.name={name}"]).model.roi_head.box_loss.name
            == name
        )


# ----------------------------------------------------------------------------------------- messages
@pytest.mark.parametrize(
    "name, hint",
    [
        ("smoothl1.yml", "smoothl1.yaml"),
        ("smoth_l1.yaml", "smoothl1.yaml"),
        ("configs/smoothl1.yml", "smoothl1.yaml"),
        ("data/coco_tny.yaml", "data/coco_tiny.yaml"),
        ("nosuch.yaml", None),
        ("no_such_config.yaml", None),
        ("l3.yaml", None),
    ],
)
def test_a_missing_config_file_is_hinted_only_when_close(name, hint):
    with pytest.raises(ConfigError) as err:
        load_config([name])
    message = str(err.value)
    assert (
        f"config file {name!r} not found" in message
        and "available: balanced_l1.yaml, base.yaml" in message
    )
    if hint is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean {hint}?" in message


def test_resume_lists_every_valid_value():
    with pytest.raises(ConfigError) as err:
        load_config([], ["train.resume=/runs/x/checkpoints/last.pth"])
    assert str(err.value).endswith(
        "train.resume='/runs/x/checkpoints/last.pth' is not valid; choose from false, true, auto"
    )
    assert load_config([], ["train.resume=true"]).train.resume is True


def test_diff_configs_lists_the_dotted_keys_that_differ():
    from detector.config import diff_configs

    a = load_config(["smoothl1.yaml"])
    b = load_config(["giou.yaml"], ["train.lr=0.01", "data.input.min_size_train=[224]"])
    assert diff_configs(a, b) == [
        "data.input.min_size_train",
        "model.roi_head.box_loss.name",
        "model.roi_head.box_loss.weight",
        "train.lr",
    ]
    assert diff_configs(a, a.to_dict()) == []
    assert diff_configs({"x": {"y": 1}}, {"x": {"y": 1, "z": 2}}) == ["x.z"]


def test_the_defaults_left_in_constructors_agree_with_base_yaml():
    """Model and loss classes take what their build_* passes; where a default is left (for direct
    use), it is base.yaml's value, so the two can never tell different stories."""
    import inspect

    from detector.box_coder import BoxCoder
    from detector.losses.dynamic import AdaptiveBeta, ScheduledBeta
    from detector.losses.regression import balanced_l1_loss, smooth_l1_loss
    from detector.modeling.matcher import DynamicLabelAssigner

    roi = "model.roi_head"
    table = {
        BoxCoder: {"weights": f"{roi}.box_coder_weights"},
        DynamicLabelAssigner: {
            "initial_thresh": f"{roi}.fg_iou_thresh",
            **{k: f"{roi}.dynamic_label_assignment.{k}" for k in ("topk", "interval", "statistic")},
            "min_thresh": f"{roi}.dynamic_label_assignment.min_thresh",
        },
        AdaptiveBeta: {
            "initial_beta": f"{roi}.box_loss.beta",
            **{
                k: f"{roi}.box_loss.schedule.{k}"
                for k in ("topk", "interval", "min_beta", "statistic")
            },
        },
        ScheduledBeta: {
            "gamma": f"{roi}.box_loss.schedule.step_gamma",
            "min_beta": f"{roi}.box_loss.schedule.min_beta",
        },
        smooth_l1_loss: {"beta": f"{roi}.box_loss.beta"},
        balanced_l1_loss: {k: f"{roi}.box_loss.{k}" for k in ("alpha", "gamma", "beta")},
    }
    cfg = load_config()
    for owner, keys in table.items():
        parameters = inspect.signature(owner).parameters
        for name, key in keys.items():
            default = parameters[name].default
            assert default is not inspect.Parameter.empty, (owner, name)
            expected = cfg.select(key)
            assert (tuple(default) if isinstance(default, list) else default) == expected, (
                f"{owner.__name__}({name}={default!r}) but base.yaml has {key}: {expected!r}"
            )
