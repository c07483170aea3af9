"""Read FCS 2.0, 3.0, 3.1 and 3.2 files.

Calling convention: ``read_fcs(path) -> FCSData``. ``FCSData.events`` is an
``(n_events, n_channels)`` array of *raw channel values* exactly as stored in the
DATA segment, in the order of ``$P1N..$PnN``. Nothing is compensated or
transformed here. ``FCSData.scaled()`` applies the FCS-defined linearisation
(``$PnE`` log amplification of integer channels and, optionally, division by the
``$PnG`` gain), which is what Gating-ML calls the channel values.

What is supported
-----------------
* ``$DATATYPE`` ``F`` (32-bit float), ``D`` (64-bit float), ``I`` (unsigned
  integers of any whole number of bytes from 1 to 8 per channel, e.g. the 24-bit
  integers of Cytek xP5 files, and widths that vary between channels) and ``A``
  (ASCII, fixed width or ``$PnB = *`` delimited). FCS 3.2 per-channel
  ``$PnDATATYPE`` is honoured.
* Little- and big-endian ``$BYTEORD`` (``1,2,3,4`` / ``4,3,2,1`` and their
  shorter forms). Mixed orders such as ``3,4,1,2`` are refused.
* Several data sets in one file (``$NEXTDATA``): the first is read unless another
  is asked for, and a warning says that more exist.

Conventions
-----------
* Integer values are masked to the bits that ``$PnR`` needs: the spec says
  values lie in ``0 .. $PnR - 1`` and unused high bits may hold anything
  (instruments do use them: see the Navios ``fcs1_cleaned.lmd`` test file, whose
  16-bit words all read ``0x4210`` and mean ``0x210 = 528`` with ``$PnR = 1024``).
  A ``$PnR`` that is not a power of two uses the next one; ``$PnR <= 1`` masks
  nothing (FlowIO would zero the channel; that convention is the only place
  where the two differ).
* Integer channels are returned as float32 when every channel needs at most 24
  bits after masking (exact), else float64; float data keep their precision.
* TEXT parsing: a doubled delimiter inside a *value* is an escaped delimiter
  (``GFP//FITC`` is ``GFP/FITC``). A doubled delimiter straight after a
  *keyword* is an empty value (``$P3S\\\\$P4S\\``): FCS 2.0 writers such as
  CellQuest write empty values that way, and reading it as an escape would glue
  two keywords together and lose e.g. ``$P6N``. Keywords are upper-cased; a
  value is decoded as UTF-8, or Latin-1 where it is not valid UTF-8.
* DATA offsets: the HEADER and ``$BEGINDATA``/``$ENDDATA`` should agree. When
  they do not, each candidate is checked (inside the file, not overlapping the
  HEADER or TEXT, long enough for ``$TOT`` events) and the one that fits is
  used, TEXT first for FCS 3.x and HEADER first for FCS 2.0 (whose TEXT
  keywords are optional). A warning records the choice. FlowIO makes the same
  TEXT-first choice when told to ignore the discrepancy; the FlowKit
  ``noncompliant/*offset_discrepancy*`` files read that way give ``$TOT`` events
  identical to the compliant copy of the same data.

Safety: every size claimed by the file is checked against the file length before
anything is allocated, so a damaged file gives an :class:`~immuno.errors.FCSError`
naming the file and the field at fault, never a crash, a hang or a huge
allocation. Float data are read with a single ``numpy.fromfile``; no path does
per-event Python work.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from .errors import FCSError, ImmunoError
from .util import special_file

__all__ = ["FCSData", "read_fcs", "read_text", "parse_spillover", "inspect_files", "time_step"]

log = logging.getLogger(__name__)

_HEADER_LEN = 58
_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
_MAX_PAR = 10_000
_MAX_ASCII_WIDTH = 64  # characters of one ASCII value; longer is not a number
_SPILL_KEYS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP")


@dataclass
class FCSData:
    """One data set of an FCS file.

    Attributes
    ----------
    path
        The file it was read from.
    version
        ``"FCS2.0"``, ``"FCS3.0"``, ``"FCS3.1"`` or ``"FCS3.2"``.
    text
        All TEXT (and supplemental TEXT) keywords, keys upper-cased (``"$TOT"``,
        ``"$P1N"``, ...), values as written (not stripped).
    channels
        ``$PnN`` short names, one per column of ``events``.
    markers
        ``$PnS`` names (the stain/marker), ``""`` where a channel has none.
    events
        ``(n_events, n_channels)`` raw channel values: float32 for float data
        and integers of at most 24 significant bits, float64 for ``$DATATYPE D``,
        wider integers and ASCII data. Units are those of the instrument
        (channel numbers for integer data).
    warnings
        Non-fatal oddities found while reading (e.g. header offsets that disagree
        with ``$BEGINDATA``, further data sets ignored).
    """

    path: str
    version: str
    text: dict[str, str]
    channels: list[str]
    markers: list[str]
    events: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        """Number of events (rows of ``events``)."""
        return int(self.events.shape[0])

    def channel_index(self, name: str) -> int:
        """Column of the channel whose ``$PnN`` is ``name``.

        Raises
        ------
        FCSError
            No channel has that name.
        """
        try:
            return self.channels.index(name)
        except ValueError:
            raise FCSError(
                f"no channel named {name!r}",
                file=self.path,
                field=name,
                hint=f"channels in this file: {', '.join(self.channels)}",
            ) from None

    def spillover(self) -> tuple[list[str], np.ndarray] | None:
        """The acquisition-defined spillover matrix (``$SPILLOVER``/``$SPILL``/``SPILL``).

        Returns
        -------
        tuple of (list of str, numpy.ndarray) or None
            ``(detector_names, matrix)`` with ``matrix[i, j]`` the fraction
            (dimensionless) of detector ``i``'s fluorochrome seen in detector
            ``j`` (rows are sources), or ``None`` when the file has none.

        Raises
        ------
        FCSError
            The keyword is present but malformed.
        """
        for key in _SPILL_KEYS:
            value = self.text.get(key)
            if value and value.strip() not in ("", "0"):
                return parse_spillover(value, file=self.path, field=key)
        return None

    def scaled(self, *, gain: bool = False) -> np.ndarray:
        """Channel values linearised as the FCS standard defines.

        Integer channels with ``$PnE = f1,f2`` (``f1 > 0`` decades) are decoded
        from the log-amplified channel number ``x`` as
        ``f2 * 10**(f1 * x / $PnR)`` (``f2`` of 0 counts as 1). With
        ``gain=True`` linear channels are divided by ``$PnG`` (a dimensionless
        amplifier gain). Float channels are stored linear by definition
        (FCS 3.1: ``$PnE`` must be ``0,0``); a non-zero ``$PnE`` on a float
        channel is ignored with a logged warning (the Guava Muse ``*-HLog``
        channels, for one, hold ``log10`` values with ``$PnE = 4,1``).

        Returns
        -------
        numpy.ndarray
            A new float64 ``(n_events, n_channels)`` array; ``events`` is not
            modified.

        Raises
        ------
        FCSError
            ``$PnE``, ``$PnR`` or ``$PnG`` of a channel that needs it is malformed.
        """
        out = self.events.astype(np.float64, copy=True)
        default_kind = self.text.get("$DATATYPE", "").strip().upper()
        for j in range(out.shape[1]):
            n = j + 1
            kind = self.text.get(f"$P{n}DATATYPE", "").strip().upper() or default_kind
            f1, f2 = _pne(self.text.get(f"$P{n}E", "0,0"), self.path, n)
            if f1 > 0 and kind == "I":
                r = _float_kw(self.text, f"$P{n}R", self.path)
                if not (math.isfinite(r) and r > 0):
                    raise FCSError(
                        f"$P{n}R is {r}, but a log-amplified channel needs a positive range",
                        file=self.path,
                        field=f"$P{n}R",
                    )
                out[:, j] = (f2 if f2 > 0 else 1.0) * 10.0 ** (f1 * out[:, j] / r)
            elif f1 > 0:
                log.warning(
                    "%s: $P%dE is %r on a %s channel; stored values are used as they are",
                    self.path,
                    n,
                    self.text.get(f"$P{n}E"),
                    kind or "non-integer",
                )
            elif gain:
                g = _gain(self.text.get(f"$P{n}G", ""), self.path, n)
                if g not in (0.0, 1.0):
                    out[:, j] /= g
        return out


# ---------------------------------------------------------------------------
# keyword helpers


def parse_spillover(value: str, *, file: str | None = None, field: str = "$SPILLOVER"):
    """Parse a ``$SPILLOVER`` value: ``n, name1..namen, n*n numbers`` (row-major).

    Parameters
    ----------
    value
        The keyword value.
    file, field
        Named in the error when the value is malformed.

    Returns
    -------
    tuple of (list of str, numpy.ndarray)
        Detector names and the ``(n, n)`` float64 matrix (dimensionless
        fractions).

    Raises
    ------
    FCSError
        The value does not have ``1 + n + n*n`` items, holds a non-number, or names a
        detector twice (or not at all).
    """
    parts = [p.strip() for p in value.split(",")]
    try:
        n = int(float(parts[0]))
    except (ValueError, IndexError, OverflowError):
        raise FCSError(
            "spillover keyword does not start with the number of detectors",
            file=file,
            field=field,
        ) from None
    if n <= 0 or len(parts) != 1 + n + n * n:
        raise FCSError(
            f"spillover keyword declares {n} detectors but has {len(parts) - 1} items "
            f"(expected {n + n * n})",
            file=file,
            field=field,
        )
    names = parts[1 : 1 + n]
    try:
        matrix = np.array([float(x) for x in parts[1 + n :]], dtype=np.float64).reshape(n, n)
    except ValueError:
        raise FCSError(
            "spillover keyword has a non-numeric value", file=file, field=field
        ) from None
    if not np.all(np.isfinite(matrix)):
        raise FCSError("spillover keyword has a non-finite value", file=file, field=field)
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes or "" in names:
        what = f"names {', '.join(dupes)} twice" if dupes else "an empty detector name"
        raise FCSError(
            f"spillover keyword {what}: its rows cannot be told apart",
            file=file,
            field=field,
        )
    return names, matrix


def _pne(value: str, path: str, n: int) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value.split(",")[:2])
    except ValueError:
        raise FCSError(
            f"$P{n}E is {value!r}, not two numbers", file=path, field=f"$P{n}E"
        ) from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise FCSError(f"$P{n}E is {value!r}, not finite", file=path, field=f"$P{n}E")
    return a, b


def _gain(value: str, path: str, n: int) -> float:
    if not value.strip():
        return 1.0
    try:
        g = float(value)
    except ValueError:
        raise FCSError(f"$P{n}G is {value!r}, not a number", file=path, field=f"$P{n}G") from None
    if not math.isfinite(g) or g < 0:
        raise FCSError(
            f"$P{n}G is {value!r}; a gain must be a positive number",
            file=path,
            field=f"$P{n}G",
        )
    return g


def _float_kw(text: dict[str, str], key: str, path: str) -> float:
    try:
        return float(text[key])
    except KeyError:
        raise FCSError(f"required keyword {key} is missing", file=path, field=key) from None
    except ValueError:
        raise FCSError(f"{key} is {text[key]!r}, not a number", file=path, field=key) from None


def _int_kw(text: dict[str, str], key: str, path: str) -> int:
    try:
        return int(text[key].strip())
    except KeyError:
        raise FCSError(f"required keyword {key} is missing", file=path, field=key) from None
    except ValueError:
        raise FCSError(
            f"{key} is {text[key]!r}, not a whole number", file=path, field=key
        ) from None


def _opt_int(text: dict[str, str], key: str) -> int | None:
    """An optional whole-number keyword: ``None`` when absent, blank or malformed."""
    raw = text.get(key, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# HEADER and TEXT


def _parse_header(buf, path: str, start: int) -> tuple[str, list[int]]:
    size = len(buf)
    if size - start < _HEADER_LEN:
        raise FCSError(
            f"file is {size - start} bytes, shorter than the 58-byte FCS header",
            file=path,
            field="HEADER",
            hint="the file is truncated or not an FCS file",
        )
    version = bytes(buf[start : start + 6]).decode("ascii", "replace")
    if version not in _VERSIONS:
        raise FCSError(
            f"not an FCS file: starts with {version!r}",
            file=path,
            field="HEADER",
            hint="expected FCS2.0, FCS3.0, FCS3.1 or FCS3.2",
        )
    offsets = []
    for i in range(6):
        raw = bytes(buf[start + 10 + 8 * i : start + 18 + 8 * i]).decode("ascii", "replace").strip()
        if not raw:
            offsets.append(0)
            continue
        if not raw.isdigit() or not raw.isascii():
            raise FCSError(
                f"header offset {i + 1} is {raw!r}, not a number",
                file=path,
                field="HEADER",
                hint="the file header is damaged",
            )
        offsets.append(int(raw))
    return version, offsets


#: Most keywords one TEXT segment may hold (a spectral panel of 200 parameters has ~4,000).
MAX_KEYWORDS = 200_000


def _split_keywords(raw: bytes) -> list[bytes]:
    """Split a TEXT segment (first byte = delimiter) into alternating keys and values.

    A run of ``L`` delimiters inside a value stands for ``L // 2`` literal
    delimiters, and ends the value when ``L`` is odd. Right after a keyword,
    a single delimiter ends the keyword, and a doubled one ends the keyword and
    an empty value (FCS 2.0 writers); a run of 3 ends the keyword and starts the
    value with an escaped delimiter.
    """
    d = raw[:1]
    body = raw[1:]
    tokens: list[bytes] = []
    cur = bytearray()
    pos = 0
    for m in re.finditer(re.escape(d) + b"+", body):
        cur += body[pos : m.start()]
        pos = m.end()
        run = m.end() - m.start()
        if len(tokens) % 2 == 0 and cur:  # a keyword has just been read
            tokens.append(bytes(cur))
            cur = bytearray()
            if run == 1:
                continue
            if run % 2 == 0:
                tokens.append(b"")  # empty value
                cur += d * ((run - 2) // 2)
            else:
                cur += d * ((run - 1) // 2)
            continue
        cur += d * (run // 2)
        if run % 2:
            tokens.append(bytes(cur))
            cur = bytearray()
    cur += body[pos:]
    if cur.strip(b"\x00 \r\n\t"):
        tokens.append(bytes(cur))
    return tokens


def _parse_text(
    raw: bytes, path: str, field: str = "TEXT", delim: bytes | None = None
) -> dict[str, str]:
    """Keywords of a TEXT segment; ``delim`` given for a supplemental TEXT segment.

    The primary TEXT starts with its delimiter. A supplemental TEXT uses the
    primary's delimiter and may or may not start with it.
    """
    if delim is not None and not raw.startswith(delim):
        raw = delim + raw
    if len(raw) < 2:
        raise FCSError(f"{field} segment is empty", file=path, field=field)
    if delim is not None:
        body = raw.replace(delim, b"").rstrip(b"\x00 ")
        control = sum(body.count(bytes([c])) for c in (*range(9), *range(14, 32)))
        if control > len(body) // 100:
            raise FCSError(f"{field} segment is binary, not keywords", file=path, field=field)
    # Each keyword/value pair takes two delimiters: count them before splitting, so a
    # TEXT of millions of keywords is refused before it costs a gigabyte.
    if raw.count(raw[:1]) > 2 * MAX_KEYWORDS + 2:
        raise FCSError(
            f"{field} segment holds more than {MAX_KEYWORDS:,} keywords",
            file=path,
            field=field,
            hint="real files hold hundreds to a few thousand; the file is damaged",
        )
    tokens = _split_keywords(raw)
    text: dict[str, str] = {}
    for k in range(0, len(tokens) - 1, 2):
        key = _decode(tokens[k]).strip().upper()
        if key:
            text[key] = _decode(tokens[k + 1])
    if not text:
        raise FCSError(
            f"{field} segment holds no keyword/value pairs",
            file=path,
            field=field,
            hint="the TEXT offsets in the header are damaged",
        )
    return text


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _open(path: Path):
    """Open a regular file for reading; anything else is refused before it is opened
    (opening a FIFO would wait for a writer for ever)."""
    try:
        kind = special_file(path)
        if kind is not None:
            raise FCSError(
                f"is {kind}, not an FCS file",
                file=str(path),
                hint="fcs_path must name a regular file",
            )
        f = open(path, "rb")
    except FileNotFoundError:
        raise FCSError("file does not exist", file=str(path), hint="check fcs_path") from None
    except PermissionError:
        raise FCSError("file cannot be read (permission denied)", file=str(path)) from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise FCSError(
            f"file cannot be opened: {exc.strerror or exc}",
            file=str(path),
            hint="check fcs_path",
        ) from None
    return f


_CHANGED_HINT = (
    "the file changed while it was read (still being copied?); read it again once it is complete"
)


class _FileBytes:
    """A file's bytes by offset, read on demand (``os.pread``) from one open file: what
    the reader slices instead of a memory map, so that a file that shrinks while it is
    read gives the project's error, where a mapped page beyond the new end kills the
    process (SIGBUS). ``len`` is the size when it was opened; slices return ``bytes``."""

    def __init__(self, f, path: Path):
        self.file, self.path = f, str(path)
        self._size = os.fstat(f.fileno()).st_size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self._size)
        n = max(stop - start, 0)
        data = os.pread(self.file.fileno(), n, start) if n else b""
        if len(data) < n:
            self.shrunk()
        return data

    def shrunk(self):
        """Raise the error for a file that became shorter than when it was opened."""
        now = os.fstat(self.file.fileno()).st_size
        raise FCSError(
            f"file is now {now} bytes, {self._size} when it was opened",
            file=self.path,
            field="DATA",
            hint=_CHANGED_HINT,
        )


@contextmanager
def _map(path: Path):
    """The file's bytes (:class:`_FileBytes`) while the ``with`` block lasts."""
    with _open(path) as f:
        buf = _FileBytes(f, path)
        if len(buf) == 0:
            raise FCSError("file is empty", file=str(path), field="HEADER")
        yield buf


