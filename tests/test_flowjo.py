"""Tests of ``immuno.flowjo``: FlowJo 10 workspaces against FlowJo's own counts."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass

import numpy as np
import pytest

from immuno.errors import GatingFileError
from immuno.flowjo import load_flowjo, population_paths, workspace_samples
from immuno.gate import BooleanGate, EllipseGate, EventSpace, PolygonGate, RectangleGate
from immuno.gatingml import parse_xml
from immuno.transform import FlowJoBiex, Linear, Logicle

FK = "flowkit_testdata"
COUNTS = f"{FK}/DERIVED_wsp_flowjo_counts.tsv"
# Workspaces whose FCS files are in shared/data (the 8-colour ones are not).
WITH_FCS = [
    ("simple_diamond_example/simple_diamond_example_quad_gate.wsp", "test_data_diamond_01.fcs"),
    ("simple_diamond_example/test_data_diamond_asinh_rect.wsp", "test_data_diamond_01.fcs"),
    ("simple_diamond_example/test_data_diamond_asinh_rect2.wsp", "test_data_diamond_01.fcs"),
    ("simple_diamond_example/test_data_diamond_biex_rect.wsp", "test_data_diamond_01.fcs"),
    ("simple_line_example/single_ellipse_51_events.wsp", "data_set_simple_line_100.fcs"),
]
EIGHT = "8_color_data_set"
EIGHT_WSP = [
    "8_color_ICS.wsp",
    "8_color_ICS_boolean_gate_testing.wsp",
    "8_color_ICS_dot_gate_name.wsp",
    "8_color_ICS_sample_without_gates.wsp",
    "8_color_ICS_simple.wsp",
    "8_color_ICS_with_ellipse.wsp",
    "reused_quad_gate_with_child.wsp",
]


@pytest.fixture(scope="module")
def flowjo_counts(shared_data):
    """``{(workspace file name, sample): {path: FlowJo count}}``."""
    out: dict = {}
    with open(shared_data / COUNTS, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            key = (r["workspace"].rsplit("/", 1)[-1], r["sample"])
            out.setdefault(key, {})[r["path"]] = int(r["flowjo_count"])
    return out


@pytest.mark.parametrize("wsp,fcs", WITH_FCS, ids=lambda v: v.rsplit("/", 1)[-1])
def test_counts_match_flowjo(wsp, fcs, shared_data, shared_fcs, flowjo_counts):
    """Rectangles and ranges exactly; polygons and ellipses within 0.1% of FlowJo."""
    d = f"{FK}/data/{wsp.rsplit('/', 1)[0]}"
    s = load_flowjo(shared_data / FK / "data" / wsp, fcs)
    res = s.apply(shared_fcs(f"{d}/{fcs}"))
    want = flowjo_counts[(wsp.rsplit("/", 1)[-1], fcs)]
    assert want.pop("root") == res.n_events
    paths = population_paths(s)
    assert sorted(paths.values()) == sorted(want)
    for gid, path in paths.items():
        got, fj = res.count(gid), want[path]
        if isinstance(s.gates[gid], PolygonGate | EllipseGate):
            assert abs(got - fj) <= 0.001 * fj, (path, got, fj)
        else:
            assert got == fj, (path, got, fj)


def test_polygons_by_design(shared_data, shared_fcs):
    """FlowJo did not compute these workspaces' counts (-1, and stale 0s), but the
    data are a horizontal line of 100 points at y = 131072 and the gates were drawn
    to hold 50 points (``poly50``) or none."""
    d = f"{FK}/data/simple_line_example"
    fcs = shared_fcs(f"{d}/data_set_simple_line_100.fcs")
    v2 = load_flowjo(shared_data / d / "simple_poly_and_rect_v2_poly50.wsp").apply(fcs)
    assert (v2.count("poly1"), v2.count("rect1")) == (50, 0)
    # The 50 are the left half of the line, where the slanted top edge is above it.
    assert v2.masks["poly1"][:50].all()
    v1 = load_flowjo(shared_data / d / "simple_poly_and_rect.wsp").apply(fcs)
    assert (v1.count("poly1"), v1.count("rect1")) == (0, 0)


def test_ellipse_passes_through_flowjo_edge_points(shared_data):
    wsp = shared_data / FK / "data/simple_line_example/single_ellipse_51_events.wsp"
    s = load_flowjo(wsp)
    g = s.gates["ellipse1"]
    assert isinstance(g, EllipseGate)
    # Major-axis ends stored by FlowJo (display bins 0..256 over linear 0..262144).
    ends = np.array([[96.0, 90.0], [61.0, 161.0]]) / 256
    d = ends - g.mean
    md = np.einsum("ij,jk,ik->i", d, np.linalg.inv(g.covariance), d)
    np.testing.assert_allclose(md, 1.0, atol=1e-12)
    # FlowJo's minor-axis points are whole display bins, not on its own ellipse: the
    # minor axis comes from the foci (b^2 = a^2 - c^2); those points are near it.
    minor = np.array([[67.0, 113.0], [90.0, 139.0]]) / 256
    d = minor - g.mean
    md = np.einsum("ij,jk,ik->i", d, np.linalg.inv(g.covariance), d)
    assert ((md > 0.8) & (md < 1.0)).all()


def test_biex_rectangle_uses_flowjo_table(shared_data):
    s = load_flowjo(
        shared_data / FK / "data/simple_diamond_example/test_data_diamond_biex_rect.wsp"
    )
    (g,) = s.gates.values()
    assert isinstance(s.transforms[g.dims[0].transform], FlowJoBiex)
    assert s.scaling == "flowjo"


# ----------------------------------------------------------- 8-colour workspaces


@dataclass
class KeywordFCS:
    """Stand-in events for a workspace sample whose FCS file is not available:
    channels and keywords from the workspace, seeded lognormal values."""

    events: np.ndarray
    channels: list[str]
    text: dict[str, str]
    path: str = "synthetic.fcs"

    @property
    def n_events(self):
        return self.events.shape[0]

    def channel_index(self, name):
        return self.channels.index(name)

    def spillover(self):
        return None

    def scaled(self, *, gain=False):
        return self.events.astype(np.float64)


def _keyword_fcs(wsp_path, sample: str, n=20000, seed=1) -> KeywordFCS:
    root = parse_xml(wsp_path)
    for s in root.iter("Sample"):
        node = s.find("SampleNode")
        if node is not None and node.get("name") == sample:
            text = {k.get("name"): k.get("value") for k in s.iter("Keyword")}
            break
    npar = int(text["$PAR"])
    chans = [text[f"$P{j}N"] for j in range(1, npar + 1)]
    rng = np.random.default_rng(seed)
    ev = rng.lognormal(8, 2.5, size=(n, npar)) * rng.choice([-1, 1], p=[0.1, 0.9], size=(n, npar))
    ev[:, chans.index("Time")] = rng.uniform(0, 18000, n)  # ticks of $TIMESTEP = 0.01 s
    return KeywordFCS(ev, chans, text)


@pytest.mark.parametrize("wsp", EIGHT_WSP)
def test_eight_colour_workspaces_load_every_flowjo_population(wsp, shared_data, flowjo_counts):
    path = shared_data / FK / "data" / EIGHT / wsp
    samples = workspace_samples(path)
    assert samples
    for sample in samples:
        s = load_flowjo(path, sample)
        paths = population_paths(s)
        want = set(flowjo_counts.get((wsp, sample), {})) - {"root"}
        assert set(paths.values()) == want, sample
        if not want:
            continue
        comp = s.compensations["Acquisition-defined"]
        assert len(comp.detectors) == 8 and all(d.endswith("FLR-A") for d in comp.detectors)
        assert np.allclose(np.diag(comp.matrix), 1)
        for g in s.gates.values():
            for d in g.dims:
                assert d.compensation == ("Acquisition-defined" if "FLR" in d.channel else None)
                assert d.transform is not None
        # The whole tree evaluates on the sample's channels, children inside parents.
        res = s.apply(_keyword_fcs(path, sample))
        for gid, g in s.gates.items():
            if g.parent is not None:
                assert not (res.masks[gid] & ~res.masks[g.parent]).any(), gid


def test_eight_colour_details(shared_data):
    base = shared_data / FK / "data" / EIGHT
    sample = "101_DEN084Y5_15_E01_008_clean.fcs"
    s = load_flowjo(base / "8_color_ICS_with_ellipse.wsp", sample)
    assert isinstance(s.gates["ellipse1"], EllipseGate) and s.gates["ellipse1"].parent == "CD3+"
    assert isinstance(s.transforms["Comp-CD4 PE-Cy7 FLR-A"], Logicle)
    time_t = s.transforms["Time"]  # this sample: minRange 1.2746832452, maxRange 69
    assert isinstance(time_t, Linear) and (time_t.T, time_t.A) == (69.0, -1.2746832452)
    # The Time gate is in seconds ($TIMESTEP applied), as FlowJo shows it.
    assert s.gates["Time"].mins[0] == pytest.approx(time_t.apply(np.array([1.2799999714]))[0])

    b = load_flowjo(base / "8_color_ICS_boolean_gate_testing.wsp", sample)
    ops = {gid: (g.op, g.operands) for gid, g in b.gates.items() if isinstance(g, BooleanGate)}
    assert ops["CD107a+ or IFNg+"] == ("or", [("CD4+/CD107a+", False), ("CD4+/IFNg+", False)])
    assert ops["CD107a+ & IFNg+"][0] == "and"
    assert ops["CD8+/TNFa+-"] == ("not", [("CD8+/TNFa+", False)])
    assert b.gates["TNFa+-/CD107a+"].parent == "CD8+/TNFa+-"
    assert population_paths(b)["TNFa+-/CD107a+"] == (
        "/Time/Singlets/aAmine-/CD3+/CD8+/TNFa+-/CD107a+"
    )

    q = load_flowjo(base / "reused_quad_gate_with_child.wsp")
    assert isinstance(q.transforms["Comp-CD4 PE-Cy7 FLR-A"], FlowJoBiex)
    assert isinstance(q.gates["cd4+/Q2: CD107a+, IL2+/some_child_gate"], RectangleGate)

    dot = load_flowjo(base / "8_color_ICS_dot_gate_name.wsp", sample)
    assert "CD4+/." in dot.gates or "." in dot.gates


def test_eight_colour_time_gate_in_seconds(shared_data):
    """FlowJo's Time gate (1.28..180.48 s) against raw ticks of 10 ms."""
    path = shared_data / FK / "data" / EIGHT / "8_color_ICS_simple.wsp"
    sample = "101_DEN084Y5_15_E01_008_clean.fcs"
    s = load_flowjo(path, sample)
    fcs = _keyword_fcs(path, sample)
    t = EventSpace(fcs, s).linear(s.gates["Time"].dims[0])
    np.testing.assert_allclose(t, fcs.events[:, fcs.channels.index("Time")] * 0.01)


