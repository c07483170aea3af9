"""Tests of ``immuno.gatingml``: the ISAC Gating-ML 2.0 compliance suite event by
event, safe parsing, export that FlowKit reads and gates identically, and
``apply_gates_to_file``."""

from __future__ import annotations

import gzip
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immuno.errors import GatingFileError
from immuno.gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    EventSpace,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
)
from immuno.gating import apply_gates_to_file
from immuno.gatingml import (
    GATING_NS,
    load_gatingml,
    population_ids,
    write_gatingml,
    xml_ids,
)
from immuno.transform import Logicle

GML = "gatingml2_compliance/Gml2"

# Every gate with an expected-results file, per set (ExpectedResults/set_N/Results_<id>.txt).
# Sets 1-2 are the official ISAC tests; 3-5 the flowUtils sanity sets on 9399_1_3_NKR.fcs.
GATES = {
    1: """And1 And2 And3 And4 Ellipse1 Ellipsoid3D FL2N-FL4N FL2N-FL4P FL2P-FL4N FL2P-FL4P
        FSCD-FL1P FSCD-SSCN-FL1N FSCN-SSCN FSCN-SSCP-FL1P FSCP-SSCN-FL1N Not1 Or1 Or2 ParAnd2
        ParAnd3 Polygon1 Polygon2 Polygon3NS Polygon4 Range1 Range2 RatRange1 RatRange1Bound
        RatRange1a RatRange1aBound RatRange2 Rectangle1 Rectangle2 Rectangle3 Rectangle4
        Rectangle5 ScalePar1 ScaleRange1 ScaleRange1Bound ScaleRange1c ScaleRange2
        ScaleRange2Bound ScaleRange2c ScaleRange2cBound ScaleRange3 ScaleRange3Bound ScaleRange3c
        ScaleRange4 ScaleRange4Bound ScaleRange4c ScaleRange5 ScaleRange5c ScaleRange6
        ScaleRange6Bound ScaleRange6c ScaleRange7c ScaleRange8c ScaleRect1 ScaleRect1Bound
        ScaleRect1Bound2""",
    2: """Cube3Du Cube3DuP Cube3DuPAsBool Cube3Dul Ellipseca Ellipsech Ellipsecl Ellipseclb
        Ellipseua Ellipseuh Ellipseul Ellipseulb Ellipseulb2 HyperCube1 NotRectcl Poly1c Poly1ca
        Poly1cab Poly1ch Poly1chb Poly1cl Poly1clb Poly1u Poly1ua Poly1uab Poly1uab2 Poly1uh
        Poly1uhb Poly1ul Poly1ulb RectMix1 Rectch RectchAndNotRectcl RectchAndNotRectcl2 Rectcl
        RectclAgain RectclAndRectch RectclOrRectch Rectuh Rectul""",
    3: """Q1 Q1A Q1B Q1C Q1D Q1E Q2 Q2A Q2B Q2C Q2D Q2E Q3 Q3A Q3B Q3C Q3D Q3E Q4 Q4A Q4B Q4C
        Q4D Q4E Q5 Q6 Q7 my3DRectangleGate myBooleanAnd myBooleanNot myBooleanOr
        myBooleanOrWithParent myEllipseGate myEllipsoidGate myPolygonGate
        myPolygonGate2ArcSinHLin myPolygonGate3LogLin myPolygonGateWithCustomSpillover
        myPolygonGateWithFCSSpillover myPolygonGateWithSpilloverSameAsFCS
        myPolygonGateWithoutSpillover myPolygonWCustNonSqSpecArcSinH
        myPolygonWCustNonSqSpecInvAlrd myPolygonWCustSpillAndArcSinH myPolygonWFCSSpillAndArcSinH
        myPolygonWithCustInvAlrSpil myPolygonWithCustNonSqSpecMat myRangeGate1 myRangeGate2
        myRect4LogicleArcSinHFCSComp myRect4bHyperlogArcSinHFCSComp myRectangleGate
        myRectangleGate2Logicle myRectangleGate2bHyperlog myRectangleGate3LogicleArcSinH
        myRectangleGate3bHyperlogArcSinH""",
    4: """myQuadrant2_NN myQuadrant2_NP myQuadrant2_PN myQuadrant2_PP myQuadrant3_NN
        myQuadrant3_NP myQuadrant3_PN myQuadrant3_PP myQuadrant4_NN myQuadrant4_NP
        myQuadrant4_PN myQuadrant4_PP myQuadrant_NN myQuadrant_NP myQuadrant_PN myQuadrant_PP
        myRange1 myRange2 myRange3 myRange4 myRange5""",
    5: """Not_myPolygon1 Not_myPolygon2 myAnd1 myAnd2 myAnd3 myAnd4 myNotNot myOr1 myOr2 myOr3
        myOr4 myPolygon1 myPolygon2""",
}
GATES = {k: v.split() for k, v in GATES.items()}
FILES = {
    1: ("data1.fcs", "gates1.xml"),
    2: ("data2.fcs", "gates2.xml"),
    3: ("9399_1_3_NKR.fcs", "gates3.xml"),
    4: ("9399_1_3_NKR.fcs", "gates4.xml"),
    5: ("9399_1_3_NKR.fcs", "gates5.xml"),
}
# Set 3 result files abbreviate some gate ids.
ABBREVIATED = {
    "myPolygonWCustNonSqSpecArcSinH": "myPolygonGateWithCustomNonSquareSpectrumMatrixOnArcSinH",
    "myPolygonWCustNonSqSpecInvAlrd": (
        "myPolygonGateWithCustomNonSquareSpectrumMatrixInvertedAlready"
    ),
    "myPolygonWCustSpillAndArcSinH": "myPolygonGateWithCustomSpilloverAndArcSinH",
    "myPolygonWFCSSpillAndArcSinH": "myPolygonGateWithFCSSpilloverAndArcSinH",
    "myPolygonWithCustInvAlrSpil": "myPolygonGateWithCustomInvertedAlreadySpillover",
    "myPolygonWithCustNonSqSpecMat": "myPolygonGateWithCustomNonSquareSpectrumMatrix",
    "myRect4LogicleArcSinHFCSComp": "myRectangleGate4LogicleArcSinHFCSCompensated",
    "myRect4bHyperlogArcSinHFCSComp": "myRectangleGate4bHyperlogArcSinHFCSCompensated",
}


