"""Output files are written whole or not at all: a temporary name in the same folder,
then a rename, so an interrupted or failed write never leaves a half-written file
(nor truncates the one it replaces)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
from pathlib import Path

# Why a write finds no room: a full disk, a quota, a file size limit, a read-only file system.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@contextlib.contextmanager
def writing(path: str | Path, tmp: Path | None = None):
    """Re-raises a write that found no room (`NO_ROOM`), or was not permitted to create
    the temporary file `tmp`, as an OSError naming `path`, the file or folder asked for:
    the error named the temporary file, or none (h5py's gave its C library's report, a
    dozen fields on one line)."""
    try:
        yield
    except OSError as error:
        refused = isinstance(error, PermissionError) and tmp is not None and error.filename == str(tmp)
        if error.errno not in NO_ROOM and not refused:
            raise
        raise OSError(error.errno, os.strerror(error.errno), str(path)) from error


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w"):
    """A file object (`mode` "w" for UTF-8 text, "wb" for bytes) on a hidden temporary
    file beside `path` (`temporary_beside`), renamed to `path` when the block ends
    without an exception and removed when it fails.

    A symbolic link is followed: its target is replaced and the link kept. A pipe or a
    device (`--output /dev/stdout`, a FIFO) cannot be replaced, so it is written
    directly. (The rename replaced the link, or the FIFO, with a regular file.)
    """
    encoding = {"encoding": "utf-8"} if "b" not in mode else {}
    path = Path(path)
    if path.exists() and not path.is_file():  # a pipe or a device; check_output_file refuses folders
        with writing(path), open(path, mode, **encoding) as handle:
            yield handle
        return
    # The link's target is replaced, not the link; errors name the path asked for.
    with replacing(path.resolve(), named=path) as tmp, open(tmp, mode, **encoding) as handle:
        yield handle


@contextlib.contextmanager
def replacing(path: Path, named: Path | None = None):
    """A temporary path beside `path` (`temporary_beside`) to write, renamed onto `path`
    when the block ends without an exception and removed when it fails; a write that
    found no room is said about `named` (default `path`, by `writing`)."""
    tmp = temporary_beside(path)
    try:
        with writing(named or path, tmp):
            yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def lock_exclusively(handle, wait: bool = True) -> bool:
    """An exclusive `flock` on `handle` (a file object or descriptor), released when it
    is closed. True once it is held, and also where there are no such locks (Windows,
    some network file systems): the caller then runs unguarded. False when another
    process holds it and `wait` is False."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks
        pass
    return True


@contextlib.contextmanager
def folder_locked(folder: Path):
    """Hold an exclusive lock on `folder` itself (`lock_exclusively` on the folder; no
    lock file is left behind) for the block, waiting for another process's block to end
    first. A folder that cannot be opened for reading runs the block unguarded."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        handle = None  # not yielded from here: the block's errors would chain onto this one
    try:
        if handle is not None:
            lock_exclusively(handle)
        yield
    finally:
        if handle is not None:
            os.close(handle)  # releases the lock


def temporary_beside(path: Path) -> Path:
    """A hidden name beside `path`, unique to this process and call, ending with `path`'s
    name (writers such as Keras's check the ending: `.keras`, `.weights.h5`). A fixed
    name was shared by two processes writing the same file (two commands given the same
    --output): both wrote into it, the first rename published a mix of the two outputs,
    and the second failed with "No such file or directory"."""
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}.{path.name}")


def input_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as an input file, or None when it can. Anything that
    exists and is not a folder can: a file, a pipe (`--src <(zcat f.gz)`, which an
    `is_file` test refused as "no such file") or a device such as /dev/stdin."""
    path = Path(path)
    if path.is_dir():
        return "is a folder, not a file"
    return None if path.exists() else "no such file"


def folder_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot be made or written into, or None: a file in the way
    (`file_in_the_way`), or the system refuses to create it or a file in it (`write_problem`)."""
    return file_in_the_way(folder) or write_problem(Path(folder))


def file_in_the_way(folder: str | Path) -> str | None:
    """Says so when a file stands where `folder` or a folder above it would be (mkdir then
    failed with FileExistsError or NotADirectoryError, a traceback); None otherwise."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        try:  # one stat, not exists() then is_dir(): a folder that another process's check
            mode = path.stat().st_mode  # removed between the two was called a file
        except (FileNotFoundError, NotADirectoryError):
            continue
        return None if stat.S_ISDIR(mode) else f"{path} is a file, not a folder"
    return None


def write_problem(folder: Path) -> str | None:
    """Why the system refuses to create `folder` (with the folders above it that are
    missing) or a file in it, or None: found by trying, and what the try created is
    removed again. A folder the user may not write, or a read-only file system, was
    refused only when the first file was written, after the work that made it (`train`'s
    data preparation, `demo`'s training, `translate`'s translation)."""
    for attempt in range(3):
        try:
            try_writing_in(folder)
            return None
        except FileNotFoundError as error:
            # Another process's check removed a folder it made and this one found made
            # (the two workers of a multi-worker run, started together): not a refusal.
            if attempt == 2:
                return refusal(error, folder)
        except OSError as error:
            return refusal(error, folder)


def try_writing_in(folder: Path):
    """Create `folder`, the folders above it that are missing and a file in it, then
    remove what this created; a folder another process made meanwhile is not ours."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    made = []
    try:
        for path in reversed(missing):  # the outermost first
            try:
                path.mkdir()
            except FileExistsError:  # made meanwhile by another process (two runs started together)
                continue
            made.append(path)
        probe = temporary_beside(folder / "write-check")
        probe.touch(exist_ok=False)
        probe.unlink()
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):  # another process put something there meanwhile
                path.rmdir()


def refusal(error: OSError, folder: Path) -> str:
    """The check's message: the folder the refused path is in, and the system's reason."""
    refused_in = Path(error.filename).parent if error.filename else folder
    return f"cannot write in {refused_in} ({error.strerror or error})"


def atomic_save(save, path: str | Path):
    """`save(temporary path)`, then the rename to `path`, for writers that take a path
    and write in place (Keras's `model.save`, `save_weights`): a kill or a full disk
    during their write left a truncated file where the previous one had been."""
    with replacing(Path(path)) as tmp:
        save(tmp)


def atomic_write(path: str | Path, data: bytes | str):
    """Write `data` (str as UTF-8) to `path` by `atomic_output`."""
    with atomic_output(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def save_figure(fig, path: str | Path, dpi: int):
    """A matplotlib figure as a PNG file, written by `atomic_write`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())
