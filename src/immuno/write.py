"""Write FCS 3.1 files.

Calling convention: ``write_fcs(path, events, channels, markers, *, text=None,
spillover=None) -> Path``. ``events`` is an ``(n_events, n_channels)`` array of
raw channel values (any real dtype; stored as 32-bit little-endian floats, so
values are rounded to float32) in the order of ``channels``. The file is one
list-mode data set (``$MODE L``, ``$DATATYPE F``, ``$BYTEORD 1,2,3,4``,
``$NEXTDATA 0``) with linear channels (``$PnE 0,0``, ``$PnG 1``) and, when
given, an acquisition-defined ``$SPILLOVER`` matrix. :func:`immuno.read.read_fcs`
reads it back exactly.

Nothing time-dependent (date, clock time, host) is written unless the caller
passes it in ``text``, so equal inputs give byte-identical files. A file is
written to a temporary file in the destination folder and moved into place with
:func:`os.replace`, so readers never see a half-written file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import FCSError
from .util import atomic_path

__all__ = ["write_fcs", "format_spillover"]

log = logging.getLogger(__name__)

_DELIM = "/"
_HEADER_LEN = 58
# The HEADER has 8 characters per offset; a segment any part of which lies past
# this byte is recorded as 0,0 in the HEADER and found through TEXT keywords.
_HEADER_MAX_OFFSET = 99_999_999
_DEFAULT_RANGE = 262144
# Keywords the writer owns: they describe the layout of the file it writes.
_STRUCTURAL = frozenset(
    {
        "$BEGINANALYSIS",
        "$ENDANALYSIS",
        "$BEGINSTEXT",
        "$ENDSTEXT",
        "$BEGINDATA",
        "$ENDDATA",
        "$BYTEORD",
        "$DATATYPE",
        "$MODE",
        "$NEXTDATA",
        "$PAR",
        "$TOT",
    }
)
# Per-parameter keywords the writer owns ($PnR and $PnG may be overridden).
_STRUCTURAL_PARAM = ("N", "S", "B", "E")


def format_spillover(detectors: Sequence[str], matrix) -> str:
    """The ``$SPILLOVER`` value for a spillover matrix.

    Parameters
    ----------
    detectors
        ``n`` detector (``$PnN``) names; row ``i`` and column ``i`` belong to
        ``detectors[i]``.
    matrix
        ``(n, n)`` spillover fractions (unitless), rows are the source
        fluorochromes, columns the detectors they are seen in, so a raw event
        is ``true_intensities @ matrix``.

    Returns
    -------
    str
        ``"n,name1,...,namen,m11,m12,...,mnn"`` (row-major), each number in the
        shortest form that reads back as the same float64.
    """
    names = [str(d) for d in detectors]
    m = np.asarray(matrix, dtype=np.float64)
    n = len(names)
    if n == 0 or m.shape != (n, n):
        raise FCSError(
            f"spillover matrix has shape {m.shape} for {n} detector names",
            field="$SPILLOVER",
            hint="pass (detector_names, matrix) with an n x n matrix, rows = sources",
        )
    if not np.all(np.isfinite(m)):
        raise FCSError("spillover matrix holds NaN or infinity", field="$SPILLOVER")
    bad = [d for d in names if not d or "," in d]
    if bad or len(set(names)) != n:
        raise FCSError(
            f"spillover detector names must be unique, non-empty and comma-free: {names}",
            field="$SPILLOVER",
        )
    values = [repr(float(v)) for v in m.ravel()]
    return ",".join([str(n), *names, *values])


def write_fcs(
    path: str | os.PathLike,
    events,
    channels: Sequence[str],
    markers: Sequence[str | None],
    *,
    text: Mapping[str, object] | None = None,
    spillover: tuple[Sequence[str], object] | None = None,
) -> Path:
    """Write one list-mode FCS 3.1 file of 32-bit float events.

    Parameters
    ----------
    path
        Destination file; its folder must exist. An existing file is replaced
        atomically.
    events
        ``(n_events, n_channels)`` raw channel values in the instrument's linear
        units (arbitrary fluorescence/scatter units, Time in ``$TIMESTEP``
        ticks). Stored as float32 little-endian; must be finite.
    channels
        ``$PnN`` short names (detector names, e.g. ``"FITC-A"``), unique,
        one per column.
    markers
        ``$PnS`` stain names, one per column; ``""`` or ``None`` writes no
        ``$PnS`` for that channel.
    text
        Further TEXT keywords (``{"$CYT": "...", "$TIMESTEP": "0.01", ...}``),
        values turned into strings. Keyword case is kept, but a key that
        differs only in case from another, or that names a keyword the writer
        sets from the layout (``$TOT``, ``$PAR``, ``$BEGINDATA``, ``$PnN``,
        ``$PnS``, ``$PnB``, ``$PnE``, ...), is an error. ``$PnR`` (default 262144,
        or the next power of two above the channel's largest value) and
        ``$PnG`` (default 1) may be given here.
    spillover
        ``(detector_names, matrix)``: written as ``$SPILLOVER`` (see
        :func:`format_spillover`); every name must be one of ``channels``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FCSError
        Shapes or names do not agree, values are not finite, or a keyword or
        value cannot be written: empty, or starting with the ``/`` delimiter
        (the standard forbids both), or a keyword name containing ``/``. A
        ``/`` inside a value is written doubled, as the standard requires.
    """
    path = Path(path)
    spath = str(path)
    arr = np.asarray(events)
    if arr.ndim != 2:
        raise FCSError(
            f"events must be a 2-D (events x channels) array, got {arr.ndim}-D",
            file=spath,
            field="DATA",
        )
    n_events, npar = arr.shape
    channels = [str(c) for c in channels]
    markers = ["" if m is None else str(m) for m in markers]
    if npar == 0 or len(channels) != npar or len(markers) != npar:
        raise FCSError(
            f"events have {npar} columns but {len(channels)} channel names and "
            f"{len(markers)} markers were given",
            file=spath,
            field="$PAR",
            hint="pass one channel name and one marker ('' for none) per column",
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise FCSError(f"events have dtype {arr.dtype}, not real numbers", file=spath)
    data = np.ascontiguousarray(arr, dtype="<f4")
    if not np.all(np.isfinite(data)):
        bad_cols = [channels[j] for j in np.flatnonzero(~np.isfinite(data).all(axis=0))]
        raise FCSError(
            "events hold NaN or infinity (or values beyond float32)",
            file=spath,
            field=", ".join(bad_cols),
            hint="replace or drop non-finite values before writing",
        )
    if len(set(channels)) != npar or any(not c.strip() for c in channels):
        raise FCSError(
            f"channel names must be unique and non-empty: {channels}", file=spath, field="$PnN"
        )

    extra = _normalise_text(text, spath, npar)
    keywords: dict[str, str] = {}
    keywords["$BEGINANALYSIS"] = "0"
    keywords["$ENDANALYSIS"] = "0"
    keywords["$BEGINSTEXT"] = "0"
    keywords["$ENDSTEXT"] = "0"
    keywords["$BEGINDATA"] = "0"  # fixed below
    keywords["$ENDDATA"] = "0"
    keywords["$BYTEORD"] = "1,2,3,4"
    keywords["$DATATYPE"] = "F"
    keywords["$MODE"] = "L"
    keywords["$NEXTDATA"] = "0"
    keywords["$PAR"] = str(npar)
    keywords["$TOT"] = str(n_events)
    col_max = data.max(axis=0) if n_events else np.zeros(npar, dtype=np.float32)
    for j in range(npar):
        n = j + 1
        keywords[f"$P{n}N"] = channels[j]
        if markers[j].strip():
            keywords[f"$P{n}S"] = markers[j]
        keywords[f"$P{n}B"] = "32"
        keywords[f"$P{n}E"] = "0,0"
        keywords[f"$P{n}R"] = extra.pop(f"$P{n}R", None) or str(_default_range(col_max[j]))
        keywords[f"$P{n}G"] = extra.pop(f"$P{n}G", None) or "1"
    if spillover is not None:
        if "$SPILLOVER" in extra:
            raise FCSError(
                "$SPILLOVER given both in text and as spillover=",
                file=spath,
                field="$SPILLOVER",
                hint="pass the matrix once, as spillover=(names, matrix)",
            )
        names, matrix = spillover
        missing = [d for d in names if d not in channels]
        if missing:
            raise FCSError(
                f"spillover detectors {missing} are not channels of this file",
                file=spath,
                field="$SPILLOVER",
                hint=f"channels: {', '.join(channels)}",
            )
        keywords["$SPILLOVER"] = format_spillover(names, matrix)
    for key, value in extra.items():
        keywords[key] = value

    row_bytes = 4 * npar
    data_len = n_events * row_bytes
    begin = end = 0
    for _ in range(10):  # the offsets' digits change the TEXT length: find the fixed point
        keywords["$BEGINDATA"] = str(begin)
        keywords["$ENDDATA"] = str(end)
        text_bytes = _encode_text(keywords, spath)
        text_end = _HEADER_LEN + len(text_bytes) - 1
        new_begin = text_end + 1 if data_len else 0
        new_end = new_begin + data_len - 1 if data_len else 0
        if (new_begin, new_end) == (begin, end):
            break
        begin, end = new_begin, new_end
    else:  # pragma: no cover - the digits can only grow, so this converges
        raise FCSError("could not lay out the TEXT segment", file=spath, field="$BEGINDATA")
    if text_end > _HEADER_MAX_OFFSET:
        raise FCSError(
            f"TEXT segment ends at byte {text_end}, beyond the 8-digit HEADER limit",
            file=spath,
            field="TEXT",
            hint="write fewer or shorter keywords",
        )
    header = _header(_HEADER_LEN, text_end, begin, end)
    _atomic_write(path, (header, text_bytes, data, b"00000000"))
    log.debug("wrote %s: %d events x %d channels", spath, n_events, npar)
    return path


def _header(text_begin: int, text_end: int, data_begin: int, data_end: int) -> bytes:
    """The 58-byte FCS 3.1 HEADER (no ANALYSIS segment).

    A segment reaching past byte 99,999,999 is written as ``0, 0``, as the
    standard requires; readers then use ``$BEGINDATA``/``$ENDDATA``.
    """
    if data_end > _HEADER_MAX_OFFSET:
        data_begin = data_end = 0
    fields = (text_begin, text_end, data_begin, data_end, 0, 0)
    head = "FCS3.1    " + "".join(f"{v:>8d}" for v in fields)
    assert len(head) == _HEADER_LEN
    return head.encode("ascii")


def _default_range(col_max: float) -> int:
    if not np.isfinite(col_max) or col_max < _DEFAULT_RANGE:
        return _DEFAULT_RANGE
    return 1 << math.ceil(math.log2(float(col_max) + 1.0))


def _normalise_text(text: Mapping[str, object] | None, path: str, npar: int) -> dict[str, str]:
    """Extra keywords as strings; ``$`` keywords upper-cased; reserved ones refused."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for raw_key, raw_value in (text or {}).items():
        key = str(raw_key).strip()
        if key.startswith("$"):
            key = key.upper()
        upper = key.upper()
        if upper in seen:
            raise FCSError(
                f"keyword {raw_key!r} given twice (as {seen[upper]!r})",
                file=path,
                field=str(raw_key),
                hint="FCS keywords are case-insensitive",
            )
        seen[upper] = str(raw_key)
        if upper in _STRUCTURAL or _is_structural_param(upper, npar):
            raise FCSError(
                f"keyword {key} is set by the writer from the data and cannot be given",
                file=path,
                field=key,
                hint="pass channel names, markers and events instead",
            )
        if (upper.startswith("$P") and upper[2:-1].isdigit() and upper[-1] in "RG") and not (
            1 <= int(upper[2:-1]) <= npar
        ):
            raise FCSError(
                f"keyword {key} names parameter {upper[2:-1]}, but the file has {npar}",
                file=path,
                field=key,
            )
        out[key] = str(raw_value)
    return out


def _is_structural_param(key: str, npar: int) -> bool:
    if not key.startswith("$P") or len(key) < 4 or key[-1] not in _STRUCTURAL_PARAM:
        return False
    return key[2:-1].isdigit()


def _escape(item: str, key: str, path: str, what: str) -> str:
    if item == "":
        raise FCSError(
            f"{what} of {key!r} is empty",
            file=path,
            field=key,
            hint="FCS 3.1 forbids empty keywords and values; write a space or omit the keyword",
        )
    if what == "keyword" and _DELIM in item:
        raise FCSError(
            f"keyword {key!r} contains the delimiter {_DELIM!r}",
            file=path,
            field=key,
            hint="readers disagree on escaped delimiters in keyword names; rename it",
        )
    if item.startswith(_DELIM):
        raise FCSError(
            f"{what} of {key!r} starts with the delimiter {_DELIM!r}: {item!r}",
            file=path,
            field=key,
            hint="FCS 3.1 forbids keywords and values that begin with the delimiter",
        )
    return item.replace(_DELIM, _DELIM + _DELIM)


def _encode_text(keywords: Mapping[str, str], path: str) -> bytes:
    """The TEXT segment: ``/key/value/key/value/``, ``/`` inside items doubled."""
    parts = [_DELIM]
    for key, value in keywords.items():
        parts.append(_escape(key, key, path, "keyword"))
        parts.append(_DELIM)
        parts.append(_escape(value, key, path, "value"))
        parts.append(_DELIM)
    return "".join(parts).encode("utf-8")


def _atomic_write(path: Path, chunks) -> None:
    """Write ``chunks`` (bytes or C-contiguous arrays) to ``path`` via a temp file."""
    folder = path.parent
    if not folder.is_dir():
        raise FCSError(
            "the destination folder does not exist",
            file=str(path),
            hint=f"create {folder} first",
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            if isinstance(chunk, np.ndarray):
                chunk.tofile(f)  # the whole event matrix in one write
            else:
                f.write(chunk)
