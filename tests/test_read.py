"""Tests of the FCS reader (``immuno.read``).

Three parts: (a) every file of ``shared/data/FCS_INVENTORY.tsv`` is read with
``$TOT`` events and the right channels (values equal to FlowIO's where FlowIO can
read the file) or refused with an FCSError naming the cause; (b) a hypothesis
fuzz test on mutated small files (the mutator is ``benchmarks/fuzz_reader.py``);
(c) unit tests on synthetic files for TEXT parsing, byte orders, data types,
offsets and ``FCSData.scaled``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immuno.errors import FCSError
from immuno.read import _split_keywords, inspect_files, parse_spillover, read_fcs, read_text

_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_INVENTORY = _DATA / "FCS_INVENTORY.tsv"

_spec = importlib.util.spec_from_file_location(
    "fuzz_reader", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_reader.py"
)
fz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fz)


def _rows() -> list[dict[str, str]]:
    if not _INVENTORY.is_file():
        return []
    with open(_INVENTORY, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _rows()
_CHANNELS = "channels ($PnN=$PnS)"

# Files refused on purpose, and the cause the message must name.
REFUSED = {
    "fcsparser_instruments/FlowCytometers/corrupted/corrupted.fcs": (
        "HEADER",
        "shorter than the 58-byte FCS header",
    ),
    "fcsparser_instruments/FlowCytometers/cytek-nl-2000/sample_header.fcs": (
        "DATA",
        "no DATA segment.*header only",
    ),
}
# Listed in the inventory but not in the snapshot (flowio_testdata/SOURCE.md: they
# duplicate flowkit_testdata/data/noncompliant/, which is tested).
MISSING = {
    "flowio_testdata/data_start_offset_discrepancy_example.fcs",
    "flowio_testdata/data_stop_offset_discrepancy_example.fcs",
}
# Files read with a warning, and what it says.
WARNS = {
    "fcsparser_instruments/FlowCytometers/GuavaMuse/Guava Muse.fcs": "more than one data set",
    "flowkit_testdata/data/multi_dataset_fcs/coulter.lmd": "more than one data set",
    "flowkit_testdata/data/noncompliant/data_start_offset_discrepancy_example.fcs": (
        "used $BEGINDATA/$ENDDATA 6081-6188 (HEADER 5555-6188 overlaps the TEXT"
    ),
    "flowkit_testdata/data/noncompliant/data_stop_offset_discrepancy_example.fcs": (
        "used $BEGINDATA/$ENDDATA 6081-6188 (HEADER 6081-6944 ends past the end of the file"
    ),
    # $BEGINSTEXT/$ENDSTEXT point at a ZIP archive appended to the file
    "fcsparser_instruments/FlowCytometers/cyflow_cube_8/cyflow_cube_8.fcs": (
        "supplemental TEXT ignored: STEXT segment is binary"
    ),
}
# CellQuest FCS 2.0 files write empty values as a doubled delimiter
# ("\$P3S\\$P4S\\$P6N\FL1-A\"). The inventory's reader took those as escapes and
# lost $P6N; it is FL1-A (the file's own BD$P6N keyword agrees).
EMPTY_VALUE_FILES = {f"flowcore_extdata/0877408774.{w}" for w in ("B08", "E07", "F06")}
G11 = "flowio_testdata/G11.fcs"
# MACSQuant FCS 3.1 files list the detectors in $SPILLOVER but no matrix.
BAD_SPILLOVER = {
    f"fcsparser_instruments/FlowCytometers/MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_{w}"
    for w in ("Custom_Add_Well_A1.001.fcs", "Custom_Without_Add_Well_A1.001.fcs", "Well_A1.001.fcs")
}
# A detector name was anonymised ("xxxx...") differently in SPILL and $P11N.
SPILL_NAMES_ANONYMISED = {
    "flowio_testdata/variable_int_example.fcs",
    "flowkit_testdata/data/noncompliant/data_start_offset_discrepancy_example.fcs",
    "flowkit_testdata/data/noncompliant/data_stop_offset_discrepancy_example.fcs",
}
# FlowIO 1.4.0 cannot read these: 24-bit integers (it returns no events) and
# blank HEADER DATA offsets (ValueError).
FLOWIO_CANNOT = {
    "fcsparser_instruments/FlowCytometers/Cytek_xP5/Cytek_xP5.fcs",
    "flowcal_testdata/Data003.fcs",
    "fcsparser_instruments/FlowCytometers/fake_large_fcs/fake_large_fcs.fcs",
}


def _pairs(d) -> str:
    return "; ".join(f"{c}={m}" if m else c for c, m in zip(d.channels, d.markers, strict=True))


@pytest.fixture(autouse=True)
def _quiet_reader(caplog):
    caplog.set_level(logging.ERROR, logger="immuno.read")


# ---------------------------------------------------------------------------
# (a) every inventory file


def test_inventory_is_complete():
    if not ROWS:
        pytest.skip("shared/data is absent")
    assert len(ROWS) == 79
    listed = {r["path"] for r in ROWS}
    assert set(REFUSED) | MISSING | set(WARNS) | EMPTY_VALUE_FILES | {G11} <= listed


@pytest.mark.parametrize("row", ROWS, ids=[r["path"] for r in ROWS])
def test_inventory_file(row, shared_data):
    rel = row["path"]
    path = shared_data / rel
    if rel in MISSING:
        assert not path.exists()
        with pytest.raises(FCSError, match="does not exist"):
            read_fcs(path)
        return
    if rel in REFUSED:
        field, cause = REFUSED[rel]
        with pytest.raises(FCSError, match=cause) as err:
            read_fcs(path)
        assert err.value.file == str(path)
        assert err.value.field == field
        return

    d = read_fcs(path)
    tot, npar = int(row["$TOT"]), int(row["$PAR"])
    assert d.n_events == tot
    assert d.events.shape == (tot, npar)
    assert d.version == row["fcs_version"]
    assert np.isfinite(d.events).all()

    expected = row[_CHANNELS]
    if rel == G11:
        # The inventory shows UTF-8 read as Latin-1; the marker is "Alexa Fluor(TM) 405-A".
        assert "Alexa Fluor\u2122 405-A" in d.markers
        assert _pairs(d).encode("utf-8").decode("latin-1") == expected
    elif rel in EMPTY_VALUE_FILES:
        assert d.channels[5] == "FL1-A" == d.text["BD$P6N"]
        assert [d.markers[i] for i in (2, 3, 4, 6)] == ["", "", "", ""]
        assert _pairs(d) == expected.replace("FL3-H; ; FL4-H", "FL3-H; FL1-A; FL4-H")
    else:
        assert _pairs(d) == expected

    if rel in WARNS:
        assert any(WARNS[rel] in w for w in d.warnings), d.warnings
    else:
        assert d.warnings == []
    if rel in BAD_SPILLOVER:
        with pytest.raises(FCSError, match="declares 6 detectors but has 6 items"):
            d.spillover()
    elif row["spillover_keyword"] != "none":
        names, matrix = d.spillover()
        assert matrix.shape == (len(names), len(names))
        assert np.allclose(np.diag(matrix), 1.0)
        if rel not in SPILL_NAMES_ANONYMISED:
            assert set(names) <= set(d.channels)
    else:
        assert d.spillover() is None


_FLOWIO_ROWS = [r for r in ROWS if r["path"] not in FLOWIO_CANNOT | set(REFUSED) | MISSING]


@pytest.mark.parametrize("row", _FLOWIO_ROWS, ids=[r["path"] for r in _FLOWIO_ROWS])
def test_values_equal_flowio(row, shared_data):
    """Every value equals FlowIO's (raw, before its gain/log/time scaling).

    FlowIO also masks integers with the next power of two of ``$PnR`` minus 1;
    the conventions differ only for ``$PnR <= 1`` (see
    ``test_bitmask_differs_from_flowio_only_for_range_one``), which no real file
    has. FlowIO is told to accept the two known layout quirks: the DATA end one
    byte past the data (MACSQuant 3.1, coulter.lmd) and HEADER/TEXT offset
    discrepancies (it then uses TEXT, as we do).
    """
    flowio = pytest.importorskip("flowio")
    path = shared_data / row["path"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = flowio.FlowData(
            str(path),
            nextdata_offset=0,  # first data set of multi-data-set files
            ignore_offset_error=True,
            ignore_offset_discrepancy=True,
        )
    theirs = f.as_array(preprocess=False)
    ours = read_fcs(path).events
    assert theirs.shape == ours.shape
    assert np.array_equal(theirs, ours.astype(np.float64))


@pytest.mark.parametrize(
    "rel",
    [
        "fcsparser_instruments/FlowCytometers/Cytek_xP5/Cytek_xP5.fcs",
        "flowcal_testdata/Data003.fcs",
    ],
)
def test_24bit_integers_match_a_plain_python_decode(rel, shared_data):
    """24-bit big-endian data (FlowIO cannot read it): check against int.from_bytes."""
    d = read_fcs(shared_data / rel)
    raw = (shared_data / rel).read_bytes()
    begin = int(d.text["$BEGINDATA"])
    npar = len(d.channels)
    ranges = [int(d.text[f"$P{n}R"]) for n in range(1, npar + 1)]
    for i in list(range(200)) + [d.n_events - 1]:
        for j in range(npar):
            a = begin + (i * npar + j) * 3
            value = int.from_bytes(raw[a : a + 3], "big") % (1 << (ranges[j] - 1).bit_length())
            assert d.events[i, j] == value
    assert d.events.dtype == np.float32
    assert (d.events < np.array(ranges)).all()
    assert np.all(np.diff(d.events[:, d.channel_index("TIME")]) >= 0)  # time never decreases


def test_navios_bitmask_trap(shared_data):
    """fcsparser's ``fake_bitmask_error`` file (fcsparser issue #19 / PR #22).

    Every 16-bit word is 0x4210 with ``$PnR = 1024``: the bits above the 10 the
    range needs are junk, and the value is 0x210 = 528. Unmasked readers report
    16912 for every event.
    """
    path = shared_data / "fcsparser_instruments/FlowCytometers/fake_bitmask_error/fcs1_cleaned.lmd"
    d = read_fcs(path)
    raw = np.fromfile(path, dtype="<u2", count=50000 * 7, offset=4232)
    assert (raw == 0x4210).all()  # high bits really are set in the file
    assert d.events.shape == (50000, 7)
    assert (d.events == 528).all()


def test_offset_discrepancy_files_give_the_compliant_data(shared_data):
    """The noncompliant copies hold the same DATA as ``variable_int_example.fcs``.

    The TEXT offsets (6081-6188, exactly ``$TOT`` x 54 bytes) are right; the
    HEADER's are not: 5555 starts inside TEXT (those bytes are keywords), 6944
    is past the end of the 6263-byte file.
    """
    good = read_fcs(shared_data / "flowio_testdata/variable_int_example.fcs")
    assert good.warnings == []
    nc = shared_data / "flowkit_testdata/data/noncompliant"
    for name in ("data_start", "data_stop"):
        path = nc / f"{name}_offset_discrepancy_example.fcs"
        d = read_fcs(path)
        assert np.array_equal(d.events, good.events)
        assert d.n_events == 2
    raw = (nc / "data_start_offset_discrepancy_example.fcs").read_bytes()
    assert raw[5555:5663].isascii() and b"$" in raw[5555:5663]  # header offset points at TEXT
    assert len((nc / "data_stop_offset_discrepancy_example.fcs").read_bytes()) < 6944


def test_fake_large_fcs_uses_text_offsets(shared_data):
    """Blank HEADER DATA offsets (files over 99,999,999 bytes) mean: use TEXT."""
    base = shared_data / "fcsparser_instruments/FlowCytometers"
    large = read_fcs(base / "fake_large_fcs/fake_large_fcs.fcs")
    fortessa = read_fcs(base / "Fortessa/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs")
    assert large.warnings == []
    assert np.array_equal(large.events, fortessa.events)


@pytest.mark.parametrize(
    "rel",
    [
        "fcsparser_instruments/FlowCytometers/GuavaMuse/Guava Muse.fcs",
        "flowkit_testdata/data/multi_dataset_fcs/coulter.lmd",
    ],
)
def test_multi_dataset_files(rel, shared_data):
    path = shared_data / rel
    first = read_fcs(path)
    assert any("more than one data set; data set 0 was read" in w for w in first.warnings)
    second = read_fcs(path, dataset=1)
    assert second.n_events == int(second.text["$TOT"]) > 0
    assert second.events.shape[1] == int(second.text["$PAR"])
    count = 1
    while True:  # walk the chain to its end, then one past it
        try:
            read_fcs(path, dataset=count)
        except FCSError as exc:
            assert "data set" in exc.message and exc.field == "$NEXTDATA"
            break
        count += 1
        assert count < 1000
    assert count >= 2
    with pytest.raises(ValueError):
        read_fcs(path, dataset=-1)


def test_guava_log_float_channels_are_not_decoded(shared_data, caplog):
    """Guava Muse ``*-HLog`` channels are float log10 values with ``$PnE = 4,1``.

    Float data are linear by definition (FCS 3.1); decoding them as channel
    numbers would give ``10**(4 * 1.97 / 10000)`` ~ 1.0 for every event.
    """
    d = read_fcs(shared_data / "fcsparser_instruments/FlowCytometers/GuavaMuse/Guava Muse.fcs")
    j = d.channel_index("FSC-HLog")
    lin = d.channel_index("FSC-HLin")
    assert d.text[f"$P{j + 1}E"] == "4.0,1.0"
    caplog.set_level(logging.WARNING, logger="immuno.read")
    s = d.scaled()
    assert np.array_equal(s[:, j], d.events[:, j].astype(np.float64))
    assert "stored values are used as they are" in caplog.text
    # the HLog channel really is log10 of the linear one, where that is positive
    pos = d.events[:, lin] > 1
    assert np.allclose(d.events[pos, j], np.log10(d.events[pos, lin]), atol=0.01)


def test_non_ascii_markers(shared_data):
    d = read_fcs(shared_data / G11)
    assert d.markers[5] == "Alexa Fluor\u2122 405-A"
    assert d.text["$P6S"] == "Alexa Fluor\u2122 405-A"
    assert d.text["$P3F"] == "488/10"  # escaped delimiter inside a value


def test_inspect_on_real_files(shared_data):
    good = shared_data / "cytopipeline_omip021/Donor1.fcs"
    bad = shared_data / "fcsparser_instruments/FlowCytometers/cytek-nl-2000/sample_header.fcs"
    out = io.StringIO()
    assert inspect_files([str(good)], out) == 0
    fields = out.getvalue().rstrip("\n").split("\t")
    assert fields[:4] == [str(good), "FCS3.0", "events=5000", "channels=22"]
    assert "525/50Violet-A=L/D Aqua - Viability" in fields[4]
    assert fields[5:] == ["spillover=yes", "warnings=none"]
    out = io.StringIO()
    assert inspect_files([str(good), str(bad)], out) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("ERROR FCSError: file ") and "header only" in lines[1]


# ---------------------------------------------------------------------------
# (b) fuzzing


_SEEDS = fz.seed_files(_DATA if _DATA.is_dir() else None)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_fuzz_seeds_are_valid(fuzz_dir):
    for name, blob in fz.synthetic_seeds().items():
        assert fz.run_case(fuzz_dir / f"seed_{name}.fcs", blob) == "read", name


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(name=st.sampled_from(sorted(_SEEDS)), rnd=st.randoms(use_true_random=False))
def test_fuzz_mutated_files_read_or_raise_fcserror(name, rnd, fuzz_dir):
    """Any mutation of a valid file is read or refused with FCSError, quickly."""
    blob, ops = fz.mutate(_SEEDS[name], rnd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in scaled() is fine
        outcome = fz.run_case(fuzz_dir / "case.fcs", blob)
    assert outcome == "read" or outcome.startswith("FCSError"), ops


def test_fuzz_finds_a_planted_bug(monkeypatch, fuzz_dir):
    """The fuzz harness reports a non-FCSError exception (so the test above can fail)."""
    import immuno.read as r

    def broken(text, npar, path):
        raise KeyError("planted")

    monkeypatch.setattr(r, "_layout", broken)
    with pytest.raises(KeyError):
        fz.run_case(fuzz_dir / "planted.fcs", _SEEDS["float_le"])


def test_fuzz_benchmark_main_runs(capsys, tmp_path):
    assert fz.main(["--cases", "50", "--seed", "3", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "50 cases" in out and "peak RSS" in out and "slowest case" in out


# ---------------------------------------------------------------------------
# (c) unit tests on synthetic files


def _write(tmp_path, blob: bytes, name: str = "x.fcs") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def _text(raw: bytes) -> dict[str, str]:
    toks = [t.decode("utf-8") for t in _split_keywords(raw)]
    return dict(zip(toks[0::2], toks[1::2], strict=False))


def test_text_escaped_delimiters_in_values():
    assert _text(b"/K1/a//b/K2/v2/") == {"K1": "a/b", "K2": "v2"}
    assert _text(b"/$P4F/561////10 nm/$P4L/561nm/") == {"$P4F": "561//10 nm", "$P4L": "561nm"}
    assert _text(b"|K|x//y|") == {"K": "x//y"}  # only the delimiter is special
    assert _text(b"/K/v/   \x00\r\n") == {"K": "v"}  # padding after the last delimiter


def test_text_empty_values_after_keywords():
    raw = b"\\$P3S\\\\$P4S\\\\$P6N\\FL1-A\\&10Analysis Doc.\\\\"
    assert _text(raw) == {"$P3S": "", "$P4S": "", "$P6N": "FL1-A", "&10Analysis Doc.": ""}
    # A doubled delimiter straight after a keyword is an empty value, never part of the
    # keyword (FlowCal would read "key/2" here; real files with empty values need this).
    assert _text(b"/k1/v1/key//2/value2/") == {"k1": "v1", "key": "", "2": "value2"}
    # A run of three after a keyword: the value starts with an escaped delimiter.
    assert _text(b"/K///v/") == {"K": "/v"}


def test_text_keys_upper_cased_and_values_decoded(tmp_path):
    p = _write(
        tmp_path,
        fz.build_fcs(
            {"$p1s": "caf\xe9".encode("latin-1"), "$P2S": "Fluor\u2122", "$tot": "0", "$par": "1"},
            b"",
        ),
    )
    _, text = read_text(p)
    assert text["$P1S"] == "caf\xe9"  # not UTF-8: read as Latin-1
    assert text["$P2S"] == "Fluor\u2122"
    assert text["$TOT"] == "0"


def _float_file(ev, **kw) -> bytes:
    return fz.build_fcs(fz.channel_keywords(ev, "F", **kw), ev.tobytes())


@pytest.mark.parametrize("lead", [b"/", b""])
def test_supplemental_text(tmp_path, lead):
    """STEXT keywords are merged (the primary TEXT wins); STEXT may omit the leading delimiter."""
    ev = np.arange(6, dtype="<f4").reshape(3, 2)
    kw = fz.channel_keywords(ev, "F")
    kw.update({"$BEGINSTEXT": "0" * 10, "$ENDSTEXT": "0" * 10, "$P1S": "primary"})
    blob = fz.build_fcs(kw, ev.tobytes())
    stext = lead + b"$P1S/from stext/$P2S/CD4/EXTRA/a//b/"
    kw.update(
        {"$BEGINSTEXT": f"{len(blob):010d}", "$ENDSTEXT": f"{len(blob) + len(stext) - 1:010d}"}
    )
    blob2 = fz.build_fcs(kw, ev.tobytes())
    assert len(blob2) == len(blob)
    d = read_fcs(_write(tmp_path, blob2 + stext))
    assert d.text["EXTRA"] == "a/b"
    assert d.markers == ["primary", "CD4"]  # the primary TEXT wins a conflict
    assert d.warnings == []
    d = read_fcs(_write(tmp_path, blob2, "cut.fcs"))  # STEXT cut off
    assert "EXTRA" not in d.text
    assert any("supplemental TEXT" in w for w in d.warnings)
    junk = bytes(range(256)) * 2
    d = read_fcs(_write(tmp_path, blob2 + junk[: len(stext)], "junk.fcs"))
    assert any("STEXT segment is binary" in w for w in d.warnings)
    assert d.n_events == 3


@pytest.mark.parametrize(
    "code,order", [("<f4", "1,2,3,4"), (">f4", "4,3,2,1"), ("<f8", "1,2,3,4"), (">f8", "4,3,2,1")]
)
def test_float_byte_orders(tmp_path, code, order):
    ev = np.random.default_rng(1).normal(0, 1e4, (50, 3)).astype(code)
    dt = "F" if code.endswith("4") else "D"
    d = read_fcs(
        _write(tmp_path, fz.build_fcs(fz.channel_keywords(ev, dt, byteord=order), ev.tobytes()))
    )
    assert d.events.dtype == np.dtype(code).newbyteorder("=")
    assert d.events.dtype.isnative
    assert np.array_equal(d.events, ev)


@pytest.mark.parametrize("endian,order", [("<", "1,2,3,4"), (">", "4,3,2,1"), (">", "2,1")])
@pytest.mark.parametrize("widths", [[2] * 3, [3] * 3, [1, 2, 4], [3, 1, 5, 8], [4] * 2, [6, 7]])
def test_integer_widths_and_orders(tmp_path, endian, order, widths):
    rng = np.random.default_rng(sum(widths))
    top = [min(8 * w, 53) for w in widths]  # float64 holds integers exactly up to 2**53
    ev = np.column_stack([rng.integers(0, 2**t, 40, dtype=np.uint64) for t in top])
    ranges = [2 ** (8 * w) if w < 8 else 2**63 for w in widths]
    kw = fz.channel_keywords(ev, "I", byteord=order, bits=[8 * w for w in widths], ranges=ranges)
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, widths, endian))))
    assert d.events.shape == ev.shape
    assert np.array_equal(d.events, ev.astype(d.events.dtype))
    assert np.array_equal(d.events.astype(np.uint64), ev)  # exact: float64 when > 24 bits
    assert d.events.dtype == (np.float32 if max(top) <= 24 else np.float64)


def test_integer_masking_uses_next_power_of_two(tmp_path):
    ev = np.array([[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]] * 3)
    kw = fz.channel_keywords(ev, "I", ranges=[1024, 1000, 1025, 65536])
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2] * 4, "<"))))
    assert d.events[0].tolist() == [1023, 1023, 2047, 65535]


def test_bitmask_differs_from_flowio_only_for_range_one(tmp_path):
    """``$PnR = 1``: FlowIO masks with 0 (every value becomes 0); we keep the value."""
    flowio = pytest.importorskip("flowio")
    ev = np.array([[5, 700], [6, 900]])
    kw = fz.channel_keywords(ev, "I", ranges=[1, 1024])
    p = _write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2, 2], "<")))
    ours = read_fcs(p).events
    theirs = flowio.FlowData(str(p)).as_array(preprocess=False)
    assert ours.tolist() == [[5, 700], [6, 900]]
    assert theirs.tolist() == [[0, 700], [0, 900]]


def test_mixed_data_types_fcs32(tmp_path):
    n = 9
    ints = np.arange(n) * 100
    floats = np.linspace(-1, 1, n).astype(">f4")
    doubles = np.linspace(0, 1e9, n).astype(">f8")
    kw = fz.channel_keywords(np.zeros((n, 3)), "I", byteord="4,3,2,1", bits=[24, 32, 64])
    kw.update({"$P2DATATYPE": "F", "$P3DATATYPE": "D"})
    data = b"".join(
        int(ints[i]).to_bytes(3, "big") + floats[i : i + 1].tobytes() + doubles[i : i + 1].tobytes()
        for i in range(n)
    )
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, data, version="FCS3.2")))
    assert d.events.dtype == np.float64
    assert np.array_equal(d.events[:, 0], ints)
    assert np.array_equal(d.events[:, 1], floats.astype(np.float64))
    assert np.array_equal(d.events[:, 2], doubles)


def test_ascii_fixed_width_and_delimited(tmp_path):
    ev = np.array([[1, 22, 333], [4444, 5, 66]])
    data = b"".join(
        b"".join(str(x).rjust(w).encode() for x, w in zip(r, (4, 2, 5), strict=True))
        for r in np.column_stack([ev[:, 0], ev[:, 1] % 100, ev[:, 2]])
    )
    kw = fz.channel_keywords(ev, "A", bits=[4, 2, 5])
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, data)))
    assert d.events.tolist() == [[1, 22, 333], [4444, 5, 66]]

    kw = fz.channel_keywords(ev, "A")
    for n in (1, 2, 3):
        kw[f"$P{n}B"] = "*"
    data = b"1,22 333\r\n4444\t5,66\n"
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, data), "delim.fcs"))
    assert d.events.tolist() == [[1, 22, 333], [4444, 5, 66]]

    with pytest.raises(FCSError, match="not a number"):
        read_fcs(_write(tmp_path, fz.build_fcs(kw, b"1 2 x 4 5 6"), "bad.fcs"))
    with pytest.raises(FCSError, match="fewer than"):
        read_fcs(_write(tmp_path, fz.build_fcs(kw, b"1 2 3 4 5"), "short.fcs"))


def test_scaled_log_decoding_and_gain(tmp_path):
    ev = np.array([[0, 512, 100], [768, 256, 200], [256, 0, 300]])
    kw = fz.channel_keywords(ev, "I", ranges=[1024, 1024, 1024])
    kw.update({"$P1E": "4,1", "$P2E": "4,0", "$P3E": "0,0", "$P1G": "2", "$P3G": "4"})
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2] * 3, "<"))))
    s = d.scaled()
    assert np.allclose(s[:, 0], [1.0, 1e3, 10.0])  # 10**(4 * x / 1024)
    assert np.allclose(s[:, 1], [100.0, 10.0, 1.0])  # f2 = 0 counts as 1
    assert np.array_equal(s[:, 2], [100, 200, 300])  # linear, gain not asked for
    g = d.scaled(gain=True)
    assert np.allclose(g[:, 0], s[:, 0])  # log channels are not divided by $PnG
    assert np.array_equal(g[:, 2], [25, 50, 75])
    assert np.array_equal(d.events[:, 2], [100, 200, 300])  # events untouched

    kw["$P1E"] = "2,0.1"
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2] * 3, "<")), "b.fcs"))
    assert np.allclose(d.scaled()[:, 0], [0.1, 0.1 * 10**1.5, 0.1 * 10**0.5])


@pytest.mark.parametrize(
    "key,value,field",
    [
        ("$P1E", "4", "$P1E"),
        ("$P1E", "inf,1", "$P1E"),
        ("$P1R", "0", "$P1R"),
        ("$P2G", "abc", "$P2G"),
        ("$P2G", "-2", "$P2G"),
    ],
)
def test_scaled_refuses_malformed_keywords(tmp_path, key, value, field):
    ev = np.array([[1, 2]])
    kw = fz.channel_keywords(ev, "I")
    kw["$P1E"] = "4,1"
    kw[key] = value
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2, 2], "<"))))
    with pytest.raises(FCSError) as err:
        d.scaled(gain=True)
    assert err.value.field == field


def test_parse_spillover():
    names, m = parse_spillover("2,FITC-A,PE-A,1,0.1,0.02,1")
    assert names == ["FITC-A", "PE-A"]
    assert m.tolist() == [[1, 0.1], [0.02, 1]]
    for bad in ("2,a,b,1,0,0", "inf,a", "x,a", "1,a,nan", "0", "2,a,a,1,0,0,1", "2,a,,1,0,0,1"):
        with pytest.raises(FCSError, match="spillover"):
            parse_spillover(bad, file="f.fcs")


def test_large_file_style_header_and_off_by_one_end(tmp_path):
    ev = np.ones((4, 2), dtype="<f4")
    blob = fz.build_fcs(fz.channel_keywords(ev, "F"), ev.tobytes(), header_data=False)
    d = read_fcs(_write(tmp_path, blob))
    assert d.n_events == 4 and d.warnings == []
    # $ENDDATA one past the data (a common writer slip) is accepted silently
    kw = fz.channel_keywords(ev, "F")
    blob = fz.build_fcs(kw, ev.tobytes())
    begin = len(blob) - ev.nbytes
    kw.update({"$BEGINDATA": str(begin), "$ENDDATA": str(begin + ev.nbytes)})
    d = read_fcs(
        _write(
            tmp_path,
            fz.build_fcs(kw, ev.tobytes() + b"\0", fix_offsets=False, header_data=False),
            "b.fcs",
        )
    )
    assert d.n_events == 4 and d.warnings == []


def test_extra_data_bytes_warn(tmp_path):
    ev = np.ones((4, 2), dtype="<f4")
    d = read_fcs(
        _write(tmp_path, fz.build_fcs(fz.channel_keywords(ev, "F"), ev.tobytes() + bytes(16)))
    )
    assert d.n_events == 4
    assert any("$TOT events take 32" in w for w in d.warnings)


def test_fcs20_without_tot(tmp_path):
    ev = np.arange(12).reshape(6, 2)
    kw = fz.channel_keywords(ev, "I", byteord="1,2")
    del kw["$TOT"]
    d = read_fcs(
        _write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2, 2], "<"), version="FCS2.0"))
    )
    assert d.events.tolist() == ev.tolist()
    assert any("$TOT is missing" in w for w in d.warnings)
    with pytest.raises(FCSError, match="required keyword \\$TOT"):
        read_fcs(_write(tmp_path, fz.build_fcs(kw, fz.pack_ints(ev, [2, 2], "<")), "b.fcs"))


def test_duplicate_and_missing_channel_names_warn(tmp_path):
    ev = np.ones((2, 3), dtype="<f4")
    kw = fz.channel_keywords(ev, "F", names=["A", "A", "B"])
    del kw["$P3N"]
    d = read_fcs(_write(tmp_path, fz.build_fcs(kw, ev.tobytes())))
    assert d.channels == ["A", "A", "P3"]
    assert any("duplicate $PnN" in w for w in d.warnings)
    assert any("$P3N is missing" in w for w in d.warnings)
    assert d.channel_index("A") == 0
    with pytest.raises(FCSError, match="no channel named"):
        d.channel_index("C")


@pytest.mark.parametrize(
    "change,field,cause",
    [
        ({"$DATATYPE": "X"}, "$DATATYPE", "not supported"),
        ({"$MODE": "C"}, "$MODE", "histogram"),
        ({"$BYTEORD": "3,4,1,2"}, "$BYTEORD", "not a supported byte order"),
        ({"$P1B": "12"}, "$P1B", "whole bytes"),
        ({"$P1B": "72"}, "$P1B", "whole bytes"),
        ({"$PAR": "0"}, "$PAR", "\\$PAR is 0"),
        ({"$PAR": "20000"}, "$PAR", "\\$PAR is 20000"),
        ({"$TOT": "-3"}, "$TOT", "\\$TOT is -3"),
        ({"$TOT": "abc"}, "$TOT", "not a whole number"),
        ({"$TOT": "10" + "0" * 20}, "$TOT", "truncated"),
        ({"$P2DATATYPE": "Q"}, "$P2DATATYPE", "not supported"),
    ],
)
def test_unsupported_or_inconsistent_keywords(tmp_path, change, field, cause):
    ev = np.ones((5, 2), dtype="<u2")
    kw = fz.channel_keywords(ev, "I")
    kw.update(change)
    with pytest.raises(FCSError, match=cause) as err:
        read_fcs(_write(tmp_path, fz.build_fcs(kw, ev.tobytes())))
    assert err.value.field == field
    assert err.value.file.endswith("x.fcs")


def test_truncated_and_damaged_files(tmp_path):
    ev = np.ones((100, 2), dtype="<f4")
    blob = _float_file(ev)
    with pytest.raises(FCSError, match="truncated") as err:
        read_fcs(_write(tmp_path, blob[:-1]))
    assert err.value.field == "$TOT"
    with pytest.raises(FCSError, match="TEXT segment"):
        read_fcs(_write(tmp_path, blob[:200]))
    with pytest.raises(FCSError, match="not an FCS file"):
        read_fcs(_write(tmp_path, b"PK\x03\x04" + blob[4:]))
    with pytest.raises(FCSError, match="file is empty"):
        read_fcs(_write(tmp_path, b""))
    with pytest.raises(FCSError, match="does not exist"):
        read_fcs(tmp_path / "nope.fcs")
    with pytest.raises(FCSError, match="directory"):
        read_fcs(tmp_path)
    bad = bytearray(blob)
    bad[26:34] = b"     100"  # HEADER DATA begin inside TEXT, and TEXT offsets removed
    bad[10:58] = b"      58" + b" " * 40
    with pytest.raises(FCSError, match="TEXT"):
        read_fcs(_write(tmp_path, bytes(bad)))
    bad = bytearray(blob)
    bad[10:18] = b"    1x00"
    with pytest.raises(FCSError, match="header offset 1"):
        read_fcs(_write(tmp_path, bytes(bad)))


def test_data_shorter_than_tot_is_refused(tmp_path):
    """$ENDDATA leaves room for 10 events, $TOT says 12: refused even if bytes follow."""
    ev = np.ones((10, 2), dtype="<f4")
    kw = fz.channel_keywords(ev, "F")
    kw["$TOT"] = "12"
    data = ev.tobytes() + bytes(100)
    begin = len(fz.build_fcs(kw, data)) - len(data)
    kw.update({"$BEGINDATA": str(begin), "$ENDDATA": str(begin + ev.nbytes - 1)})
    blob = fz.build_fcs(kw, data, fix_offsets=False, header_data=False)
    assert blob[begin : begin + ev.nbytes] == ev.tobytes()
    with pytest.raises(FCSError, match="holds 80 bytes, fewer than 96") as err:
        read_fcs(_write(tmp_path, blob))
    assert err.value.field == "DATA"


def test_inspect_lines_and_status(tmp_path):
    ev = np.ones((3, 2), dtype="<f4")
    good = _write(tmp_path, _float_file(ev, names=["FSC-A", "FITC-A"], markers=["", "CD3"]))
    out = io.StringIO()
    assert inspect_files([str(good)], out) == 0
    assert out.getvalue() == (
        f"{good}\tFCS3.1\tevents=3\tchannels=2\tFSC-A; FITC-A=CD3\tspillover=no\twarnings=none\n"
    )
    broken = _write(tmp_path, b"FCS3.0 garbage", "broken.fcs")
    out = io.StringIO()
    status = inspect_files([str(broken), str(tmp_path / "missing.fcs"), str(good)], out)
    lines = out.getvalue().splitlines()
    assert status == 1
    assert lines[0] == (
        f"ERROR FCSError: file {broken}; field HEADER: file is 14 bytes, shorter than the "
        "58-byte FCS header (hint: the file is truncated or not an FCS file)"
    )
    assert lines[1].startswith("ERROR FCSError: file ") and "does not exist" in lines[1]
    assert lines[2].startswith(f"{good}\tFCS3.1\tevents=3")


def test_inspect_keeps_one_line_per_file_whatever_the_names_hold(tmp_path):
    ev = np.ones((3, 2), dtype="<f4")
    odd = _write(
        tmp_path, _float_file(ev, names=["FSC-A", "FITC-A"], markers=["", "CD3\nCD4"]), "a\nb.fcs"
    )
    out = io.StringIO()
    assert inspect_files([str(odd), str(tmp_path / "gone\n.fcs")], out) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(tmp_path) + "/a\\nb.fcs\tFCS3.1\t")
    assert "FITC-A=CD3\\nCD4\tspillover" in lines[0]
    assert lines[1].startswith("ERROR FCSError: file ") and "gone\\n.fcs" in lines[1]


def test_cli_inspect(tmp_path, capsys):
    from immuno.cli import main

    ev = np.ones((3, 2), dtype="<f4")
    good = _write(tmp_path, _float_file(ev))
    assert main(["inspect", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}\tFCS3.1\tevents=3")
    assert main(["inspect", str(good), str(tmp_path / "missing.fcs")]) == 1
    assert "ERROR FCSError" in capsys.readouterr().out


def test_fuzz_case_is_reproducible():
    blob = _SEEDS["int24_be"]
    a = fz.mutate(blob, random.Random(5))
    b = fz.mutate(blob, random.Random(5))
    assert a == b


@pytest.mark.parametrize("version,used", [("FCS3.1", "text"), ("FCS2.0", "header")])
def test_offset_preference_when_both_fit(tmp_path, version, used):
    """HEADER and TEXT point at two plausible DATA copies: 3.x trusts TEXT, 2.0 the HEADER."""
    a = np.full((4, 2), 1.0, dtype="<f4")
    b = np.full((4, 2), 2.0, dtype="<f4")
    kw = fz.channel_keywords(a, "F")
    if version == "FCS2.0":  # FCS 2.0 writers that do put the offsets in TEXT
        kw.update({"$BEGINDATA": "0", "$ENDDATA": "0"})
    blob = bytearray(fz.build_fcs(kw, a.tobytes(), version=version) + b.tobytes())
    start = len(blob) - b.nbytes
    blob[26:42] = str(start).rjust(8).encode() + str(start + b.nbytes - 1).rjust(8).encode()
    d = read_fcs(_write(tmp_path, bytes(blob)))
    assert (d.events == (1.0 if used == "text" else 2.0)).all()
    assert any("disagree on the DATA offsets" in w for w in d.warnings)


def test_a_fifo_or_a_symlink_loop_is_refused_without_waiting(tmp_path):
    """Opening a FIFO waits for a writer for ever: it is refused before it is opened."""
    import os
    import threading

    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.fcs"
    loop.symlink_to(tmp_path / "loop2.fcs")
    (tmp_path / "loop2.fcs").symlink_to(loop)
    outcome = {}

    def read_both():
        for name, path in (("fifo", fifo), ("loop", loop)):
            try:
                read_fcs(path)
            except FCSError as exc:
                outcome[name] = exc

    worker = threading.Thread(target=read_both, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "read_fcs hung on a FIFO"
    assert "named pipe" in outcome["fifo"].message
    assert outcome["fifo"].file == str(fifo)
    assert "cannot be opened" in outcome["loop"].message


def test_a_text_of_millions_of_keywords_is_refused_before_it_is_split(tmp_path):
    import time
    import tracemalloc

    ev = np.ones((2, 1), dtype="<f4")
    kw = fz.channel_keywords(ev, "F")
    kw.update({f"K{i}": "v" for i in range(300_000)})
    path = _write(tmp_path, fz.build_fcs(kw, ev.tobytes()))
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(FCSError, match="more than 200,000 keywords") as err:
        read_fcs(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.value.field == "TEXT"
    assert time.perf_counter() - t0 < 5 and peak < 100e6


@pytest.mark.parametrize("when", ["before TEXT", "before DATA"])
def test_a_file_that_shrinks_while_it_is_read_is_the_projects_error(tmp_path, monkeypatch, when):
    """A file still being copied (or truncated by another process) while it is read: no
    SIGBUS from a mapped page beyond the new end, no bare reshape ValueError."""
    import os

    import immuno.read as reader

    ev = np.arange(3000, dtype="<f4").reshape(1000, 3)
    path = _write(tmp_path, fz.build_fcs(fz.channel_keywords(ev, "F"), ev.tobytes()))
    size = path.stat().st_size
    name = "_parse_header" if when == "before TEXT" else "_read_text_at"
    real = getattr(reader, name)

    def then_shrink(*args, **kwargs):
        out = real(*args, **kwargs)
        os.truncate(path, 70 if when == "before TEXT" else size // 2)
        return out

    monkeypatch.setattr(reader, name, then_shrink)
    with pytest.raises(FCSError) as info:
        read_fcs(path)
    assert info.value.file == str(path)
    assert f"{size} when it was opened" in info.value.message
    assert "changed while it was read" in info.value.hint


@pytest.mark.parametrize(
    "raw, step", [("0.01", 0.01), (" 2 ", 2.0), ("", None), ("0", None), ("-0.5", None),
                  ("nan", None), ("inf", None), ("ten", None)],
)  # fmt: skip
def test_one_timestep_reader_for_gating_and_exports(raw, step):
    """Two readers disagreed: the gating multiplied Time by a $TIMESTEP of 0 or -0.5 (every
    event at time 0, or negative times) where the exports kept the stored units."""
    from types import SimpleNamespace

    from immuno.export import _time_step as export_step
    from immuno.gate import _time_step as gate_step
    from immuno.read import time_step

    text = {"$TIMESTEP": raw}
    assert time_step(text) == step
    fcs = SimpleNamespace(text=text, channels=["FSC-A", "Time"])
    assert gate_step(fcs) == (None if step is None else (1, step))
    assert export_step(text, "Time") == (step or 1.0)
