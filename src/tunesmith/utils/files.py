"""Atomic file writes: write to a temp file in the same folder, fsync, then rename over the target.

Directories are swapped the same way (replace_dir), optionally keeping the one they replace, so a
crash at any point leaves a complete old or new directory under a known name.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target):
    """Yield a temp path next to `target`; on success it is renamed to target, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(target, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it, so write errors (ENOSPC) surface here as OSError."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    # Raises OSError if the kernel could not write back what an earlier writer buffered.
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself already happened
    finally:
        os.close(fd)


def remove_dir(path: Path) -> None:
    """Delete a directory tree so that `path` never exists half-deleted: rename it aside first."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def replace_dir(tmp: Path, target: Path, keep: Path | None = None) -> None:
    """Swap a finished temp directory into place with renames.

    keep: where the replaced target goes (an older `keep` is dropped first); without it the old
    target is removed once the new one is in place. At every moment either target or keep is a
    complete directory.
    """
    old = keep or target.with_name(target.name + ".old")
    remove_dir(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if keep is None:
        remove_dir(old)
