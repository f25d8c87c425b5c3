"""Speed measurements: ours against torchvision's Faster R-CNN on a synthetic batch, the real training loop, and a
profile of one training step. ``tools/benchmark.py`` is the command line; docs/performance.md holds the results.

**Synthetic, side by side** (:func:`run_benchmark`): our detector and torchvision's Faster R-CNN (ResNet-FPN, random
weights, nothing downloaded) train and infer on the same seeded batch of ``H x W`` images with 8 boxes each, with
the same RPN/RoI settings (2000 pre-NMS / 1000 post-NMS training proposals, 512 RoIs per image at 25%
foreground), the same SGD hyper-parameters and the same AMP dtype (bf16 where supported, else fp16 with a grad
scaler), in two settings:

- ``scratch``: BatchNorm, every stage trainable (``freeze_at=0``; torchvision ``trainable_layers=5``);
- ``finetune``: frozen BatchNorm, stem and res2 frozen (``freeze_at=2``; torchvision ``trainable_layers=3``), the
  setting of a pretrained fine-tune (random weights time the same).

Fairness: each (side, setting, batch, AMP) is measured in its own process (``isolation="process"``), so no cudnn
autotuning result, allocator cache or peak-memory counter carries over from one side to the other; both get the
same cudnn.benchmark setting and the same warm-up. Peak memory (``torch.cuda.max_memory_allocated``) is the
steady state, measured over the timed iterations after the warm-up (cudnn's autotuning allocates large trial
workspaces once per shape; that warm-up peak is reported apart). Ours runs as ``gpu.yaml`` configures it
(bucketed padding, channels_last on CUDA, fused SGD, gradient clipping, the non-finite check without a host sync;
``compile`` adds torch.compile); torchvision as its reference script runs it (its own resize/normalise transform,
SGD with momentum, autocast). Timings synchronise the device.

**The real loop** (:func:`real_loop`): ``detector.engine.trainer.train`` on a config (loader, bucketing, logging
and all) for N iterations into a temporary run folder, read back from ``metrics.jsonl`` (the first log window,
holding cudnn autotuning and compilation, is left out), beside the synthetic figure of the same model at the same
settings on the run's most frequent padded shape.

**Profile** (:func:`profile_step`): ``torch.profiler`` over training steps of a config on real loader batches; the
ops that take the time, and per step the ops that make the host wait for the device (``.item()``, ``nonzero``,
``unique``, NMS, and on CUDA the runtime's synchronisations and copies).
"""
from __future__ import annotations

from .real import format_real, profile_step, real_loop
from .runner import format_table, run_benchmark, run_isolated
from .sides import SETTINGS, TorchvisionSide, build_ours, measure, synthetic_batch

__all__ = ["SETTINGS", "TorchvisionSide", "build_ours", "format_real", "format_table", "measure", "profile_step",
           "real_loop", "run_benchmark", "run_isolated", "synthetic_batch"]