@pytest.fixture(scope="module")
def compliance(shared_data, shared_fcs):
    """Factory: ``compliance(n) -> (strategy, GatingResult)``, computed once per set."""
    cache = {}

    def get(n):
        if n not in cache:
            fcs_name, xml = FILES[n]
            s = load_gatingml(shared_data / GML / "Gating-MLFiles" / xml)
            cache[n] = (s, s.apply(shared_fcs(f"{GML}/FCSFiles/{fcs_name}")))
        return cache[n]

    return get


def _expected(shared_data, n, gate):
    path = shared_data / GML / "ExpectedResults" / f"set_{n}" / f"Results_{gate}.txt"
    tokens = np.array(path.read_bytes().split())
    assert np.isin(tokens, [b"0", b"1"]).all()
    return tokens == b"1"


def _mask(result, gate):
    gid = ABBREVIATED.get(gate, gate)
    if gid.startswith("Not_") and gid not in result.masks:  # set 5: complement of a gate
        return ~result.masks[gid[4:]]
    return result.masks[gid]


@pytest.mark.parametrize("n,gate", [(n, g) for n in GATES for g in GATES[n]])
def test_compliance_gate_event_by_event(n, gate, compliance, shared_data):
    _, result = compliance(n)
    expected = _expected(shared_data, n, gate)
    got = _mask(result, gate)
    assert got.shape == expected.shape
    wrong = np.flatnonzero(got != expected)
    assert wrong.size == 0, f"{wrong.size} events differ, first at {wrong[:5]}"


def test_compliance_lists_are_complete(shared_data):
    for n, gates in GATES.items():
        listed = sorted(
            p.stem[len("Results_") :]
            for p in (shared_data / GML / "ExpectedResults" / f"set_{n}").glob("Results_*.txt")
        )
        assert listed == sorted(gates)
    assert [len(GATES[n]) for n in (1, 2)] == [60, 40]


