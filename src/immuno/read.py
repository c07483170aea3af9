"""Read FCS 2.0, 3.0 and 3.1 files.

Calling convention: ``read_fcs(path) -> FCSData``. ``FCSData.events`` is an
``(n_events, n_channels)`` array of *raw channel values* exactly as stored in the
DATA segment (integers are widened to float32 after masking unused bits, floats
are returned as stored), in the order of ``$P1N..$PnN``. Nothing is compensated
or transformed here. ``FCSData.scaled()`` applies the FCS-defined linearisation
(``$PnE`` log amplification of integer channels and, optionally, division by the
``$PnG`` gain), which is what Gating-ML calls the channel values.

The reader maps the file and builds the event matrix with ``numpy.frombuffer``;
for little-endian float data on a little-endian machine that is a view with no
copy. Every size claimed by the file is checked against the file length before
anything is allocated, so a damaged file gives an :class:`~immuno.errors.FCSError`
naming the file and the field at fault, never a crash or a huge allocation.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FCSError

__all__ = ["FCSData", "read_fcs", "read_text", "parse_spillover"]

log = logging.getLogger(__name__)

_HEADER_LEN = 58
_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")


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
        All TEXT keywords, keys upper-cased (``"$TOT"``, ``"$P1N"``, ...).
    channels
        ``$PnN`` short names, one per column of ``events``.
    markers
        ``$PnS`` names (the stain/marker), ``""`` where a channel has none.
    events
        ``(n_events, n_channels)`` raw channel values (float32, or float64 for
        ``$DATATYPE D``), read-only when it is a view of the file.
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
        return int(self.events.shape[0])

    def channel_index(self, name: str) -> int:
        """Column of the channel whose ``$PnN`` is ``name``.

        Raises :class:`~immuno.errors.FCSError` when it is absent.
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

        Returns ``(detector_names, matrix)`` with ``matrix[i, j]`` the fraction of
        detector ``i``'s fluorochrome seen in detector ``j`` (rows are sources),
        or ``None`` when the file has none.
        """
        for key in ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP"):
            value = self.text.get(key)
            if value and value.strip() not in ("", "0"):
                return parse_spillover(value, file=self.path, field=key)
        return None

    def scaled(self, *, gain: bool = False) -> np.ndarray:
        """Channel values linearised as the FCS standard defines.

        Integer channels with ``$PnE = f1,f2`` (``f1 > 0``) are decoded from the
        log-amplified channel number ``x`` as ``f2 * 10**(f1 * x / $PnR)`` (``f2``
        of 0 counts as 1). With ``gain=True`` linear channels are divided by
        ``$PnG``. Returns a new float64 array; ``events`` is not modified.
        """
        out = self.events.astype(np.float64, copy=True)
        for j in range(len(self.channels)):
            n = j + 1
            f1, f2 = _pne(self.text.get(f"$P{n}E", "0,0"), self.path, n)
            if f1 > 0:
                r = _float_kw(self.text, f"$P{n}R", self.path)
                out[:, j] = (f2 if f2 > 0 else 1.0) * 10.0 ** (f1 * out[:, j] / r)
            elif gain:
                g = float(self.text.get(f"$P{n}G", "1") or 1)
                if g not in (0.0, 1.0):
                    out[:, j] /= g
        return out


def parse_spillover(value: str, *, file: str | None = None, field: str = "$SPILLOVER"):
    """Parse a ``$SPILLOVER`` value: ``n, name1..namen, n*n numbers`` (row-major)."""
    parts = [p.strip() for p in value.split(",")]
    try:
        n = int(float(parts[0]))
    except (ValueError, IndexError):
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
        raise FCSError("spillover keyword has a non-numeric value", file=file, field=field) from None
    return names, matrix


def _pne(value: str, path: str, n: int) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value.split(",")[:2])
    except ValueError:
        raise FCSError(
            f"$P{n}E is {value!r}, not two numbers", file=path, field=f"$P{n}E"
        ) from None
    return a, b


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
            hint="expected FCS2.0, FCS3.0 or FCS3.1",
        )
    offsets = []
    for i in range(6):
        raw = bytes(buf[start + 10 + 8 * i : start + 18 + 8 * i]).decode("ascii", "replace").strip()
        try:
            offsets.append(int(raw) if raw else 0)
        except ValueError:
            raise FCSError(
                f"header offset {i + 1} is {raw!r}, not a number",
                file=path,
                field="HEADER",
                hint="the file header is damaged",
            ) from None
    return version, offsets


def _parse_text(raw: bytes, path: str, field: str = "TEXT") -> dict[str, str]:
    if len(raw) < 2:
        raise FCSError("TEXT segment is empty", file=path, field=field)
    delim = raw[0:1]
    body = raw[1:]
    # Split on single delimiters; a doubled delimiter is an escaped literal.
    tokens: list[bytes] = []
    cur = bytearray()
    i = 0
    n = len(body)
    d = delim[0]
    while i < n:
        c = body[i]
        if c == d:
            if i + 1 < n and body[i + 1] == d:
                # Escaped delimiter inside a value, unless it is an empty value
                # at the very end (text ending with a doubled delimiter).
                cur.append(d)
                i += 2
                continue
            tokens.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        cur.append(c)
        i += 1
    if cur.strip(b"\x00 \r\n"):
        tokens.append(bytes(cur))
    text: dict[str, str] = {}
    for k in range(0, len(tokens) - 1, 2):
        key = _decode(tokens[k]).strip().upper()
        if key:
            text[key] = _decode(tokens[k + 1])
    return text


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _open(path: Path):
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FCSError("file does not exist", file=str(path), hint="check fcs_path") from None
    except IsADirectoryError:
        raise FCSError("is a directory, not an FCS file", file=str(path)) from None
    except PermissionError:
        raise FCSError("file cannot be read (permission denied)", file=str(path)) from None
    return f


def _map(path: Path):
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise FCSError("file is empty", file=str(path), field="HEADER")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _segment(buf, start: int, begin: int, end: int, path: str, field: str) -> tuple[int, int]:
    """Absolute [a, b) of a segment given inclusive offsets relative to ``start``."""
    a, b = start + begin, start + end + 1
    if begin < 0 or end < begin or b > len(buf):
        raise FCSError(
            f"{field} segment {begin}-{end} lies outside the file ({len(buf) - start} bytes)",
            file=path,
            field=field,
            hint="the file is truncated or its offsets are damaged",
        )
    return a, b


def _read_text_at(buf, path: str, start: int):
    version, off = _parse_header(buf, path, start)
    a, b = _segment(buf, start, off[0], off[1], path, "TEXT")
    text = _parse_text(bytes(buf[a:b]), path)
    if version != "FCS2.0" and "$BEGINSTEXT" in text:
        try:
            sb, se = int(text["$BEGINSTEXT"]), int(text["$ENDSTEXT"])
        except (KeyError, ValueError):
            sb = se = 0
        if se > sb > 0 and start + se < len(buf):
            sa, sb2 = start + sb, start + se + 1
            extra = _parse_text(bytes(buf[sa:sb2]), path, "STEXT")
            for k, v in extra.items():
                text.setdefault(k, v)
    return version, off, text


def read_text(path: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """Read only the HEADER and TEXT of the first data set: ``(version, keywords)``."""
    path = Path(path)
    with _map(path) as buf:
        version, _, text = _read_text_at(buf, str(path), 0)
    return version, text


def _data_dtype(text: dict[str, str], npar: int, path: str):
    datatype = text.get("$DATATYPE", "").strip().upper()
    byteord = text.get("$BYTEORD", "").replace(" ", "")
    if byteord in ("1,2,3,4", "1,2", "1"):
        endian = "<"
    elif byteord in ("4,3,2,1", "2,1"):
        endian = ">"
    else:
        raise FCSError(
            f"$BYTEORD {byteord!r} is not a supported byte order",
            file=path,
            field="$BYTEORD",
            hint="only little-endian (1,2,3,4) and big-endian (4,3,2,1) are supported",
        )
    mode = text.get("$MODE", "L").strip().upper()
    if mode != "L":
        raise FCSError(
            f"$MODE {mode} (histogram data) is not supported",
            file=path,
            field="$MODE",
            hint="only list-mode data can be gated",
        )
    bits = []
    for n in range(1, npar + 1):
        raw = text.get(f"$P{n}B", "").strip()
        if datatype == "A" and raw == "*":
            raise FCSError(
                "delimited ASCII data ($PnB = *) is not supported",
                file=path,
                field=f"$P{n}B",
            )
        try:
            bits.append(int(raw))
        except ValueError:
            raise FCSError(f"$P{n}B is {raw!r}, not a bit width", file=path, field=f"$P{n}B") from None
    if datatype == "F":
        if any(b != 32 for b in bits):
            raise FCSError("float data must have $PnB = 32", file=path, field="$PnB")
        return np.dtype(endian + "f4"), bits, datatype
    if datatype == "D":
        if any(b != 64 for b in bits):
            raise FCSError("double data must have $PnB = 64", file=path, field="$PnB")
        return np.dtype(endian + "f8"), bits, datatype
    if datatype == "I":
        if any(b not in (8, 16, 32, 64) for b in bits):
            raise FCSError(
                f"integer widths {sorted(set(bits))} are not whole bytes",
                file=path,
                field="$PnB",
                hint="only 8, 16, 32 and 64-bit integers are supported",
            )
        if len(set(bits)) == 1:
            return np.dtype(f"{endian}u{bits[0] // 8}"), bits, datatype
        fields = [(f"p{j}", f"{endian}u{b // 8}") for j, b in enumerate(bits)]
        return np.dtype(fields), bits, datatype
    if datatype == "A":
        return np.dtype(f"S{bits[0]}") if len(set(bits)) == 1 else None, bits, datatype
    raise FCSError(
        f"$DATATYPE {datatype!r} is not supported",
        file=path,
        field="$DATATYPE",
        hint="FCS data types are I, F, D and A",
    )


def _data_offsets(text, off, path, warnings):
    begin, end = off[2], off[3]
    kb, ke = text.get("$BEGINDATA"), text.get("$ENDDATA")
    try:
        tb = int(kb.strip()) if kb and kb.strip() else None
        te = int(ke.strip()) if ke and ke.strip() else None
    except ValueError:
        tb = te = None
    if (begin == 0 and end == 0) and tb is not None and te is not None:
        begin, end = tb, te
    elif tb is not None and te is not None and (tb, te) != (begin, end) and (tb or te):
        warnings.append(
            f"header DATA offsets {begin}-{end} disagree with $BEGINDATA/$ENDDATA {tb}-{te}"
        )
    return begin, end, tb, te


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
        The file is missing, not FCS, truncated, or uses an unsupported layout.
    """
    path = Path(path)
    spath = str(path)
    warnings: list[str] = []
    with _map(path) as buf:
        start = 0
        for k in range(dataset + 1):
            version, off, text = _read_text_at(buf, spath, start)
            nxt = int(text.get("$NEXTDATA", "0").strip() or 0)
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
        events = _read_data(buf, spath, start, off, text, warnings, path)
    npar = events.shape[1]
    channels = [text.get(f"$P{n}N", f"P{n}").strip() for n in range(1, npar + 1)]
    markers = [text.get(f"$P{n}S", "").strip() for n in range(1, npar + 1)]
    for w in warnings:
        log.warning("%s: %s", spath, w)
    return FCSData(spath, version, text, channels, markers, events, warnings)


