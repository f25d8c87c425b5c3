"""Torchvision backbones (:data:`BACKBONES`) with or without FPN: [N,3,H,W] -> ordered dict of
[N,C,H/s,W/s] maps.

With FPN, levels "0".."3" are P2..P5 (strides 4..32) and "pool" is P6 (64); without, "0" is C5
(stride 32). ``freeze_at=k`` freezes the first k of five stages (stem, then the four resolution
stages) with frozen BN (Detectron2).
"""

from __future__ import annotations

import math
import urllib.error
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.hub
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detector.config import BACKBONES, FPN_STRIDES
from detector.errors import WeightsError, first_line, unsafe_global
from detector.modeling.fit import misfit_message

# last block of the stem and of the stride-4/8/16/32 stages
_MOBILENET_STAGE_ENDS = (1, 3, 6, 12, 16)


_NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {  # config.NORMS
    "frozen_bn": FrozenBatchNorm2d,
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    # 32 groups where C allows
    "gn": lambda channels: nn.GroupNorm(math.gcd(32, channels), channels),
}


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose BatchNorm layers (plain or synced) are FrozenBatchNorm2d with the
    same statistics."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.load_state_dict(module.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _freeze_batchnorm(child))
    return module


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        code = unsafe_global(exc)
        if code:
            raise WeightsError(
                f"model.backbone.weights: {path} holds {code}, which is code, not weights, so it "
                f"was not loaded; save the weights as tensors only: torch.save(model.state_dict())"
            ) from None
        raise WeightsError(
            f"model.backbone.weights: {path} is not a readable torch state dict "
            f"({first_line(exc, typed=True)}); "
            f"expected a file written by torch.save(model.state_dict())"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"model.backbone.weights: {path} holds no state dict of tensors")
    return state


def _weights_state_dict(name: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, its source) of ``weights``: a local ``.pth`` file, else a torchvision weights
    name of model ``name`` (from the hub cache or the internet; a clear error offline)."""
    path = Path(weights).expanduser()
    if path.is_file():
        return _read_state_dict(path), str(path)
    enum = torchvision.models.get_model_weights(name)
    if weights not in enum.__members__:
        valid = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise WeightsError(
            f"model.backbone.weights={weights!r} is neither an existing file nor a "
            f"torchvision weights name of {name} ({valid})"
        )
    entry = enum[weights]
    try:
        state = torch.hub.load_state_dict_from_url(entry.url, progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsError(
            f"model.backbone.weights={weights!r}: could not download {type(entry).__name__}."
            f"{entry.name} from {entry.url} ({exc}). Without internet, fetch that file on another "
            f"machine and pass its local path: model.backbone.weights=/path/to/{name}.pth"
        ) from exc
    return state, f"torchvision {name} {weights}"


def _load_trunk_weights(
    trunk: nn.Module, state: dict[str, torch.Tensor], source: str, name: str
) -> None:
    """Load an ImageNet classifier state dict into the trunk of torchvision's ``name``, skipping the
    classifier head and entries the trunk's norm does not keep (BN's counter under frozen_bn, its
    statistics under gn)."""
    head = ("fc.", "classifier.")
    expected, layers = trunk.state_dict(), dict(trunk.named_modules())
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(head) and (k in expected or k.rpartition(".")[0] not in layers)
    }
    message = misfit_message(
        source,
        trunk,
        state,
        skip=head,
        fix=f"model.backbone.weights takes a state dict of torchvision's {name} (or set the "
        f"model.backbone.name it belongs to)",
    )
    if message:
        raise WeightsError(message)
    trunk.load_state_dict(state, strict=False)


def _trunk_and_stages(name: str, norm: str):
    """(classifier, module holding the stages, child names of each of the 5 stages, 4 returned
    stages, channels)."""
    if BACKBONES[name] == "resnet":  # config.BACKBONES
        trunk = getattr(torchvision.models, name)(weights=None, norm_layer=_NORM_LAYERS[norm])
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        expansion = trunk.layer1[0].expansion  # 1 for BasicBlock (resnet18/34), 4 for Bottleneck
        channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        return trunk, trunk, stages, ["layer1", "layer2", "layer3", "layer4"], channels
    trunk = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=_NORM_LAYERS[norm])
    starts = (0,) + tuple(end + 1 for end in _MOBILENET_STAGE_ENDS[:-1])
    stages = [[str(i) for i in range(s, e + 1)] for s, e in zip(starts, _MOBILENET_STAGE_ENDS)]
    returned = [str(e) for e in _MOBILENET_STAGE_ENDS[1:]]
    channels = [trunk.features[e].out_channels for e in _MOBILENET_STAGE_ENDS[1:]]
    return trunk, trunk.features, stages, returned, channels


class Backbone(nn.Module):
    """Trunk (+ FPN) -> OrderedDict of feature maps; ``out_channels`` and ``strides`` describe the
    levels."""

    def __init__(self, body: nn.Module, out_channels: int, strides: tuple[int, ...]):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.strides = strides
        # the levels RoIs pool from: P2..P5 with FPN ("pool", P6, only proposes), else "0"
        self.pooled_levels = (
            [str(i) for i in range(len(strides) - 1)] if len(strides) > 1 else ["0"]
        )

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(self.body(images))


def build_backbone(
    *, name: str, fpn: bool, out_channels: int, norm: str, freeze_at: int, weights: str | None
) -> Backbone:
    """``weights``: None, a torchvision weights name (downloaded on request only) or a local
    ``.pth`` state dict."""
    trunk, body, stages, returned, channels = _trunk_and_stages(name, norm)
    if weights is not None:
        _load_trunk_weights(trunk, *_weights_state_dict(name, weights), name)
    for child in (c for stage in stages[:freeze_at] for c in stage):
        module = _freeze_batchnorm(getattr(body, child))
        module.requires_grad_(False)
        setattr(body, child, module)
    if fpn:
        return_layers = {layer: str(i) for i, layer in enumerate(returned)}
        with_fpn = BackboneWithFPN(
            body, return_layers, channels, out_channels, extra_blocks=LastLevelMaxPool()
        )
        return Backbone(with_fpn, out_channels, FPN_STRIDES)
    return Backbone(IntermediateLayerGetter(body, {returned[-1]: "0"}), channels[-1], (32,))
