"""Strict, layered YAML configuration: ``configs/base.yaml`` is the schema (every key, its default
and type); files (each after its ``_base_`` chain) then ``key.sub=value`` overrides layer on it.
Unknown keys, wrong types and bad values raise :class:`ConfigError` with a close-match hint before
anything runs; names are checked against the registries at load time. The result is a frozen
:class:`Config`, read only by ``build_*(cfg)`` functions."""

from __future__ import annotations

import argparse
import copy
import difflib
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from detector.errors import UsageError, first_line
from detector.losses.dynamic import BETA_SCHEDULES, SCHEDULED_LOSSES, STATISTIC_CONVENTIONS
from detector.losses.regression import LOSSES, resolve_beta


def _find_config_dir() -> Path:
    """The shipped configs: ``detector/configs`` in an installed wheel, else ``configs/`` beside the
    package."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "base.yaml").is_file():
            return candidate
    # neither exists: the error names the place a checkout keeps them
    return package.parent / "configs"


CONFIG_DIR = _find_config_dir()
SCHEMA_FILE = CONFIG_DIR / "base.yaml"

# Keys whose default is null (or that accept more than the default's type): the types they take.
_TYPES: dict[str, tuple[type, ...]] = {
    "output_dir": (str,),
    "data.max_images": (int,),
    "model.roi_head.box_loss.schedule.reference_rois": (int,),
    "model.roi_head.box_loss.schedule.file": (str,),
    "data.classes": (list,),
    "data.fraction": (float, int),
    "data.image_ids_file": (str,),
    "data.val_fraction": (float, int),
    "data.val_image_ids_file": (str,),
    "model.num_classes": (int,),
    "model.backbone.weights": (str,),
    "model.proposal_file": (str,),
    "train.resume": (bool, str),
    "eval.max_images": (int,),
    "train.lr_reference_batch": (int,),
}

# model.backbone.name: torchvision classifier -> the family that says how
# detector/modeling/backbone.py cuts it
BACKBONES: dict[str, str] = {
    **dict.fromkeys(("resnet18", "resnet34", "resnet50", "resnet101"), "resnet"),
    "mobilenet_v3_large": "mobilenet_v3_large",
}
# The FPN's output strides, P2..P6 (detector/modeling/backbone.py); model.rpn.anchor_sizes has
# one size per level.
FPN_STRIDES = (4, 8, 16, 32, 64)
# model.backbone.norm. frozen_bn: fixed statistics (pretrained weights); bn; syncbn: batch
# statistics over the ranks of a torchrun job (from scratch on several GPUs; plain BN in one
# process); gn: GroupNorm with 32 groups
NORMS = ("frozen_bn", "bn", "syncbn", "gn")

# The synthetic generator's class shapes (label order), box modes and backgrounds (read by
# detector/data/synthetic.py).
SYNTHETIC_SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SYNTHETIC_BOX_MODES = ("amodal", "visible")
SYNTHETIC_BACKGROUNDS = ("gradient", "texture")
# How training boxes are corrupted (data.label_noise_kind; detector/data/base.py corrupt_records
# reads it from here).
LABEL_NOISE_KINDS = ("jitter", "outlier")

# The scalar keys of metrics.json per eval.metric (detector.evaluation computes them;
# train.best_metric picks one).
COCO_METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# added to COCOeval's 12: AP at IoU 0.90, the localisation that box losses move
COCO_EXTRA_NAMES = ("AP90",)
VOC_METRIC_NAMES = ("mAP_voc07", "mAP_voc")  # 11-point (VOC2007 devkit) and area (VOC2010+) mean AP
METRIC_NAMES = {
    "coco": COCO_METRIC_NAMES + COCO_EXTRA_NAMES,
    "voc": VOC_METRIC_NAMES,  # eval.metric -> its keys
    "both": COCO_METRIC_NAMES + COCO_EXTRA_NAMES + VOC_METRIC_NAMES,
}
EVAL_BACKENDS = ("pycocotools", "faster_coco_eval")


# Keys with a fixed set of values; a registry (dict) is looked up at check time, so run-time
# registrations count. data.format's registry, detector.data.build.FORMATS, sits a layer above this
# module: build_dataset checks it with check_choice.
_CHOICES: dict[str, tuple[Any, ...] | Mapping[str, Any]] = {
    "data.label_noise_kind": LABEL_NOISE_KINDS,
    "data.synthetic.boxes": SYNTHETIC_BOX_MODES,
    "data.synthetic.background": SYNTHETIC_BACKGROUNDS,
    "model.backbone.name": BACKBONES,
    "model.backbone.norm": NORMS,
    "model.implementation": ("ours", "torchvision"),
    "model.proposals": ("rpn", "precomputed"),
    "model.roi_head.predictor_init": ("torchvision", "detectron2"),
    "model.rpn.box_loss.name": LOSSES,  # and a delta loss: see _check_relations
    "model.roi_head.box_loss.name": LOSSES,
    "model.roi_head.box_loss.normalizer": ("num_samples", "num_pos"),
    "model.roi_head.box_loss.schedule.type": BETA_SCHEDULES,
    "model.roi_head.box_loss.schedule.statistic": STATISTIC_CONVENTIONS,
    "model.roi_head.dynamic_label_assignment.statistic": STATISTIC_CONVENTIONS,
    "train.device": ("auto", "cpu", "cuda"),
    "train.lr_schedule": ("multistep", "cosine"),
    "train.compile": ("none", "backbone", "all"),
    "train.resume": (False, True, "auto"),
    "eval.metric": METRIC_NAMES,
    "eval.backend": EVAL_BACKENDS,
}

_positive = (lambda v: v > 0, "must be > 0")
_non_negative = (lambda v: v >= 0, "must be >= 0")
_unit = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
_open_unit = (lambda v: 0 < v <= 1, "must be in (0, 1]")
_CHECKS: dict[str, tuple[Any, str]] = {
    "data.max_images": _positive,
    "data.fraction": _open_unit,
    "data.val_fraction": _open_unit,
    "data.label_noise": _unit,
    "data.label_noise_scale": _non_negative,
    "data.label_noise_seed": _non_negative,
    "data.synthetic.num_train": _positive,
    "data.synthetic.num_val": _positive,
    "data.synthetic.num_classes": (
        lambda v: 1 <= v <= len(SYNTHETIC_SHAPES),
        f"must be in 1..{len(SYNTHETIC_SHAPES)}",
    ),
    "data.synthetic.max_objects": _positive,
    "data.synthetic.min_objects": _non_negative,
    "data.synthetic.min_size": (lambda v: v >= 4, "must be >= 4 (pixels)"),
    "data.synthetic.max_size": _open_unit,
    "data.synthetic.aspect_ratio": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1],
        "must be [low, high], 0 < low <= high",
    ),
    "data.synthetic.max_iou": _unit,
    "data.synthetic.max_covered": _unit,
    "data.synthetic.min_visible": _unit,
    "data.synthetic.max_distractors": _non_negative,
    "data.synthetic.clutter": (
        lambda v: len(v) == 2 and 0 <= v[0] <= v[1],
        "must be [fewest, most], 0 <= fewest",
    ),
    "data.synthetic.noise": _non_negative,
    "data.input.min_size_train": (
        lambda v: len(v) > 0 and all(s > 0 for s in v),
        "must be a non-empty list of sizes > 0",
    ),
    "data.input.max_size_train": _positive,
    "data.input.min_size_test": _positive,
    "data.input.max_size_test": _positive,
    "data.input.flip_prob": _unit,
    "data.input.size_divisibility": _positive,
    "data.input.pad_buckets": (lambda v: 0 <= v <= 8, "must be in 0..8 (0 = off)"),
    "data.loader.num_workers": _non_negative,
    "model.num_classes": _positive,
    "model.backbone.freeze_at": (lambda v: 0 <= v <= 5, "must be in 0..5"),
    "model.rpn.nms_thresh": _unit,
    "model.rpn.positive_fraction": _unit,
    "model.rpn.fg_iou_thresh": _unit,
    "model.rpn.bg_iou_thresh": _unit,
    "model.roi_head.batch_size_per_image": _positive,
    "model.roi_head.positive_fraction": _unit,
    "model.roi_head.fg_iou_thresh": _unit,
    "model.roi_head.bg_iou_thresh": _unit,
    "model.roi_head.box_coder_weights": (
        lambda v: len(v) == 4 and all(w > 0 for w in v),
        "must be 4 numbers > 0",
    ),
    "model.roi_head.box_loss.schedule.min_beta": _positive,
    "model.roi_head.box_loss.schedule.interval": _positive,
    "model.roi_head.box_loss.schedule.topk": _positive,
    "model.roi_head.box_loss.schedule.reference_rois": _positive,
    "model.roi_head.dynamic_label_assignment.topk": _positive,
    "model.roi_head.dynamic_label_assignment.interval": _positive,
    "model.roi_head.test.score_thresh": _unit,
    "model.roi_head.test.nms_thresh": _unit,
    "train.max_iters": _positive,
    "train.batch_size": _positive,
    "train.lr": _positive,
    "train.lr_reference_batch": _positive,
    "train.weight_decay": _non_negative,
    "train.warmup_iters": _non_negative,
    "train.clip_grad_norm": _non_negative,
    "train.eval_period": _non_negative,
    "train.checkpoint_period": _positive,
    "train.log_period": _positive,
    "train.hist_period": _positive,
    "train.num_vis_images": _non_negative,
    "eval.max_images": _positive,
}
# The RPN's and the RoI head's box_loss sections take the same loss parameters.
_LOSS_CHECKS = {"beta": _non_negative, "sigma": _positive, "alpha": _positive, "gamma": _positive}
for _section in ("model.rpn.box_loss", "model.roi_head.box_loss"):
    _TYPES[f"{_section}.sigma"] = (float, int)
    _CHECKS.update({f"{_section}.{key}": check for key, check in _LOSS_CHECKS.items()})


class ConfigError(UsageError, ValueError):
    """A config file, key or value is wrong; the message names it and the fix."""


class Config(Mapping):
    """A frozen nested mapping with attribute access: ``cfg.model.roi_head.box_loss.name``."""

    def __init__(self, data: Mapping[str, Any], _path: str = ""):
        items = {}
        for key, value in data.items():
            full = f"{_path}.{key}" if _path else key
            items[key] = Config(value, full) if isinstance(value, Mapping) else _freeze(value)
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_path", _path)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._items[key]
        except KeyError:
            where = f"{self._path}.{key}" if self._path else key
            raise AttributeError(f"config has no key {where}{_hint(key, self._items)}") from None

    def __setattr__(self, key, value):
        raise AttributeError("Config is frozen; pass overrides to load_config instead")

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == _thaw(other)

    def __repr__(self) -> str:
        return self.to_yaml()

    def __reduce__(self):
        return (Config, (self.to_dict(), self._path))

    def to_dict(self) -> dict[str, Any]:
        return _thaw(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def select(self, dotted: str) -> Any:
        """``cfg.select("model.roi_head.box_loss.name")``."""
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _hint(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _file_hint(name: str, available: list[str]) -> str:
    """A config name close to ``name``, compared without the extension (a shared ``.yaml`` is no
    likeness) and strictly (``smoth_l1.yaml`` -> smoothl1.yaml; ``nosuch.yaml`` -> nothing); a
    path's folder may differ."""

    def stem(text: str) -> str:
        return text[: -len(Path(text).suffix)] if Path(text).suffix in (".yaml", ".yml") else text

    by_stem = {stem(a): a for a in available}
    for wanted in (stem(name), Path(stem(name)).name):
        close = difflib.get_close_matches(wanted, list(by_stem), n=1, cutoff=0.75)
        if close:
            return f"; did you mean {by_stem[close[0]]}?"
    return ""


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A path as given, else relative to the including file, else looked up in ``configs/``."""
    name = str(name)
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates.append(CONFIG_DIR / name)
    if not name.endswith((".yaml", ".yml")):
        candidates += [Path(str(c) + ".yaml") for c in list(candidates)]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    available = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
    raise ConfigError(
        f"config file {name!r} not found (as a path or under {CONFIG_DIR})"
        f"{_file_hint(name, available)}; available: {', '.join(available)}"
    )


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``): a few hundred bytes of nested aliases expand to
    gigabytes (an alias bomb), and no config needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not allowed in a config",
                self.peek_event().start_mark,
            )
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases (:class:`_NoAliasLoader`); errors are
    ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_NoAliasLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; a file that is not UTF-8 YAML text (a checkpoint given as a
    config) or not valid YAML (aliases included) raises :class:`ConfigError` naming it."""
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a UTF-8 YAML text file (a checkpoint or other binary file?); pass a "
            ".yaml config file or a config name from configs/"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}"
        )
    return data


