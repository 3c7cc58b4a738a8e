"""Atomic file output: a cancelled or failed job never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _split_suffix(name: str) -> tuple[str, str]:
    """``"a.nii.gz"`` → ``("a", ".nii.gz")``: writers pick the format from the full suffix."""
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return name[: -len(double)], double
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt and a terminating signal turned into SystemExit) the
    temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only once fully written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
