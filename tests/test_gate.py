"""Tests of ``immuno.gate``: gate semantics on synthetic events, and the published
CytoExploreR gating of four real files reproduced exactly."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from immuno.compensate import Compensation
from immuno.errors import GatingError, GatingFileError
from immuno.gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    EventSpace,
    FastEventSpace,
    GatingResult,
    GatingStrategy,
    PolygonGate,
    PolygonGrid,
    RectangleGate,
    channel_values,
    points_in_polygon,
    write_membership,
)
from immuno.transform import Asinh, Hyperlog, Linear, Logicle, Ratio


@dataclass
class FakeFCS:
    """The part of :class:`~immuno.read.FCSData` the engine uses."""

    events: np.ndarray
    channels: list[str]
    text: dict[str, str] = field(default_factory=dict)
    path: str = "fake.fcs"
    spill: tuple | None = None

    @property
    def n_events(self):
        return self.events.shape[0]

    def channel_index(self, name):
        return self.channels.index(name)

    def spillover(self):
        return self.spill

    def scaled(self, *, gain=False):
        out = self.events.astype(np.float64, copy=True)
        for j in range(len(self.channels)):
            g = float(self.text.get(f"$P{j + 1}G", "1"))
            if gain and g not in (0.0, 1.0):
                out[:, j] /= g
        return out


@pytest.fixture(scope="session")
def make_fcs():
    """Factory: seeded events on channels A, B, C (known truth by construction)."""

    def build(n=2000, seed=0, **kw):
        rng = np.random.default_rng(seed)
        ev = rng.uniform(-10, 110, size=(n, 3))
        return FakeFCS(ev, ["A", "B", "C"], **kw)

    return build


A, B, C = Dimension("A"), Dimension("B"), Dimension("C")


# ----------------------------------------------------------------------- polygons

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])


def test_polygon_boundary_is_inside():
    pts = np.array(
        [
            [0, 0],
            [10, 10],
            [0, 10],
            [10, 0],  # vertices
            [5, 0],
            [10, 5],
            [5, 10],
            [0, 5],  # on every edge, incl. the closing edge
            [5, 5],  # interior
            [10.000001, 5],
            [5, -1e-9],
            [-1e-12, 5],
            [5, 10 + 1e-12],  # just outside
        ],
        dtype=np.float64,
    )
    got = points_in_polygon(pts, SQUARE)
    assert got.tolist() == [True] * 9 + [False] * 4


def test_polygon_float32_points_on_a_slanted_edge():
    """The set-2 ``Poly1u`` case: float32 events exactly on the edge y = x / 2."""
    verts = np.array([[0, 0], [200000, 100000], [200000, 200000], [100000, 200000]], float)
    x = np.array([14.8, 38.48, 124.32, 5000.5], dtype=np.float32)
    pts = np.column_stack([x, x / np.float32(2)]).astype(np.float32)
    assert points_in_polygon(pts.astype(np.float64), verts).all()
    below = pts.astype(np.float64) - [0, 1e-3]
    assert not points_in_polygon(below, verts).any()


def test_polygon_concave_self_intersecting_and_degenerate():
    # Concave "U": the notch is outside.
    u = np.array([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]])
    pts = np.array([[15, 20], [5, 20], [25, 25], [15, 5], [15, 10]], float)
    assert points_in_polygon(pts, u.astype(float)).tolist() == [False, True, True, True, True]
    # Bow tie: even-odd, the crossing point is on both edges (boundary).
    bow = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float)
    pts = np.array([[2, 5], [8, 5], [5, 2], [5, 5]], float)
    assert points_in_polygon(pts, bow).tolist() == [True, True, False, True]
    # A closing vertex repeated, and a horizontal edge at the points' y.
    rep = np.vstack([SQUARE, SQUARE[:1]])
    pts = np.array([[5, 0], [5, 5], [11, 0]], float)
    assert points_in_polygon(pts, rep).tolist() == [True, True, False]


def test_polygon_gate_vectorised_random_against_winding(make_fcs):
    """Random star polygon: even-odd membership equals a winding-number reference."""
    rng = np.random.default_rng(5)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
    rad = rng.uniform(20, 50, 9)
    verts = np.column_stack([50 + rad * np.cos(ang), 50 + rad * np.sin(ang)])
    pts = rng.uniform(0, 100, size=(5000, 2))
    got = points_in_polygon(pts, verts)
    d = verts[None, :, :] - pts[:, None, :]
    e = np.roll(d, -1, axis=1)
    wind = np.arctan2(d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0], (d * e).sum(axis=-1)).sum(
        axis=1
    )
    np.testing.assert_array_equal(got, np.abs(wind) > np.pi)


# ------------------------------------------------------------- rectangles, ellipses


def test_rectangle_half_open_and_unbounded():
    g = RectangleGate("r", None, (A, B), (0.0, None), (10.0, None))
    v = np.array(
        [[0, 5], [10, 5], [9.999, -1e300], [5, np.inf], [5, -np.inf], [np.nan, 1], [5, np.nan]]
    )
    assert g.contains(v).tolist() == [True, False, True, False, True, False, False]


def test_ellipse_includes_boundary():
    g = EllipseGate("e", None, (A, B), mean=np.zeros(2), covariance=np.diag([4.0, 1.0]))
    v = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0000001], [1.0, 0.0]])
    assert g.contains(v).tolist() == [True, True, False, True]
    with pytest.raises(GatingError, match="singular"):
        EllipseGate("s", None, (A, B), covariance=np.ones((2, 2))).contains(v)


# ------------------------------------------------------------------- the strategy


def test_hierarchy_booleans_and_complements(make_fcs):
    fcs = make_fcs()
    a, b, c = (fcs.events[:, j] for j in range(3))
    s = GatingStrategy()
    # Positional construction is the public API other modules rely on.
    s.add_gate(RectangleGate("R", None, (A,), (0.0,), (50.0,)))
    s.add_gate(PolygonGate("P", "R", (A, B), vertices=SQUARE * 5))
    s.add_gate(RectangleGate("outR", None, (A,), (0.0,), (50.0,), complement=True))
    # Boolean gates may name populations defined after them.
    s.add_gate(BooleanGate("R_and_notQ", None, (), op="and", operands=[("R", False), ("Q", True)]))
    s.add_gate(BooleanGate("notP", "R", (), op="not", operands=[("P", False)]))
    s.add_gate(RectangleGate("Q", None, (C,), (None,), (20.0,)))
    s.add_gate(BooleanGate("P_or_Q", None, (), op="or", operands=[("P", False), ("Q", False)]))
    res = s.apply(fcs, sample_id="s1")
    r = (a >= 0) & (a < 50)
    p = r & (a >= 0) & (a <= 50) & (b >= 0) & (b <= 50)
    q = c < 20
    truth = {
        "R": r,
        "P": p,
        "outR": ~r,
        "R_and_notQ": r & ~q,
        "notP": r & ~p,
        "Q": q,
        "P_or_Q": p | q,
    }
    assert list(res.masks) == list(s.gates)
    for k, v in truth.items():
        np.testing.assert_array_equal(res.masks[k], v, err_msg=k)
    t = res.table().set_index("population")
    assert t.loc["P", "parent"] == "R" and t.loc["P", "parent_count"] == r.sum()
    assert t.loc["R", "parent"] == "root" and t.loc["R", "parent_count"] == fcs.n_events


def test_strategy_errors(make_fcs):
    s = GatingStrategy()
    s.add_gate(RectangleGate("R", None, (A,), (0.0,), (50.0,)))
    with pytest.raises(GatingFileError, match="twice"):
        s.add_gate(RectangleGate("R", None, (A,), (0.0,), (50.0,)))
    with pytest.raises(GatingFileError, match="not defined before"):
        s.add_gate(RectangleGate("X", "nope", (A,), (0.0,), (50.0,)))
    s.add_gate(BooleanGate("loop1", None, (), op="and", operands=[("R", False), ("loop2", False)]))
    s.add_gate(BooleanGate("loop2", None, (), op="and", operands=[("R", False), ("loop1", False)]))
    with pytest.raises(GatingError, match="depend on each other"):
        s.apply(make_fcs())
    s2 = GatingStrategy()
    s2.add_gate(BooleanGate("b", None, (), op="not", operands=[("ghost", False)]))
    with pytest.raises(GatingError, match="unknown population 'ghost'"):
        s2.apply(make_fcs())


def test_ratio_dimension_and_bounded_transform(make_fcs):
    fcs = make_fcs()
    s = GatingStrategy()
    s.transforms["rat"] = Ratio("A", "B", A=2.0, B=1.0, C=0.0, id="rat").with_bounds(None, 3.0)
    s.transforms["lg"] = Logicle(1000, 0.5, 4, 0, id="lg").with_bounds(0.3, None)
    s.add_gate(
        RectangleGate("rat", None, (Dimension("rat", None, None, ratio="rat"),), (3.0,), (None,))
    )
    s.add_gate(RectangleGate("lowB", None, (Dimension("B", None, "lg"),), (None,), (0.3000001,)))
    res = s.apply(fcs)
    a, b = fcs.events[:, 0], fcs.events[:, 1]
    with np.errstate(all="ignore"):
        ratio = np.minimum(2.0 * (a - 1.0) / b, 3.0)
    np.testing.assert_array_equal(res.masks["rat"], ratio >= 3.0)
    lg = np.maximum(s.transforms["lg"].apply(b), 0.3)
    np.testing.assert_array_equal(res.masks["lowB"], lg < 0.3000001)


def test_fcs_compensation_and_missing_spillover(make_fcs):
    spill = np.array([[1.0, 0.5], [0.0, 1.0]])
    fcs = make_fcs(spill=(["A", "B"], spill))
    s = GatingStrategy()
    s.add_gate(RectangleGate("cB", None, (Dimension("B", "FCS"),), (0.0,), (None,)))
    s.add_gate(RectangleGate("cC", None, (Dimension("C", "FCS"),), (0.0,), (None,)))
    res = s.apply(fcs)
    comp = fcs.events[:, :2] @ np.linalg.inv(spill)
    np.testing.assert_array_equal(res.masks["cB"], comp[:, 1] >= 0)
    np.testing.assert_array_equal(res.masks["cC"], fcs.events[:, 2] >= 0)  # not in the matrix
    nospill = make_fcs()
    with pytest.raises(GatingError, match="SPILLOVER"):
        s.apply(nospill)
    s.require_spillover = False  # Gating-ML: no matrix in the file, no compensation
    np.testing.assert_array_equal(s.apply(nospill).masks["cB"], nospill.events[:, 1] >= 0)
    s.compensations["FCS"] = Compensation(["A", "B"], np.eye(2), id="FCS")
    np.testing.assert_array_equal(s.apply(fcs).masks["cB"], fcs.events[:, 1] >= 0)


def test_channel_scaling(make_fcs):
    fcs = make_fcs(text={"$P2G": "4", "$TIMESTEP": "0.5"})
    fcs.channels = ["A", "B", "Time"]
    assert channel_values(fcs, "raw") is fcs.events
    np.testing.assert_array_equal(channel_values(fcs, "gain")[:, 1], fcs.events[:, 1] / 4)
    fj = channel_values(fcs, "flowjo")
    np.testing.assert_array_equal(fj[:, 2], fcs.events[:, 2] * 0.5)
    with pytest.raises(GatingError, match="scaling"):
        channel_values(fcs, "bogus")
    s = GatingStrategy()
    s.add_gate(RectangleGate("b", None, (B,), (None,), (10.0,)))
    s.scaling = "gain"
    np.testing.assert_array_equal(s.apply(fcs).masks["b"], fcs.events[:, 1] / 4 < 10)


def test_column_cache_never_serves_a_stale_parent(make_fcs):
    """A re-evaluated parent (as autogate does) must not reuse the old rows' values."""
    fcs = make_fcs()
    s = GatingStrategy()
    space = EventSpace(fcs, s)
    space.uses[(B, ("parent", "P"))] = 3  # as if three gates under P used B: keep it
    masks = {}
    p1 = s.add_gate(RectangleGate("P", None, (A,), (0.0,), (50.0,)))
    masks["P"] = s.evaluate(p1, space, masks)
    child = s.add_gate(RectangleGate("C", "P", (B,), (20.0,), (None,)))
    first = s.evaluate(child, space, masks)
    del s.gates["C"], s.gates["P"]
    p2 = s.add_gate(RectangleGate("P", None, (A,), (40.0,), (90.0,)))
    masks["P"] = s.evaluate(p2, space, masks)
    child = s.add_gate(RectangleGate("C", "P", (B,), (20.0,), (None,)))
    second = s.evaluate(child, space, masks)
    a, b = fcs.events[:, 0], fcs.events[:, 1]
    np.testing.assert_array_equal(first, (a >= 0) & (a < 50) & (b >= 20))
    np.testing.assert_array_equal(second, (a >= 40) & (a < 90) & (b >= 20))


