"""Tests of ``immuno.transform``: every transform against FlowKit's on many values."""

from __future__ import annotations

import numpy as np
import pytest

from immuno.errors import ConfigError
from immuno.transform import (
    Asinh,
    FlowJoBiex,
    FlowJoLog,
    Hyperlog,
    Linear,
    Log,
    Logicle,
    Ratio,
    from_spec,
)

# (T, W, M, A) sets: the Gating-ML compliance suite's, FlowJo's default, edge cases.
TWMA = [
    (262144, 0.5, 4.5, 0),
    (10000, 1, 4, 0.5),
    (10000, 0.5, 4.5, 0),
    (262144, 0.3, 4.2, 0.5),
    (262144, 1, 4.418539922, 0),
    (262144, 1, 5, 0.5),
    (300000, 1, 5, 0.3),
    (250000, 0.1, 4, 0),
    (262143, 0.9149993, 4.5, 0),
    (1000, 0.2, 3, -0.2),
]


@pytest.fixture(scope="module")
def values():
    """Many values on both sides of zero, dense around the linear region."""
    grid = np.logspace(-4, 7, 6000)
    return np.concatenate([-grid[::-1], [0.0], grid, np.linspace(-600, 600, 4801)])


def _fk():
    return pytest.importorskip("flowkit").transforms


@pytest.mark.parametrize("T,W,M,A", TWMA)
def test_logicle_matches_flowkit(values, T, W, M, A):
    ours = Logicle(T, W, M, A).apply(values)
    theirs = _fk().LogicleTransform(T, W, M, A).apply(values.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13)


@pytest.mark.parametrize("T,W,M,A", [p for p in TWMA if p[1] > 0])
def test_hyperlog_matches_flowkit(values, T, W, M, A):
    ours = Hyperlog(T, W, M, A).apply(values)
    theirs = _fk().HyperlogTransform(T, W, M, A).apply(values.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13)