# ------------------------------------------------------------------------ errors


def test_errors(shared_data, tmp_path):
    path = shared_data / FK / "data" / EIGHT / "8_color_ICS_simple.wsp"
    with pytest.raises(GatingFileError, match="3 samples"):
        load_flowjo(path)
    with pytest.raises(GatingFileError, match="no sample 'nope'") as err:
        load_flowjo(path, "nope")
    assert "101_DEN084Y5_15_E01_008_clean.fcs" in err.value.hint
    text = path.read_text()
    bad = tmp_path / "bad_transform.wsp"
    bad.write_text(
        text.replace("<transforms:logicle ", "<transforms:miracle ").replace(
            "</transforms:logicle>", "</transforms:miracle>"
        )
    )
    with pytest.raises(GatingFileError, match="'miracle'"):
        load_flowjo(bad, "101_DEN084Y5_15_E03_009_clean.fcs")
    not_wsp = tmp_path / "x.wsp"
    not_wsp.write_text("<gating:Gating-ML xmlns:gating='x'/>")
    with pytest.raises(GatingFileError, match="not <Workspace>"):
        load_flowjo(not_wsp)


def test_unsafe_workspace_is_refused_quickly(tmp_path):
    evil = tmp_path / "evil.wsp"
    lol = "".join(
        f'<!ENTITY l{i} "{"".join(f"&l{i - 1};" for _ in range(10))}">' for i in range(1, 10)
    )
    evil.write_text(
        f'<?xml version="1.0"?><!DOCTYPE W [<!ENTITY l0 "lol">{lol}]><Workspace>&l9;</Workspace>'
    )
    t0 = time.perf_counter()
    with pytest.raises(GatingFileError, match="entities") as err:
        load_flowjo(evil)
    assert time.perf_counter() - t0 < 1.0 and err.value.file == str(evil)