def _read_data(buf, path, start, off, text, warnings, fpath: Path) -> np.ndarray:
    npar = _int_kw(text, "$PAR", path)
    tot = _int_kw(text, "$TOT", path)
    if npar <= 0 or npar > 10_000:
        raise FCSError(f"$PAR is {npar}", file=path, field="$PAR", hint="expected 1 to 10000")
    if tot < 0:
        raise FCSError(f"$TOT is {tot}", file=path, field="$TOT")
    dtype, bits, datatype = _data_dtype(text, npar, path)
    begin, end, tb, te = _data_offsets(text, off, path, warnings)
    row_bytes = sum(bits) // 8
    need = tot * row_bytes
    avail_end = len(buf) - start
    if begin <= 0 and tot > 0:
        raise FCSError(
            "DATA segment offset is missing",
            file=path,
            field="$BEGINDATA",
            hint="the file has no event data (header-only export?)",
        )
    declared = end - begin + 1
    if begin + need > avail_end:
        raise FCSError(
            f"$TOT={tot} events x {row_bytes} bytes need {need} bytes of DATA, "
            f"but the file ends {avail_end - begin} bytes after DATA starts",
            file=path,
            field="$TOT",
            hint="the file is truncated (interrupted transfer?) or $TOT is wrong",
        )
    if declared != need and abs(declared - need) > row_bytes:
        warnings.append(f"DATA segment is {declared} bytes but $TOT x row size is {need}")
    a = start + begin
    if datatype == "A":
        if dtype is None:
            raise FCSError("ASCII data with varying widths is not supported", file=path, field="$PnB")
        raw = np.frombuffer(buf, dtype=dtype, count=tot * npar, offset=a)
        try:
            return raw.astype(np.float64).astype(np.float32).reshape(tot, npar)
        except ValueError:
            raise FCSError("ASCII DATA holds a non-number", file=path, field="DATA") from None
    if dtype.names is None:
        # One read straight from the file into the array: the floor for I/O.
        with open(fpath, "rb") as f:
            arr = np.fromfile(f, dtype=dtype, count=tot * npar, offset=a).reshape(tot, npar)
        if datatype in ("F", "D"):
            if dtype.byteorder not in ("=", "|"):  # numpy marks the native order "="
                return arr.astype(dtype.newbyteorder("="))
            return arr
        return _mask_ints(arr, text, path, npar)
    rec = np.frombuffer(buf, dtype=dtype, count=tot, offset=a)
    cols = np.empty((tot, npar), dtype=np.float64)
    for j, name in enumerate(dtype.names):
        cols[:, j] = rec[name]
    return _mask_ints(cols, text, path, npar)


def _mask_ints(arr: np.ndarray, text, path, npar) -> np.ndarray:
    out = np.empty(arr.shape, dtype=np.float32 if arr.dtype.itemsize <= 2 else np.float64)
    for j in range(npar):
        n = j + 1
        col = arr[:, j]
        r = text.get(f"$P{n}R", "").strip()
        try:
            rng = int(float(r)) if r else 0
        except ValueError:
            rng = 0
        if rng > 0 and np.issubdtype(col.dtype, np.integer):
            bitsneeded = int(np.ceil(np.log2(rng))) if rng > 1 else 1
            if bitsneeded < col.dtype.itemsize * 8:
                col = col & np.array((1 << bitsneeded) - 1, dtype=col.dtype)
        out[:, j] = col
    return out