def test_shared_columns_are_kept_only_while_needed(make_fcs, monkeypatch):
    """Sibling gates on the same axes compute each column once; nothing is kept after."""
    from immuno import gate as gate_mod

    fcs = make_fcs()
    s = GatingStrategy()
    s.add_gate(RectangleGate("P", None, (A,), (0.0,), (50.0,)))
    for i in range(3):  # quadrant-like siblings on the same axes
        s.add_gate(RectangleGate(f"q{i}", "P", (B, C), (10.0 * i, None), (None, 50.0)))
    made = []

    class Spy(gate_mod.EventSpace):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
            self.linear_calls = []

        def linear(self, dim, rows=None):
            self.linear_calls.append(dim.channel)
            return super().linear(dim, rows)

    monkeypatch.setattr(gate_mod, "EventSpace", Spy)
    res = s.apply(fcs)
    (sp,) = made
    assert sorted(sp.linear_calls) == ["A", "B", "C"]  # B and C once for three gates
    assert sp._cols == {} and sp.uses == {}  # released after the last sibling
    b, c = fcs.events[:, 1], fcs.events[:, 2]
    for i in range(3):
        want = res.masks["P"] & (b >= 10.0 * i) & (c < 50.0)
        np.testing.assert_array_equal(res.masks[f"q{i}"], want)