def _segment(buf, start: int, begin: int, end: int, path: str, field: str) -> tuple[int, int]:
    """Absolute ``[a, b)`` of a segment given inclusive offsets relative to ``start``."""
    a, b = start + begin, start + end + 1
    if begin < _HEADER_LEN or end < begin or b > len(buf):
        where = "overlaps the 58-byte HEADER" if 0 <= begin < _HEADER_LEN else "lies outside"
        raise FCSError(
            f"{field} segment {begin}-{end} {where} the file ({len(buf) - start} bytes)",
            file=path,
            field=field,
            hint="the file is truncated or its offsets are damaged",
        )
    return a, b


@dataclass
class _DataSet:
    """HEADER and TEXT of one data set, offsets relative to ``start`` (bytes)."""

    start: int
    version: str
    offsets: list[int]
    text: dict[str, str]


def _read_text_at(buf, path: str, start: int, warnings: list[str] | None = None) -> _DataSet:
    version, off = _parse_header(buf, path, start)
    a, b = _segment(buf, start, off[0], off[1], path, "TEXT")
    text = _parse_text(bytes(buf[a:b]), path)
    if version != "FCS2.0":
        sb, se = _opt_int(text, "$BEGINSTEXT"), _opt_int(text, "$ENDSTEXT")
        if sb and se and (sb, se) != (off[0], off[1]):
            extra: dict[str, str] = {}
            if _HEADER_LEN <= sb <= se and start + se < len(buf):
                try:
                    raw = bytes(buf[start + sb : start + se + 1])
                    extra = _parse_text(raw, path, "STEXT", bytes(buf[a : a + 1]))
                except FCSError as exc:
                    if warnings is not None:
                        warnings.append(f"supplemental TEXT ignored: {exc.message}")
                for k, v in extra.items():
                    text.setdefault(k, v)
            elif warnings is not None:
                warnings.append(
                    f"supplemental TEXT {sb}-{se} lies outside the file; its keywords were ignored"
                )
    return _DataSet(start, version, off, text)


