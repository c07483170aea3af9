"""Fuzz the FCS reader with mutated small FCS files.

Every case takes a small valid FCS file (synthetic ones written here, plus the
small real files of ``shared/data`` when that folder is present), applies one to
three random mutations (HEADER offsets, TEXT keywords such as ``$TOT``, ``$PAR``,
``$DATATYPE``, ``$BYTEORD``, ``$PnB``, truncation, huge claimed sizes, byte
flips, extra data sets, ...) and reads it with :func:`immuno.read.read_fcs`. The
only acceptable outcomes are a successful read or an
:class:`~immuno.errors.FCSError`; anything else is a reader bug.

Usage::

    .venv/bin/python benchmarks/fuzz_reader.py --cases 10000 --seed 1

Prints the count of each outcome, the slowest case (seconds) and the peak
resident memory (MiB), and exits 1 on any exception other than ``FCSError`` or
any case slower than ``--max-seconds``. ``--only-case N`` re-runs one case with
its traceback. ``tests/test_read.py`` imports :func:`seed_files`,
:func:`mutate` and :func:`build_fcs` from this file for its hypothesis test.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import resource
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

# Small real files (< 10 kB) used as seeds when shared/data is present.
REAL_SEEDS = (
    "flowkit_testdata/data/simple_line_example/data_set_simple_line_100.fcs",
    "flowio_testdata/variable_int_example.fcs",
    "flowkit_testdata/data/noncompliant/data_start_offset_discrepancy_example.fcs",
    "flowkit_testdata/data/noncompliant/data_stop_offset_discrepancy_example.fcs",
    "fcsparser_instruments/FlowCytometers/cytek-nl-2000/sample_header.fcs",
    "fcsparser_instruments/FlowCytometers/corrupted/corrupted.fcs",
)

Keywords = list[tuple[bytes, bytes]]


# ---------------------------------------------------------------------------
# a minimal FCS writer


def _b(x: str | bytes | int | float) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode("utf-8")


def _text_segment(kw: Keywords, delim: bytes) -> bytes:
    out = [delim]
    for k, v in kw:
        out += [k.replace(delim, delim + delim), delim, v.replace(delim, delim + delim), delim]
    return b"".join(out)


def build_fcs(
    keywords,
    data: bytes,
    *,
    version: str = "FCS3.1",
    delim: bytes = b"/",
    fix_offsets: bool = True,
    header_data: bool = True,
    text_start: int = 58,
) -> bytes:
    """Write one FCS data set: HEADER, TEXT, then DATA.

    Parameters
    ----------
    keywords
        ``dict`` or list of ``(key, value)`` pairs (str, bytes or numbers), in
        order. An empty value is written as a doubled delimiter.
    data
        The DATA segment bytes.
    version
        The 6-character version at the start of the HEADER.
    delim
        The TEXT delimiter (one byte); delimiters inside keys and values are
        doubled.
    fix_offsets
        Set ``$BEGINDATA``/``$ENDDATA`` to where DATA really is (added when
        absent, except for FCS2.0). With False, values given in ``keywords``
        are kept as they are.
    header_data
        Write the DATA offsets into the HEADER too (else zeros, as for files
        over 99,999,999 bytes).
    text_start
        Byte offset of TEXT (>= 58; the gap is filled with spaces).

    Returns
    -------
    bytes
        The file.
    """
    items = keywords.items() if isinstance(keywords, dict) else keywords
    kw: Keywords = [(_b(k), _b(v)) for k, v in items]
    if fix_offsets and version != "FCS2.0":
        for key in (b"$BEGINDATA", b"$ENDDATA"):
            if not any(k.upper() == key for k, _ in kw):
                kw.append((key, b"0"))
    begin = end = 0
    for _ in range(6):  # offsets are text, so their length feeds back: iterate
        text = _text_segment(kw, delim)
        begin = text_start + len(text)
        end = begin + len(data) - 1
        if not fix_offsets:
            break
        new = [
            (
                k,
                _b(begin)
                if k.upper() == b"$BEGINDATA"
                else _b(end)
                if k.upper() == b"$ENDDATA"
                else v,
            )
            for k, v in kw
        ]
        if new == kw:
            break
        kw = new
    text = _text_segment(kw, delim)
    fields = [text_start, text_start + len(text) - 1]
    fields += [begin, end] if header_data and end <= 99_999_999 else [0, 0]
    fields += [0, 0]
    header = version.encode("ascii")[:6].ljust(6) + b"    "
    header += b"".join(str(f).rjust(8).encode("ascii")[-8:] for f in fields)
    return header + b" " * (text_start - 58) + text + data


def channel_keywords(
    events: np.ndarray,
    datatype: str,
    *,
    byteord: str = "1,2,3,4",
    bits: list[int] | None = None,
    ranges: list[int | str] | None = None,
    names: list[str] | None = None,
    markers: list[str] | None = None,
) -> dict[str, str]:
    """The required keywords for ``events`` (``(n_events, n_channels)``)."""
    n, p = events.shape
    kw = {
        "$BYTEORD": byteord,
        "$DATATYPE": datatype,
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(p),
        "$TOT": str(n),
    }
    width = {"F": 32, "D": 64}.get(datatype, 16)
    for j in range(p):
        i = j + 1
        kw[f"$P{i}N"] = names[j] if names else f"CH{i}"
        if markers and markers[j]:
            kw[f"$P{i}S"] = markers[j]
        kw[f"$P{i}B"] = str(bits[j] if bits else width)
        kw[f"$P{i}R"] = str(ranges[j] if ranges else 1024)
        kw[f"$P{i}E"] = "0,0"
    return kw


def pack_ints(values: np.ndarray, widths_bytes: list[int], endian: str) -> bytes:
    """Pack unsigned integers row by row, channel ``j`` in ``widths_bytes[j]`` bytes."""
    cols = []
    for j, w in enumerate(widths_bytes):
        v = values[:, j].astype(np.uint64)
        shifts = np.arange(w, dtype=np.uint64) * np.uint64(8)
        b = ((v[:, None] >> shifts[None, :]) & np.uint64(0xFF)).astype(np.uint8)
        cols.append(b if endian == "<" else b[:, ::-1])
    return np.ascontiguousarray(np.concatenate(cols, axis=1)).tobytes()


def synthetic_seeds() -> dict[str, bytes]:
    """Small valid files covering every layout the reader supports."""
    rng = np.random.default_rng(7)
    seeds: dict[str, bytes] = {}

    ev = rng.normal(500, 100, (20, 3)).astype("<f4")
    kw = channel_keywords(ev, "F", names=["FSC-A", "SSC-A", "FITC-A"], markers=["", "", "CD3"])
    kw["$SPILLOVER"] = "2,SSC-A,FITC-A,1,0.1,0.02,1"
    seeds["float_le"] = build_fcs(kw, ev.tobytes())

    ev = rng.normal(0, 1e6, (10, 2)).astype(">f8")
    seeds["double_be"] = build_fcs(
        channel_keywords(ev, "D", byteord="4,3,2,1"), ev.tobytes(), version="FCS3.0", delim=b"|"
    )

    ev = rng.integers(0, 1024, (15, 4))
    hi = ev | (rng.integers(0, 64, (15, 4)) << 10)  # junk above $PnR
    kw = channel_keywords(ev, "I", byteord="4,3,2,1")
    kw["$P3E"] = "4,1"
    seeds["int16_be_masked"] = build_fcs(kw, pack_ints(hi, [2] * 4, ">"), delim=b"\\")

    ev = rng.integers(0, 262144, (12, 3))
    kw = channel_keywords(ev, "I", byteord="4,3,2,1", bits=[24] * 3, ranges=[262144] * 3)
    seeds["int24_be"] = build_fcs(kw, pack_ints(ev, [3] * 3, ">"), version="FCS3.0")

    ev = np.column_stack(
        [
            rng.integers(0, 256, 9),
            rng.integers(0, 65536, 9),
            rng.integers(0, 2**32, 9, dtype=np.uint64),
        ]
    )
    kw = channel_keywords(ev, "I", bits=[8, 16, 32], ranges=[256, 65536, 2**32])
    seeds["int_mixed_le"] = build_fcs(kw, pack_ints(ev, [1, 2, 4], "<"))

    ev = rng.integers(0, 1000, (8, 3))
    data = b"".join(b"".join(str(int(x)).rjust(4).encode() for x in row) for row in ev)
    seeds["ascii_fixed"] = build_fcs(channel_keywords(ev, "A", bits=[4] * 3), data)

    ev = rng.integers(0, 1000, (6, 2))
    data = b"\n".join(b",".join(str(int(x)).encode() for x in row) for row in ev) + b"\n"
    kw = channel_keywords(ev, "A")
    for j in range(2):
        kw[f"$P{j + 1}B"] = "*"
    seeds["ascii_delimited"] = build_fcs(kw, data)

    ev = rng.integers(0, 1024, (10, 3))
    kw = list(channel_keywords(ev, "I", byteord="1,2").items())
    kw += [("$P1S", ""), ("$P2S", ""), ("$COM", "a/b")]  # empty values, escaped delimiter
    seeds["fcs20_empty_values"] = build_fcs(
        kw, pack_ints(ev, [2] * 3, "<"), version="FCS2.0", text_start=256
    )

    ev = rng.normal(100, 10, (5, 2)).astype("<f4")
    first = build_fcs(channel_keywords(ev, "F"), ev.tobytes())
    kw = channel_keywords(ev, "F")
    kw["$NEXTDATA"] = str(len(first) + 20)  # fixed width after the first pass
    first = build_fcs(kw, ev.tobytes())
    kw["$NEXTDATA"] = str(len(first))
    first = build_fcs(kw, ev.tobytes())
    seeds["two_datasets"] = first + build_fcs(channel_keywords(ev[:3], "F"), ev[:3].tobytes())

    ev_i = rng.integers(0, 1024, 7)
    ev_f = rng.normal(0, 1, 7).astype("<f4")
    kw = channel_keywords(np.zeros((7, 2)), "I", bits=[16, 32])
    kw["$P2DATATYPE"] = "F"
    data = b"".join(
        int(a).to_bytes(2, "little") + b.tobytes() for a, b in zip(ev_i, ev_f, strict=True)
    )
    seeds["fcs32_mixed_types"] = build_fcs(kw, data, version="FCS3.2")
    return seeds


def seed_files(data_dir: Path | None = DATA_DIR) -> dict[str, bytes]:
    """Synthetic seeds plus the small real files of ``data_dir`` that exist."""
    seeds = synthetic_seeds()
    if data_dir is not None:
        for rel in REAL_SEEDS:
            p = Path(data_dir) / rel
            if p.is_file():
                seeds[p.name] = p.read_bytes()
    return seeds


# ---------------------------------------------------------------------------
# mutations


_KEYS = (
    "$TOT",
    "$PAR",
    "$DATATYPE",
    "$BYTEORD",
    "$MODE",
    "$NEXTDATA",
    "$BEGINDATA",
    "$ENDDATA",
    "$BEGINSTEXT",
    "$ENDSTEXT",
    "$SPILLOVER",
)
_PKEYS = ("B", "R", "E", "G", "N", "S", "DATATYPE")
_VALUES = (
    "",
    " ",
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "8",
    "12",
    "16",
    "24",
    "32",
    "33",
    "64",
    "128",
    "1024",
    "65536",
    "4294967296",
    "2147483647",
    "99999999",
    "999999999999",
    "1" + "0" * 30,
    "1e309",
    "-inf",
    "inf",
    "nan",
    "abc",
    "1.5",
    "I",
    "F",
    "D",
    "A",
    "*",
    "L",
    "C",
    "U",
    "X",
    "1,2,3,4",
    "4,3,2,1",
    "1,2",
    "2,1",
    "3,4,1,2",
    "1,2,3",
    "4,1",
    "0,0",
    "-1,0",
    "inf,1",
    "4",
    "1,x",
    "2,a,b,1,0,0,1",
    "2,a,b,1,0",
    "9999999,a",
    "\u2122",
    "\xff\xfe",
)


def _parse(blob: bytes):
    """``(version, keywords, delim, data)`` of a simple well-formed file, or None."""
    try:
        version = blob[:6].decode("ascii")
        off = [int(blob[10 + 8 * i : 18 + 8 * i].strip() or 0) for i in range(4)]
        text = blob[off[0] : off[1] + 1]
        delim = text[:1]
        if not delim or off[0] < 58:
            return None
        parts = text[1:].replace(delim + delim, b"\x00\x01").split(delim)
        parts = [p.replace(b"\x00\x01", delim) for p in parts]
        kw = list(zip(parts[0:-1:2], parts[1::2], strict=False))
        d0, d1 = off[2], off[3]
        if d0 == 0 and d1 == 0:
            vals = {k.upper(): v for k, v in kw}
            d0, d1 = int(vals[b"$BEGINDATA"]), int(vals[b"$ENDDATA"])
        return version, kw, delim, blob[d0 : d1 + 1]
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def _npar(kw: Keywords) -> int:
    for k, v in kw:
        if k.upper() == b"$PAR":
            try:
                return max(1, min(int(v), 50))
            except ValueError:
                return 3
    return 3


def _set(kw: Keywords, key: bytes, value: bytes) -> Keywords:
    out = [(k, value if k.upper() == key else v) for k, v in kw]
    if not any(k.upper() == key for k, _ in kw):
        out.append((key, value))
    return out


def _tweak(kw: Keywords, key: bytes, rng: random.Random) -> bytes:
    current = dict((k.upper(), v) for k, v in kw).get(key, b"1")
    try:
        n = int(current)
    except ValueError:
        return rng.choice(_VALUES).encode("utf-8")
    return str(
        rng.choice([n + 1, n - 1, n * 2, n // 2, n * 1000, -n, 0, 10 ** rng.randint(3, 25)])
    ).encode()


def _structural(blob: bytes, rng: random.Random) -> tuple[bytes, str] | None:
    parsed = _parse(blob)
    if parsed is None:
        return None
    version, kw, delim, data = parsed
    fix = True
    op = rng.choice(
        [
            "set",
            "set",
            "set",
            "tweak",
            "delete",
            "data",
            "empty",
            "delim",
            "latin1",
            "nextdata",
            "stext",
            "rebuild",
        ]
    )
    if op in ("set", "tweak"):
        if rng.random() < 0.5:
            key = rng.choice(_KEYS).encode()
        else:
            key = f"$P{rng.randint(1, _npar(kw) + 1)}{rng.choice(_PKEYS)}".encode()
        value = _tweak(kw, key, rng) if op == "tweak" else rng.choice(_VALUES).encode("utf-8")
        kw = _set(kw, key, value)
        fix = key not in (b"$BEGINDATA", b"$ENDDATA")
        op = f"{op} {key.decode()}={value[:20]!r}"
    elif op == "delete" and kw:
        i = rng.randrange(len(kw))
        op = f"delete {kw[i][0][:20]!r}"
        del kw[i]
    elif op == "data":
        cut = rng.choice([0, 1, len(data) // 2, max(len(data) - 1, 0), len(data) + 1])
        data = data[:cut] if cut <= len(data) else data + bytes(rng.randrange(1, 64))
        op = f"data length {len(data)}"
    elif op == "empty" and kw:
        i = rng.randrange(len(kw))
        kw[i] = (kw[i][0], b"")
        op = f"empty value {kw[i][0][:20]!r}"
    elif op == "delim" and kw:
        i = rng.randrange(len(kw))
        kw[i] = (kw[i][0], kw[i][1] + delim + kw[i][1])
        op = f"delimiter in value {kw[i][0][:20]!r}"
    elif op == "latin1" and kw:
        i = rng.randrange(len(kw))
        kw[i] = (kw[i][0], kw[i][1] + b"\xe9\xff")
        op = f"non-UTF-8 value {kw[i][0][:20]!r}"
    elif op == "nextdata":
        kw = _set(kw, b"$NEXTDATA", str(rng.choice([58, 100, 10**9, len(blob) - 10])).encode())
    elif op == "stext":
        kw = _set(kw, b"$BEGINSTEXT", str(rng.randrange(0, len(blob) + 10)).encode())
        kw = _set(kw, b"$ENDSTEXT", str(rng.randrange(0, len(blob) + 100)).encode())
    out = build_fcs(
        kw, data, version=version, delim=delim, fix_offsets=fix, header_data=rng.random() < 0.8
    )
    return out, op


def _field(rng: random.Random, orig: int, size: int) -> bytes:
    v = rng.choice(
        [
            0,
            1,
            57,
            58,
            size - 1,
            size,
            size + 1,
            99_999_999,
            orig + 1,
            orig - 1,
            orig + 8,
            orig - 8,
            rng.randrange(0, size + 2),
        ]
    )
    raw = rng.choice([str(v), "abcdefgh", "-0000001", "", " 1 2", "\xff"])
    return raw.encode("latin-1")[:8].rjust(8)


def _bytewise(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(blob)
    op = rng.choice(
        [
            "header",
            "header",
            "version",
            "truncate",
            "truncate",
            "flip",
            "insert",
            "delete",
            "append",
            "dupdelim",
        ]
    )
    if op == "header" and len(b) >= 58:
        i = rng.randrange(6)
        try:
            orig = int(b[10 + 8 * i : 18 + 8 * i].strip() or 0)
        except ValueError:
            orig = 0
        b[10 + 8 * i : 18 + 8 * i] = _field(rng, orig, len(b))
        op = f"header field {i + 1}"
    elif op == "version":
        b[0:6] = rng.choice(
            [b"FCS2.0", b"FCS3.0", b"FCS3.1", b"FCS3.2", b"FCS4.0", b"fcs3.1", b"\x00" * 6]
        )
    elif op == "truncate":
        cut = rng.choice(
            [0, 1, 10, 57, 58, 59, 100, len(b) // 2, len(b) - 1, rng.randrange(0, len(b) + 1)]
        )
        del b[cut:]
        op = f"truncate at {cut}"
    elif op == "flip" and b:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == "delete" and b:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 16)]
    elif op == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    elif op == "dupdelim" and len(b) > 70:
        i = rng.randrange(58, min(len(b), 2000))
        b[i:i] = b[58:59] * rng.randint(1, 3)
    return bytes(b), op


def mutate(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Apply one to three random mutations; returns the bytes and what was done."""
    ops = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        done = _structural(blob, rng) if rng.random() < 0.6 else None
        blob, op = done if done is not None else _bytewise(blob, rng)
        ops.append(op)
    return blob, "; ".join(ops)