def _load_layer(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The file's ``_base_`` chain followed by the file itself, as (source, mapping) layers."""
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ must name one file, got {base!r}")
        base_path = resolve_config_path(base, path.parent)
        if base_path != SCHEMA_FILE.resolve():  # the schema's defaults are always the first layer
            layers += _load_layer(base_path, seen + (path,))
    layers.append((str(path), data))
    return layers


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.roi_head.box_loss.beta=0.5"`` -> ``("model.roi_head.box_loss.beta", 0.5)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.sub=value, e.g. train.max_iters=200")
    try:
        value = safe_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {text!r}: value {raw!r} is not valid YAML ({first_line(exc)})"
        ) from None
    return key.strip(), value


def _merge(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    schema: Mapping[str, Any],
    source: str,
    prefix: str = "",
    root: Mapping[str, Any] | None = None,
) -> None:
    """Check ``src`` (one layer, named ``source`` in errors) against ``schema`` (the section of the
    schema at ``prefix``; ``root`` is the whole schema, to say where a misplaced key lives) and copy
    it into ``dst``."""
    root = schema if root is None else root
    for key, value in src.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            hint = _hint(str(key), schema.keys())
            elsewhere = _find_key(str(key), root)
            extra = f" (it exists as {elsewhere})" if elsewhere and not hint else ""
            raise ConfigError(f"{source}: unknown key {full}{hint}{extra}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: {full} is a section; set its keys ({', '.join(default)}), "
                    f"not a {type(value).__name__}"
                )
            _merge(dst[key], value, default, source, full + ".", root)
        else:
            dst[key] = copy.deepcopy(_check_value(full, value, default, source))


