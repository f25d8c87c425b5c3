"""The predictor's initialisation (issue 31) and torchvision's FasterRCNN as the accuracy-parity
reference."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest
import scipy.stats
import torch
from helpers import TINY, one_error_line, run_tool_process, two_images
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from detector.config import ConfigError, load_config, resolve_config_path, with_defaults
from detector.errors import UsageError
from detector.modeling import roi_heads as our_roi_heads
from detector.modeling import rpn as our_rpn
from detector.modeling.detector import build_detector
from detector.modeling.matcher import sample_balanced

REPO = Path(__file__).resolve().parents[1]


def _model(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_detector(load_config([], TINY + list(overrides)), num_classes=3)


def _predictor(model):
    heads = model.roi_heads
    return heads.box_head if hasattr(heads.box_head, "cls_score") else heads.box_predictor


@pytest.mark.parametrize("implementation", ["ours", "torchvision"])
def test_default_predictor_init_is_nn_linear_default(implementation):
    """The default that trained best from scratch (docs/performance.md): nn.Linear's init, std
    1/sqrt(3 fan_in)."""
    head = _predictor(_model(f"model.implementation={implementation}"))
    expected = 1 / math.sqrt(3 * 64)  # TINY's fc_dim
    for layer in (head.cls_score, head.bbox_pred):
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.15)
        assert layer.bias.abs().max().item() > 0


@pytest.mark.parametrize("implementation", ["ours", "torchvision"])
def test_detectron2_predictor_init(implementation):
    head = _predictor(
        _model(
            f"model.implementation={implementation}",
            "model.roi_head.predictor_init=detectron2",
        )
    )
    assert head.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert head.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert head.cls_score.bias.abs().max().item() == 0
    assert head.bbox_pred.bias.abs().max().item() == 0


def test_a_run_written_before_the_key_keeps_detectron2s_init():
    stored = load_config().to_dict()
    del stored["model"]["roi_head"]["predictor_init"]
    assert with_defaults(stored)["model"]["roi_head"]["predictor_init"] == "detectron2"
    assert load_config().model.roi_head.predictor_init == "torchvision"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.roi_head.box_loss.name=giou", "model.roi_head.box_loss.name"),
        ("model.roi_head.class_agnostic=true", "model.roi_head.class_agnostic"),
        ("model.rpn.box_loss.beta=1.0", "model.rpn.box_loss.beta"),
        ("model.roi_head.dynamic_label_assignment.enabled=true", "dynamic_label_assignment"),
    ],
)
def test_reference_refuses_what_it_cannot_match(override, key):
    with pytest.raises(ConfigError, match=key) as err:
        load_config([], ["model.implementation=torchvision", override])
    assert "\n" not in str(err.value)


def _copy_weights(ours, reference):
    """Our parameters into torchvision's model: same backbone and RPN names; the box head's fc1/fc2
    are fc6/fc7, and torchvision's bbox_pred has a (never used) background slot before our [4K]
    rows."""
    state = dict(ours.state_dict())
    names = {"roi_heads.box_head.fc1": "roi_heads.box_head.fc6"}
    names["roi_heads.box_head.fc2"] = "roi_heads.box_head.fc7"
    names["roi_heads.box_head.cls_score"] = "roi_heads.box_predictor.cls_score"
    target = reference.state_dict()
    for key, value in state.items():
        for old, new in names.items():
            key = key.replace(old, new)
        if key.startswith("roi_heads.box_head.bbox_pred"):
            key = key.replace("box_head", "box_predictor")
            value = torch.cat([target[key][:4], value])
        if key in target:
            target[key] = value
    reference.load_state_dict(target)


def _twins(*overrides):
    """Ours and the torchvision reference with the same weights, in training mode."""
    ours = _model(*overrides)
    reference = _model("model.implementation=torchvision", *overrides)
    _copy_weights(ours, reference)
    return ours.train(), reference.train()


def _batch_of_64s():
    """two_images' targets on images whose sides are multiples of 64: torchvision derives P6's
    anchor stride from the map size, ours fixes it at 64 (test_anchors_differ_only_on_p6)."""
    images = [torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8), torch.rand(3, 192, 128)]
    return images, two_images()[1]


def test_same_weights_same_batch_give_the_same_losses():
    """With every candidate anchor and RoI sampled (no random sampling left), both detectors compute
    the same four losses from the same weights: the reference is built faithfully, and a gap
    between them is about training."""
    every = [
        "model.rpn.batch_size_per_image=100000",
        "model.roi_head.batch_size_per_image=100000",
        "model.rpn.positive_fraction=1.0",
        "model.roi_head.positive_fraction=1.0",
    ]
    ours, reference = _twins(*every)
    images, targets = _batch_of_64s()
    torch.manual_seed(1)
    ours_losses, _ = ours(images, targets)
    torch.manual_seed(1)
    ref_losses, ref_stats = reference(images, targets)
    assert set(ref_losses) == set(ours_losses) and ref_stats == {}
    for name, value in ours_losses.items():
        assert ref_losses[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name


def test_default_samplers_sample_alike_per_image(monkeypatch):
    """With the default samplers (not every candidate, as above), the same weights and batch give
    both the same training proposals and, per image, the same foreground and background candidates
    and sampled counts in the RPN and the RoI heads, as torchvision's per-image
    BalancedPositiveNegativeSampler (issue 31, "What is left"). A per-batch sampler or proposals
    selected otherwise (clipping, NMS, the number kept) would fail here."""
    ours, reference = _twins()
    counts = {"ours": [], "torchvision": []}

    def ours_sampler(fg, bg, batch_size_per_image, positive_fraction):
        index, is_fg, valid = sample_balanced(fg, bg, batch_size_per_image, positive_fraction)
        for i in range(fg.shape[0]):
            counts["ours"].append(
                [
                    fg[i].sum(),
                    bg[i].sum(),
                    (is_fg[i] & valid[i]).sum(),
                    (valid[i] & ~is_fg[i]).sum(),
                ]
            )
        return index, is_fg, valid

    def reference_sampler(sampler):
        def sample(labels):
            positive, negative = sampler(labels)
            for label, pos, neg in zip(labels, positive, negative):
                counts["torchvision"].append(
                    [(label >= 1).sum(), (label == 0).sum(), pos.sum(), neg.sum()]
                )
            return positive, negative

        return sample

    monkeypatch.setattr(our_rpn, "sample_balanced", ours_sampler)
    monkeypatch.setattr(our_roi_heads, "sample_balanced", ours_sampler)
    monkeypatch.setattr(
        reference.rpn, "fg_bg_sampler", reference_sampler(reference.rpn.fg_bg_sampler)
    )
    monkeypatch.setattr(
        reference.roi_heads, "fg_bg_sampler", reference_sampler(reference.roi_heads.fg_bg_sampler)
    )
    proposals = {}
    for name, model in (("ours", ours), ("torchvision", reference)):
        forward = model.rpn.forward

        def record(*args, name=name, forward=forward, **kwargs):
            out = forward(*args, **kwargs)
            # ours: padded [N,P,4] with a valid mask [N,P]; torchvision: a list of [P_i,4]
            proposals[name] = [b[v] for b, v in zip(out[0], out[2])] if name == "ours" else out[0]
            return out

        monkeypatch.setattr(model.rpn, "forward", record)
    images, targets = _batch_of_64s()
    with torch.no_grad():
        ours(images, targets)
        reference(images, targets)
    # per image: RPN then RoI heads; [#fg candidates, #bg candidates, sampled fg, sampled bg]
    assert torch.tensor(counts["ours"]).tolist() == torch.tensor(counts["torchvision"]).tolist()
    assert len(counts["ours"]) == 4
    # the samplers did cap: fewer sampled than candidates
    assert all(row[3] < row[1] for row in torch.tensor(counts["ours"]).tolist())
    for mine, theirs in zip(proposals["ours"], proposals["torchvision"]):
        assert len(mine) == len(theirs) > 0
        assert box_iou(theirs, mine).max(dim=1).values.min() > 0.999


def test_anchors_differ_only_on_p6():
    """The one difference left in the anchors: torchvision's stride is the padded image's side //
    the map's, ours the FPN's fixed 4..64. They agree on P2..P5 always and on P6 when the side is a
    multiple of 64; at 288 (the quickstart's largest training scale) P6 steps 57 px, ours 64."""
    ours, reference = _twins()
    for side, p6_equal in ((256, True), (288, False)):
        grids = [(math.ceil(side / s), math.ceil(side / s)) for s in (4, 8, 16, 32, 64)]
        mine = ours.rpn.anchors(grids, torch.device("cpu")).split([3 * h * w for h, w in grids])
        batch = ImageList(torch.zeros(1, 3, side, side), [(side, side)])
        features = [torch.zeros(1, 1, h, w) for h, w in grids]
        theirs = reference.rpn.anchor_generator(batch, features)[0].split(
            [3 * h * w for h, w in grids]
        )
        for level, (a, b) in enumerate(zip(mine, theirs)):
            assert torch.equal(a, b) == (level < 4 or p6_equal), (side, level)


def test_reference_loss_takes_the_configured_beta():
    reference = _model("model.implementation=torchvision")
    logits, deltas = torch.randn(6, 4), torch.randn(6, 16)
    labels, targets = [torch.tensor([0, 1, 2, 3, 1, 0])], [torch.randn(6, 4)]
    reference.box_beta = 1 / 9
    expected = fastrcnn_loss(logits, deltas, labels, targets)
    assert torch.allclose(
        torch.stack(reference._fastrcnn_loss(logits, deltas, labels, targets)),
        torch.stack(expected),
    )
    reference.box_beta = 1.0
    assert reference._fastrcnn_loss(logits, deltas, labels, targets)[1] != expected[1]


def test_reference_detections_follow_our_contract():
    reference = _model("model.implementation=torchvision").eval()
    images, _ = two_images()
    with torch.no_grad():
        detections = reference(images, orig_sizes=[(256, 320), (112, 144)])
    assert len(detections) == 2
    for det, (height, width) in zip(detections, [(256, 320), (112, 144)]):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape[1] == 4
        if len(det["boxes"]):
            assert det["boxes"][:, 2].max() <= width and det["boxes"][:, 3].max() <= height
            assert det["labels"].min() >= 1


def _parity_tool():
    spec = importlib.util.spec_from_file_location("parity_tool", REPO / "tools" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parity_report_pairs_by_seed_and_by_welch():
    tool = _parity_tool()
    base = {0: {"AP": 60.0}, 1: {"AP": 62.0}, 2: {"AP": 64.0}}
    arm = {0: {"AP": 61.0}, 1: {"AP": 64.0}, 2: {"AP": 64.0}}
    paired, welch = tool.compare(arm, base, "AP")
    # by hand: differences 1, 2, 0 -> mean 1, sd 1, se 1/sqrt(3), t(2) 97.5% = 4.3027
    # -> [-1.48, +3.48]
    assert paired.startswith("+1.0 [-1.5, +3.5]")
    # Welch: means 63 and 62, variances 3 and 4, se = sqrt(3/3 + 4/3); df by Welch-Satterthwaite
    a, b = [61.0, 64.0, 64.0], [60.0, 62.0, 64.0]
    se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
    df = se**4 / ((statistics.variance(a) / 3) ** 2 / 2 + (statistics.variance(b) / 3) ** 2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * se
    assert welch.startswith(f"+1.0 [{1 - half:+.1f}, {1 + half:+.1f}]")
    assert tool.compare({0: {"AP": 1.0}}, base, "AP") == ("too few runs", "too few runs")


def test_parity_arms_are_configs_of_their_own(tmp_path):
    tool = _parity_tool()
    arms = tool.parse_arms(["ours_d2:model.roi_head.predictor_init=detectron2"])
    assert list(arms) == ["torchvision", "ours", "ours_d2"]
    path = tmp_path / "arms" / "ours_d2.yaml"
    path.parent.mkdir()
    path.write_text(tool.arm_config(resolve_config_path("smoothl1.yaml"), arms["ours_d2"]))
    assert path.read_text().startswith("_base_: smoothl1.yaml\n")  # the same in any checkout
    cfg = load_config([path])
    assert cfg.model.roi_head.predictor_init == "detectron2"
    assert cfg.model.roi_head.box_loss.name == "smooth_l1"
    with pytest.raises(UsageError):
        tool.parse_arms(["ours:model.implementation=ours"])


def test_parity_never_replaces_a_file_it_did_not_write(tmp_path):
    """docs/runs.md, "Outputs": an arm's config or parity.md that is there is replaced only when
    this tool wrote it (the same arm, a parity report), or with --overwrite."""
    tool = _parity_tool()
    out = tmp_path / "parity"
    (out / "arms").mkdir(parents=True)
    (out / "arms" / "ours.yaml").write_text("my config\n")
    proc = run_tool_process("parity", "--out", out, "--seeds", "1")
    assert proc.returncode == 2 and "ours.yaml already exists" in one_error_line(proc)
    assert (out / "arms" / "ours.yaml").read_text() == "my config\n"
    assert [path.name for path in out.rglob("*")] == ["arms", "ours.yaml"]  # nothing trained
    base = resolve_config_path("smoothl1.yaml")
    texts = {name: tool.arm_config(base, o) for name, o in tool.parse_arms([]).items()}
    for name, text in texts.items():
        (out / "arms" / f"{name}.yaml").write_text(text)
    (out / "parity.md").write_text(tool.TITLE + "\n\nan earlier report\n")
    tool.check_outputs(out, texts, overwrite=False)
    (out / "parity.md").write_text("my notes\n")
    with pytest.raises(UsageError, match="parity.md already exists"):
        tool.check_outputs(out, texts, overwrite=False)
    tool.check_outputs(out, texts, overwrite=True)
