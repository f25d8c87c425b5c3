"""Where and how a process computes: device, mixed precision, seeds, batches onto the device, and stopping.

``GracefulStop`` turns the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) into a request that the
training loop honours after the current step (it writes ``last.pth`` and exits non-zero with a resume hint); a
second Ctrl-C exits at once.
"""
from __future__ import annotations

import random
import signal
import sys
import threading

import numpy as np
import torch

from detector.engine import distributed as dist_utils


def notice(message: str) -> None:
    """A one-line message from rank 0, on stderr (beside a progress bar, not on it)."""
    if dist_utils.is_main_process():
        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr)


def select_device(name: str) -> torch.device:
    """``train.device``: auto (CUDA if present), cpu or cuda (this process's local rank under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        from detector.config import ConfigError
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device(name)


def amp_settings(enabled: bool, device: torch.device, dtype: str = "auto") -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a grad scaler is needed) for ``train.amp`` / ``train.amp_dtype``.

    ``auto``: bf16 where supported, else fp16; fp16 always comes with a grad scaler. AMP is a GPU feature:
    on CPU it is off.
    """
    if not enabled or device.type != "cuda":
        return None, False
    if dtype == "bfloat16" or (dtype == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def to_device(images, targets, device: torch.device):
    """A loader batch (list of [3,H,W] images, list of target dicts) onto ``device``, without blocking."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


class GracefulStop:
    """A context manager: inside it, SIGINT/SIGTERM set ``requested`` instead of killing the process.

    The loop checks ``requested`` after each step. A second SIGINT restores the default handler's behaviour
    (``KeyboardInterrupt`` at once). Outside the main thread (where signals cannot be handled) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
