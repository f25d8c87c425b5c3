"""User-facing errors and the one error path of the command-line tools (:func:`run_tool`).

A :class:`DetectorError` is a problem with the user's input or environment: the tools print its
message as one line; anything else is a bug and keeps its traceback. ``exit_code`` says the kind: 2
a config or usage error (command line, config, run folder), 1 a data or file error (data, weights,
checkpoints, a non-finite loss, a full disk), 130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

# OS errors that are the user's environment, not our bug: a full or read-only disk, a path that
# cannot be made
USER_OS_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EISDIR,
}


def first_line(exc: BaseException, limit: int = 160, typed: bool = False) -> str:
    """``exc``'s first non-empty line for a one-line message: terminal escapes removed, cut at a
    word (with ...); ``typed``: after its type's name. An exception with no text is its type's
    name alone."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    text = next((line for line in lines if line), "")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    name = type(exc).__name__
    return (f"{name}: {text}" if typed else text) if text else name


def unsafe_global(exc: BaseException) -> str | None:
    """The pickled global that ``torch.load(weights_only=True)`` refused (code, not data), if
    that was the error."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found[1] if found else None


def read_json(path: str | Path, error: type[Exception], fix: str = "", lines: bool = False) -> Any:
    """The JSON document at ``path`` (``lines``: one per line, as a list). A file that cannot be
    read (missing, not UTF-8, not JSON, nested too deeply) raises ``error`` naming it, the line
    (``lines``) and why, with ``fix`` after: one line."""
    at = ""
    try:
        text = Path(path).read_text(encoding="utf-8")
        if not lines:
            return json.loads(text)
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            at = f" at line {number}"
            if line.strip():
                documents.append(json.loads(line))
        return documents
    except UnicodeDecodeError:
        why = "not UTF-8 JSON text"
    except ValueError as exc:
        why = f"not valid JSON{at} ({first_line(exc)})"
    except RecursionError:
        why = (
            f"JSON nested too deeply to read{at} (no file these tools read nests beyond a few "
            "levels)"
        )
    except OSError as exc:
        why = f"cannot be read ({exc.strerror or first_line(exc)})"
    raise error(f"{path}: {why}" + (f"; {fix}" if fix else ""))


class DetectorError(Exception):
    """A problem with the user's input or environment; the message names the file or field and the
    fix."""

    exit_code = 1  # a data or file error; usage errors say 2


class UsageError(DetectorError):
    """The command line, a config or a run folder does not allow what was asked (exit code 2)."""

    exit_code = 2


class WeightsError(DetectorError):
    """``model.backbone.weights`` names no readable file or torchvision weights (or the download
    failed)."""


def run_tool(main: Callable[..., int]) -> Callable[..., int]:
    """The decorator of every tool's ``main``: a user error prints one line (after the traceback
    when ``DETECTOR_TRACEBACK=1``) and returns its kind's exit code (see the module docstring); a
    bug raises."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, DetectorError):
                line = f"error: {exc}"
            elif isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS:
                where = exc.filename if exc.filename is not None else "(unknown path)"
                fix = (
                    "free some space"
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "choose a path you can write to (output_dir, data.root or --out)"
                )
                line = f"error: {where}: {os.strerror(exc.errno)}; {fix}"
            else:
                raise
            if os.environ.get("DETECTOR_TRACEBACK", "") not in ("", "0"):
                traceback.print_exc()
            print(line, file=sys.stderr)
            return getattr(exc, "exit_code", 1)

    return guarded
