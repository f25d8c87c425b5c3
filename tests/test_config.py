"""Config: layering order, _base_, overrides of nested keys and lists, every error path."""
import pytest
import yaml

from detector.config import BOX_LOSS_NAMES, CONFIG_DIR, Config, ConfigError, load_config, parse_override


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
    assert cfg.train.lr == 0.25 and cfg.train.max_iters == 7          # leaf over its _base_
    cfg = load_config([leaf, second])
    assert cfg.train.lr == 0.125 and cfg.train.batch_size == 3 and cfg.train.max_iters == 7  # later file wins
    cfg = load_config([second, base])
    assert cfg.train.lr == 0.5                                        # order matters


def test_base_yaml_as_base_does_not_reset_earlier_layers(tmp_path):
    a = write(tmp_path / "a.yaml", "train:\n  lr: 0.3\n")
    b = write(tmp_path / "b.yaml", "_base_: base.yaml\ntrain:\n  batch_size: 5\n")
    cfg = load_config([a, b])
    assert cfg.train.lr == 0.3 and cfg.train.batch_size == 5


def test_overrides_nested_and_lists():
    cfg = load_config([], ["model.roi_head.box_loss.beta=0.5", "data.input.min_size_train=[100, 200]",
                           "data.classes=[cat, dog]", "output_dir=/tmp/x", "train.resume=auto",
                           "model.roi_head.box_loss.sigma=3"])
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


@pytest.mark.parametrize("override, message", [
    ("model.roi_head.box_los.name=l1", "unknown key model.roi_head.box_los; did you mean box_loss?"),
    ("beta=1", "it exists as"),
    ("train.max_iters=abc", "train.max_iters must be int"),
    ("train.max_iters=1.5", "train.max_iters must be int"),
    ("train.amp=1", "train.amp must be bool"),
    ("train.max_iters=0", "must be > 0"),
    ("model.roi_head.box_loss.name=smoth_l1", "did you mean smooth_l1"),
    ("data.format=yolo", "choose from synthetic, coco, voc"),
    ("model.rpn=3", "is a section"),
    ("train.lr=null", "cannot be null"),
    ("data.input.min_size_train=[a]", "list of int"),
    ("model.roi_head.fg_iou_thresh=1.5", "must be in [0, 1]"),
    ("train.max_iters", "expected key.sub=value"),
    ("model.roi_head.bg_iou_thresh=0.9", "bg_iou_thresh must be <="),
    ("model.proposals=precomputed", "needs model.proposal_file"),
])
def test_error_paths(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config([], [override])
    assert message in str(err.value)


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


def test_every_config_file_loads():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        load_config([str(path)])


def test_loss_names_match_registry():
    from detector.losses import LOSSES
    assert set(BOX_LOSS_NAMES) == set(LOSSES)


def test_diff_configs_lists_the_dotted_keys_that_differ():
    from detector.config import diff_configs
    a = load_config(["smoothl1.yaml"])
    b = load_config(["giou.yaml"], ["train.lr=0.01", "data.input.min_size_train=[224]"])
    assert diff_configs(a, b) == ["data.input.min_size_train", "model.roi_head.box_loss.name",
                                  "model.roi_head.box_loss.weight", "train.lr"]
    assert diff_configs(a, a.to_dict()) == []
    assert diff_configs({"x": {"y": 1}}, {"x": {"y": 1, "z": 2}}) == ["x.z"]
