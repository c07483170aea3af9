"""Small shared helpers: atomic output files, reading our own tables back, hashing."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TEXT_COLUMNS",
    "Progress",
    "atomic_path",
    "ensure_free_space",
    "read_tsv",
    "file_problem",
    "special_file",
    "write_tsv",
    "sha256_file",
]

#: Columns of the tables the workflow writes that hold text whatever they look like: an id
#: ``0001`` or ``1e3`` stays that string and ``NA`` stays ``NA`` (a patient or sample may be
#: called that), so a table read back joins with the sample sheet (read as text) again.
TEXT_COLUMNS = (
    "sample_id",
    "patient_id",
    "dose_group",
    "panel",
    "fcs_path",
    "population",
    "parent",
    "status",
    "stage",
    "error",
    "field",
    "message",
    "hint",
    "qc_flag",
    "qc_note",
    "action",
    "reviewer",
    "date",
    "reason",
)


#: OS errors that mean the output's disk or folder refuses the write (not the input).
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}
#: Bytes left free by :func:`ensure_free_space` for what a writer adds when it closes.
DISK_RESERVE = 16 << 20


def _room_hint(path: Path) -> str:
    return (
        f"free space on the file system of {path.parent} (or write the results elsewhere) "
        "and run again"
    )


def ensure_free_space(path: str | os.PathLike, nbytes: int, *, reserve: int = DISK_RESERVE) -> None:
    """Raise :class:`~immuno.errors.OutputError` unless the file system of ``path``
    has ``nbytes`` + ``reserve`` bytes free for an unprivileged writer.

    For writers that cannot fail cleanly on a full disk (HDF5 crashes the process with
    SIGSEGV when a write or its closing flush meets ENOSPC): they ask before each
    block, and stop with the project's error while the file can still be closed.
    """
    from .errors import OutputError

    path = Path(path)
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    if free < nbytes + reserve:
        raise OutputError(
            f"the disk is full: {free / 2**20:.1f} MiB free, {(nbytes + reserve) / 2**20:.1f} MiB "
            "needed to go on writing",
            file=str(path),
            hint=_room_hint(path),
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    An interrupted or failing writer leaves no half-written ``path`` (the
    temporary file is removed), so a rerun never mistakes a partial table for
    a finished one. A writer killed outright (SIGKILL, a crash on a full disk) cannot
    remove its temporary file: the next successful write of ``path`` removes such
    leftovers (``.<name>.*.tmp`` beside it). A full disk or quota (``ENOSPC``,
    ``EDQUOT``) is :class:`~immuno.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if (out := _output_error(exc, path, None)) is exc:
            raise
        raise out from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file owner-only; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if (out := _output_error(exc, path, tmp)) is exc:
            raise
        raise out from None


def _output_error(exc: BaseException, path: Path, tmp: str | None) -> BaseException:
    """What a writer's failure on ``path`` is raised as: a full disk or quota as
    :class:`~immuno.errors.OutputError` naming ``path``, an OutputError on the temporary
    file (:func:`ensure_free_space`) renamed to ``path``; anything else as it was."""
    from .errors import OutputError

    if isinstance(exc, OutputError) and tmp is not None and exc.file == str(tmp):
        exc.file = str(path)
        exc.args = (str(exc),)
    elif isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return OutputError(_NO_ROOM[exc.errno], file=str(path), hint=_room_hint(path))
    return exc


def plain(value):
    """A JSON-ready copy of dicts, lists and tuples: numpy scalars as Python numbers."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def write_tsv(df, path: str | os.PathLike, **kwargs) -> Path:
    """Write a DataFrame as TSV atomically (no index, NaN as empty)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="", **kwargs)
    return Path(path)


def read_tsv(path: str | os.PathLike, **kwargs):
    """Read back a TSV the workflow wrote: :data:`TEXT_COLUMNS` as text, never coerced.

    Other columns are parsed as pandas does (numbers stay numbers); no string is
    taken for a missing value unless ``na_values`` names it. ``kwargs`` go to
    :func:`pandas.read_csv`.
    """
    import pandas as pd

    options = {"sep": "\t", "keep_default_na": False, "dtype": dict.fromkeys(TEXT_COLUMNS, str)}
    options.update(kwargs)
    return pd.read_csv(path, **options)


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is no regular file (``"a directory"``, ``"a named
    pipe (FIFO)"``, ...), so a reader can refuse it before opening it (opening a FIFO waits
    for a writer for ever); ``None`` for a regular file or for nothing there. A path that
    cannot be looked at (a symlink loop, a name too long) raises :class:`OSError`."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    for test, name in (
        (stat.S_ISREG, None),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable regular file (``"does not exist"``, ``"is a named pipe
    (FIFO), not a regular file"``, ``"cannot be looked at: File name too long"``...), or
    ``None`` when it is one. Never raises: for messages that name the file and say why."""
    try:
        kind = special_file(path)
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        return f"cannot be looked at: {exc.strerror or exc}"
    if kind is not None:
        return f"is {kind}, not a regular file"
    if not os.path.lexists(path):
        return "does not exist"
    if not os.path.exists(path):
        return "is a broken symbolic link"
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Progress:
    """Progress of a long step over samples, for the console and the log: a line
    ``<label>: <done>/<total> (<pct>%)`` for the first item, then at most every
    ``every`` seconds, and at the end; on stderr and through ``logger``."""

    def __init__(self, label: str, total: int, *, logger=None, every: float = 10.0):
        import time

        self.label, self.total, self.logger, self.every = label, total, logger, every
        self.done = 0
        self._clock = time.monotonic
        self._last = self._clock()

    def step(self, n: int = 1) -> None:
        import sys

        self.done += n
        now = self._clock()
        if 1 < self.done < self.total and now - self._last < self.every:
            return  # the first line says the step has begun; the last that it is done
        self._last = now
        pct = 100.0 * self.done / self.total if self.total else 100.0
        line = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%)"
        print(line, file=sys.stderr, flush=True)
        if self.logger is not None:
            self.logger.info(line)

    def wrap(self, iterable):
        """Yield from ``iterable``, one step per item."""
        for item in iterable:
            yield item
            self.step()
