"""Tests of immuno.write: FCS 3.1 files that immuno.read and flowio read back exactly."""

from __future__ import annotations

import flowio
import numpy as np
import pytest

from immuno import write as W
from immuno.errors import FCSError
from immuno.read import parse_spillover, read_fcs
from immuno.write import format_spillover, write_fcs

CHANNELS = ["FSC-A", "SSC-A", "FITC-A", "PE-A", "APC-A", "Time"]
MARKERS = ["", "", "CD3", "CD25", "CD4", None]
DETECTORS = ["FITC-A", "PE-A", "APC-A"]
SPILL = np.array([[1.0, 0.1534, 0.0012], [0.0101, 1.0, 0.0333], [0.0, 0.002, 1.0]])


def _events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, len(CHANNELS))) * [1e4, 1e4, 3e3, 500, 2e3, 1.0]
    x[:, 0] = np.abs(x[:, 0]) + 5e4
    x[:, -1] = np.sort(rng.uniform(0, 6000, n))
    x[0, 2] = 262143.0
    x[1, 3] = -1234.5678  # negatives are legal float data
    return x


def _header_offsets(path) -> list[int]:
    head = open(path, "rb").read(58)
    assert head[:10] == b"FCS3.1    "
    return [int(head[10 + 8 * i : 18 + 8 * i]) for i in range(6)]


@pytest.fixture
def written(tmp_path):
    events = _events(1000)
    path = write_fcs(
        tmp_path / "a.fcs",
        events,
        CHANNELS,
        MARKERS,
        text={"$CYT": "Fortessa", "$TIMESTEP": "0.01", "TUBE NAME": "T cell panel"},
        spillover=(DETECTORS, SPILL),
    )
    return path, events


def test_round_trip_immuno_reader(written):
    path, events = written
    d = read_fcs(path)
    assert d.version == "FCS3.1"
    assert d.warnings == []
    assert d.events.dtype == np.float32
    np.testing.assert_array_equal(d.events, events.astype(np.float32))
    assert d.channels == CHANNELS
    assert d.markers == ["", "", "CD3", "CD25", "CD4", ""]
    names, matrix = d.spillover()
    assert names == DETECTORS
    np.testing.assert_array_equal(matrix, SPILL)  # exact: shortest round-trip repr
    t = d.text
    assert (t["$DATATYPE"], t["$BYTEORD"], t["$MODE"], t["$NEXTDATA"]) == ("F", "1,2,3,4", "L", "0")
    assert t["$PAR"] == "6" and t["$TOT"] == "1000"
    for n in range(1, 7):
        assert (t[f"$P{n}B"], t[f"$P{n}E"], t[f"$P{n}G"], t[f"$P{n}R"]) == (
            "32",
            "0,0",
            "1",
            "262144",
        )
    assert "$P1S" not in t and "$P6S" not in t
    assert t["$CYT"] == "Fortessa" and t["TUBE NAME"] == "T cell panel"
    # Header and TEXT agree; the DATA segment is exactly $TOT x $PAR x 4 bytes.
    off = _header_offsets(path)
    assert off[0] == 58
    assert off[2] == int(t["$BEGINDATA"]) == off[1] + 1
    assert off[3] == int(t["$ENDDATA"]) == off[2] + 1000 * 6 * 4 - 1
    assert off[4:] == [0, 0]
    assert path.stat().st_size == off[3] + 1 + 8  # plus the "00000000" (no CRC) field


def test_round_trip_flowio(written):
    path, events = written
    fd = flowio.FlowData(str(path))
    assert fd.version == "3.1"
    assert fd.event_count == 1000 and fd.channel_count == 6
    np.testing.assert_array_equal(
        fd.as_array(preprocess=False), events.astype(np.float32).astype(np.float64)
    )
    assert fd.pnn_labels == CHANNELS
    assert fd.pns_labels == ["", "", "CD3", "CD25", "CD4", ""]
    names, matrix = parse_spillover(fd.text["spillover"])
    assert names == DETECTORS
    np.testing.assert_array_equal(matrix, SPILL)
    assert fd.text["timestep"] == "0.01"


def test_same_input_same_bytes(tmp_path):
    a = write_fcs(tmp_path / "a.fcs", _events(50), CHANNELS, MARKERS, text={"X": "1"})
    b = write_fcs(tmp_path / "b.fcs", _events(50), CHANNELS, MARKERS, text={"X": "1"})
    assert a.read_bytes() == b.read_bytes()