# ------------------------------------------------------------- CytoExploreR (real)

CYTO = "cytoexplorerdata_activation"


def cytoexplorer_strategy(js: dict) -> GatingStrategy:
    """The published gatingset (``DERIVED_Activation_<n>_gatingset.json``) as a strategy.

    flowWorkspace's logicle scale runs 0..M (``M * logicle``); the engine's
    Gating-ML logicle runs 0..1, so logicle-scale coordinates are divided by M.
    Channels without a transform (scatter) are on the linear scale. Every
    channel is compensated with the file's $SPILL as stored in the gatingset.
    """
    s = GatingStrategy()
    c = js["compensation"]
    s.compensations["spill"] = Compensation(
        c["detectors"], np.array(c["spillover_row_major"]), id="spill"
    )
    m_of = {}
    for ch, t in js["transformations"].items():
        p = t["lgt"]
        s.transforms[ch] = Logicle(p["T"], p["W"], p["M"], p["A"], id=ch)
        m_of[ch] = p["M"]
    pops = {p["index"]: p for p in js["populations"]}

    def name(i):
        return None if pops[i]["parent_index"] is None else pops[i]["path"].rsplit("/", 1)[-1]

    for p in js["populations"]:
        if p["parent_index"] is None:
            continue
        g, nm, parent = p["gate"], name(p["index"]), name(p["parent_index"])
        if g["type"] == "BOOL_GATE":
            (spec,) = g["bg"]["boolOpSpec"]
            op = "not" if spec["isNot"] else "and"
            s.add_gate(BooleanGate(nm, parent, (), op=op, operands=[(spec["path"][-1], False)]))
            continue
        chans = g["pg"]["param"]["params"]
        dims = tuple(Dimension(ch, "spill", ch if ch in s.transforms else None) for ch in chans)
        scale = np.array([1.0 / m_of.get(ch, 1.0) for ch in chans])
        if g["type"] == "ELLIPSE_GATE":
            e = g["eg"]
            cov = np.array([[r["x"], r["y"]] for r in e["cov"]]) * np.outer(scale, scale)
            mu = np.array([e["mu"]["x"], e["mu"]["y"]]) * scale
            s.add_gate(
                EllipseGate(
                    nm, parent, dims, mean=mu, covariance=cov, distance_square=e["dist"] ** 2
                )
            )
            continue
        v = np.array([[q["x"], q["y"]] for q in g["pg"]["param"]["vertices"]]) * scale
        if g["type"] == "POLYGON_GATE":
            s.add_gate(PolygonGate(nm, parent, dims, vertices=v))
        elif g["type"] == "RECT_GATE":
            s.add_gate(RectangleGate(nm, parent, dims, tuple(v[0]), tuple(v[1])))
        else:
            raise AssertionError(f"unexpected gate type {g['type']}")
    return s


