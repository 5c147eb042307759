"""Reading and writing the files of `sharp eval` so that a crash, a kill or a second run cannot corrupt them.

- `text_lines(path)`: the lines of a UTF-8 text file; a line that is not UTF-8 is named with what to do.
- `atomic_write(path, text)` / `replacing(path)`: the new content goes to a temporary file beside `path`, is
  flushed to disk and then renamed over `path`, so a reader or a kill sees the old file or the new one, never a
  mix or a cut one.
- `folder_lock(out)`: `out/eval.lock`, held with an OS lock (`flock`) while a run writes the folder. The OS drops
  it when the holder exits or is killed, so a crashed run never blocks the folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError, SharpError

LOCK = "eval.lock"


class DataError(InputError):
    """A file `sharp eval` reads (the data file, the records, the settings, lmms-eval outputs) is malformed, or a
    video it names is missing or cannot give the frames asked for."""


class FolderLockedError(SharpError):
    """Another process is writing the same evaluation folder."""


def text_lines(path: Path, last_may_be_cut: bool = False) -> list[str]:
    """The lines of `path` split at "\\n" (a UTF-8 byte-order mark at the start is dropped). A line that is not
    UTF-8 raises `DataError` naming it; with `last_may_be_cut`, the last line is decoded with replacement instead
    (a write cut off inside a character: the caller finds it torn)."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}:1: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
                        "save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # editors on Windows start UTF-8 files with this mark
    chunks = data.split(b"\n")
    last = max((i for i, chunk in enumerate(chunks) if chunk.strip()), default=-1)
    lines = []
    for i, chunk in enumerate(chunks):
        if b"\x00" in chunk:
            raise DataError(f"{path}:{i + 1}: the line holds NUL bytes, as UTF-16 text does; save the file as UTF-8")
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as err:
            if last_may_be_cut and i == last:
                lines.append(chunk.decode("utf-8", errors="replace"))
                continue
            raise DataError(f"{path}:{i + 1}: not UTF-8 text (byte 0x{chunk[err.start]:02x} at byte {err.start + 1} "
                            "of the line, as in Latin-1 or Windows-1252 text); save the file as UTF-8") from None
    return lines


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the folder's entry list is flushed like a file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) to write; on success it is flushed and renamed over `path`,
    on any error or interrupt it is removed and `path` is left as it was."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path`'s content by `text` (UTF-8) in one step: readers and kills see the old or the new file."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def folder_lock(out: Path) -> Iterator[Path]:
    """Hold `out/eval.lock` (creating `out`) or raise `FolderLockedError` at once if another process holds it.

    The lock is the OS's (`flock`), not the file's existence: it goes with the process, so a run that crashed or
    was killed leaves no lock behind. The file itself stays (removing it could let two runs lock two files)."""
    import fcntl

    path = out / LOCK
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SharpError(f"cannot create {path} ({err.strerror}); give an --out folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
            who = f" (process {holder})" if holder.isdigit() else ""
            raise FolderLockedError(
                f"{path} is held by another sharp eval{who} writing to {out}; wait for it to finish and rerun "
                "(finished answers are kept), or give another --out"
            ) from None
        except OSError as err:  # e.g. a network file system without locks
            raise SharpError(f"cannot lock {path} ({err.strerror}); give an --out on a local file system") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # names the holder in the message above
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
