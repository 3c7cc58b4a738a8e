"""Atomic file output: a cancelled or failed job never leaves a half-written file behind.

Permissions: the temporary file or folder is created owner-only (``mkstemp``/``mkdtemp``); before it is renamed
into place it is given the permissions the user's umask gives any new file (``0o666 & ~umask``, folders
``0o777 & ~umask``), so outputs can be shared as the user chose. Files computed from private data outside any
guarantee (membership files, re-identification models, the privacy filter's log) pass ``private=True`` and stay
owner-only (0600 files, 0700 folders) whatever the umask.
"""

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


def _umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _publish(path: Path, *, private: bool) -> None:
    """Give a finished temporary file or folder its final mode: owner-only when ``private``, else the umask's."""
    full = 0o777 if path.is_dir() else 0o666
    os.chmod(path, full & 0o700 if private else full & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix; rename it onto ``path`` on success.

    The file gets the umask's permissions, or owner-only ones (0600) with ``private`` (module notes).
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
        _publish(tmp_path, private=private)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only once fully written.

    The folder gets the umask's permissions, or owner-only ones (0700) with ``private`` (module notes); the
    files inside keep the modes they were written with.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        _publish(tmp, private=private)
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


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``private``: owner-only (module notes)."""
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")
