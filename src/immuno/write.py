"""Write FCS 3.1 files.

Calling convention: ``write_fcs(path, events, channels, markers, *, text=None,
spillover=None, datatype="F", amplification=None) -> Path``. ``events`` is an
``(n_events, n_channels)`` array of raw channel values in the order of
``channels``. The file is one list-mode data set (``$MODE L``, ``$BYTEORD
1,2,3,4``, ``$NEXTDATA 0``, ``$PnG 1``) and, when given, an acquisition-defined
``$SPILLOVER`` matrix. Data are either 32-bit little-endian floats (``$DATATYPE
F``, the default; values are rounded to float32, every channel linear, ``$PnE
0,0``) or 16-bit unsigned integers (``$DATATYPE I``, ``$PnB 16``: whole channel
numbers ``0 .. $PnR - 1``, as analogue instruments write them), whose channels
may be log-amplified (``$PnE f1,f2``: ``f1`` decades). :func:`immuno.read.read_fcs`
reads both back exactly; :meth:`immuno.read.FCSData.scaled` decodes ``$PnE``.

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
_INT_BITS = 16  # $DATATYPE I: unsigned 16-bit channel numbers
_INT_MAX = (1 << _INT_BITS) - 1
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
    datatype: str = "F",
    amplification: Sequence[tuple[float, float] | None] | None = None,
) -> Path:
    """Write one list-mode FCS 3.1 file of 32-bit float or 16-bit integer events.

    Parameters
    ----------
    path
        Destination file; its folder must exist. An existing file is replaced
        atomically.
    events
        ``(n_events, n_channels)`` raw channel values: for ``datatype="F"`` the
        instrument's linear units (arbitrary fluorescence/scatter units, Time in
        ``$TIMESTEP`` ticks), stored as float32 little-endian, finite; for
        ``datatype="I"`` whole channel numbers (dimensionless) from 0 to the
        channel's ``$PnR - 1`` (at most 65,535), stored as little-endian uint16.
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
        ``$PnS``, ``$PnB``, ``$PnE``, ...), is an error. ``$PnR`` and ``$PnG``
        (default 1) may be given here, per channel. ``$PnR`` defaults to 262144
        (or the next power of two above the channel's largest value) for float
        data and to 65536 for integer data; integer values must lie below it.
    spillover
        ``(detector_names, matrix)``: written as ``$SPILLOVER`` (see
        :func:`format_spillover`); every name must be one of ``channels``.
        The matrix applies to linear values (for log-amplified channels, the
        values decoded from ``$PnE``).
    datatype
        ``"F"`` (32-bit float, ``$PnB 32``) or ``"I"`` (16-bit unsigned
        integer, ``$PnB 16``).
    amplification
        Per channel ``(f1, f2)`` written as ``$PnE f1,f2``, or ``None`` (the
        default, and per entry) for a linear channel (``0,0``). ``f1 > 0`` is a
        log-amplified integer channel of ``f1`` decades: channel number ``x``
        means the linear value ``f2 * 10**(f1 * x / $PnR)``. ``f2 = 0`` (as
        analogue instruments write ``4,0``) is read as 1 by :mod:`immuno.read`
        and FlowIO. FCS 3.1 allows only ``0,0`` on float channels.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FCSError
        Shapes or names do not agree, values are not finite (float data) or
        not whole numbers inside ``0 .. $PnR - 1`` (integer data), ``datatype``
        or ``amplification`` is invalid, or a keyword or value cannot be
        written: empty, or starting with the ``/`` delimiter (the standard
        forbids both), or a keyword name containing ``/``. A ``/`` inside a
        value is written doubled, as the standard requires.
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
    kind = str(datatype).strip().upper()
    if kind not in ("F", "I"):
        raise FCSError(
            f"datatype {datatype!r} cannot be written",
            file=spath,
            field="$DATATYPE",
            hint="use 'F' (32-bit float) or 'I' (16-bit unsigned integer)",
        )
    if len(set(channels)) != npar or any(not c.strip() for c in channels):
        raise FCSError(
            f"channel names must be unique and non-empty: {channels}", file=spath, field="$PnN"
        )
    pne = _amplification(amplification, kind, channels, spath)
    extra = _normalise_text(text, spath, npar)
    ranges = [extra.pop(f"$P{j + 1}R", None) for j in range(npar)]
    if kind == "F":
        data = np.ascontiguousarray(arr, dtype="<f4")
        if not np.all(np.isfinite(data)):
            bad_cols = [channels[j] for j in np.flatnonzero(~np.isfinite(data).all(axis=0))]
            raise FCSError(
                "events hold NaN or infinity (or values beyond float32)",
                file=spath,
                field=", ".join(bad_cols),
                hint="replace or drop non-finite values before writing",
            )
        col_max = data.max(axis=0) if n_events else np.zeros(npar, dtype=np.float32)
        ranges = [r or str(_default_range(col_max[j])) for j, r in enumerate(ranges)]
    else:
        ranges = [r or str(_INT_MAX + 1) for r in ranges]
        data = _integer_data(arr, channels, ranges, spath)
    bits = "32" if kind == "F" else str(_INT_BITS)
    keywords: dict[str, str] = {}
    keywords["$BEGINANALYSIS"] = "0"
    keywords["$ENDANALYSIS"] = "0"
    keywords["$BEGINSTEXT"] = "0"
    keywords["$ENDSTEXT"] = "0"
    keywords["$BEGINDATA"] = "0"  # fixed below
    keywords["$ENDDATA"] = "0"
    keywords["$BYTEORD"] = "1,2,3,4"
    keywords["$DATATYPE"] = kind
    keywords["$MODE"] = "L"
    keywords["$NEXTDATA"] = "0"
    keywords["$PAR"] = str(npar)
    keywords["$TOT"] = str(n_events)
    for j in range(npar):
        n = j + 1
        keywords[f"$P{n}N"] = channels[j]
        if markers[j].strip():
            keywords[f"$P{n}S"] = markers[j]
        keywords[f"$P{n}B"] = bits
        keywords[f"$P{n}E"] = pne[j]
        keywords[f"$P{n}R"] = ranges[j]
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

    row_bytes = data.itemsize * npar
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


def _amplification(amplification, kind: str, channels: list[str], path: str) -> list[str]:
    """``$PnE`` values (``"f1,f2"``) per channel, checked against the data type."""
    npar = len(channels)
    if amplification is None:
        return ["0,0"] * npar
    amp = list(amplification)
    if len(amp) != npar:
        raise FCSError(
            f"amplification has {len(amp)} entries for {npar} channels",
            file=path,
            field="$PnE",
            hint="pass one (decades, f2) pair or None per channel",
        )
    out = []
    for j, entry in enumerate(amp):
        key = f"$P{j + 1}E"
        if entry is None:
            out.append("0,0")
            continue
        try:
            f1, f2 = (float(x) for x in entry)
        except (TypeError, ValueError):
            raise FCSError(
                f"amplification of {channels[j]} is {entry!r}, not two numbers",
                file=path,
                field=key,
            ) from None
        if not (math.isfinite(f1) and math.isfinite(f2)) or f1 < 0 or f2 < 0:
            raise FCSError(
                f"amplification of {channels[j]} is ({f1:g}, {f2:g}): decades and f2 must be "
                "finite and not negative",
                file=path,
                field=key,
            )
        if f1 == 0 and f2 != 0:
            raise FCSError(
                f"amplification of {channels[j]} is (0, {f2:g}): a linear channel is 0,0",
                file=path,
                field=key,
            )
        if f1 > 0 and kind != "I":
            raise FCSError(
                f"channel {channels[j]} is log-amplified but the data are floats",
                file=path,
                field=key,
                hint="FCS 3.1 requires $PnE 0,0 on float channels; write datatype='I'",
            )
        out.append(f"{f1:g},{f2:g}")
    return out


def _integer_data(arr: np.ndarray, channels: list[str], ranges: list[str], path: str):
    """Whole channel numbers as little-endian uint16, each below its ``$PnR``."""
    values = np.asarray(arr)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise FCSError(
                "integer data hold values that are not whole numbers",
                file=path,
                field="$DATATYPE",
                hint="round the channel numbers before writing datatype='I'",
            )
    for j, raw in enumerate(ranges):
        try:
            top = float(raw)
        except ValueError:
            raise FCSError(
                f"$P{j + 1}R is {raw!r}, not a number", file=path, field=f"$P{j + 1}R"
            ) from None
        if not (math.isfinite(top) and 1 < top <= _INT_MAX + 1):
            raise FCSError(
                f"$P{j + 1}R is {raw!r}: 16-bit integer channels need a range of 2 to 65536",
                file=path,
                field=f"$P{j + 1}R",
            )
        col = values[:, j]
        if col.size and (col.min() < 0 or col.max() >= top):
            raise FCSError(
                f"channel {channels[j]} holds values from {col.min():g} to {col.max():g}, "
                f"outside 0 .. {top - 1:g} ($P{j + 1}R {raw})",
                file=path,
                field=channels[j],
                hint="integer channel numbers must lie in 0 .. $PnR - 1",
            )
    return np.ascontiguousarray(values, dtype="<u2")


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
