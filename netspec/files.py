"""The one check every path a user names goes through before netspec opens it: data sources and the
files they list, mean files, weights, snapshots, inputs, labels, specs.

Only regular files (and folders, where a folder is expected) are read. A device never ends (/dev/zero
would be read until the memory runs out), a FIFO blocks until someone writes to it, and a socket cannot
be read at all, so they are refused with the field or flag that named them. Pure Python: `netspec check`
uses it without torch.

Files a spec asks netspec to write (HDF5Output's file_name) go inside the run's output folder: the
spec gives a relative name, the command line the folder.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path, PurePath
from typing import Literal

from netspec.errors import DataError, NetspecError

Kind = Literal["file", "folder", "any"]  # any: a regular file or a folder (an LMDB is either)

_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def checked(path: str | Path, what: str, kind: Kind = "file", error: type[NetspecError] = DataError) -> Path:
    """`path` if it is a regular file (or a folder, as `kind` allows); else `error` naming `what` and the
    path. Symbolic links are followed: a link to /dev/zero is a device."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist") from None
    except (OSError, ValueError) as e:  # permission, a loop of links, a name too long, a NUL in the name
        raise error(f"cannot read {what} '{path}': {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(mode):
        if kind == "file":
            raise error(f"{what} '{path}' is a folder, not a file")
    elif stat.S_ISREG(mode):
        if kind == "folder":
            raise error(f"{what} '{path}' is a file, not a folder")
    else:
        special = next((name for test, name in _SPECIAL if test(mode)), "a special file")
        expected = {"file": "regular files", "folder": "folders", "any": "regular files and folders"}[kind]
        raise error(f"{what} '{path}' is {special}; netspec opens only {expected}")
    return p


# Where layers that write files (HDF5Output) write: the run's output folder. `netspec train` sets it to
# --out, `netspec test` to --out (default: the working folder, as Caffe), `netspec time` to a temporary
# folder it deletes. Without a driver (a compiled module run from Python) it is the working folder.
_OUTPUT_FOLDER: ContextVar[Path] = ContextVar("netspec_output_folder", default=Path("."))


@contextlib.contextmanager
def output_folder(folder: str | Path) -> Iterator[None]:
    """Layers that write files write under `folder` while the block runs."""
    token = _OUTPUT_FOLDER.set(Path(folder))
    try:
        yield
    finally:
        _OUTPUT_FOLDER.reset(token)


def confinement_problem(name: str) -> str | None:
    """Why a file name from a spec may not be written (it must stay inside the output folder), or None."""
    if PurePath(name).is_absolute():
        return "is an absolute path"
    if ".." in PurePath(name).parts:
        return "goes up through '..'"
    return None


def output_path(name: str, what: str) -> Path:
    """Where a file named in a spec is written: inside the output folder, its folders made as needed; an
    existing file there must be a regular file."""
    target = _OUTPUT_FOLDER.get() / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot make the folder of {what} '{target}': {e.strerror}") from None
    if target.exists() or target.is_symlink():
        checked(target, what)
    return target
