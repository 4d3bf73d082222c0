"""Checkpoints that survive a crash: written to a temporary file in the same
directory, flushed to disk, then renamed over the old one (an atomic replace), and
read back with ``torch.load(..., weights_only=True)``.

A run keeps its last K checkpoints as ``checkpoints/step-NNNNNNNNNN.pt`` and
``checkpoints/last.pt``, the newest of them (a hard link, or a copy where the file
system has none); see :func:`save_rotating`."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
"""Format 1 (before mid-epoch checkpoints) holds one RNG state and no epoch progress; it is read as format 2."""
STEP_NAME = re.compile(r"step-(\d+)\.pt")
UNFINISHED_NAME = re.compile(r"\..+\.pt\.\w+\.tmp")
"""The temporary file of a write (:func:`save_atomic`) that a crash interrupted."""


def save_atomic(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a reader sees the old file or the new one, never a torn one."""
    if not isinstance(state, dict):
        raise ValueError(f"a checkpoint's state must be a dict, got {type(state).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the checkpoint's file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": FORMAT_VERSION, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_rotating(state: dict, last: str | Path, step: int, keep: int) -> Path:
    """Save ``state`` as ``step-<step>.pt`` beside ``last``, make ``last`` the same file, and
    delete all but the ``keep`` newest step files. Every file is replaced atomically, so a
    crash at any point leaves ``last`` a complete checkpoint, the new one or the one before."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    last = Path(last)
    path = last.parent / f"step-{step:010d}.pt"
    save_atomic(state, path)
    _replace_with_link(path, last)
    for old in step_checkpoints(last.parent)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def step_checkpoints(directory: str | Path) -> list[Path]:
    """The step checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if STEP_NAME.fullmatch(path.name))


def remove_unfinished_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed half-way left in ``directory`` (none
    is ever read: the checkpoint they would have replaced is whole); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    unfinished = [path for path in directory.iterdir() if UNFINISHED_NAME.fullmatch(path.name)]
    for path in unfinished:
        path.unlink(missing_ok=True)
    return unfinished


def _replace_with_link(source: Path, destination: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    os.unlink(temporary)
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here: a copy, written as atomically
        save_atomic(torch.load(source, weights_only=True), temporary)
    try:
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_atomic` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as error:  # torch.load's many ways of failing on a file it cannot parse
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a locallearn checkpoint (torch.load: {first_line})") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a locallearn checkpoint: it holds a {type(state).__name__}, not a dict")
    if state.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is checkpoint format {state.get('format')!r}; this locallearn reads formats "
                         f"{', '.join(map(str, READABLE_FORMATS))}")
    return state