@pytest.fixture(scope="module")
def cyto_counts(shared_data):
    with open(shared_data / CYTO / "DERIVED_all33_gatingset_counts.tsv", newline="") as f:
        return {
            (r["sample"], r["path"]): int(float(r["computed_count"]))
            for r in csv.DictReader(f, delimiter="\t")
        }


@pytest.mark.parametrize("n", [1, 2, 31, 32])
def test_cytoexplorer_published_gates_exact(n, shared_data, shared_fcs, cyto_counts):
    js = json.loads((shared_data / CYTO / f"DERIVED_Activation_{n}_gatingset.json").read_text())
    s = cytoexplorer_strategy(js)
    res = s.apply(shared_fcs(f"{CYTO}/Activation/Activation_{n}.fcs"))
    got, want = {}, {}
    for p in js["populations"][1:]:
        nm = p["path"].rsplit("/", 1)[-1]
        got[p["path"]] = res.count(nm)
        want[p["path"]] = cyto_counts[(f"Activation_{n}.fcs", p["path"])]
    assert len(got) == 10
    assert got == want


# ------------------------------------------------------------------- fast path


@pytest.fixture
def force_fast(monkeypatch):
    """The fast path on every sample and parent, in small odd-sized blocks."""
    from immuno import gate as gate_mod

    monkeypatch.setattr(gate_mod, "FAST_MIN_EVENTS", 0)
    monkeypatch.setattr(gate_mod, "FAST_MIN_ROWS", 0)
    monkeypatch.setattr(gate_mod, "FAST_CHUNK", 997)