def _find_key(leaf: str, node: Mapping[str, Any], prefix: str = "") -> str | None:
    """The dotted name of the first key ``leaf`` in the nested ``node``, or None."""
    for key, value in node.items():
        if key == leaf:
            return f"{prefix}{key}"
        found = _find_key(leaf, value, f"{prefix}{key}.") if isinstance(value, dict) else None
        if found:
            return found
    return None


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types) or isinstance(value, int) and float in types


def _as_float(value: Any) -> Any:
    """A string Python reads as a float, as that float (YAML 1.1 leaves ``1e-3`` a string); anything
    else unchanged."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _check_value(full: str, value: Any, default: Any, source: str) -> Any:
    """``value`` checked against the key's type, choices and range; returned as it is stored (a
    float literal that YAML left a string becomes the float). Floats must be finite: no key means
    anything by nan or inf."""
    if value is None:
        if default is None or full in _TYPES:
            return None
        raise ConfigError(
            f"{source}: {full} cannot be null; expected {type(default).__name__} like {default!r}"
        )
    types = _TYPES.get(full) or (type(default),)
    if float in types and str not in types:
        value = _as_float(value)
    elem_types: tuple[type, ...] = ()
    if isinstance(default, list) and default and isinstance(value, list):
        elem_types = (
            (float, int)
            if any(type(d) is float for d in default)
            else tuple({type(d) for d in default})
        )
        if float in elem_types:
            value = [_as_float(v) for v in value]
    if not _type_ok(value, types):  # an int where a float is expected is fine (lr: 1)
        want = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{source}: {full} must be {want}, got {type(value).__name__} {value!r}")
    bad = [v for v in value if not _type_ok(v, elem_types)] if elem_types else []
    if bad:
        raise ConfigError(
            f"{source}: {full} must be a list of {elem_types[0].__name__}, got element {bad[0]!r}"
        )
    numbers = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise ConfigError(f"{source}: {full}={value!r} is not a finite number")
    if full in _CHOICES:
        check_choice(full, value, _CHOICES[full], source)
    if full in _CHECKS:
        ok, message = _CHECKS[full]
        if not ok(value):
            raise ConfigError(f"{source}: {full}={value!r} {message}")
    return value


def check_choice(key: str, value: Any, choices: Iterable[Any], source: str = "") -> None:
    """A :class:`ConfigError` unless ``value`` is one of ``choices`` (a tuple or a registry)."""
    if value in choices:
        return
    # YAML's false/true, as a user writes them
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
    where = f"{source}: " if source else ""
    hint = _hint(str(value), names)
    raise ConfigError(f"{where}{key}={value!r} is not valid{hint}; choose from {', '.join(names)}")


def _check_relations(cfg: dict[str, Any]) -> None:
    rpn, roi = cfg["model"]["rpn"], cfg["model"]["roi_head"]
    for name, head in (("rpn", rpn), ("roi_head", roi)):
        if head["bg_iou_thresh"] > head["fg_iou_thresh"]:
            raise ConfigError(f"model.{name}.bg_iou_thresh must be <= model.{name}.fg_iou_thresh")
    syn = cfg["data"]["synthetic"]
    if len(syn["image_size"]) != 2 or min(syn["image_size"]) < 2 * syn["min_size"]:
        raise ConfigError(
            f"data.synthetic.image_size={syn['image_size']} must be [height, width], each side at "
            f"least 2 * data.synthetic.min_size ({syn['min_size']})"
        )
    if syn["min_objects"] > syn["max_objects"]:
        raise ConfigError(
            f"data.synthetic.min_objects ({syn['min_objects']}) must be <= "
            f"data.synthetic.max_objects ({syn['max_objects']})"
        )
    if cfg["model"]["proposals"] == "precomputed" and not cfg["model"]["proposal_file"]:
        raise ConfigError(
            "model.proposals=precomputed needs model.proposal_file "
            "(a JSON made by tools/dump_proposals.py)"
        )
    levels = len(FPN_STRIDES) if cfg["model"]["backbone"]["fpn"] else 1
    if levels > 1 and len(rpn["anchor_sizes"]) != levels:
        raise ConfigError(
            f"model.rpn.anchor_sizes has {len(rpn['anchor_sizes'])} sizes but the FPN has {levels} "
            f"levels (strides {', '.join(map(str, FPN_STRIDES))}); give one size per level"
        )
    if cfg["model"]["backbone"]["norm"] == "syncbn" and cfg["train"]["device"] == "cpu":
        raise ConfigError(
            "model.backbone.norm=syncbn synchronises batch statistics over GPUs only; use "
            "model.backbone.norm=bn on the CPU"
        )
    sched = roi["box_loss"]["schedule"]
    if sched["type"] == "replay" and not sched["file"]:
        raise ConfigError(
            "model.roi_head.box_loss.schedule.type=replay needs model.roi_head.box_loss.schedule."
            "file: a run folder or a report's beta.csv whose beta is replayed"
        )
    if sched["type"] == "exp" and min(sched["start"], sched["end"]) <= 0:
        raise ConfigError(
            f"model.roi_head.box_loss.schedule: type=exp is geometric; start ({sched['start']}) "
            f"and end ({sched['end']}) must be > 0"
        )
    if cfg["model"]["implementation"] == "torchvision":
        _check_torchvision_reference(cfg)
    rpn_loss = rpn["box_loss"]
    deltas = [
        name
        for name, build in LOSSES.items()  # looked up now: names registered at run time count
        if name not in SCHEDULED_LOSSES and not build(rpn_loss).on_boxes
    ]
    if rpn_loss["name"] not in deltas:
        raise ConfigError(
            f"model.rpn.box_loss.name={rpn_loss['name']!r}: the RPN regresses anchor deltas with a "
            f"fixed beta; choose a delta loss: {', '.join(deltas)}"
        )


# What torchvision's FasterRCNN (detector/modeling/reference.py) takes: key -> its one value (and
# the RPN's beta 1/9)
TORCHVISION_FIXED = {
    "model.roi_head.box_loss.name": "smooth_l1",
    "model.roi_head.box_loss.normalizer": "num_samples",
    "model.roi_head.dynamic_label_assignment.enabled": False,
    "model.roi_head.add_gt_as_proposals": True,
    "model.roi_head.class_agnostic": False,
    "model.proposals": "rpn",
    "model.rpn.box_loss.name": "smooth_l1",
    "data.input.pad_buckets": 0,
}


def _check_torchvision_reference(cfg: dict[str, Any]) -> None:
    """What torchvision's FasterRCNN cannot take: one line naming the key."""
    frozen = Config(cfg)
    # key -> (its value, the one torchvision takes)
    fixed = {key: (frozen.select(key), needed) for key, needed in TORCHVISION_FIXED.items()}
    rpn_beta = resolve_beta(cfg["model"]["rpn"]["box_loss"])
    fixed["model.rpn.box_loss.beta"] = (round(rpn_beta, 9), round(1 / 9, 9))
    for key, (value, needed) in fixed.items():
        if value != needed:
            raise ConfigError(
                f"{key}={value} cannot be matched by model.implementation=torchvision "
                f"(torchvision's FasterRCNN takes only {needed}); set {key}={needed} or "
                "model.implementation=ours"
            )


