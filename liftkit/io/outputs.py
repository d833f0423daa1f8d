"""Output paths: checked before a run starts, written atomically, and every OSError turned into one line.

* :func:`check_output_file` / :func:`check_output_dir` refuse, before anything is computed, a file path that is a
  folder, a folder path that is a file, a path that lies under a regular file, a name longer than the file system
  allows, or a folder that cannot be written to.
* :func:`atomic_write` writes through a short temporary name in the same folder (``.lk-<hash>-<pid>.tmp``, which fits
  NAME_MAX whatever the final name) and renames it into place; on any error the temporary file is removed and no
  partial output is left. An OSError becomes an :class:`~liftkit.errors.OutputError` naming the path, the reason
  (errno) and what to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from liftkit.errors import OutputError, first_line

_TODO = {
    errno.ENOSPC: "free some space or choose another output folder",
    errno.EDQUOT: "free some space or choose another output folder",
    errno.EACCES: "make the folder writable or choose another output folder",
    errno.EPERM: "make the folder writable or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENAMETOOLONG: "use a shorter output name or folder",
    errno.ENOTDIR: "a part of the path is a regular file: choose another output path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.EEXIST: "a part of the path is a regular file: choose another output path",
}


def name_max(folder: Path) -> int:
    """The longest file name the file system of ``folder`` (or its nearest existing ancestor) accepts."""
    try:
        return int(os.pathconf(str(_existing_ancestor(folder)), "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def os_error_message(path, exc: BaseException, action: str = "cannot write") -> str:
    """One line for an OSError met while writing ``path``: the reason (``strerror``) and what to do."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = os.strerror(exc.errno)
        todo = _TODO.get(exc.errno, "check the path and the disk")
    else:
        reason, todo = f"{type(exc).__name__}: {first_line(exc)}", "check the path and the disk"
    return f"{action} '{path}': {reason}; {todo}"


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_names(path: Path, flag: str) -> None:
    """Every component of ``path`` fits the file system's NAME_MAX (checked first: stat() of a too-long name fails)."""
    limit = 255
    for part in Path(os.path.abspath(path)).parts:
        n = len(os.fsencode(part))
        if n > limit:
            limit = name_max(Path(os.path.abspath(path)).parent)
        if n > limit:
            raise OutputError(f"cannot write to {flag} '{path}': the name '{part[:40]}...' is {n} bytes, over the "
                              f"file system's {limit}; use a shorter name")


def _check_under(path: Path, flag: str) -> None:
    """No ancestor of ``path`` is a regular file; no component is too long; the nearest folder is writable."""
    path = Path(os.path.abspath(path))
    _check_names(path, flag)
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write to {flag} '{path}': it lies under the regular file '{parent}'; choose "
                              "another path")
    anc = _existing_ancestor(path.parent)
    if not os.access(str(anc), os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {flag} '{path}': the folder '{anc}' is not writable; choose another path")


def check_output_file(path, flag: str = "--output_path") -> None:
    """Refuse (OutputError) an output file path that cannot be written: see the module docstring."""
    _check_names(Path(path), flag)
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise OutputError(f"cannot write to {flag} '{path}': it is a folder; give a file name (or --output_dir for "
                          "a folder)")
    _check_under(path, flag)


def check_output_dir(path, flag: str = "--output_dir") -> None:
    """Refuse (OutputError) an output folder that is a file, lies under a file, or cannot be written."""
    _check_names(Path(path), flag)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write to {flag} '{path}': it is a file, not a folder; choose another {flag}")
    _check_under(path / "x", flag)


def temp_name(path: Path) -> Path:
    """A short temporary name beside ``path`` (fits NAME_MAX whatever ``path``'s name is)."""
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:12]
    return path.with_name(f".lk-{digest}-{os.getpid()}.tmp")


def _remove(path: Optional[Path]) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


@contextmanager
def atomic_write(path, flag: str = "output") -> Iterator[Path]:
    """``with atomic_write(p) as tmp: write(tmp)`` -> ``tmp`` renamed to ``p``; on any error nothing is left behind
    and an OSError (or a writer's own error about the disk) is raised as one-line OutputError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if len(os.fsencode(path.name)) > name_max(path.parent):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        tmp = temp_name(path)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(os_error_message(path, exc)) from None
    except RuntimeError as exc:  # torch.save reports a failed write as RuntimeError (PytorchStreamWriter)
        raise OutputError(os_error_message(path, exc)) from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # safetensors' I/O failures (no space...) are its own class
            raise OutputError(os_error_message(path, exc)) from None
        raise
    finally:
        _remove(tmp)


def write_text_atomic(path, text: str, flag: str = "output") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write` (a reader never sees half a report)."""
    with atomic_write(path, flag) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
