"""Whether a state dict fits a model, and the one line (:func:`misfit_message`) every weight loader
uses when not: ``<file> does not fit the model built from the config: <what differs>; <what to
do>``."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from detector.config import diff_configs


def misfit_message(
    source: Any,
    model: nn.Module,
    weights: Mapping[str, Any],
    fix: str,
    stored_config: Any = None,
    config: Mapping[str, Any] | None = None,
    skip: tuple[str, ...] = (),
) -> str | None:
    """None when ``weights`` holds exactly ``model.state_dict()``'s entries and shapes (prefixes in
    ``skip`` left out); else the one line ending with ``fix``, naming the differing ``model.*`` keys
    of ``stored_config`` vs ``config``, the class count, or else the counts of differing, missing
    and unexpected tensors."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in weights.items() if not k.startswith(skip)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        k
        for k in expected
        if k in given
        and isinstance(expected[k], torch.Tensor)
        and isinstance(given[k], torch.Tensor)
        and expected[k].shape != given[k].shape
    ]
    if not (missing or unexpected or reshaped):
        return None
    differences = []
    if (
        isinstance(stored_config, Mapping)
        and isinstance(stored_config.get("model"), Mapping)
        and config is not None
    ):
        keys = diff_configs(stored_config["model"], config.get("model", {}), "model.")
        differences += [
            f"{key} is {_lookup(stored_config, key)} in the checkpoint but "
            f"{_lookup(config, key)} in the config"
            for key in keys[:3]
        ]
        if len(keys) > 3:
            differences.append(f"and {len(keys) - 3} more model.* keys")
    classifier = getattr(
        getattr(getattr(model, "roi_heads", None), "box_head", None), "cls_score", None
    )
    if classifier is not None:  # [K+1] class logits: the class count, which the dataset decides
        key = next(name for name, p in model.named_parameters() if p is classifier.bias)
        if isinstance(given.get(key), torch.Tensor) and given[key].shape != classifier.bias.shape:
            differences.append(
                f"the checkpoint has {given[key].shape[0] - 1} foreground classes but the config's "
                f"dataset has {classifier.bias.shape[0] - 1}"
            )
    if not differences:
        example = (
            f"{reshaped[0]} is {list(given[reshaped[0]].shape)} in the file but "
            f"{list(expected[reshaped[0]].shape)} in the model"
            if reshaped
            else f"e.g. {(missing or unexpected)[0]}"
        )
        differences.append(
            f"{len(reshaped)} tensors differ in shape, {len(missing)} are missing and "
            f"{len(unexpected)} unexpected ({example})"
        )
    return f"{source} does not fit the model built from the config: {'; '.join(differences)}; {fix}"


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` of a nested dict, or None where a part is absent."""
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