def keyword_args(section: Mapping[str, Any], *built_apart: str) -> dict[str, Any]:
    """A config section's keys but ``built_apart``, as the keyword arguments of the class whose
    parameters they name (a ``build_*`` function passes them)."""
    return {key: value for key, value in section.items() if key not in built_apart}


def check_training(cfg: Config) -> None:
    """The relations only training reads (evaluation does not check them): ``train.best_metric``
    must be a metric that ``eval.metric`` computes."""
    names = METRIC_NAMES[cfg.eval.metric]
    if cfg.train.best_metric not in names:
        raise ConfigError(
            f"train.best_metric={cfg.train.best_metric!r} is not computed with "
            f"eval.metric={cfg.eval.metric}; choose from {', '.join(names)}"
        )


def default_config() -> dict[str, Any]:
    """The schema (``configs/base.yaml``): every key with its default, as a new plain dict on every
    call."""
    return _read_yaml(SCHEMA_FILE)


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> Config:
    """Defaults from ``configs/base.yaml``, then each file (after its ``_base_`` chain), then
    overrides."""
    schema = default_config()
    cfg = copy.deepcopy(schema)
    for name in paths:
        for source, layer in _load_layer(resolve_config_path(name)):
            _merge(cfg, layer, schema, source)
    for text in overrides:
        key, value = parse_override(text)
        for part in reversed(key.split(".")):  # "a.b", 1 -> {"a": {"b": 1}}
            value = {part: value}
        _merge(cfg, value, schema, f"override {text!r}")
    _check_relations(cfg)
    return Config(cfg)


