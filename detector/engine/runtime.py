"""Where and how a process computes: device, mixed precision, seeds, ``torch.compile``, batches onto
the device, and stopping (:class:`GracefulStop`)."""

from __future__ import annotations

import random
import signal
import sys
import threading

import numpy as np
import torch

from detector.config import ConfigError
from detector.engine import distributed as dist_utils
from detector.errors import first_line


def notice(message: str) -> None:
    """A one-line message from rank 0, on stderr (beside a progress bar, not on it)."""
    if dist_utils.is_main_process():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def select_device(name: str) -> torch.device:
    """``train.device``: auto (CUDA if present), cpu or cuda (this process's local rank under
    torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device=cuda but CUDA is not available; use train.device=auto or cpu"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", dist_utils.local_rank())


def amp_settings(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a grad scaler is needed) for ``train.amp``: bf16 where the
    GPU supports it, else fp16 with a grad scaler; off on CPU."""
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


COMPILE_TARGETS = {
    "none": (),
    "backbone": ("backbone",),
    "all": ("backbone", "rpn.head", "roi_heads.box_head"),
}


def compile_submodules(model: torch.nn.Module, what: str) -> list[str]:
    """``train.compile``: compile the forward of the submodules ``COMPILE_TARGETS[what]`` in place
    (state dicts are unchanged; a failure falls back to eager, :class:`CompiledForward`); returns
    their names."""
    present = dict(model.named_modules())  # e.g. no RPN with precomputed proposals
    names = [name for name in COMPILE_TARGETS[what] if name in present]
    for name in names:
        module = model.get_submodule(name)
        module.forward = CompiledForward(module.forward, f"train.compile={what}: the {name}")
    return names


class CompiledForward:
    """A module's forward through ``torch.compile``, falling back to the eager forward for good,
    with one line on stderr, the first time compiling or running the compiled code raises."""

    def __init__(self, forward, label: str):
        self.eager, self.label = forward, label
        try:
            self.compiled = torch.compile(forward)
        except Exception as exc:  # torch.compile refuses this platform outright
            self.compiled = None
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        notice(
            f"{self.label} could not be compiled ({first_line(exc, typed=True)}); "
            "continuing uncompiled"
        )

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # compilation happens here, at the first call of each shape
                self.compiled = None
                self._fall_back(exc)
        return self.eager(*args, **kwargs)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True  # and the trainer leaves cudnn.benchmark off


def to_device(images, targets, device: torch.device):
    """A loader batch (list of [3,H,W] images, list of target dicts) onto ``device``, without
    blocking."""

    def move(value):
        return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value

    return [move(img) for img in images], [{k: move(v) for k, v in t.items()} for t in targets]


class GracefulStop:
    """Inside it SIGINT and SIGTERM raise ``KeyboardInterrupt(<name>)``; if ``graceful``, the first
    only sets ``requested`` (the loop stops after the step) and a second SIGINT raises. Main thread
    only."""

    def __init__(self, graceful: bool = True):
        self.graceful = graceful
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.graceful or (self.requested and signum == signal.SIGINT):
            raise KeyboardInterrupt(name)
        self.requested = name

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
