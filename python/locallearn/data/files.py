"""Finding a dataset's files on disk, with an error that says where to put them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the directories searched (nothing is downloaded)."""


def search_directories(
    name: str,
    data_dir: str | Path | None,
    folders: Sequence[str] = (),
    system_directories: Sequence[str] = (),
) -> list[Path]:
    """Where to look for ``name``: with a ``data_dir``, only under it (``data_dir`` and
    ``data_dir/name``, each alone and joined with every folder of the dataset's usual
    layouts), which must exist; without one, the system-wide install locations."""
    if data_dir is None:
        return [Path(directory) for directory in system_directories]
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"the data directory {root} given for {name} is not a directory")
    return [directory for base in (root, root / name) for directory in (base, *(base / folder for folder in folders))]


def find_files(
    name: str,
    file_names: Sequence[str],
    directories: Sequence[Path],
    suffixes: Sequence[str] = ("",),
) -> list[Path]:
    """The paths of ``file_names`` in the first directory that holds all of them, each
    under the first of ``suffixes`` that exists (e.g. ``("", ".gz")``)."""
    for directory in directories:
        paths = [_first_existing(directory / file_name, suffixes) for file_name in file_names]
        if all(path is not None for path in paths):
            return paths
    raise DatasetNotFoundError(_not_found_message(name, file_names, directories, suffixes))


def _first_existing(path: Path, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _not_found_message(
    name: str, file_names: Sequence[str], directories: Sequence[Path], suffixes: Sequence[str]
) -> str:
    alternatives = [suffix for suffix in suffixes if suffix]
    compressed = f" (each may also end in {' or '.join(alternatives)})" if alternatives else ""
    searched = "\n".join(f"  {directory}" for directory in directories) or "  (none: no data directory given)"
    return (
        f"dataset {name!r} not found; nothing is downloaded. Expected these files{compressed}:\n"
        + "\n".join(f"  {file_name}" for file_name in file_names)
        + f"\nall in one of these directories:\n{searched}\n"
        + "Put the files in one of them, or point at their directory with --data-dir DIR "
        + "(data_dir= in Python)."
    )