def read_text(path: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """Read only the HEADER and TEXT of the first data set.

    Returns
    -------
    tuple of (str, dict)
        ``(version, keywords)``, keywords upper-cased as in :attr:`FCSData.text`.

    Raises
    ------
    FCSError
        The file is missing, not FCS, or its TEXT segment cannot be located.
    """
    path = Path(path)
    with _map(path) as buf:
        ds = _read_text_at(buf, str(path), 0)
    return ds.version, ds.text


# ---------------------------------------------------------------------------
# DATA layout


@dataclass
class _Layout:
    """How one event is stored: per channel its type and width."""

    kinds: list[str]  # "I", "F", "D" or "A" per channel
    widths: list[int] | None  # bytes (characters for ASCII) per channel; None: delimited
    endian: str  # "<" or ">" ("|" when irrelevant)
    masks: list[int | None]  # integer bit masks from $PnR

    @property
    def row_bytes(self) -> int:
        return sum(self.widths) if self.widths else 0


def _byte_order(text, path) -> str | None:
    raw = text.get("$BYTEORD", "").replace(" ", "")
    try:
        order = [int(x) for x in raw.split(",")]
    except ValueError:
        return None
    if order == list(range(1, len(order) + 1)):
        return "<"
    if order == list(range(len(order), 0, -1)) and len(order) > 1:
        return ">"
    raise FCSError(
        f"$BYTEORD {raw!r} is not a supported byte order",
        file=path,
        field="$BYTEORD",
        hint="only little-endian (1,2,3,4) and big-endian (4,3,2,1) are supported",
    )


def _range_mask(raw: str | None, width_bytes: int) -> int | None:
    """The bit mask ``$PnR`` implies for an integer of ``width_bytes`` bytes, or None."""
    if raw is None:
        return None
    try:
        rng = float(raw)
    except ValueError:
        return None
    if not math.isfinite(rng) or rng <= 1 or rng > 2.0**64:
        return None
    bits = (math.ceil(rng) - 1).bit_length()  # next power of two >= $PnR
    if bits >= 8 * width_bytes:
        return None
    return (1 << bits) - 1


def _layout(text: dict[str, str], npar: int, path: str) -> _Layout:
    datatype = text.get("$DATATYPE", "").strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise FCSError(
            f"$DATATYPE {datatype!r} is not supported",
            file=path,
            field="$DATATYPE",
            hint="FCS data types are I, F, D and A",
        )
    mode = text.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise FCSError(
            f"$MODE {mode} (histogram data) is not supported",
            file=path,
            field="$MODE",
            hint="only list-mode data can be gated",
        )
    kinds: list[str] = []
    widths: list[int] = []
    delimited = False
    for n in range(1, npar + 1):
        kind = text.get(f"$P{n}DATATYPE", "").strip().upper() or datatype
        if datatype == "A":
            kind = "A"
        elif kind not in ("I", "F", "D"):
            raise FCSError(
                f"$P{n}DATATYPE {kind!r} is not supported",
                file=path,
                field=f"$P{n}DATATYPE",
                hint="per-channel data types are I, F and D",
            )
        raw = text.get(f"$P{n}B", "").strip()
        if kind == "A" and raw == "*":
            delimited = True
            kinds.append(kind)
            continue
        try:
            bits = int(raw)
        except ValueError:
            raise FCSError(
                f"$P{n}B is {raw!r}, not a bit width", file=path, field=f"$P{n}B"
            ) from None
        if kind == "A":
            if not 1 <= bits <= _MAX_ASCII_WIDTH:
                raise FCSError(
                    f"$P{n}B is {bits}: an ASCII value is 1 to {_MAX_ASCII_WIDTH} characters",
                    file=path,
                    field=f"$P{n}B",
                )
            widths.append(bits)
        elif kind in ("F", "D") and bits != (32 if kind == "F" else 64):
            raise FCSError(
                f"$P{n}B is {bits}: {'float' if kind == 'F' else 'double'} data must have "
                f"{32 if kind == 'F' else 64} bits",
                file=path,
                field=f"$P{n}B",
            )
        elif kind == "I" and (bits % 8 or not 8 <= bits <= 64):
            raise FCSError(
                f"$P{n}B is {bits}: integer widths must be whole bytes (8 to 64 bits)",
                file=path,
                field=f"$P{n}B",
                hint="bit-packed integer data are not supported",
            )
        else:
            widths.append(bits // 8)
        kinds.append(kind)
    if delimited and widths:
        raise FCSError(
            "ASCII data mix delimited ($PnB = *) and fixed-width channels",
            file=path,
            field="$PnB",
        )
    if datatype == "A":
        return _Layout(kinds, None if delimited else widths, "|", [None] * npar)
    endian = _byte_order(text, path)
    if endian is None:
        if any(w > 1 for w in widths):
            raise FCSError(
                f"$BYTEORD {text.get('$BYTEORD', '')!r} is not a byte order",
                file=path,
                field="$BYTEORD",
                hint="expected 1,2,3,4 (little-endian) or 4,3,2,1 (big-endian)",
            )
        endian = "<"
    masks = [
        _range_mask(text.get(f"$P{n}R"), w) if k == "I" else None
        for n, (k, w) in enumerate(zip(kinds, widths, strict=True), start=1)
    ]
    return _Layout(kinds, widths, endian, masks)


# ---------------------------------------------------------------------------
# DATA location


def _data_segment(
    ds: _DataSet, size: int, need: int | None, tot: int | None, path: str, warnings: list[str]
) -> tuple[int, int]:
    """Choose the DATA offsets ``(begin, end)`` (inclusive, relative to the data set).

    ``size`` is the number of bytes from the data set's start to the end of the
    file, ``need`` the bytes ``$TOT`` events take (None when unknown).
    """
    off, text = ds.offsets, ds.text
    if tot == 0:
        return 0, -1
    cands: list[tuple[str, tuple[int, int]]] = []
    kb, ke = _opt_int(text, "$BEGINDATA"), _opt_int(text, "$ENDDATA")
    if kb is not None and ke is not None and (kb or ke):
        cands.append(("$BEGINDATA/$ENDDATA", (kb, ke)))
    if off[2] or off[3]:
        cands.append(("HEADER", (off[2], off[3])))
    if ds.version == "FCS2.0":
        cands.reverse()
    if not cands:
        raise FCSError(
            "DATA segment offset is missing (HEADER and $BEGINDATA/$ENDDATA are empty)",
            file=path,
            field="$BEGINDATA",
            hint="the file has no event data (header-only export?)",
        )
    text_span = (off[0], off[1])

    def overlaps_text(begin: int, end: int) -> bool:
        return begin <= text_span[1] and end >= text_span[0]

    def problem(begin: int, end: int) -> str | None:
        """Why a candidate cannot be the DATA segment, or None when it can."""
        if begin < _HEADER_LEN or end < begin - 1:
            return f"{begin}-{end} is not a valid segment after the 58-byte HEADER"
        used_end = begin + need - 1 if need is not None else end
        if overlaps_text(begin, used_end):
            return f"{begin}-{end} overlaps the TEXT segment {text_span[0]}-{text_span[1]}"
        if begin >= size:
            return f"{begin}-{end} starts after the end of the file ({size} bytes)"
        if need is not None and end - begin + 1 < need:
            return f"{begin}-{end} holds {end - begin + 1} bytes, fewer than {need}"
        if used_end >= size:
            return f"{begin}-{end} runs past the end of the file ({size} bytes)"
        return None

    def flaw(begin: int, end: int) -> str | None:
        """What is odd about a usable candidate (it ranks after one without flaws)."""
        if end >= size:
            return f"{begin}-{end} ends past the end of the file ({size} bytes)"
        if need is not None and end - begin + 1 not in (need, need + 1):
            return f"{begin}-{end} is {end - begin + 1} bytes, $TOT events take {need}"
        return None

    judged = [(name, seg, problem(*seg)) for name, seg in cands]
    good = [
        (flaw(*seg) is not None, i, name, seg)
        for i, (name, seg, p) in enumerate(judged)
        if p is None
    ]
    if good:
        flawed, _, name, (begin, end) = min(good)
        if len({seg for _, seg, _ in judged}) > 1:
            rejected = "; ".join(f"{n} {p or flaw(*seg)}" for n, seg, p in judged if n != name)
            warnings.append(
                f"HEADER and $BEGINDATA/$ENDDATA disagree on the DATA offsets; used {name} "
                f"{begin}-{end} ({rejected})"
            )
        if flawed:
            warnings.append(
                f"DATA segment {flaw(begin, end)}; $TOT events were read from byte {begin}"
            )
        return begin, end

    # Nothing fits: explain with the preferred candidate.
    name, (begin, end), _ = judged[0]
    if begin >= _HEADER_LEN and begin >= size:
        raise FCSError(
            f"file has no DATA segment: TEXT declares {tot} events at bytes {begin}-{end}, "
            f"but the file ends at byte {size - 1} (header only)",
            file=path,
            field="DATA",
            hint="a header-only export (e.g. Cytek Aurora sample_header): export the events too",
        )
    if (
        need is not None
        and begin >= _HEADER_LEN
        and begin + need > size
        and not overlaps_text(begin, begin + need - 1)
    ):
        raise FCSError(
            f"$TOT={tot} events need {need} bytes of DATA, but the file ends "
            f"{size - begin} bytes after DATA starts (truncated)",
            file=path,
            field="$TOT",
            hint="the file is truncated (interrupted transfer?) or $TOT is wrong",
        )
    raise FCSError(
        f"DATA offsets are unusable: {'; '.join(f'{n} {p}' for n, _, p in judged)}",
        file=path,
        field="DATA",
        hint="the file is damaged or $TOT/$PnB disagree with the DATA segment",
    )


# ---------------------------------------------------------------------------
# DATA decoding


def _assemble_uint(b: np.ndarray, endian: str) -> np.ndarray:
    """Unsigned integers from bytes: ``b[..., w]`` uint8 -> ``[...]`` (w = 1..8)."""
    w = b.shape[-1]
    if w in (1, 2, 4, 8):
        return np.ascontiguousarray(b).view(np.dtype(f"{endian}u{w}"))[..., 0]
    wide = 4 if w < 4 else 8
    pad = np.zeros(b.shape[:-1] + (wide,), dtype=np.uint8)
    if endian == "<":
        pad[..., :w] = b
    else:
        pad[..., wide - w :] = b
    return pad.view(np.dtype(f"{endian}u{wide}"))[..., 0]


def _int_out_dtype(layout: _Layout) -> np.dtype:
    bits = 0
    for kind, w, m in zip(layout.kinds, layout.widths or [], layout.masks, strict=True):
        if kind == "I":
            bits = max(bits, m.bit_length() if m is not None else 8 * w)
        elif kind == "D":
            bits = 64
    return np.dtype(np.float32 if bits <= 24 else np.float64)


def _mask_cols(arr: np.ndarray, layout: _Layout, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.empty(arr.shape, dtype=_int_out_dtype(layout))
    for j, m in enumerate(layout.masks):
        col = arr[:, j]
        out[:, j] = col if m is None else col & np.array(m, dtype=col.dtype)
    return out


def _fromfile(buf: _FileBytes, dtype, count: int, offset: int) -> np.ndarray:
    """``count`` items of ``dtype`` at byte ``offset`` of the open file, read straight
    into the array (the floor for I/O); a short read is the file having shrunk."""
    buf.file.seek(offset)
    arr = np.fromfile(buf.file, dtype=dtype, count=count)
    if arr.size < count:
        buf.shrunk()
    return arr


def _decode_binary(buf: _FileBytes, a: int, tot: int, layout: _Layout) -> np.ndarray:
    kinds, widths, endian = layout.kinds, layout.widths or [], layout.endian
    npar = len(kinds)
    uniform = len(set(zip(kinds, widths, strict=True))) == 1
    kind, w = kinds[0], widths[0]
    if uniform and (kind in ("F", "D") or w in (1, 2, 4, 8)):
        code = {"F": "f4", "D": "f8"}.get(kind, f"u{w}")
        dt = np.dtype(endian + code)
        arr = _fromfile(buf, dt, tot * npar, a).reshape(tot, npar)
        if kind == "I":
            return _mask_cols(arr, layout)
        if not dt.isnative:
            return arr.astype(dt.newbyteorder("="))
        return arr
    raw = _fromfile(buf, np.uint8, tot * layout.row_bytes, a).reshape(tot, layout.row_bytes)
    if uniform:  # integers of 3, 5, 6 or 7 bytes, e.g. 24-bit Cytek xP5 data
        return _mask_cols(_assemble_uint(raw.reshape(tot, npar, w), endian), layout)
    out = np.empty((tot, npar), dtype=_int_out_dtype(layout))
    o = 0
    for j, (kind, w) in enumerate(zip(kinds, widths, strict=True)):
        b = raw[:, o : o + w]
        o += w
        if kind == "I":
            col = _assemble_uint(b[:, None, :], endian)[:, 0]
            m = layout.masks[j]
            out[:, j] = col if m is None else col & np.array(m, dtype=col.dtype)
        else:
            dt = np.dtype(endian + ("f4" if kind == "F" else "f8"))
            out[:, j] = np.ascontiguousarray(b).view(dt)[:, 0]
    return out


def _decode_ascii(buf, a: int, end: int, tot: int | None, layout: _Layout, path: str):
    npar = len(layout.kinds)
    try:
        if layout.widths is None:
            tokens = bytes(buf[a:end]).replace(b",", b" ").split()
            if tot is None:
                tot = len(tokens) // npar
            if len(tokens) < tot * npar:
                raise FCSError(
                    f"delimited ASCII DATA holds {len(tokens)} values, fewer than "
                    f"$TOT x $PAR = {tot * npar}",
                    file=path,
                    field="DATA",
                )
            tokens = tokens[: tot * npar]
            if tokens and max(map(len, tokens)) > _MAX_ASCII_WIDTH:
                raise FCSError(
                    "ASCII DATA holds a value that is not a number", file=path, field="DATA"
                )
            return np.array(tokens, dtype=np.bytes_).astype(np.float64).reshape(tot, npar)
        nbytes = tot * layout.row_bytes
        raw = np.frombuffer(buf[a : a + nbytes], dtype=np.uint8).reshape(tot, -1)
        out = np.empty((tot, npar), dtype=np.float64)
        o = 0
        for j, w in enumerate(layout.widths):
            out[:, j] = (
                np.ascontiguousarray(raw[:, o : o + w]).view(f"S{w}")[:, 0].astype(np.float64)
            )
            o += w
        return out
    except ValueError:
        raise FCSError(
            "ASCII DATA holds a value that is not a number", file=path, field="DATA"
        ) from None


def _read_data(buf: _FileBytes, path: str, ds: _DataSet, warnings: list[str]) -> np.ndarray:
    text = ds.text
    npar = _int_kw(text, "$PAR", path)
    if not 1 <= npar <= _MAX_PAR:
        raise FCSError(
            f"$PAR is {npar}", file=path, field="$PAR", hint=f"expected 1 to {_MAX_PAR} channels"
        )
    layout = _layout(text, npar, path)
    if "$TOT" in text or ds.version != "FCS2.0":
        tot: int | None = _int_kw(text, "$TOT", path)
        if tot < 0:
            raise FCSError(f"$TOT is {tot}", file=path, field="$TOT")
    else:
        tot = None  # optional in FCS 2.0: derived from the DATA segment below
    row = layout.row_bytes if layout.widths is not None else None
    need = tot * row if (tot is not None and row) else None
    size = len(buf) - ds.start
    begin, end = _data_segment(ds, size, need, tot, path, warnings)
    if tot is None:
        if row:
            tot = max(end - begin + 1, 0) // row
            need = tot * row
        warnings.append("$TOT is missing; the event count was taken from the DATA segment size")
    a = ds.start + begin
    if layout.kinds[0] == "A":
        return _decode_ascii(buf, a, ds.start + end + 1, tot, layout, path)
    if tot == 0:
        return np.empty((0, npar), dtype=_int_out_dtype(layout))
    return _decode_binary(buf, a, tot, layout)


# ---------------------------------------------------------------------------
# public entry points


def read_fcs(path: str | os.PathLike, *, dataset: int = 0) -> FCSData:
    """Read one data set of an FCS file.

    Parameters
    ----------
    path
        The FCS file. It is opened read-only and never written.
    dataset
        Which data set of a multi-data-set file (``$NEXTDATA`` chain), from 0.

    Returns
    -------
    FCSData
        Raw channel values (no compensation, no transform, no ``$PnE``/``$PnG``
        scaling: see :meth:`FCSData.scaled`).

    Raises
    ------
    FCSError
        The file is missing, not FCS, truncated, inconsistent, or uses an
        unsupported layout; the message names the file, the field and the cause.
    ValueError
        ``dataset`` is negative.
    """
    if dataset < 0:
        raise ValueError(f"dataset must be >= 0, not {dataset}")
    path = Path(path)
    spath = str(path)
    warnings: list[str] = []
    with _map(path) as buf:
        start = 0
        for k in range(dataset + 1):
            ds = _read_text_at(buf, spath, start, warnings)
            nxt = _opt_int(ds.text, "$NEXTDATA") or 0
            if nxt < 0 or (nxt > 0 and start + nxt + _HEADER_LEN > len(buf)):
                warnings.append(f"$NEXTDATA {nxt} points outside the file; ignored")
                nxt = 0
            if k < dataset:
                if nxt <= 0:
                    raise FCSError(
                        f"file has {k + 1} data set(s), data set {dataset} asked for",
                        file=spath,
                        field="$NEXTDATA",
                    )
                start += nxt
        if nxt > 0:
            warnings.append(f"file holds more than one data set; data set {dataset} was read")
        events = _read_data(buf, spath, ds, warnings)
    text = ds.text
    npar = events.shape[1]
    channels = []
    for n in range(1, npar + 1):
        name = text.get(f"$P{n}N", "").strip()
        if not name:
            name = f"P{n}"
            warnings.append(f"$P{n}N is missing; channel {n} is called {name!r}")
        channels.append(name)
    markers = [text.get(f"$P{n}S", "").strip() for n in range(1, npar + 1)]
    dupes = sorted({c for c in channels if channels.count(c) > 1})
    if dupes:
        warnings.append(f"duplicate $PnN channel names: {', '.join(dupes)}")
    for w in warnings:
        log.warning("%s: %s", spath, w)
    return FCSData(spath, ds.version, text, channels, markers, events, warnings)


def inspect_files(paths: list[str], out: TextIO) -> int:
    """Print one tab-separated line per FCS file; the ``immuno inspect`` command.

    Each line is ``path, version, events=N, channels=K, $PnN[=$PnS]; ...,
    spillover=yes|no|invalid, warnings=...`` for a file that reads (a malformed
    spillover keyword is reported, not fatal: the events are readable), or
    ``ERROR <ErrorClass>: <message>`` for one that does not.

    Parameters
    ----------
    paths
        FCS files.
    out
        Where the lines go (e.g. ``sys.stdout``).

    Returns
    -------
    int
        Exit status: 1 if any file failed, else 0.
    """
    status = 0
    for p in paths:
        try:
            d = read_fcs(p)
        except ImmunoError as exc:
            msg = str(exc)
            if exc.file is None:
                msg = f"file {_one_line(p)}: {msg}"
            out.write(f"ERROR {type(exc).__name__}: {_one_line(msg)}\n")
            status = 1
            continue
        notes = list(d.warnings)
        try:
            spill = "yes" if d.spillover() is not None else "no"
        except FCSError as exc:  # the events are fine; compensation would not be
            spill = "invalid"
            notes.append(f"{exc.field}: {exc.message}")
        pairs = "; ".join(
            f"{c}={m}" if m else c for c, m in zip(d.channels, d.markers, strict=True)
        )
        warn = " | ".join(notes) if notes else "none"
        fields = [p, d.version, f"events={d.n_events}", f"channels={len(d.channels)}", pairs]
        fields += [f"spillover={spill}", f"warnings={warn}"]
        out.write("\t".join(_one_line(f) for f in fields) + "\n")
    return status


def time_step(text: dict[str, str]) -> float | None:
    """The file's ``$TIMESTEP``: seconds per unit of its ``Time`` channel, when it is a
    finite positive number; ``None`` when it is absent, not a number, zero, negative or
    not finite (Time then stays in its stored units). The one reader of the keyword:
    gating, exports and FlowKit-facing files all take it from here."""
    raw = (text.get("$TIMESTEP") or "").strip()
    try:
        step = float(raw)
    except ValueError:
        return None
    return step if math.isfinite(step) and step > 0 else None


def _one_line(text) -> str:
    """``text`` with tabs, line breaks and other control characters escaped (``\\n``,
    ``\\t``, ``\\x1b``...): a file or marker name holding one keeps its file on one line."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text)
    )
