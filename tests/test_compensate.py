"""Tests of ``immuno.compensate``: known truth, FlowKit's test file and its truth."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from immuno.compensate import Compensation, compensate
from immuno.errors import PanelError

COMP_FCS = "flowkit_testdata/data/test_comp_example.fcs"


@pytest.fixture(scope="module")
def spill3():
    return np.array([[1.0, 0.2, 0.05], [0.1, 1.0, 0.3], [0.0, 0.02, 1.0]])


def test_recovers_known_truth(spill3):
    rng = np.random.default_rng(3)
    true = rng.lognormal(5, 1.5, size=(1000, 3)) - 50
    observed = true @ spill3
    events = np.column_stack([rng.normal(size=1000), observed])  # a scatter channel first
    comp = Compensation(["B", "C", "D"], spill3, id="m")
    got = compensate(events, ["FSC-A", "B", "C", "D"], comp, dtype=np.float64)
    np.testing.assert_allclose(got, true, rtol=1e-12, atol=1e-9)
    # Only the chosen rows.
    rows = np.array([5, 17, 999])
    np.testing.assert_array_equal(
        compensate(events, ["FSC-A", "B", "C", "D"], comp, rows=rows, dtype=np.float64),
        got[rows],
    )


def test_non_square_spectrum_is_least_squares():
    spectra = np.array([[0.78, 0.13, 0.22], [0.05, 0.57, 0.89]])  # 2 sources x 3 detectors
    true = np.array([[100.0, 20.0], [-5.0, 300.0]])
    comp = Compensation(["d1", "d2", "d3"], spectra, fluorochromes=["s1", "s2"], id="spec")
    got = compensate(true @ spectra, ["d1", "d2", "d3"], comp, dtype=np.float64)
    np.testing.assert_allclose(got, true, atol=1e-9)


def test_inverted_matrix_is_used_as_is(spill3):
    inv = np.linalg.inv(spill3)
    a = Compensation(["B", "C", "D"], spill3)
    b = Compensation(["B", "C", "D"], inv, inverted=True)
    np.testing.assert_array_equal(b.unmixing, inv)
    x = np.array([[10.0, 20.0, 30.0]])
    np.testing.assert_allclose(
        compensate(x, ["B", "C", "D"], a, dtype=np.float64),
        compensate(x, ["B", "C", "D"], b, dtype=np.float64),
        rtol=1e-15,
    )
    # A non-square inverted matrix is detectors x sources.
    c = Compensation(["d1", "d2", "d3"], np.ones((3, 2)), fluorochromes=["s1", "s2"], inverted=True)
    assert c.unmixing.shape == (3, 2)


def test_fcs_spillover_matches_flowkit_truth(shared_data, shared_fcs):
    """FlowKit's ``test_comp_example.npy``: events compensated with the file's own $SPILL."""
    fcs = shared_fcs(COMP_FCS)
    truth = np.fromfile(
        shared_data / "flowkit_testdata/data/test_comp_example.npy", dtype="<f8"
    ).reshape(fcs.n_events, -1)
    names, matrix = fcs.spillover()
    comp = Compensation(names, matrix, id="FCS")
    got = compensate(fcs.events, fcs.channels, comp, dtype=np.float64)
    cols = [fcs.channels.index(n) for n in names]
    np.testing.assert_array_equal(got, truth[:, cols])


@pytest.mark.filterwarnings("ignore:FCS file .* reported incorrect data offset")
def test_csv_matrix_matches_flowkit(shared_data, shared_fcs):
    """A real 14-colour spillover matrix: our compensation equals FlowKit's."""
    fk = pytest.importorskip("flowkit")
    path = shared_data / "flowkit_testdata/data/comp_complete_example.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    comp = Compensation(rows[0], np.array(rows[1:], dtype=float), id="csv")
    fcs = shared_fcs(COMP_FCS)
    got = compensate(fcs.events, fcs.channels, comp, dtype=np.float64)
    sample = fk.Sample(str(shared_data / COMP_FCS), ignore_offset_error=True)
    sample.apply_compensation(str(path))
    theirs = sample.get_events(source="comp")
    cols = [fcs.channels.index(n) for n in rows[0]]
    np.testing.assert_allclose(got, theirs[:, cols], rtol=1e-10, atol=1e-8)
    # And it really compensates: PE-A loses the Ax488 spill.
    assert not np.allclose(got[:, 1], fcs.events[:, cols[1]])


def test_errors(spill3):
    with pytest.raises(PanelError, match="names 2 sources"):
        Compensation(["B", "C", "D"], spill3, fluorochromes=["x", "y"])
    with pytest.raises(PanelError, match="singular"):
        Compensation(["B", "C"], np.ones((2, 2)))
    with pytest.raises(PanelError, match="non-finite"):
        Compensation(["B", "C"], np.array([[1, np.nan], [0, 1]]))
    comp = Compensation(["B", "C", "D"], spill3, id="m")
    with pytest.raises(PanelError, match="'D'") as err:
        compensate(np.zeros((2, 2)), ["B", "C"], comp, file="x.fcs")
    assert err.value.file == "x.fcs"