def test_delimiter_in_values_is_doubled(tmp_path):
    markers = ["", "", "L/D", "CD25", "CD4//x", ""]
    text = {"NOTE": "a/b/c", "TRAILING": "end/", "NEXT": "v"}
    path = write_fcs(tmp_path / "e.fcs", _events(10), CHANNELS, markers, text=text)
    raw = path.read_bytes()
    assert b"/$P3S/L//D/" in raw
    assert b"/$P5S/CD4////x/" in raw
    assert b"/NOTE/a//b//c/" in raw
    assert b"/TRAILING/end///NEXT/v/" in raw
    d = read_fcs(path)
    assert d.markers[2] == "L/D" and d.markers[4] == "CD4//x"
    assert d.text["NOTE"] == "a/b/c"
    assert d.text["TRAILING"] == "end/"
    assert d.text["NEXT"] == "v"
    fd = flowio.FlowData(str(path))
    assert fd.pns_labels[2] == "L/D"
    assert fd.text["note"] == "a/b/c"


@pytest.mark.parametrize(
    "key, value", [("NOTE", ""), ("NOTE", "/leading"), ("NO/TE", "v"), (" ", "v")]
)
def test_unwritable_keywords_and_values_are_refused(tmp_path, key, value):
    with pytest.raises(FCSError) as info:
        write_fcs(tmp_path / "x.fcs", _events(3), CHANNELS, MARKERS, text={key: value})
    assert info.value.field == key.strip()
    assert list(tmp_path.iterdir()) == []


def test_three_events(tmp_path):
    events = np.array(
        [[1, 2, 3, 4, 5, 0.0], [-1.5, 0, 1e5, 2.5e5, -7, 0.5], [6e4, 1.5e4, 0, 0, 0, 1.0]]
    )
    path = write_fcs(tmp_path / "three.fcs", events, CHANNELS, MARKERS)
    d = read_fcs(path)
    assert d.n_events == 3
    np.testing.assert_array_equal(d.events, events.astype(np.float32))
    fd = flowio.FlowData(str(path))
    np.testing.assert_array_equal(fd.as_array(preprocess=False), events)
    off = _header_offsets(path)
    assert off[3] - off[2] + 1 == 3 * 6 * 4


def test_header_offsets_switch_to_zero_past_99999999():
    small = W._header(58, 1000, 1001, 99_999_999)
    assert [int(small[10 + 8 * i : 18 + 8 * i]) for i in range(4)] == [58, 1000, 1001, 99_999_999]
    big = W._header(58, 1000, 1001, 100_000_000)
    assert len(big) == 58
    assert [int(big[10 + 8 * i : 18 + 8 * i]) for i in range(6)] == [58, 1000, 0, 0, 0, 0]


def test_header_offsets_zero_in_a_file_readers_accept(tmp_path, monkeypatch):
    # Same layout rule at a lower limit: the HEADER carries 0,0 and both readers
    # find DATA through $BEGINDATA/$ENDDATA.
    monkeypatch.setattr(W, "_HEADER_MAX_OFFSET", 5000)
    events = _events(300)
    path = write_fcs(tmp_path / "big.fcs", events, CHANNELS, MARKERS)
    off = _header_offsets(path)
    assert off[:2] == [58, off[1]] and off[2:4] == [0, 0]
    d = read_fcs(path)
    assert d.warnings == []
    np.testing.assert_array_equal(d.events, events.astype(np.float32))
    fd = flowio.FlowData(str(path), ignore_offset_discrepancy=True)  # flowio's limit is fixed
    np.testing.assert_array_equal(fd.as_array(preprocess=False), events.astype(np.float32))


@pytest.mark.slow
def test_header_offsets_zero_in_a_real_100mb_file(tmp_path):
    n = 25_000_001  # one float32 channel: DATA ends past byte 100,000,000
    events = np.zeros((n, 1), dtype=np.float32)
    events[-1, 0] = 42.0
    path = write_fcs(tmp_path / "huge.fcs", events, ["FSC-A"], [""])
    off = _header_offsets(path)
    assert off[2:4] == [0, 0]
    d = read_fcs(path)
    assert d.n_events == n and d.events[-1, 0] == 42.0 and d.warnings == []
    assert int(d.text["$ENDDATA"]) > 99_999_999
    fd = flowio.FlowData(str(path), only_text=True)  # no discrepancy error
    assert int(fd.text["enddata"]) == int(d.text["$ENDDATA"])
    path.unlink()  # do not leave 100 MB behind in pytest's kept temp folders


