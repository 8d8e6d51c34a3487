"""Writing files so that nothing the user has is lost: atomic replacement, early checks, honest permissions.

Every file nonsingular writes goes through `atomic_write`: the content goes to a hidden temporary file in the
same folder, is flushed to disk, then renamed onto the target, so a crash or a kill never leaves a half-written
file. The temporary's name carries the writer's process id, so a later write can tell the leftovers of a
killed process from a temporary another live process is still writing, and removes only the former.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, ResourceError

__all__ = ["atomic_write", "check_output_path", "make_folder", "process_alive"]

#: Write failures that come from the storage (full disk, quota, I/O error, read-only), not from the path given.
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
#: Temporaries without a process id (written by older versions) are removed once they are this old.
_LEGACY_TMP_AGE_S = 3600.0


def make_folder(folder: str | Path) -> Path:
    """Create `folder` and its parents; an InputError naming the path when that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), folder)
        raise InputError(f"cannot create folder {folder}: {blocker} is a file") from None
    except OSError as err:
        raise InputError(f"cannot create folder {folder}: {err.strerror or err}") from None
    return folder


def check_output_path(path: str | Path) -> None:
    """Make sure a file can later be written at `path`, creating nothing: the nearest existing folder on its
    path must be a folder that takes a new file (a probe file is made there and removed at once).

    Raises:
        InputError: the path is a folder, a file stands where a folder must be made, or the folder refuses files.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=existing)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    """Whether process `pid` lives on this host (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove `.NAME.<pid>.*.tmp` left by killed writers of `path` (and old pid-less ones)."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        middle = tmp.name[len(prefix) : -len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        try:
            if pid_text.isdigit() and "." in middle:
                stale = not process_alive(int(pid_text))
            else:
                stale = time.time() - tmp.stat().st_mtime > _LEGACY_TMP_AGE_S
            if stale:
                tmp.unlink()
        except OSError:  # gone already, or not ours to remove: leave it
            continue


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), then rename tmp_path onto `path` (same folder, so the rename is atomic).

    The file gets the permissions the umask gives a new file (not tempfile's 0600), and temporaries left by
    killed writers of the same path are removed first.

    Raises:
        InputError: the folder cannot be made or refuses the file (names `path`, not the temporary).
        ResourceError: the storage failed (ENOSPC, EDQUOT, EIO, EROFS, EFBIG) while writing: one line naming
            `path` and saying that its previous version (if any) is unchanged; the temporary is removed.
    """
    path = Path(path)
    make_folder(path.parent)
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in _RESOURCE_ERRNOS:  # the disk, not the user: say what is kept, in one line
            kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
            raise ResourceError(f"cannot write {path}: {os.strerror(err.errno)}; {kept}") from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