def test_a_workspace_before_flowjo_10_is_refused_not_read_as_empty(shared_data, tmp_path):
    """FlowJo 9 and earlier hold their gates in another layout: read as FlowJo 10 they
    would give no population at all, so they are refused with the way out."""
    import re

    src = shared_data / FK / "data" / "simple_diamond_example" / "test_data_diamond_biex_rect.wsp"
    text = src.read_text()
    old = tmp_path / "flowjo9.wsp"
    old.write_text(
        re.sub(
            r'flowJoVersion="[^"]*"',
            'flowJoVersion="9.9.6"',
            text.replace('version="20.0"', 'version="2.0"', 1),
        )
    )
    with pytest.raises(GatingFileError) as err:
        load_flowjo(old)
    assert "only FlowJo 10 workspaces" in str(err.value) and "Gating-ML" in err.value.hint
    assert err.value.field == "Workspace.version"
    bare = tmp_path / "no_version.wsp"
    bare.write_text("<Workspace><SampleList/></Workspace>")
    with pytest.raises(GatingFileError, match="version"):
        load_flowjo(bare)


def test_a_sample_name_two_samples_share_is_refused(shared_data, tmp_path):
    src = shared_data / FK / "data" / "simple_diamond_example" / "test_data_diamond_biex_rect.wsp"
    text = src.read_text()
    start, end = text.index("<Sample>"), text.index("</Sample>") + len("</Sample>")
    twice = tmp_path / "twice.wsp"
    twice.write_text(
        text[:end] + text[start:end].replace('sampleID="1"', 'sampleID="2"') + text[end:]
    )
    with pytest.raises(GatingFileError) as err:
        load_flowjo(twice, "test_data_diamond_01.fcs")
    assert "2 samples of the workspace are called" in str(err.value)
    assert "(id 1)" in err.value.hint and "(id 2)" in err.value.hint
    assert load_flowjo(twice, "2").gates  # by its id, one of them