@pytest.mark.parametrize("T,M,A", [(262144, 4.5, 0), (10000, 4, 1), (262144, 4.2, 0.5)])
def test_asinh_matches_flowkit(values, T, M, A):
    ours = Asinh(T, M, A).apply(values)
    theirs = _fk().AsinhTransform(T, M, A).apply(values.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("T,A", [(10000, 500), (262144, 0), (1000, 0)])
def test_linear_matches_flowkit(values, T, A):
    ours = Linear(T, A).apply(values)
    theirs = _fk().LinearTransform(T, A).apply(values.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=0)


@pytest.mark.parametrize("T,M", [(10000, 5), (262144, 4), (100, 2)])
def test_log_matches_flowkit(values, T, M):
    pos = values[values > 0]
    ours = Log(T, M).apply(pos)
    theirs = _fk().LogTransform(T, M).apply(pos.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-14, atol=1e-15)
    # Undefined below zero: NaN (in no gate), -inf at zero, and no warning.
    with np.errstate(all="raise"):
        out = Log(T, M).apply(np.array([-1.0, 0.0]))
    assert np.isnan(out[0]) and out[1] == -np.inf


@pytest.mark.parametrize(
    "t",
    [
        *(Logicle(*p) for p in TWMA),
        *(Hyperlog(*p) for p in TWMA if p[1] > 0),
        Asinh(262144, 4.5, 0),
        Asinh(10000, 4, 1),
        Linear(10000, 500),
        Log(10000, 5),
        FlowJoLog(1, 4),
    ],
    ids=repr,
)
def test_inverse_round_trip_and_monotonic(values, t):
    x = np.unique(values)
    x = x[x > 1] if isinstance(t, Log | FlowJoLog) else x
    y = t.apply(x)
    assert np.all(np.diff(y) > 0), "transform must be strictly increasing"
    np.testing.assert_allclose(t.inverse(y), x, rtol=1e-9, atol=1e-9)


def test_logicle_landmarks():
    t = Logicle(262144, 0.5, 4.5, 0)
    assert t.apply(np.array([262144.0]))[0] == pytest.approx(1.0, abs=1e-15)
    assert t.apply(np.array([0.0]))[0] == pytest.approx(t._x1, abs=1e-15)  # zero maps to x1
    # Symmetric about zero (reflection at x1).
    x = np.array([0.5, 17.0, 106.9, 5000.0])
    np.testing.assert_allclose(t.apply(-x), 2 * t._x1 - t.apply(x), atol=1e-15)
    # A value in the region where an unguarded Halley iteration diverges.
    assert np.isfinite(t.apply(np.array([105.8064775, -110.28622225]))).all()


def test_logicle_keeps_shape_and_nan():
    t = Logicle()
    x = np.array([[1.0, np.nan], [-3.0, 1e5]])
    y = t.apply(x)
    assert y.shape == (2, 2) and np.isnan(y[0, 1]) and np.isfinite(y[[0, 1, 1], [0, 0, 1]]).all()


def test_bounds_clamp_scale_not_apply():
    t = Asinh(10000, 4, 1).with_bounds(None, 0.6)
    x = np.array([-100.0, 10.0, 1e6])
    assert t.apply(x)[2] > 0.6
    np.testing.assert_array_equal(t.scale(x), np.minimum(t.apply(x), 0.6))
    t2 = Log(100, 2).with_bounds(0, 1)
    np.testing.assert_array_equal(t2.scale(np.array([0.001, 10, 1e5])), [0, 0.5, 1])
    # NaN stays NaN (outside every gate) after clamping.
    assert np.isnan(t2.scale(np.array([-1.0]))[0])


def test_ratio():
    r = Ratio("FL2-H", "FL2-A", A=2.7, B=-100, C=-300)
    xy = np.array([[100.0, 50.0], [0.0, -300.0], [1.0, 2.0]])
    with np.errstate(all="raise"):
        out = r.apply(xy)
    assert out[0] == pytest.approx(2.7 * 200 / 350)
    assert np.isinf(out[1])
    assert r.n_inputs == 2
    with pytest.raises(NotImplementedError):
        r.inverse(out)


def test_flowjo_biex_matches_flowjo_table(shared_data):
    """FlowJo's own exported biex table (width -7.94, neg 1, pos 4.42, 4096 channels)."""
    path = shared_data / "flowkit_testdata/data/flowjo_xforms"
    table = np.loadtxt(
        path / "tr_biex_l256_w-7.943282_n1.000000_m4.418540_r262144.000029.csv",
        delimiter=",",
        skiprows=1,
    )
    t = FlowJoBiex(neg=1.0, width=-7.943282, pos=4.418540, max_value=262144.000029)
    # The table is printed with 6 significant digits.
    np.testing.assert_allclose(t.inverse(table[:, 0] / 4096), table[:, 1], rtol=5e-6, atol=5e-4)


@pytest.mark.parametrize(
    "neg,width,pos", [(0, -10, 4.41854), (1, -7.943282, 4.41854), (0, -100, 4.5)]
)
def test_flowjo_biex_matches_flowkit(values, neg, width, pos):
    ours = FlowJoBiex(neg, width, pos, 262144.0).apply(values) * 4096
    fk = _fk().WSPBiexTransform(negative=neg, width=width, positive=pos, max_value=262144.0)
    np.testing.assert_allclose(ours, fk.apply(values.reshape(-1, 1)).ravel(), atol=1e-9)


def test_flowjo_log_matches_flowkit(values):
    ours = FlowJoLog(offset=1.0, decades=4.5).apply(values)
    theirs = _fk().WSPLogTransform(offset=1.0, decades=4.5).apply(values.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(ours, theirs, atol=1e-15)
    assert ours[values <= 1].max() == 0.0


@pytest.mark.parametrize(
    "t",
    [
        Logicle(262144, 0.5, 4.5, 0),
        Hyperlog(10000, 1, 4.5, 0),
        Asinh(10000, 4, 1),
        Linear(10000, 500),
        Log(100, 2),
        Ratio("a", "b", 1, 2, 3),
        FlowJoLog(2, 4),
        FlowJoBiex(0, -10, 4.4, 262144),
    ],
    ids=lambda t: type(t).__name__,
)
def test_spec_round_trip(t):
    t.with_bounds(0.05, 0.95)
    t2 = from_spec(t.spec() | {"bound_min": 0.05, "bound_max": 0.95}, id="x")
    assert type(t2) is type(t) and t2.id == "x"
    assert (t2.bound_min, t2.bound_max) == (0.05, 0.95)
    x = np.array([[10.0, 3.0], [500.0, 70.0]]) if isinstance(t, Ratio) else np.array([3.0, 5e3])
    np.testing.assert_array_equal(t2.scale(x), t.scale(x))


def test_invalid_parameters():
    with pytest.raises(ConfigError, match="logicle"):
        Logicle(262144, 3, 4.5, 0)  # W > M/2
    with pytest.raises(ConfigError, match="hyperlog"):
        Hyperlog(262144, 0, 4.5, 0)
    with pytest.raises(ConfigError, match="unknown transform"):
        from_spec({"type": "bogus"})
    with pytest.raises(ConfigError, match="not a number"):
        from_spec({"type": "linear", "T": "high"})


# ------------------------------------------------------------- fast approximations

FAST = [
    *(Logicle(*p) for p in TWMA),
    *(Hyperlog(*p) for p in TWMA if p[1] > 0),
    Asinh(262144, 4.5, 0),
    Asinh(10000, 4, 1),
    Asinh(262144, 4.2, 0.5),
    Linear(10000, 500),
    Linear(262144, 0),
]


def _hard_values(values):
    """The shared grid plus the table's own nodes, their neighbours and float32 extremes."""
    nodes = (np.arange(-8, 22, dtype=np.float64)[:, None] + np.arange(128) / 128).ravel()
    nodes = 2.0 ** np.floor(nodes) * (1 + (nodes % 1))
    around = np.concatenate([nodes, np.nextafter(nodes, 0), np.nextafter(nodes, np.inf)])
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [values, around, -around, [0.0, -0.0, 2.0**-8, 2.0**-9, 1e-30, -1e-30, 3e6, -3e6]]
    )
    x = np.concatenate([x, rng.normal(0, 2000, 20000), rng.uniform(-3e6, 3e6, 20000)])
    return x[np.abs(x) <= 3e6]


@pytest.mark.parametrize("t", FAST, ids=repr)
def test_approx_is_within_its_error_bound(values, t):
    """``approx`` (table or float32 arithmetic) never strays beyond the error it states,
    on float32 and float64 input, including every table node and its neighbours."""
    x64 = _hard_values(values)
    for x in (x64, x64.astype(np.float32)):
        exact = t.apply(x.astype(np.float64))
        y, err = t.approx(x, float(np.abs(x).max()))
        assert y.dtype == x.dtype and y.shape == x.shape
        assert 0 < err < 1e-5 * (1 + float(np.abs(exact).max()))  # a useful bound
        worst = float(np.abs(y.astype(np.float64) - exact).max())
        assert worst <= err, (worst, err)


@pytest.mark.parametrize("t", FAST, ids=repr)
def test_lipschitz_bounds_the_slope(t):
    # Steps of at least 0.008 units, so that rounding of y stays far below 1e-7 of a slope.
    far = np.geomspace(1, 1e7, 2000)
    x = np.unique(np.concatenate([np.linspace(-2000, 2000, 40001), far, -far]))
    slope = np.diff(t.apply(x)) / np.diff(x)
    assert float(slope.max()) <= t.lipschitz() * (1 + 1e-7)
    # and it is not a vacuous bound: the steepest place reaches it closely
    assert float(slope.max()) >= 0.99 * t.lipschitz()


def test_approx_not_offered_where_not_exact_enough():
    assert Log(100, 2).approx(np.ones(3), 10.0) is None
    assert FlowJoBiex().approx(np.ones(3), 10.0) is None
    assert Logicle().approx(np.ones(3), float("inf")) is None
    assert Log(100, 2).lipschitz() is None


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "linear", "T": 0},
        {"type": "linear", "T": 1, "A": -1},  # a zero span: division by zero
        {"type": "linear", "T": float("nan")},
        {"type": "log", "M": 0},
        {"type": "log", "T": 0},
        {"type": "asinh", "T": 0},
        {"type": "asinh", "M": 0},
        {"type": "flowjo_log", "offset": 0},
        {"type": "logicle", "T": 0},
        {"type": "logicle", "M": 0},
    ],
)
def test_degenerate_transform_parameters_are_refused(spec):
    from immuno.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid"):
        from_spec(spec)


def test_a_template_with_a_degenerate_transform_names_it(tmp_path):
    from immuno.autogate import load_template
    from immuno.errors import GatingFileError

    p = tmp_path / "t.yaml"
    p.write_text(
        "panel:\n  transforms: {lin: {type: linear, T: 0}}\n  markers: {CD3: {transform: lin}}\n"
        "populations:\n  - {name: a, dims: [CD3], method: mindensity}\n"
    )
    with pytest.raises(GatingFileError) as err:
        load_template(p)
    assert err.value.field == "panel.transforms.lin"
    assert err.value.file == str(p)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Logicle(T=262144, W=0.5, M=1e308, A=0),
        lambda: Logicle(T=float("inf"), W=0.5, M=4.5, A=0),
        lambda: Hyperlog(T=262144, W=0.5, M=1e308, A=0),
        lambda: FlowJoBiex(neg=0, width=-10, pos=float("nan"), max_value=262144),
        lambda: FlowJoBiex(neg=0, width=-10, pos=1e308, max_value=262144),
    ],
)
def test_parameters_whose_scale_overflows_are_refused(make):
    """A logicle of M = 1e308 decades built a table of NaN, found as an IndexError deep in
    the gating (the hostile suite's Gating-ML case)."""
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == "transform"
