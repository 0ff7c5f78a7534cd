"""Careful file writing: atomic writes with the user's permissions, and run folders that are never reused unasked.

An atomic write goes to a temporary file beside its destination, is flushed to disk, and is
renamed over the destination: a crash or a full disk mid-write leaves the previous file (or
none), never half a file. The file gets the permissions a plain ``open()`` would give it (the
existing file's, else those the umask allows), not the temporary file's private ``0600``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            kept = "the previous version is kept" if path.exists() else "nothing was written"
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {path}; {kept}") from err
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def free_folder(path: str | Path, used: Callable[[Path], bool]) -> Path:
    """``path`` if ``used(path)`` is false, else the first of ``path-2``, ``path-3`` ... that is not used
    (as Ultralytics names its runs): a folder holding earlier results is never written into unasked."""
    path = Path(path)
    n = 2
    candidate = path
    while used(candidate):
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    return candidate


def holds_any(path: Path, names: Iterable[str]) -> bool:
    """Whether folder ``path`` holds any of ``names``."""
    return path.is_dir() and any((path / name).exists() for name in names)


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.lock`` while the block runs; a folder another live process holds raises ``FileExistsError``
    naming that process's id.

    The lock is an ``flock`` on the file (which records the holder's pid), so the system releases it when the
    holder exits, however it exits: a dead process leaves no stale lock. Where ``fcntl`` is missing
    (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FileExistsError(
                f"{folder} is in use by process {holder} (a run still training?): wait for it to end, or stop it "
                f"(kill -INT {holder}) and then resume"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