def test_range_defaults_and_overrides(tmp_path):
    events = _events(20)
    events[0, 1] = 300000.0
    path = write_fcs(
        tmp_path / "r.fcs", events, CHANNELS, MARKERS, text={"$P6R": "8192", "$p3g": "2"}
    )
    t = read_fcs(path).text
    assert t["$P2R"] == str(2**19)  # next power of two above the largest value
    assert t["$P1R"] == "262144" and t["$P6R"] == "8192" and t["$P3G"] == "2"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"channels": CHANNELS[:-1]}, "$PAR"),
        ({"markers": MARKERS[:-1]}, "$PAR"),
        ({"channels": ["A", "A", "B", "C", "D", "E"]}, "$PnN"),
        ({"text": {"$TOT": "5"}}, "$TOT"),
        ({"text": {"$P2N": "x"}}, "$P2N"),
        ({"text": {"$P9R": "1024"}}, "$P9R"),
        ({"text": {"$cyt": "a", "$CYT": "b"}}, "$CYT"),
        ({"spillover": (["FITC-A", "BV421-A"], np.eye(2))}, "$SPILLOVER"),
        ({"spillover": (DETECTORS, np.eye(2))}, "$SPILLOVER"),
        ({"spillover": (DETECTORS, SPILL), "text": {"$SPILLOVER": "1,FITC-A,1"}}, "$SPILLOVER"),
    ],
)
def test_bad_input_raises_fcs_error(tmp_path, kwargs, field):
    args = {"channels": CHANNELS, "markers": MARKERS, **kwargs}
    with pytest.raises(FCSError) as info:
        write_fcs(tmp_path / "bad.fcs", _events(5), **args)
    assert info.value.field is not None and field.lower() in info.value.field.lower()
    assert list(tmp_path.iterdir()) == []


def test_non_finite_events_raise(tmp_path):
    events = _events(5)
    events[2, 3] = np.nan
    with pytest.raises(FCSError, match="NaN") as info:
        write_fcs(tmp_path / "nan.fcs", events, CHANNELS, MARKERS)
    assert info.value.field == "PE-A"
    with pytest.raises(FCSError, match="2-D"):
        write_fcs(tmp_path / "1d.fcs", np.zeros(6), CHANNELS, MARKERS)