@pytest.mark.parametrize("n", sorted(GATES))
def test_round_trip_through_our_writer(n, compliance, shared_data, shared_fcs, tmp_path):
    """load -> write -> load gives the same populations, names and memberships."""
    s, result = compliance(n)
    out = tmp_path / f"set{n}.xml"
    write_gatingml(s, out)
    s2 = load_gatingml(out)
    assert list(s2.gates) == list(s.gates)
    r2 = s2.apply(shared_fcs(f"{GML}/FCSFiles/{FILES[n][0]}"))
    for pop, mask in result.masks.items():
        np.testing.assert_array_equal(r2.masks[pop], mask, err_msg=pop)


# ----------------------------------------------------------------- unsafe / invalid

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating">
  <gating:RectangleGate gating:id="&lol9;"/>
</gating:Gating-ML>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE gating [ <!ENTITY secret SYSTEM "file:///etc/passwd"> ]>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating">
  <gating:RectangleGate gating:id="&secret;"/>
</gating:Gating-ML>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion", "xxe"])
def test_unsafe_xml_is_refused_quickly(text, tmp_path):
    path = tmp_path / "evil.xml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(GatingFileError, match="entities") as err:
        load_gatingml(path)
    assert time.perf_counter() - t0 < 1.0
    assert err.value.file == str(path) and str(path) in str(err.value)


def _gml(body: str) -> str:
    return (
        f'<gating:Gating-ML xmlns:gating="{GATING_NS}" '
        'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes" '
        'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations">'
        f"{body}</gating:Gating-ML>"
    )


RANGE = (
    '<gating:RectangleGate gating:id="{id}" {extra}><gating:dimension gating:min="1" '
    'gating:compensation-ref="{comp}" {tr}><data-type:fcs-dimension data-type:name="FSC-H"/>'
    "</gating:dimension></gating:RectangleGate>"
)


def _matrix(entries: str) -> str:
    a, b, c, d = entries.split()
    entry = '<gating:entry gating:value="{}"/>'
    row = "<gating:row>" + entry + entry + "</gating:row>"
    return row.format(a, b) + row.format(c, d)


_DIM = (
    '<gating:dimension gating:compensation-ref="uncompensated">'
    '<data-type:fcs-dimension data-type:name="{}"/></gating:dimension>'
)
ELLIPSE = (
    '<gating:EllipsoidGate gating:id="E">'
    + _DIM.format("FSC-H")
    + _DIM.format("SSC-H")
    + '<gating:mean><gating:coordinate data-type:value="1"/><gating:coordinate '
    'data-type:value="1"/></gating:mean><gating:covarianceMatrix>{cov}</gating:covarianceMatrix>'
    '<gating:distanceSquare data-type:value="{d2}"/></gating:EllipsoidGate>'
)
QUADRANTS = (
    '<gating:QuadrantGate gating:id="Q"><gating:divider gating:id="D" '
    'gating:compensation-ref="uncompensated"><data-type:fcs-dimension data-type:name="FSC-H"/>'
    "<gating:value>{value}</gating:value></gating:divider>"
    '<gating:Quadrant gating:id="Q1"><gating:position gating:divider_ref="D" '
    'gating:location="1"/></gating:Quadrant></gating:QuadrantGate>'
)


def _range(id="R", extra="", comp="uncompensated", tr=""):
    return RANGE.format(id=id, extra=extra, comp=comp, tr=tr)


