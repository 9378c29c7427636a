"""Check where a command will write before it does the long work that produces the result.

A calibration or a benchmark can run for an hour; an output path that cannot be written must
stop the command at once, with one line, not after the result has been computed and lost.
"""

from __future__ import annotations

import os
from pathlib import Path

from langchain_rankguide.errors import RankGuideError


def check_output_file(path: str | os.PathLike[str], flag: str) -> Path:
    """Refuse a file path that cannot be written: a directory, or a missing or read-only folder.

    Args:
        path: the file the command will write (created or replaced).
        flag: the option that named it, for the message (``--out``).

    Returns:
        The path, ``~`` expanded.

    Raises:
        RankGuideError: one line naming ``flag``, the path and the problem.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise RankGuideError(f"{flag} {file} is a directory; pass a file name")
    folder = file.parent
    if not folder.is_dir():
        raise RankGuideError(f"{flag} {file}: directory does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RankGuideError(f"{flag} {file}: cannot write in {folder}")
    if file.exists() and not os.access(file, os.W_OK):
        raise RankGuideError(f"{flag} {file}: the file exists and is not writable")
    return file


def check_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Refuse a directory path that cannot be created or written into.

    Missing folders are fine (the command creates them); an existing file, or a file or a
    read-only folder where a parent should be created, is not.

    Args:
        path: the directory the command will write into.
        flag: the option that named it, for the message (``--out``).

    Returns:
        The path, ``~`` expanded.

    Raises:
        RankGuideError: one line naming ``flag``, the path and the problem.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise RankGuideError(f"{flag} {folder} exists and is not a directory; pass a directory")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RankGuideError(f"{flag} {folder}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RankGuideError(f"{flag} {folder}: cannot write in {existing}")
    return folder