# ---------------------------------------------------------------------------
# running


def run_case(path: Path, blob: bytes) -> str:
    """Write ``blob`` to ``path`` and read it: ``"read"`` or ``"FCSError <field>"``.

    Any other exception propagates.
    """
    from immuno.errors import FCSError
    from immuno.read import read_fcs

    path.write_bytes(blob)
    try:
        d = read_fcs(path)
        d.scaled(gain=True)
        d.spillover()
    except FCSError as exc:
        return f"FCSError {re.sub(r'^[$]P[0-9]+', '$Pn', exc.field or '-')}"
    return "read"


def _run(seeds: dict[str, bytes], args: argparse.Namespace):
    names = sorted(seeds)
    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    slowest = (0.0, -1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cases = [args.only_case] if args.only_case is not None else range(args.cases)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.fcs"
        for i in cases:
            rng = random.Random(args.seed * 1_000_003 + i)
            name = rng.choice(names)
            blob, ops = mutate(seeds[name], rng)
            t0 = time.perf_counter()
            try:
                outcome = run_case(path, blob)
            except Exception as exc:  # noqa: BLE001 - any other exception is the finding
                outcome = f"BUG {type(exc).__name__}"
                bugs.append(f"case {i} ({name}: {ops}): {type(exc).__name__}: {exc}")
                if args.only_case is not None:
                    traceback.print_exc()
            dt = time.perf_counter() - t0
            slowest = max(slowest, (dt, i))
            outcomes[outcome] += 1
    total = time.perf_counter() - t_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return outcomes, bugs, slowest, total, rss0, rss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="shared/data folder for seeds")
    p.add_argument("--only-case", type=int, default=None, help="run one case, show traceback")
    p.add_argument("--max-seconds", type=float, default=2.0, help="slowest acceptable case")
    args = p.parse_args(argv)

    seeds = seed_files(args.data)
    logging.disable(logging.WARNING)  # the reader logs every oddity it meets
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy overflow in scaled() of absurd $PnE
            outcomes, bugs, slowest, total, rss0, rss = _run(seeds, args)
    finally:
        logging.disable(logging.NOTSET)

    n = sum(outcomes.values())
    print(f"{n} cases from {len(seeds)} seed files, seed {args.seed}, {total:.1f} s")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count:7d}  {outcome}")
    print(
        f"slowest case: {slowest[0] * 1000:.1f} ms (case {slowest[1]}); "
        f"mean {total / max(n, 1) * 1000:.2f} ms"
    )
    print(f"peak RSS: {rss / 1024:.1f} MiB (before the cases: {rss0 / 1024:.1f} MiB)")
    for b in bugs[:20]:
        print("BUG", b)
    failed = bool(bugs) or slowest[0] > args.max_seconds
    if slowest[0] > args.max_seconds:
        print(f"FAIL: case {slowest[1]} took {slowest[0]:.2f} s > {args.max_seconds} s")
    print("FAIL" if failed else "OK: every case was read or refused with FCSError")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