def test_a_workspace_of_100000_flat_populations_is_refused_at_once(shared_data, tmp_path):
    """The population ids (each one's shortest unique path tail) were found by comparing
    every population with every other: 100,000 flat populations took hours. Now a workspace
    beyond MAX_POPULATIONS is refused, and one at the limit loads in linear time."""
    from immuno.gatingml import MAX_POPULATIONS

    src = shared_data / FK / "data" / "simple_diamond_example" / "test_data_diamond_biex_rect.wsp"
    text = src.read_text()
    start = text.index("<Population ")
    end = text.index("</Population>", start) + len("</Population>")
    pop = text[start:end]
    flat = tmp_path / "flat.wsp"
    flat.write_text(
        text[:start] + "".join(f'<Population name="p{k}"/>' for k in range(100_000)) + text[end:]
    )
    t0 = time.perf_counter()
    with pytest.raises(GatingFileError) as err:
        load_flowjo(flat, "test_data_diamond_01.fcs")
    assert time.perf_counter() - t0 < 5.0
    assert "100,000 populations" in err.value.message and err.value.file == str(flat)
    # At the limit: as many copies of a real gated population.
    one = pop.replace('name="', 'name="x', 1)
    many = "".join(one.replace('name="x', f'name="q{k}', 1) for k in range(MAX_POPULATIONS))
    full = tmp_path / "full.wsp"
    full.write_text(text[:start] + many + text[end:])
    t0 = time.perf_counter()
    strategy = load_flowjo(full, "test_data_diamond_01.fcs")
    assert len(strategy.gates) == MAX_POPULATIONS
    assert time.perf_counter() - t0 < 5.0
