"""Helpers shared by several test files (not tests themselves): tiny models, hand-made inputs, and a
tiny in-memory dataset and detector with the evaluation API (no images).

FakeDataset conventions: boxes absolute xyxy float32, labels 1..K (0 = background), ``iscrowd``
doubles as VOC's difficult. Category ids are deliberately not 1..K (label k -> category id 10 * k +
1) so a missed conversion fails loudly.
"""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import torch

from detector.boxes import box_area
from detector.config import keyword_args, load_config
from detector.losses.regression import build_box_loss
from detector.modeling.backbone import build_backbone
from detector.modeling.detector import TwoStageDetector, build_detector
from detector.modeling.roi_heads import RoIHeads

TINY = [
    "model.roi_head.fc_dim=64",
    "model.roi_head.batch_size_per_image=64",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=100",
    "model.backbone.out_channels=64",
]


def tiny_model(*overrides: str, num_classes: int = 3, seed: int = 0) -> TwoStageDetector:
    torch.manual_seed(seed)
    return build_detector(load_config([], TINY + list(overrides)), num_classes=num_classes)


def make_backbone(**keys):
    """``build_backbone`` with base.yaml's ``model.backbone`` keys, ``keys`` replacing some."""
    return build_backbone(**{**load_config().model.backbone.to_dict(), **keys})


def make_roi_heads(in_channels: int, num_classes: int, **keys) -> RoIHeads:
    """RoIHeads pooling level "0", with base.yaml's ``model.roi_head`` keys (``keys`` replace
    some)."""
    roi = load_config().model.roi_head
    # as build_detector passes them
    kwargs = dict(
        box_loss=build_box_loss(roi.box_loss),
        box_loss_normalizer=roi.box_loss.normalizer,
        beta_schedule=None,
        label_assigner=None,
        **keyword_args(roi, "box_loss", "cls_weight", "dynamic_label_assignment", "test"),
        **roi.test,
    )
    return RoIHeads(in_channels, ["0"], num_classes, **{**kwargs, **keys})


def two_images():
    """A uint8 and a float image of different sizes with one and two boxes."""
    images = [torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8), torch.rand(3, 112, 144)]
    targets = [
        {
            "boxes": torch.tensor([[20.0, 30.0, 80.0, 100.0]]),
            "labels": torch.tensor([2]),
            "image_id": 7,
        },
        {
            "boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 40.0, 130.0, 100.0]]),
            "labels": torch.tensor([1, 3]),
        },
    ]
    return images, targets


def empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def tiny_run_overrides(data_root: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run on a tiny synthetic set."""
    values = {
        "output_dir": str(run_dir),
        "data.root": str(data_root),
        "data.synthetic.num_train": 8,
        "data.synthetic.num_val": 4,
        "data.synthetic.image_size": "[128, 128]",
        "data.input.min_size_train": "[128]",
        "data.input.max_size_train": 160,
        "data.input.min_size_test": 128,
        "data.input.max_size_test": 160,
        "data.loader.num_workers": 0,
        "train.batch_size": 2,
        "train.max_iters": 2,
        "train.log_period": 1,
        "train.warmup_iters": 1,
        "train.checkpoint_period": 1,
        "train.device": "cpu",
        "train.num_vis_images": 1,
        "model.backbone.name": "resnet18",
        "model.roi_head.fc_dim": 64,
        "model.roi_head.batch_size_per_image": 32,
        "model.rpn.pre_nms_topk_train": 100,
        "model.rpn.post_nms_topk_train": 50,
        "model.rpn.pre_nms_topk_test": 100,
        "model.rpn.post_nms_topk_test": 50,
        "model.backbone.out_channels": 32,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


class FakeDataset:
    """``images``: list of (image_id, [(x1, y1, x2, y2, label, iscrowd), ...]); images are 100 x 120
    (H x W)."""

    def __init__(self, images, classes=("__background__", "cat", "dog"), height=100, width=120):
        self.classes = list(classes)
        self.label_to_cat_id = {label: 10 * label + 1 for label in range(1, len(self.classes))}
        self._images = images
        self._size = (height, width)

    def __len__(self) -> int:
        return len(self._images)

    def get_image_info(self, i: int) -> dict:
        image_id, _ = self._images[i]
        return {
            "image_id": image_id,
            "file_name": f"{image_id:06d}.jpg",
            "height": self._size[0],
            "width": self._size[1],
        }

    def get_target(self, i: int) -> dict:
        image_id, objects = self._images[i]
        boxes = torch.tensor([o[:4] for o in objects], dtype=torch.float32).reshape(-1, 4)  # [N,4]
        return {
            "boxes": boxes,
            "labels": torch.tensor([o[4] for o in objects], dtype=torch.int64).reshape(-1),
            "image_id": image_id,
            "iscrowd": torch.tensor([bool(o[5]) for o in objects], dtype=torch.bool),
            "area": box_area(boxes),
        }


def perfect_detections(dataset) -> list[dict]:
    """Every non-crowd GT box returned as a detection with score 1."""
    detections = []
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        keep = ~target["iscrowd"]
        detections.append(
            {
                "image_id": target["image_id"],
                "boxes": target["boxes"][keep],
                "labels": target["labels"][keep],
                "scores": torch.ones(int(keep.sum())),
            }
        )
    return detections


def random_dataset(
    seed: int, num_images: int = 12, num_classes: int = 3, crowd_prob: float = 0.1
) -> FakeDataset:
    """Random boxes (some crowd/difficult) on 100 x 120 images, image ids 1000 + i."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(num_images):
        objects = []
        for _ in range(int(torch.randint(0, 6, (1,), generator=g))):
            x1, y1 = (torch.rand(2, generator=g) * torch.tensor([90.0, 70.0])).tolist()
            w, h = (4 + torch.rand(2, generator=g) * 40).tolist()
            label = int(torch.randint(1, num_classes + 1, (1,), generator=g))
            objects.append(
                (
                    x1,
                    y1,
                    min(x1 + w, 120.0),
                    min(y1 + h, 100.0),
                    label,
                    bool(torch.rand(1, generator=g) < crowd_prob),
                )
            )
        images.append((1000 + i, objects))
    classes = ["__background__"] + [f"class{k}" for k in range(1, num_classes + 1)]
    return FakeDataset(images, classes=classes)


def random_detections(dataset, seed: int, per_image: int = 8) -> list[dict]:
    """Jittered copies of GT boxes plus random boxes, random labels and scores: a mix of TPs, FPs
    and duplicates."""
    g = torch.Generator().manual_seed(seed)
    num_classes = len(dataset.classes) - 1
    detections = []
    for i in range(len(dataset)):
        target = dataset.get_target(i)
        jittered = target["boxes"] + torch.randn(target["boxes"].shape, generator=g) * 3
        jittered_labels = target["labels"].clone()
        swap = torch.rand(len(jittered_labels), generator=g) < 0.2
        jittered_labels[swap] = torch.randint(1, num_classes + 1, (int(swap.sum()),), generator=g)
        xy = torch.rand(per_image, 2, generator=g) * torch.tensor([90.0, 70.0])
        wh = 3 + torch.rand(per_image, 2, generator=g) * 40
        boxes = torch.cat([jittered, torch.cat([xy, xy + wh], dim=1)])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # keep x2 > x1, y2 > y1
        labels = torch.cat(
            [jittered_labels, torch.randint(1, num_classes + 1, (per_image,), generator=g)]
        )
        detections.append(
            {
                "image_id": target["image_id"],
                "boxes": boxes,
                "labels": labels,
                "scores": torch.rand(len(boxes), generator=g),
            }
        )
    return detections


class FakeDetector(torch.nn.Module):
    """Returns one box per image covering the original image; records how it was called."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.calls = []

    def forward(self, images, orig_sizes=None, proposals=None):
        self.calls.append(
            {
                "training": self.training,
                "grad": torch.is_grad_enabled(),
                "orig_sizes": orig_sizes,
                "num_images": len(images),
            }
        )
        outputs = []
        for image, (h, w) in zip(images, orig_sizes):
            box = torch.tensor([[0.0, 0.0, w, h]], device=image.device) * self.weight
            outputs.append(
                {
                    "boxes": box,
                    "labels": torch.tensor([1], device=image.device),
                    "scores": (image.float().mean() / 255).reshape(1),
                }
            )
        return outputs


def make_loader(image_ids, batch_size=2):
    """Batches of (images uint8 [3,H,W], targets with image_id and orig_size) as the val loader
    yields them."""
    batches = []
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start : start + batch_size]
        images = [torch.full((3, 8, 10), i % 256, dtype=torch.uint8) for i in ids]
        targets = [{"image_id": i, "orig_size": torch.tensor([16 + i, 20 + i])} for i in ids]
        batches.append((images, targets))
    return batches


def poison_third_training_forward(monkeypatch, trainer_mod) -> None:
    """Make the trainer's model return a NaN ``loss_box_reg`` on its third training-mode forward
    (iteration 2)."""
    real_build = trainer_mod.build_detector

    def build_poisoned(cfg, num_classes=None):
        model = real_build(cfg, num_classes=num_classes)
        forward, calls = model.forward, {"n": 0}

        def poisoned(*args, **kwargs):
            out = forward(*args, **kwargs)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 3:
                    out[0]["loss_box_reg"] = out[0]["loss_box_reg"] * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(trainer_mod, "build_detector", build_poisoned)


REPO = Path(__file__).resolve().parent.parent


def run_tool_process(
    tool: str, *argv: str, timeout: float = 1200, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python tools/<tool>.py argv...`` as a user runs it: a subprocess with this checkout
    first on PYTHONPATH; its stdout and stderr as text.

    Use it for tools/train.py and any call that trains, starts processes, installs signal handlers
    or sets torch's thread count, and for one call of every tool somewhere in the suite (the
    script's entry, its exit code through the interpreter); elsewhere :func:`run_tool_main` gives
    the same result without the ~3 s of interpreter and torch import."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    env.pop("DETECTOR_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


_TOOLS = {}


def run_tool_main(tool: str, *argv, env: dict | None = None) -> subprocess.CompletedProcess:
    """:func:`run_tool_process`'s result from ``tools/<tool>.py``'s ``main(argv)`` run in this
    process: stdout and stderr captured, argparse's ``SystemExit`` turned into its code, ``env``
    set (and ``DETECTOR_TRACEBACK`` removed) only for the call. A bug, an exception ``run_tool``
    does not turn into an exit code, propagates with its traceback.

    Only for calls that neither train, start processes, install signal handlers nor set torch's
    thread count: the tool shares this process's global state."""
    if tool not in _TOOLS:
        name = f"helpers_tool_{tool}"
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{tool}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _TOOLS[tool] = module
    args = [str(arg) for arg in argv]
    command = [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args]
    out, err = io.StringIO(), io.StringIO()
    # os.environ and sys.argv come back whole after the call; argparse names the program after
    # sys.argv[0], as in the tool's own process
    environ = mock.patch.dict(os.environ, env or {})
    with environ, mock.patch.object(sys, "argv", command[1:]):
        os.environ.pop("DETECTOR_TRACEBACK", None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = _TOOLS[tool].main(args)
            except SystemExit as exc:
                # as the interpreter exits: None is 0, a message is printed and exits 1
                code = exc.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
    return subprocess.CompletedProcess(command, code or 0, out.getvalue(), err.getvalue())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The tool's stderr, asserted to be one ``error:`` line without a traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    return errors[0]