def test_atomic_replace_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = write_fcs(tmp_path / "a.fcs", _events(5), CHANNELS, MARKERS)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(W.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_fcs(path, _events(7, seed=3), CHANNELS, MARKERS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.fcs"]  # no temp file left
    monkeypatch.undo()
    write_fcs(path, _events(7, seed=3), CHANNELS, MARKERS)
    assert read_fcs(path).n_events == 7


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FCSError, match="folder"):
        write_fcs(tmp_path / "nope" / "a.fcs", _events(3), CHANNELS, MARKERS)


def test_format_spillover():
    assert format_spillover(["A", "B"], [[1, 0.1], [0.25, 1]]) == "2,A,B,1.0,0.1,0.25,1.0"
    with pytest.raises(FCSError):
        format_spillover(["A", "A"], np.eye(2))
    with pytest.raises(FCSError):
        format_spillover(["A", "B"], [[1, np.nan], [0, 1]])


# --- 16-bit integer data and $PnE ---------------------------------------------------

LOG_AMP = [None, None, (4, 0), (4, 0), (4, 1), None]  # FITC, PE, APC log; scatter, Time linear


def _channel_numbers(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1024, (n, len(CHANNELS)))
    x[:, -1] = np.sort(rng.integers(0, 1024, n))
    x[0, :] = 1023  # the top of the range
    x[1, :] = 0
    return x


def _int_written(tmp_path, events, **kw):
    ranges = {f"$P{i}R": "1024" for i in range(1, len(CHANNELS) + 1)}
    return write_fcs(
        tmp_path / "i.fcs",
        events,
        CHANNELS,
        MARKERS,
        text={"$TIMESTEP": "0.2", **ranges},
        spillover=(DETECTORS, SPILL),
        datatype="I",
        amplification=LOG_AMP,
        **kw,
    )


def test_integer_round_trip_immuno_reader(tmp_path):
    events = _channel_numbers(500)
    path = _int_written(tmp_path, events)
    d = read_fcs(path)
    assert d.warnings == [] and d.n_events == int(d.text["$TOT"]) == 500
    np.testing.assert_array_equal(d.events, events)
    t = d.text
    assert t["$DATATYPE"] == "I" and t["$BYTEORD"] == "1,2,3,4"
    assert [t[f"$P{n}B"] for n in range(1, 7)] == ["16"] * 6
    assert [t[f"$P{n}R"] for n in range(1, 7)] == ["1024"] * 6
    assert [t[f"$P{n}E"] for n in range(1, 7)] == ["0,0", "0,0", "4,0", "4,0", "4,1", "0,0"]
    off = _header_offsets(path)
    assert off[3] - off[2] + 1 == 500 * 6 * 2  # two bytes per value
    # scaled() decodes the log channels (f2 = 0 counts as 1) and leaves the rest linear.
    lin = d.scaled()
    x = events.astype(np.float64)
    np.testing.assert_allclose(lin[:, 2:5], 10 ** (4 * x[:, 2:5] / 1024), rtol=1e-12)
    np.testing.assert_array_equal(lin[:, [0, 1, 5]], x[:, [0, 1, 5]])
    assert lin[:, 2:5].min() == 1.0 and lin[:, 2:5].max() == pytest.approx(10 ** (4 * 1023 / 1024))
    names, matrix = d.spillover()
    assert names == DETECTORS
    np.testing.assert_array_equal(matrix, SPILL)


def test_integer_round_trip_flowio(tmp_path):
    events = _channel_numbers(300, seed=1)
    path = _int_written(tmp_path, events)
    fd = flowio.FlowData(str(path))
    assert fd.event_count == 300 and fd.text["datatype"] == "I"
    np.testing.assert_array_equal(fd.as_array(preprocess=False), events)
    decoded = fd.as_array(preprocess=True)
    np.testing.assert_allclose(decoded[:, 2:5], read_fcs(path).scaled()[:, 2:5], rtol=1e-12)
    np.testing.assert_allclose(decoded[:, 5], events[:, 5] * 0.2)  # flowio applies $TIMESTEP


def test_integer_default_range_and_bytes(tmp_path):
    events = np.array([[0, 1, 65535], [7, 8, 9]])
    a = write_fcs(tmp_path / "a.fcs", events, ["A", "B", "C"], ["", "", ""], datatype="I")
    b = write_fcs(tmp_path / "b.fcs", events, ["A", "B", "C"], ["", "", ""], datatype="i")
    assert a.read_bytes() == b.read_bytes()
    d = read_fcs(a)
    assert [d.text[f"$P{n}R"] for n in (1, 2, 3)] == ["65536"] * 3
    np.testing.assert_array_equal(d.events, events)
    # Whole numbers held as floats are fine.
    c = write_fcs(tmp_path / "c.fcs", events.astype(float), ["A", "B", "C"], ["", "", ""],
                  datatype="I")  # fmt: skip
    assert c.read_bytes() == a.read_bytes()


@pytest.mark.parametrize(
    "events, kwargs, field",
    [
        ([[0.5, 1, 2]], {"datatype": "I"}, "$DATATYPE"),
        ([[-1, 1, 2]], {"datatype": "I"}, "A"),
        ([[0, 1, 65536]], {"datatype": "I"}, "C"),
        ([[0, 1024, 2]], {"datatype": "I", "text": {"$P2R": "1024"}}, "B"),
        ([[0, 1, 2]], {"datatype": "I", "text": {"$P2R": "131072"}}, "$P2R"),
        ([[0, 1, 2]], {"datatype": "D"}, "$DATATYPE"),
        ([[0, 1, 2]], {"amplification": [None, (4, 0), None]}, "$P2E"),  # float data
        ([[0, 1, 2]], {"datatype": "I", "amplification": [None, (4, 0)]}, "$PnE"),
        ([[0, 1, 2]], {"datatype": "I", "amplification": [None, (0, 1), None]}, "$P2E"),
        ([[0, 1, 2]], {"datatype": "I", "amplification": [None, (-4, 0), None]}, "$P2E"),
        ([[0, 1, 2]], {"datatype": "I", "amplification": [None, "4", None]}, "$P2E"),
        ([[0, 1, 2]], {"datatype": "I", "text": {"$P1E": "4,0"}}, "$P1E"),
    ],
)
def test_bad_integer_or_amplification_raises(tmp_path, events, kwargs, field):
    with pytest.raises(FCSError) as info:
        write_fcs(tmp_path / "bad.fcs", np.array(events), ["A", "B", "C"], ["", "", ""], **kwargs)
    assert info.value.field == field
    assert list(tmp_path.iterdir()) == []
