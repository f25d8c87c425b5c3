"""The one rule for every file a tool writes (docs/runs.md, "Outputs"): a file that is there is
never replaced without ``--overwrite``, an output is never one of the tool's inputs, and a run's own
files (its ``eval/``, ``checkpoints/``, ``config.yaml``, ...) are written only by its training, or
with ``--overwrite``. Paths are resolved (symlinks, ``..``) before they are checked.

A tool calls :func:`check_output` for each file before any work, then :func:`write_output` for each
at the end.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable

from detector.engine.runs import RUN_ARTIFACT_GLOBS, RUN_ARTIFACTS, RunFolderError, run_files
from detector.evaluation.results import EVAL_FILES


def check_output(
    path: str | Path,
    option: str = "--out",
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
) -> Path:
    """``path`` (a file) resolved, once it may be written: a :class:`RunFolderError` (exit 2)
    when it is one of ``inputs``, or (without ``overwrite``) a run's own file or a file that is
    there; an ``OSError`` naming the folder when that cannot be written. ``option`` names the
    path in the messages."""
    path = Path(path)
    folder = check_output_folder(path.parent, [path.name], option, inputs, overwrite, file=path)
    return (folder / path.name).resolve()  # a link: the file it names is written


def check_output_folder(
    folder: str | Path,
    names: Iterable[str],
    option: str = "--out",
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    file: Path | None = None,
) -> Path:
    """``folder`` resolved, once the files ``names`` may be written into it (the rules of
    :func:`check_output`)."""
    given, folder = Path(file or folder), Path(folder).resolve()
    shown = f"{option} {given}"
    targets = [(folder / name).resolve() for name in names]
    for source in inputs:
        if source is not None and Path(source).resolve() in targets:
            raise RunFolderError(
                f"{shown} would write over {Path(source).resolve()}, an input of this command "
                f"({source}); write the output elsewhere"
            )
    folders = [str(path) for path in targets if path.is_dir()]
    if folders:
        raise RunFolderError(f"{shown}: {' and '.join(folders)} is a folder; name another output")
    _check_writable(folder)
    if overwrite:
        return folder
    present = [path.name for path in targets if path.exists()]
    if present:
        # a file (check_output) exists; a folder holds some of the files
        there = "already exists" if file else f"already holds {' and '.join(present)}"
        raise RunFolderError(
            f"{shown} {there}, and this command did not make it (a run's result, a dataset file or "
            f"an earlier output); pass another {option}, or --overwrite to replace it"
        )
    run = _run_of(folder, names)
    if run is not None:
        where = f"the {folder.name} folder of" if folder != run else "the folder of"
        raise RunFolderError(
            f"{shown} is {where} the training run {run}, whose files only its training writes "
            f"(eval/metrics.json marks it finished); pass another {option}, or --overwrite to "
            f"write there"
        )
    return folder


def write_output(path: Path, data: str | bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` (checked by :func:`check_output`) through a temporary file:
    renamed into place with ``overwrite``, else linked, so a file that appeared since the check
    is not replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            if isinstance(data, str):
                Path(tmp).write_text(data)
            else:
                Path(tmp).write_bytes(data)
        except OSError as exc:  # a full disk: the message names the output, not the temporary file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise RunFolderError(
                    f"{path} appeared while this command ran; it was left as it is. Pass another "
                    f"output, or --overwrite to replace it"
                ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_eval_files(
    eval_dir: Path, metrics: dict, results: list | None = None, overwrite: bool = False
) -> None:
    """``detections.json`` (COCO results, when given) then ``metrics.json`` (:data:`EVAL_FILES`)
    in ``eval_dir``, each through :func:`write_output`: whole or not at all, since a run with
    ``eval/metrics.json`` counts as finished."""
    if results is not None:
        write_output(eval_dir / EVAL_FILES[0], json.dumps(results), overwrite)
    write_output(eval_dir / EVAL_FILES[-1], json.dumps(metrics, indent=2) + "\n", overwrite)


def _run_of(folder: Path, names: Iterable[str]) -> Path | None:
    """The run whose own files ``names`` in ``folder`` would be: ``<run>/eval/...``,
    ``<run>/config.yaml``, ..."""
    if folder.name in ("eval", "checkpoints") and run_files(folder.parent):
        return folder.parent
    patterns = (*RUN_ARTIFACTS, *RUN_ARTIFACT_GLOBS)
    owned = [n for n in names if any(fnmatch(n, p) for p in patterns)]
    return folder if owned and run_files(folder) else None


def _check_writable(folder: Path) -> None:
    """The nearest existing folder of ``folder`` is a folder this user can write into, or an
    ``OSError``."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(existing))