def _assert_same(strategy, fcs):
    exact = strategy.apply(fcs, fast=False)
    fast = strategy.apply(fcs)
    assert list(fast.masks) == list(exact.masks)
    for pop in exact.masks:
        np.testing.assert_array_equal(fast.masks[pop], exact.masks[pop], err_msg=pop)
    return exact


GML = "gatingml2_compliance/Gml2"


@pytest.mark.parametrize(
    "fcs_name,xml",
    [
        ("data1.fcs", "gates1.xml"),
        ("data2.fcs", "gates2.xml"),
        ("9399_1_3_NKR.fcs", "gates3.xml"),
        ("9399_1_3_NKR.fcs", "gates4.xml"),
        ("9399_1_3_NKR.fcs", "gates5.xml"),
    ],
)
def test_fast_path_equals_exact_on_the_compliance_suite(
    fcs_name, xml, shared_data, shared_fcs, force_fast
):
    """Every gate of the ISAC sets (bounds, ratios, hyperlog, spectrum matrices, events
    on polygon edges) gives the same membership on the fast path, event by event."""
    from immuno.gatingml import load_gatingml

    s = load_gatingml(shared_data / GML / "Gating-MLFiles" / xml)
    _assert_same(s, shared_fcs(f"{GML}/FCSFiles/{fcs_name}"))