@pytest.mark.parametrize(
    "body,match",
    [
        ("<broken", "not well-formed"),
        ("<Workspace/>", "not <Gating-ML>"),
        (_gml(_range() + _range()), "used twice"),
        (_gml(_range(extra='gating:parent_id="ghost"')), "unknown gate 'ghost'"),
        (
            _gml(_range("A", 'gating:parent_id="B"') + _range("B", 'gating:parent_id="A"')),
            "depend on each other",
        ),
        (_gml(_range(tr='gating:transformation-ref="nope"')), "unknown transformation"),
        (_gml(_range(comp="MyMatrix")), "unknown matrix"),
        (_gml(_range().replace('gating:min="1"', 'gating:min="one"')), "not a number"),
        (
            _gml(
                '<transforms:transformation transforms:id="t"><transforms:logicle '
                'transforms:T="100" transforms:W="9" transforms:M="4.5"/>'
                "</transforms:transformation>"
            ),
            "invalid logicle",
        ),
        (_gml(ELLIPSE.format(cov=_matrix("-1 0 0 -1"), d2="1")), "negative definite"),
        (_gml(ELLIPSE.format(cov=_matrix("1 0 0 1"), d2="-1")), "not a positive number"),
        (_gml(ELLIPSE.format(cov=_matrix("1 1 1 1"), d2="1")), "singular"),
        (_gml(QUADRANTS.format(value="NaN")), "NaN value"),
        ('<?xml version="1.0" encoding="x-bogus"?><a/>', "not readable XML"),
        (_gml("<a>" * 1500 + "</a>" * 1500), "deeper than 400"),
    ],
    ids=["xml", "root", "dup", "parent", "cycle", "transform", "matrix", "number", "params",
         "negative_definite", "negative_distance", "singular", "nan_divider", "encoding",
         "depth"],
)  # fmt: skip
def test_invalid_files_name_the_problem(body, match, tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(body)
    with pytest.raises(GatingFileError, match=match) as err:
        load_gatingml(path)
    assert err.value.file == str(path)


# ------------------------------------------------------------------------- export

NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")


def test_xml_ids_are_valid_unique_and_deterministic():
    names = ["CD3+", "CD3-", "CD3_pos", "CD4+ CD8-", "1st gate", "a/b", "", "CD3+", "é"]
    ids = xml_ids(names)
    assert len(set(ids.values())) == len(set(names))
    assert all(NCNAME.match(v) for v in ids.values())
    assert ids["CD3+"] == "CD3_pos" and ids["CD3_pos"] == "CD3_pos_2"
    assert ids == xml_ids(names)


def data_driven_strategy(fcs) -> GatingStrategy:
    """What a realised data-driven strategy looks like: FCS compensation, logicle,
    a scatter polygon, ranges, rectangles, an ellipse, a logicle polygon and
    booleans, fitted to the file's own quantiles, with names that are not XML ids."""
    s = GatingStrategy()
    s.scaling = "gain"
    f1, f2 = fcs.spillover()[0][:2]
    for ch in (f1, f2):
        s.transforms[f"logicle {ch}"] = Logicle(262144, 0.5, 4.5, 0, id=f"logicle {ch}")
    fsc = next(c for c in fcs.channels if c.startswith("FSC"))
    ssc = next(c for c in fcs.channels if c.startswith("SSC"))
    ev = fcs.scaled(gain=True)
    qx = np.percentile(ev[:, fcs.channels.index(fsc)], [5, 50, 95])
    qy = np.percentile(ev[:, fcs.channels.index(ssc)], [5, 50, 95])
    cells = [[qx[0], qy[1]], [qx[1], qy[0]], [qx[2], qy[0]], [qx[2], qy[2]], [qx[1], qy[2]]]
    d1, d2 = Dimension(f1, "FCS", f"logicle {f1}"), Dimension(f2, "FCS", f"logicle {f2}")
    s.add_gate(
        PolygonGate("cells", None, (Dimension(fsc), Dimension(ssc)), vertices=np.array(cells))
    )
    v = EventSpace(fcs, s).values((d1, d2))
    # Thresholds rounded as a fit or a template would give them: a quantile of
    # integer-valued data is itself a data value, and an event exactly on a
    # transformed threshold is decided by the last ulp of each program's logicle.
    med = np.round(np.median(v, axis=0), 5)
    q20, q80 = np.round(np.percentile(v, [20, 80], axis=0), 5)
    s.add_gate(RectangleGate("CD3+", "cells", (d1,), (med[0],), (None,)))
    s.add_gate(RectangleGate("CD3+ CD4+", "CD3+", (d1, d2), tuple(q20), tuple(q80)))
    s.add_gate(
        EllipseGate(
            "blob", "cells", (d1, d2), mean=v.mean(0), covariance=np.cov(v.T), distance_square=2.0
        )
    )
    poly = [[med[0], med[1]], [q80[0], med[1]], [q80[0], q80[1]], [med[0] - 0.05, q80[1] + 0.02]]
    s.add_gate(PolygonGate("CD3+/logicle poly", "cells", (d1, d2), vertices=np.array(poly)))
    s.add_gate(
        BooleanGate("CD3+ or blob", None, (), op="or", operands=[("CD3+", False), ("blob", False)])
    )
    s.add_gate(BooleanGate("not blob", "cells", (), op="not", operands=[("blob", False)]))
    s.add_gate(
        BooleanGate(
            "CD3+ & !blob", "cells", (), op="and", operands=[("CD3+", False), ("blob", True)]
        )
    )
    return s


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "rel",
    [
        f"{GML}/FCSFiles/data2.fcs",
        "cytoexplorerdata_activation/Activation/Activation_1.fcs",
        "flowkit_testdata/data/100715.fcs",
        "flowkit_testdata/data/test_comp_example.fcs",
    ],
    ids=lambda r: r.rsplit("/", 1)[-1],
)
def test_export_is_read_and_gated_identically_by_flowkit(rel, shared_data, shared_fcs, tmp_path):
    fk = pytest.importorskip("flowkit")
    fcs = shared_fcs(rel)
    s = data_driven_strategy(fcs)
    ours = s.apply(fcs)
    path = tmp_path / "strategy.xml"
    write_gatingml(s, path)
    ids = population_ids(path)
    assert set(ids) == set(s.gates) and all(NCNAME.match(i) for i in ids.values())
    gs = fk.parse_gating_xml(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = fk.Sample(str(shared_data / rel), ignore_offset_error=True)
    session = fk.Session(gating_strategy=gs, fcs_samples=[sample])
    session.analyze_samples(sample_id=sample.id, use_mp=False)
    res = session.get_gating_results(sample.id)
    for name, gid in ids.items():
        assert res.get_gate_count(gid) == ours.count(name), name
        np.testing.assert_array_equal(
            session.get_gate_membership(sample.id, gid), ours.masks[name], err_msg=name
        )
    # The populations are non-trivial.
    assert all(0 < ours.count(p) < fcs.n_events for p in s.gates)


def test_write_is_deterministic_and_refuses_what_gatingml_cannot_say(tmp_path, shared_fcs):
    fcs = shared_fcs(f"{GML}/FCSFiles/data2.fcs")
    s = data_driven_strategy(fcs)
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    write_gatingml(s, a)
    write_gatingml(s, b)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))
    # An empty gate (a failed fit realises as min = +inf) is written as xs:double INF.
    s.add_gate(RectangleGate("empty", None, (Dimension("FSC-A"),), (np.inf,), (None,)))
    write_gatingml(s, a)
    assert 'min="INF"' in a.read_text()
    assert load_gatingml(a).apply(fcs).count("empty") == 0
    s.add_gate(RectangleGate("out", None, (Dimension("FSC-A"),), (1.0,), (None,), complement=True))
    with pytest.raises(GatingFileError, match="complement"):
        write_gatingml(s, tmp_path / "c.xml")
    assert not (tmp_path / "c.xml").exists()