def tool_parser(
    doc: str, cfg: str | None = None, example: str = "", checkpoint: str | None = None
) -> argparse.ArgumentParser:
    """A tool's argument parser, ``doc`` (its docstring) as the description; with ``cfg``
    (``"optional"`` or ``"required"``) the repeatable ``--cfg`` and the ``key=value`` overrides
    (``example`` in their help) that :func:`load_config` takes; with ``checkpoint`` (the one the
    tool loads, e.g. ``"a --ckpt"``) the ``--trust-checkpoint`` opt-in."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if checkpoint is not None:
        parser.add_argument(
            "--trust-checkpoint",
            action="store_true",
            help=f"load {checkpoint} that holds more than data (it may run code when loaded); "
            "only for a file you made or trust",
        )
    if cfg is not None:
        required = cfg == "required"
        parser.add_argument(
            "--cfg",
            action="append",
            required=required,
            default=None if required else [],
            help="config file or name in configs/ (repeatable)",
        )
        parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    return parser


# Keys added after runs were written whose base.yaml default is not what those runs did: a stored
# config without the key meant this value (the predictor's init was detectron2's until 2026-12-06).
EARLIER_MEANING = {"model": {"roi_head": {"predictor_init": "detectron2"}}}


def with_defaults(
    stored: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``stored`` (e.g. a run's config.yaml) with every key it lacks taken from ``defaults`` (the
    schema's, where the key's default did not change what a run does; else
    :data:`EARLIER_MEANING`'s); keys the schema no longer has are kept."""
    if defaults is None:
        defaults = default_config()
        _merge(defaults, EARLIER_MEANING, defaults, "config.EARLIER_MEANING")
    out = {k: _thaw(v) for k, v in stored.items()}
    for key, default in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(_thaw(default))
        elif isinstance(default, Mapping) and isinstance(out[key], Mapping):
            out[key] = with_defaults(out[key], default)
    return out


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) configs, in order; keys on one side only
    count too."""
    keys = list(old) + [k for k in new if k not in old]
    differ = []
    for key in keys:
        a, b, full = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differ += diff_configs(a, b, full + ".")
        elif key not in old or key not in new or _thaw(a) != _thaw(b):
            differ.append(full)
    return differ
