"""Crash-safe file writes: write to a temporary file beside the target, then rename it into place.

Anything a resume or a tracker reads later (``trainer_state.json``, checkpoint files, run identities)
goes through here, so a crash or a failing serialiser never leaves a half-written file under the real
name: either the old file (or none) is there, or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "claim_directory", "directory_lock"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s directory; when the block succeeds, the file written there
    is flushed to disk and renamed to ``target``. When the block raises, the temporary file is removed
    and ``target`` is left as it was. ``make_parents=False``: a directory that does not exist (any more) is
    an error (FileNotFoundError), not created."""
    import tempfile  # lazy: ``import tracklink`` stays cheap (stdlib, slow to import)

    target = Path(target)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8",
                      make_parents: bool = True) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, make_parents) as temporary:
        temporary.write_text(text, encoding=encoding)


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (``flock`` on the directory itself: no lock file is left in it)
    while the block runs: read-modify-write of a file in it by several threads or processes (the trackers
    adding their run identities to a checkpoint's ``trainer_state.json``) loses no one's change. Where
    ``flock`` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl  # lazy: POSIX only
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        fd = -1  # the block then fails on its own file operations, with its own message
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without flock (NFS, Lustre without -o flock): unlocked, as before
                pass
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the lock


def claim_directory(path: str | os.PathLike[str]) -> str:
    """Create ``path`` for this run alone and return it; when it exists (another run started in the same
    second, perhaps in another process), ``path-1``, ``path-2``, ... instead. Creating a directory is atomic,
    so two runs never get the same one."""
    base = os.fspath(path)
    candidate, number = base, 0
    while True:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            number += 1
            candidate = f"{base}-{number}"