# ------------------------------------------------------------ apply_gates_to_file


def _read_outputs(out):
    counts = pd.read_csv(out / "counts.tsv", sep="\t")
    with gzip.open(out / "membership.csv.gz", "rt") as f:
        members = pd.read_csv(f)
    return counts, members


def test_apply_gates_to_file_xml(shared_data, shared_fcs, compliance, tmp_path):
    out = tmp_path / "res"
    apply_gates_to_file(
        shared_data / GML / "Gating-MLFiles/gates2.xml",
        shared_data / GML / "FCSFiles/data2.fcs",
        sample_id="S-1",
        out=out,
    )
    counts, members = _read_outputs(out)
    assert list(counts.columns) == [
        "sample_id",
        "population",
        "parent",
        "count",
        "parent_count",
        "percent_of_parent",
        "qc_flag",
    ]
    assert counts["qc_flag"].isna().all()  # a fixed gating file flags nothing
    _, result = compliance(2)
    assert counts["sample_id"].eq("S-1").all()
    assert list(counts["population"]) == list(result.masks)
    c = counts.set_index("population")
    assert c.loc["Cube3DuP", "parent"] == "Ellipseul" and c.loc["Poly1u", "parent"] == "root"
    assert c.loc["Cube3DuP", "count"] == 3699 and c.loc["Cube3DuP", "parent_count"] == 5104
    assert c.loc["Cube3DuP", "percent_of_parent"] == pytest.approx(100 * 3699 / 5104)
    assert list(members.columns) == list(result.masks) and len(members) == 10000
    for pop in ("Poly1u", "Cube3DuP", "RectchAndNotRectcl"):
        np.testing.assert_array_equal(members[pop].to_numpy(), result.masks[pop].astype(int))
    assert sorted(p.name for p in out.iterdir()) == ["counts.tsv", "membership.csv.gz"]