def _adversarial(dtype, seed=0):
    """Events on three fluorescence channels with spillover, many of them exactly on
    a gate boundary (in channel units, on the logicle scale and on polygon edges),
    plus a scatter pair; and a strategy over them that uses every fast-path branch."""
    rng = np.random.default_rng(seed)
    n = 6000
    spill = np.array([[1.0, 0.15, 0.02], [0.01, 1.0, 0.1], [0.0, 0.05, 1.0]])
    comp = Compensation(["F1", "F2", "F3"], spill)
    lg = Logicle(262144, 0.5, 4.5, 0, id="lg")
    hy = Hyperlog(10000, 1, 4.5, 0, id="hy")
    ash = Asinh(262144, 4.5, 0, id="ash").with_bounds(0.2, 0.8)
    lin = Linear(262144, 0, id="lin")
    true = rng.normal(0, 300, (n, 3)) + rng.choice([0, 800, 5000], (n, 3))
    raw = true @ spill
    # Raw values exactly at thresholds, and whose compensated value is at one.
    raw[:400, 0] = 1000.0
    thr = float(lg.inverse(np.array([0.45]))[0])
    want = np.full(400, thr)
    raw[400:800] = (np.column_stack([want, raw[400:800, 1], raw[400:800, 2]]) @ spill)[:, :3]
    raw[800:1200, 1] = np.nextafter(np.float32(thr), np.float32(np.inf))
    scatter = rng.uniform(0, 1000, (n, 2))
    scatter[:300] = [[200.0, 300.0]] * 300  # a polygon vertex
    t = rng.uniform(0, 1, 300)
    scatter[300:600] = np.column_stack([200 + 600 * t, 300 + 0 * t])  # on an edge
    ev = np.column_stack([scatter, raw]).astype(dtype)
    fcs = FakeFCS(ev, ["S1", "S2", "F1", "F2", "F3"], spill=(["F1", "F2", "F3"], spill))

    s = GatingStrategy()
    s.compensations["C"] = comp
    for t_ in (lg, hy, ash, lin):
        s.transforms[t_.id] = t_
    f1 = Dimension("F1", "FCS", "lg")
    f2 = Dimension("F2", "C", "lg")
    f3 = Dimension("F3", "FCS", "hy")
    s.add_gate(
        PolygonGate(
            "scatter",
            None,
            (Dimension("S1"), Dimension("S2")),
            vertices=np.array([[200.0, 300.0], [800.0, 300.0], [900, 900], [100, 700]]),
        )
    )
    s.add_gate(RectangleGate("raw", "scatter", (Dimension("F1"),), (1000.0,), (None,)))
    s.add_gate(RectangleGate("comp lin", "scatter", (Dimension("F1", "FCS"),), (thr,), (None,)))
    s.add_gate(RectangleGate("lg", "scatter", (f1, f2), (0.45, None), (None, 0.45)))
    s.add_gate(RectangleGate("hy", None, (f3,), (0.3,), (0.7,)))
    s.add_gate(RectangleGate("bounded", None, (Dimension("F2", "FCS", "ash"),), (0.2,), (0.5,)))
    s.add_gate(RectangleGate("inf", None, (Dimension("F3", "FCS", "ash"),), (-np.inf,), (np.inf,)))
    s.add_gate(RectangleGate("out", None, (f1,), (0.3,), (0.6,), complement=True))
    poly = np.array([[0.3, 0.3], [0.7, 0.35], [0.6, 0.8], [0.45, 0.45], [0.35, 0.7]])
    s.add_gate(PolygonGate("lg poly", "scatter", (f1, f2), vertices=poly))
    s.add_gate(
        EllipseGate(
            "ell",
            None,
            (f1, Dimension("F3", "FCS", "lin")),
            mean=np.array([0.45, 0.003]),
            covariance=np.array([[0.004, 0.00001], [0.00001, 0.00002]]),
            distance_square=4.0,
        )
    )
    s.add_gate(
        EllipseGate(
            "ell3",
            None,
            (f1, f2, f3),
            mean=np.array([0.4, 0.4, 0.4]),
            covariance=np.diag([0.01, 0.02, 0.03]),
            distance_square=2.0,
        )
    )
    s.transforms["r"] = Ratio("F1", "F2", 1.0, 0.0, 0.0, id="r")
    s.add_gate(
        RectangleGate("ratio", "scatter", (Dimension("r", "FCS", ratio="r"),), (0.5,), (2.0,))
    )
    s.add_gate(
        BooleanGate("lg or hy", "scatter", (), op="or", operands=[("lg", False), ("hy", False)])
    )
    return s, fcs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_equals_exact_on_events_at_the_boundaries(dtype, force_fast):
    s, fcs = _adversarial(dtype)
    exact = _assert_same(s, fcs)
    # The events are not trivial: every population is partial (but the unbounded one).
    for pop, m in exact.masks.items():
        assert 0 < m.sum() < len(m) or (pop == "inf" and m.all()), pop


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_blocks_gated_in_threads_give_the_same_masks(force_fast):
    """``apply(threads=3)`` gates the 997-event blocks concurrently (shared polygon
    grids and transform tables built by whichever block comes first): same masks."""
    s, fcs = _adversarial(np.float32, seed=2)
    assert fcs.n_events > 5 * 997
    exact = s.apply(fcs, fast=False)
    for threads in (3, 8):
        got = s.apply(fcs, threads=threads)
        for pop in exact.masks:
            np.testing.assert_array_equal(got.masks[pop], exact.masks[pop], err_msg=pop)


