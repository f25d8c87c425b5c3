"""User-facing errors and the one-line policy of the command-line tools.

A :class:`DetectorError` is a problem with the user's input or environment (a config key, a data file, a
checkpoint, a run folder, a full or read-only disk): its message names the file or field and the fix, and the
tools print it as one line. Anything else is a bug and keeps its traceback. Each module raises its own subclass
(``ConfigError``, ``DatasetError``, ``CheckpointError``, ``RunFolderError``, ...), so the policy lives here once.
"""
from __future__ import annotations

import errno
import os

# OS errors that are the user's environment, not our bug: a full or read-only disk, a path that cannot be made
USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                  errno.ENAMETOOLONG, errno.EISDIR}


class DetectorError(Exception):
    """A problem with the user's input or environment; the message names the file or field and the fix."""


class WeightsError(DetectorError):
    """``model.backbone.weights`` names no readable file or torchvision weights (or the download failed)."""


def user_error_line(exc: BaseException) -> str | None:
    """The one line to print for a known user error, or None for anything that should keep its traceback."""
    if isinstance(exc, DetectorError):
        return f"error: {exc}"
    if isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS:
        where = exc.filename if exc.filename is not None else "(unknown path)"
        fix = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
               else "choose a path you can write to (output_dir, data.root or --out)")
        return f"error: {where}: {os.strerror(exc.errno)}; {fix}"
    return None


def traceback_requested() -> bool:
    """``DETECTOR_TRACEBACK=1`` prints the traceback of user errors too."""
    return os.environ.get("DETECTOR_TRACEBACK", "") not in ("", "0")