def test_apply_gates_to_file_wsp_and_cli(shared_data, tmp_path, capsys):
    from immuno.cli import main

    d = shared_data / "flowkit_testdata/data/simple_line_example"
    out = tmp_path / "fj"
    rc = main(
        [
            "apply-gates",
            "--gates",
            str(d / "single_ellipse_51_events.wsp"),
            "--fcs",
            str(d / "data_set_simple_line_100.fcs"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    counts, members = _read_outputs(out)
    assert counts.loc[0, "sample_id"] == "data_set_simple_line_100"
    assert capsys.readouterr().out.startswith(
        "data_set_simple_line_100: 1 populations gated with single_ellipse_51_events.wsp, "
        "0 with a qc_flag -> "
    )
    assert counts.loc[0, "population"] == "ellipse1" and counts.loc[0, "count"] == 51
    assert members["ellipse1"].sum() == 51 and len(members) == 100


def test_apply_gates_cli_threads_give_identical_outputs(shared_data, tmp_path, monkeypatch):
    """``--threads`` changes how many blocks are gated at once, never a byte of the
    outputs (the fast path forced on, in 997-event blocks, on an ISAC compliance file)."""
    from immuno import cli
    from immuno import gate as gate_mod

    monkeypatch.setattr(gate_mod, "FAST_MIN_EVENTS", 0)
    monkeypatch.setattr(gate_mod, "FAST_CHUNK", 997)
    args = ["apply-gates", "--gates", str(shared_data / GML / "Gating-MLFiles/gates1.xml")]
    args += ["--fcs", str(shared_data / GML / "FCSFiles/data1.fcs")]
    outs = []
    for threads in ("1", "3", "0"):
        out = tmp_path / f"t{threads}"
        assert cli.main([*args, "--threads", threads, "--out", str(out)]) == 0
        outs.append(out)
    for name in ("counts.tsv", "membership.csv.gz"):
        first = (outs[0] / name).read_bytes()
        assert all((o / name).read_bytes() == first for o in outs[1:]), name
    assert cli._usable_cpus() >= 1


def test_apply_gates_to_file_errors(shared_data, tmp_path, monkeypatch, capsys):
    fcs = shared_data / GML / "FCSFiles/data1.fcs"
    with pytest.raises(GatingFileError, match="unknown gating file type"):
        apply_gates_to_file(tmp_path / "g.txt", fcs, out=tmp_path / "o")
    with pytest.raises(GatingFileError, match="does not exist"):
        apply_gates_to_file(tmp_path / "g.xml", fcs, out=tmp_path / "o")
    template = tmp_path / "t.yaml"
    template.write_text("populations: []\n")  # no panel: the template's own error
    with pytest.raises(GatingFileError, match="needs 'panel' and 'populations'"):
        apply_gates_to_file(template, fcs, out=tmp_path / "o")
    # The CLI prints one line and exits 1.
    from immuno.cli import main

    assert main(["apply-gates", "--gates", str(template), "--fcs", str(fcs), "--out", "x"]) == 1
    assert "GatingFileError" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def simulated_tube(tmp_path_factory):
    """One simulated T-cell tube (the demo cohort at 1000 events per file)."""
    sim = pytest.importorskip("immuno.simulate")
    out = tmp_path_factory.mktemp("sim")
    sim.simulate_cohort(out, seed=1, events=1000)
    return sorted((out / "fcs").glob("*_T.fcs"))[0]


def test_template_dispatch_and_realised_strategy_round_trip(simulated_tube, tmp_path, caplog):
    """A ``.yaml`` template goes through autogate; the realised strategy (logicle,
    FCS compensation, rectangles, polygon, ellipses) survives write -> load exactly."""
    autogate = pytest.importorskip("immuno.autogate")
    from immuno.read import read_fcs

    template = Path(__file__).resolve().parents[1] / "gates" / "t_cell.yaml"
    if not template.is_file():
        pytest.skip("no T-cell template in this checkout")
    apply_gates_to_file(template, simulated_tube, out=tmp_path / "o")
    counts, members = _read_outputs(tmp_path / "o")
    assert len(members) == 1000 and list(members.columns) == list(counts["population"])
    fcs = read_fcs(simulated_tube)
    s = autogate.strategy_for_file(template, fcs)
    ours = s.apply(fcs)
    assert list(counts["count"]) == [ours.count(p) for p in s.gates]
    # the template's review reasons, as gating the file alone gives them
    fitted = autogate.gate_template(template, fcs)
    flags = counts.set_index("population")["qc_flag"].fillna("")
    assert flags.to_dict() == {p: fitted.flag(p) for p in s.gates}
    with caplog.at_level("WARNING", logger="immuno.gatingml"):
        write_gatingml(s, tmp_path / "t.xml")
    s2 = load_gatingml(tmp_path / "t.xml")
    # Templates read Time in seconds, as FlowKit does; the file says so and the loader
    # restores it, so no Time warning is needed.
    assert s.scaling == "flowjo" and s2.scaling == "flowjo"
    assert list(s2.gates) == list(s.gates)
    r2 = s2.apply(fcs)
    for pop in s.gates:
        np.testing.assert_array_equal(r2.masks[pop], ours.masks[pop], err_msg=pop)
    assert "Time channel" not in caplog.text


def test_a_fifo_as_a_gating_file_is_refused_without_waiting(tmp_path):
    import os

    fifo = tmp_path / "gates.xml"
    os.mkfifo(fifo)
    with pytest.raises(GatingFileError, match="not a regular file"):
        load_gatingml(fifo)


def test_a_gatingml_file_of_too_many_populations_is_refused(tmp_path):
    from immuno.gatingml import MAX_POPULATIONS

    gate = (
        '<gating:RectangleGate gating:id="g{k}"><gating:dimension gating:min="{k}">'
        '<data-type:fcs-dimension data-type:name="FSC-A"/></gating:dimension>'
        "</gating:RectangleGate>"
    )
    path = tmp_path / "many.xml"
    path.write_text(
        '<?xml version="1.0"?><gating:Gating-ML '
        'xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
        'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">'
        + "".join(gate.format(k=k) for k in range(10 * MAX_POPULATIONS))
        + "</gating:Gating-ML>"
    )
    t0 = time.perf_counter()
    with pytest.raises(GatingFileError) as err:
        load_gatingml(path)
    assert time.perf_counter() - t0 < 5.0
    assert f"{10 * MAX_POPULATIONS:,} populations" in err.value.message
    assert err.value.file == str(path)


@pytest.mark.parametrize("suffix", [".xml", ".wsp", ".yaml"])
def test_a_gating_file_name_too_long_is_the_projects_error(tmp_path, shared_data, suffix):
    from immuno.gating import apply_gates_to_file

    gates = tmp_path / ("x" * 300 + suffix)
    fcs = shared_data / GML / "FCSFiles" / "data1.fcs"
    with pytest.raises(GatingFileError) as err:
        apply_gates_to_file(gates, fcs, out=tmp_path / "out")
    assert "File name too long" in err.value.message and err.value.file == str(gates)