def test_fast_path_falls_back_on_non_finite_values(force_fast):
    s, fcs = _adversarial(np.float32, seed=1)
    fcs.events[5, 3] = np.nan
    fcs.events[7, 2] = np.inf
    _assert_same(s, fcs)


def test_fast_space_in_place_of_event_space(force_fast):
    """``strategy.evaluate(gate, FastEventSpace, masks)`` (as autogate uses an
    EventSpace) gives the exact masks, gate by gate."""
    s, fcs = _adversarial(np.float32)
    exact = s.apply(fcs, fast=False)
    space = FastEventSpace(fcs, s)
    masks = {}
    for g in s.evaluation_order():
        masks[g.id] = s.evaluate(g, space, masks)
        np.testing.assert_array_equal(masks[g.id], exact.masks[g.id], err_msg=g.id)
    assert space.stats["fast"] > 0
    np.testing.assert_array_equal(
        space.values((Dimension("F1", "FCS", "lg"),))[:, 0],
        EventSpace(fcs, s).values((Dimension("F1", "FCS", "lg"),))[:, 0],
    )


def test_fast_estimates_are_within_the_fast_paths_error_bound():
    """``estimates`` (what autogate fits on) differ from the exact values by no more
    than the bound the fast path itself works with, on every dimension kind."""
    s, fcs = _adversarial(np.float32)
    space = FastEventSpace(fcs, s)
    exact = EventSpace(fcs, s)
    dims = sorted({d for g in s.gates.values() for d in g.dims}, key=lambda d: d.label())
    assert len(dims) >= 3
    rows = np.arange(0, fcs.n_events, 3)
    for d in dims:
        got = space.estimates((d,), rows)[:, 0]
        want = exact.values((d,), rows)[:, 0]
        _, err = space._transformed(d, rows)
        assert got.dtype == np.float64 and got.shape == want.shape
        assert np.all(np.abs(got - want) <= err + 1e-12), d.label()
        # ... and the bound is tight enough to fit on: under 1e-4 of the value range.
        assert err <= 1e-4 * max(np.ptp(want), 1e-9), (d.label(), err)
    # Not usable (non-finite values): the exact values themselves.
    fcs.events[3, 2] = np.nan
    bad = FastEventSpace(fcs, s)
    np.testing.assert_array_equal(
        bad.estimates(dims[:2], rows), EventSpace(fcs, s).values(dims[:2], rows)
    )


def test_fast_path_is_the_default_for_large_samples(make_fcs):
    from immuno import gate as gate_mod

    fcs = make_fcs(n=gate_mod.FAST_MIN_EVENTS)
    s = GatingStrategy()
    s.add_gate(PolygonGate("p", None, (A, B), vertices=np.array([[0, 0], [90, 10], [50, 80.0]])))
    s.add_gate(RectangleGate("r", "p", (C,), (20.0,), (None,)))
    _assert_same(s, fcs)


@pytest.mark.parametrize("seed", range(6))
def test_polygon_grid_decides_only_what_it_may(seed):
    """Points the grid calls inside/outside are so exactly, for any point within eps of
    the given one; points on edges and vertices are always left to the exact test."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 12))
    verts = rng.uniform(0, 1, (k, 2))  # any polygon: concave, self-intersecting
    eps = (0.0, 0.0) if seed % 2 == 0 else (2e-3, 5e-4)
    grid = PolygonGrid(verts, *eps)
    assert grid.ok
    pts = rng.uniform(-0.2, 1.2, (200000, 2))
    e = rng.integers(0, k, 2000)
    t = rng.uniform(0, 1, (2000, 1))
    on = verts[e] + t * (verts[(e + 1) % k] - verts[e])
    pts = np.vstack([pts, verts, on])
    cls = grid.classify(pts[:, 0], pts[:, 1])
    assert set(np.unique(cls)) <= {0, 1, 2}
    jitter = pts + rng.uniform(-1, 1, pts.shape) * np.array(eps)
    truth = points_in_polygon(jitter, verts)
    decided = cls != 2
    np.testing.assert_array_equal(cls[decided] == 1, truth[decided])
    assert (cls[len(pts) - len(on) - len(verts) :] == 2).all()  # vertices and edge points
    far = grid.far_from_edges(pts[:, 0], pts[:, 1], *eps)
    np.testing.assert_array_equal(points_in_polygon(pts[far], verts), truth[far])


@pytest.mark.parametrize("k", [1, 2, 13, 16, 17, 64, 65])
@pytest.mark.parametrize("kind", ["few patterns", "rare patterns", "empty"])
def test_membership_gzip_is_the_exact_csv(k, kind, tmp_path):
    """The hand-made deflate stream decodes (CRC and length checked by gzip) to exactly
    the CSV table, across block edges, back-reference windows and literal rows."""
    import gzip
    import io

    rng = np.random.default_rng(k)
    n = 0 if kind == "empty" else 70003
    pats = rng.random((3000 if kind == "rare patterns" else 5, k)) < 0.5
    pick = rng.zipf(1.3, n) % len(pats) if kind == "rare patterns" else rng.integers(0, 5, n)
    masks = [pats[pick, i] for i in range(k)]
    names = [f'p{i}+ "x", é' for i in range(k)]
    path = tmp_path / "m.csv.gz"
    write_membership(path, masks, names, n)
    got = gzip.decompress(path.read_bytes())
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(names)
    header = head.getvalue().encode("utf-8")
    assert got[: len(header)] == header
    body = np.frombuffer(got[len(header) :], dtype=np.uint8).reshape(n, 2 * k)
    want = np.full((n, 2 * k), ord(","), dtype=np.uint8)
    want[:, -1] = ord("\n")
    if n:
        want[:, 0::2] = np.where(np.column_stack(masks), ord("1"), ord("0"))
    np.testing.assert_array_equal(body, want)


def test_counts_tsv_is_what_pandas_writes():
    import io

    masks = {
        "a,b": np.array([1, 0, 1], bool),
        'q"x\ty': np.array([1, 0, 0], bool),
        "c": np.array([0, 0, 0], bool),
        "d": np.array([0, 0, 0], bool),
    }
    res = GatingResult("s", 3, masks, {"a,b": None, 'q"x\ty': "a,b", "c": 'q"x\ty', "d": "c"})
    table = res.table()
    table.insert(0, "sample_id", "S\t1")
    buf = io.StringIO()
    table.to_csv(buf, sep="\t", index=False, lineterminator="\n")
    assert res.counts_tsv("S\t1") == buf.getvalue()
