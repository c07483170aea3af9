"""Exports: FlowJo workspace (re-gated by FlowKit and by our reader), AnnData, gated FCS.

The realised gates come from :func:`immuno.autogate.gate_one` on a few samples of the
simulated demo cohort, written with :func:`immuno.gatingml.write_gatingml` exactly as the
workflow writes ``results/gates/<sample_id>.xml``; their count tables are what the workflow
puts in ``counts.tsv``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immuno.errors import ConfigError, GatingError, GatingFileError

PATIENTS = ["P01", "P02"]
VISITS = [0.0, 4.5, 7.5]


def _gate_demo(demo_cohort, templates, gates_dir):
    """Gate PATIENTS x VISITS of the demo cohort like the workflow: ``(samples, counts)``."""
    from immuno.autogate import gate_one
    from immuno.cohort import load_sample_sheet
    from immuno.export import gated_samples
    from immuno.gatingml import write_gatingml
    from immuno.read import read_fcs

    sheet = load_sample_sheet(demo_cohort / "samples.tsv", ["T", "B"])
    sheet = sheet[sheet.patient_id.isin(PATIENTS) & sheet.visit_month.isin(VISITS)]
    tables = []
    for row in sheet.itertuples():
        res = gate_one(
            read_fcs(row.fcs_path),
            templates[row.panel],
            sample_id=row.sample_id,
            patient_id=row.patient_id,
        )
        write_gatingml(res.strategy, gates_dir / f"{row.sample_id}.xml")
        tables.append(res.table.assign(sample_id=row.sample_id))
    counts = pd.concat(tables, ignore_index=True)[["sample_id", "population", "count"]]
    return gated_samples(sheet, gates_dir), counts


@pytest.fixture(scope="module")
def gated(demo_cohort, templates_dir, tmp_path_factory):
    """A few T and B samples gated with the shipped templates: ``(samples, counts)``.

    ``samples`` has ``gated_samples``' columns (``gates`` = the Gating-ML file);
    ``counts`` is ``sample_id, population, count`` of the realised gating.
    """
    from immuno.autogate import load_template

    templates = {p: load_template(templates_dir / f"{p.lower()}_cell.yaml") for p in ("T", "B")}
    return _gate_demo(demo_cohort, templates, tmp_path_factory.mktemp("gates"))


def _ellipse_families(samples) -> dict[str, dict[str, str]]:
    """Per sample: population -> the ellipse population it is (or lies below)."""
    from immuno.gate import EllipseGate
    from immuno.gatingml import load_gatingml

    out = {}
    for row in samples.itertuples():
        st = load_gatingml(row.gates)
        fam = {}
        for gid in st.gates:
            for anc in st.path(gid):
                if isinstance(st.gates[anc], EllipseGate):
                    fam[gid] = anc
                    break
        out[row.sample_id] = fam
    return out


def _flowkit_counts(wsp: Path, fcs_paths) -> pd.DataFrame:
    import flowkit as fk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = fk.Workspace(str(wsp), fcs_samples=[str(p) for p in fcs_paths])
        ws.analyze_samples(use_mp=False)
        report = ws.get_analysis_report()
    report["sample_id"] = report["sample_id"].str.removesuffix(".fcs")
    return report, ws


def test_flowkit_regates_our_workspace_to_the_pipeline_counts(gated, tmp_path):
    """FlowKit 1.3.2 opens the .wsp and, with its spillover matrices, gates every
    population of every sample to exactly the pipeline's count (the shipped templates
    realise only rectangles, ranges and polygons; the lymphocyte mixture is a 128-gon)."""
    from immuno.export import export_flowjo
    from immuno.gate import EllipseGate, PolygonGate
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    samples, counts = gated
    wsp = export_flowjo(samples, tmp_path / "cohort.wsp")
    report, ws = _flowkit_counts(wsp, samples.fcs_path)
    m = report.merge(
        counts, left_on=["sample_id", "gate_name"], right_on=["sample_id", "population"]
    )
    assert len(m) == len(counts)  # every population of every sample, once
    diff = m[m.count_x != m.count_y]
    assert diff.empty, diff[["sample_id", "population", "count_x", "count_y"]]
    assert (m["count_y"] > 0).sum() >= 8 * len(samples)  # not a trivial agreement on zeros
    for row in samples.itertuples():
        st = load_gatingml(row.gates)
        assert isinstance(st.gates["lymphocytes"], PolygonGate)
        assert not any(isinstance(g, EllipseGate) for g in st.gates.values())
    # The per-sample spillover matrix is in the workspace (FlowKit's exporter omits it).
    for row in samples.head(3).itertuples():
        fcs = read_fcs(row.fcs_path)
        dets, spill = fcs.spillover()
        comp = ws.get_comp_matrix(Path(row.fcs_path).name)
        assert list(comp.detectors) == dets
        np.testing.assert_array_equal(comp.matrix, spill)


def test_flowkit_on_an_ellipse_gate_misses_only_rim_events(demo_cohort, templates_dir, tmp_path):
    """With ``shape: ellipse`` the realised lymphocyte gate is an exact ellipse, which
    FlowKit replaces by its inscribed 128-gon: it can only miss events on the rim, at
    most 0.1% of the ellipse's events (or one event); every other population is exact."""
    import yaml

    from immuno.autogate import load_template
    from immuno.export import export_flowjo

    templates = {}
    for p in ("T", "B"):
        doc = yaml.safe_load((templates_dir / f"{p.lower()}_cell.yaml").read_text())
        for pop in doc["populations"]:
            if pop["name"] == "lymphocytes":
                pop["params"]["shape"] = "ellipse"
        path = tmp_path / f"{p}.yaml"
        path.write_text(yaml.safe_dump(doc))
        templates[p] = load_template(path)
    gates_dir = tmp_path / "gates"
    gates_dir.mkdir()
    samples, counts = _gate_demo(demo_cohort, templates, gates_dir)
    wsp = export_flowjo(samples, tmp_path / "cohort.wsp")
    report, _ = _flowkit_counts(wsp, samples.fcs_path)
    m = report.merge(
        counts, left_on=["sample_id", "gate_name"], right_on=["sample_id", "population"]
    )
    assert len(m) == len(counts)
    ours = counts.set_index(["sample_id", "population"])["count"]
    families = _ellipse_families(samples)
    exact = rim = 0
    for r in m.itertuples():
        ellipse = families[r.sample_id].get(r.population)
        if ellipse is None:
            assert r.count_x == r.count_y, (r.sample_id, r.population)
            exact += 1
        else:
            slack = max(1, int(0.001 * ours[(r.sample_id, ellipse)]))
            assert 0 <= r.count_y - r.count_x <= slack, (r.sample_id, r.population)
            rim += 1
    assert exact >= 4 * len(samples) and rim >= 3 * len(samples)


def test_our_flowjo_reader_reads_the_workspace_back_exactly(gated, tmp_path):
    """FlowJo's exact ellipse (foci + edge points) and every other gate: the same counts."""
    from immuno.export import export_flowjo
    from immuno.flowjo import load_flowjo, workspace_samples
    from immuno.read import read_fcs

    samples, counts = gated
    wsp = export_flowjo(samples, tmp_path / "cohort.wsp")
    assert workspace_samples(wsp) == [Path(p).name for p in samples.fcs_path]
    ours = counts.set_index(["sample_id", "population"])["count"]
    for row in samples.itertuples():
        st = load_flowjo(wsp, sample=Path(row.fcs_path).name)
        res = st.apply(read_fcs(row.fcs_path))
        got = {pop: int(m.sum()) for pop, m in res.masks.items()}
        assert got == ours.loc[row.sample_id].to_dict()
    # Study annotations travel as sample keywords; panels become groups.
    text = wsp.read_text()
    assert 'name="patient_id" value="P01"' in text
    assert '<GroupNode name="T"' in text and '<GroupNode name="All Samples"' in text


QUADRANTS = """<?xml version="1.0" encoding="UTF-8"?>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating"
  xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
  xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">
  <transforms:transformation transforms:id="lgcl">
    <transforms:logicle transforms:T="262144" transforms:W="0.5" transforms:M="4.5"
      transforms:A="0"/>
  </transforms:transformation>
  <gating:RectangleGate gating:id="scatter">
    <gating:dimension gating:min="20000" gating:compensation-ref="uncompensated">
      <data-type:fcs-dimension data-type:name="FSC-A"/>
    </gating:dimension>
  </gating:RectangleGate>
  <gating:QuadrantGate gating:id="quads" gating:parent_id="scatter">
    <gating:divider gating:id="d4" gating:compensation-ref="FCS" gating:transformation-ref="lgcl">
      <data-type:fcs-dimension data-type:name="APC-A"/>
      <gating:value>0.45</gating:value>
    </gating:divider>
    <gating:divider gating:id="d8" gating:compensation-ref="FCS" gating:transformation-ref="lgcl">
      <data-type:fcs-dimension data-type:name="APC-H7-A"/>
      <gating:value>0.45</gating:value>
    </gating:divider>
    <gating:Quadrant gating:id="CD4pos_CD8neg">
      <gating:position gating:divider_ref="d4" gating:location="0.9"/>
      <gating:position gating:divider_ref="d8" gating:location="0.1"/>
    </gating:Quadrant>
    <gating:Quadrant gating:id="CD4neg_CD8pos">
      <gating:position gating:divider_ref="d4" gating:location="0.1"/>
      <gating:position gating:divider_ref="d8" gating:location="0.9"/>
    </gating:Quadrant>
    <gating:Quadrant gating:id="CD4pos_CD8pos">
      <gating:position gating:divider_ref="d4" gating:location="0.9"/>
      <gating:position gating:divider_ref="d8" gating:location="0.9"/>
    </gating:Quadrant>
    <gating:Quadrant gating:id="CD4neg_CD8neg">
      <gating:position gating:divider_ref="d4" gating:location="0.1"/>
      <gating:position gating:divider_ref="d8" gating:location="0.1"/>
    </gating:Quadrant>
  </gating:QuadrantGate>
  <gating:BooleanGate gating:id="single_positive" gating:parent_id="scatter">
    <gating:or>
      <gating:gateReference gating:ref="CD4pos_CD8neg"/>
      <gating:gateReference gating:ref="CD4neg_CD8pos"/>
    </gating:or>
  </gating:BooleanGate>
</gating:Gating-ML>
"""


def test_quadrant_and_boolean_gates_export_and_count_exactly(gated, tmp_path):
    """FlowKit's own export_wsp raises for quadrant gates; ours writes each quadrant as a
    rectangle population (and a boolean 'or' as an OrNode), and FlowKit counts them exactly.
    """
    from immuno.export import export_flowjo
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    samples, _ = gated
    rows = samples[samples.panel == "T"].head(2).copy()
    xml = tmp_path / "quadrants.xml"
    xml.write_text(QUADRANTS)
    rows["gates"] = str(xml)
    wsp = export_flowjo(rows, tmp_path / "quadrants.wsp")
    assert "<OrNode" in wsp.read_text()
    report, _ = _flowkit_counts(wsp, rows.fcs_path)
    for row in rows.itertuples():
        res = load_gatingml(xml).apply(read_fcs(row.fcs_path))
        fk = report[report.sample_id == row.sample_id].set_index("gate_name")["count"]
        assert fk.to_dict() == {p: int(m.sum()) for p, m in res.masks.items()}
        assert 0 < fk["CD4pos_CD8neg"] < fk["scatter"]


def test_flowjo_export_refuses_what_flowjo_cannot_hold(gated, tmp_path):
    from immuno.export import export_flowjo

    samples, _ = gated
    twins = samples.head(2).copy()
    twins["fcs_path"] = twins["fcs_path"].iloc[0]  # two samples, one file name
    with pytest.raises(GatingFileError, match="file name") as err:
        export_flowjo(twins, tmp_path / "x.wsp")
    assert err.value.sample == twins.sample_id.iloc[1]
    bad = tmp_path / "not.xml"
    bad.write_text(
        QUADRANTS.replace("<gating:or>", "<gating:and>")
        .replace("</gating:or>", "</gating:and>")
        .replace(
            '<gating:gateReference gating:ref="CD4neg_CD8pos"/>',
            '<gating:gateReference gating:ref="CD4neg_CD8pos" gating:use-as-complement="true"/>',
        )
    )
    one = samples[samples.panel == "T"].head(1).assign(gates=str(bad))
    with pytest.raises(GatingFileError, match="complement"):
        export_flowjo(one, tmp_path / "y.wsp")
    with pytest.raises(ConfigError, match="gates"):
        export_flowjo(samples.drop(columns="gates"), tmp_path / "z.wsp")
    assert not list(tmp_path.glob("*.wsp"))  # nothing half-written


def test_anndata_export(gated, tmp_path, templates_dir):
    import anndata as ad

    from immuno.autogate import load_template
    from immuno.compensate import Compensation
    from immuno.export import export_anndata
    from immuno.read import read_fcs
    from immuno.transform import Logicle

    samples, counts = gated
    t = samples[samples.panel == "T"]
    template = load_template(templates_dir / "t_cell.yaml")
    full = ad.read_h5ad(
        export_anndata(t, template, tmp_path / "T.h5ad", max_events_per_sample=None)
    )
    assert list(full.var_names) == list(template.panel.markers)  # viability, CD3, ..., Time
    assert full.X.dtype == np.float32
    pops = [p.name for p in template.populations]
    study = ["sample_id", "patient_id", "visit_month", "dose_group", "panel", "event"]
    assert list(full.obs.columns) == study + pops
    assert all(full.obs[p].dtype == bool for p in pops)
    # Membership columns sum to the pipeline's counts.
    sums = full.obs.groupby("sample_id", observed=True)[pops].sum()
    sums.index = sums.index.astype(str)
    want = counts[counts.sample_id.isin(t.sample_id)].pivot(
        index="sample_id", columns="population", values="count"
    )
    pd.testing.assert_frame_equal(sums.sort_index(), want[pops].sort_index(), check_names=False)
    # X is compensated with the file's matrix and logicle-transformed (checked by hand).
    row = t.iloc[0]
    fcs = read_fcs(row.fcs_path)
    dets, spill = fcs.spillover()
    comp = fcs.events[:, [fcs.channels.index(d) for d in dets]].astype(float) @ np.linalg.inv(
        Compensation(dets, spill).matrix
    )
    cd4 = Logicle(262144, 0.5, 4.5, 0).apply(comp[:, dets.index("APC-A")])
    got = full[full.obs.sample_id == row.sample_id, "CD4"].X.ravel()
    np.testing.assert_allclose(got, cd4, rtol=0, atol=1e-6)
    assert full.var.loc["CD4", "channel"] == "APC-A" and bool(full.var.loc["CD4", "compensated"])
    assert full.uns["immuno"]["max_events_per_sample"] == -1

    # Subsampled: bounded rows per sample, seeded per sample (order does not matter).
    a = ad.read_h5ad(export_anndata(t, template, tmp_path / "a.h5ad", max_events_per_sample=300))
    b = ad.read_h5ad(
        export_anndata(t.iloc[::-1], template, tmp_path / "b.h5ad", max_events_per_sample=300)
    )
    assert a.n_obs == 300 * len(t)
    assert (a.obs.groupby("sample_id", observed=True).size() == 300).all()
    sid = row.sample_id
    pick_a, pick_b = a.obs[a.obs.sample_id == sid], b.obs[b.obs.sample_id == sid]
    np.testing.assert_array_equal(pick_a["event"], pick_b["event"])
    assert np.all(np.diff(pick_a["event"]) > 0)  # FCS order
    # The subsample's rows are the full export's rows for those events.
    ref = full[full.obs.sample_id == sid]
    ref = ref[ref.obs["event"].isin(pick_a["event"])]
    np.testing.assert_array_equal(ref.X, a[a.obs.sample_id == sid].X)
    np.testing.assert_array_equal(ref.obs[pops].to_numpy(), pick_a[pops].to_numpy())
    with pytest.raises(ConfigError, match="max_events_per_sample"):
        export_anndata(t, template, tmp_path / "c.h5ad", max_events_per_sample=0)


def _anndata_in_memory(samples, template, cap, random_state=0):
    """The AnnData as the export built it before it streamed: the whole panel in memory.

    A copy of ``export_anndata`` up to ``AnnData(...)`` as of commit 06cfabb (which then
    called ``write_h5ad(compression="gzip")``); the reference the streamed file must equal.
    """
    import anndata as ad

    from immuno.export import (
        STUDY_COLUMNS,
        _anndata_vars,
        _kept_events,
        _records,
        _sample_rng,
        _subsample,
    )
    from immuno.gate import EventSpace
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    recs = _records(samples, ("sample_id", "fcs_path", "gates"))
    sizes = _kept_events(recs, cap)
    n_obs = int(sum(sizes))
    var_names, facts, channels, X = None, {}, {}, None
    events = np.empty(n_obs, dtype=np.int64)
    members, parents = {}, {}
    at = 0
    for rec, m in zip(recs, sizes, strict=True):
        sid = str(rec["sample_id"])
        fcs = read_fcs(rec["fcs_path"])
        rows = _subsample(fcs.n_events, cap, _sample_rng(sid, random_state))
        names, dims, f = _anndata_vars(template, fcs)
        if var_names is None:
            var_names, facts = names, f
            X = np.empty((n_obs, len(names)), dtype=np.float32)
        channels[sid] = {n: f[n]["channel"] for n in names}
        space = EventSpace(fcs, template.base_strategy())
        X[at : at + m] = space.values(tuple(dims), rows)
        events[at : at + m] = rows
        result = load_gatingml(rec["gates"]).apply(fcs, sample_id=sid)
        for pop, mask in result.masks.items():
            if pop not in members:
                members[pop] = np.zeros(n_obs, dtype=bool)
                parents[pop] = result.parents[pop] or "root"
            members[pop][at : at + m] = mask[rows]
        at += m
    if var_names is None:
        var_names = list(template.panel.markers)
        X = np.zeros((0, len(var_names)), dtype=np.float32)
        facts = {
            n: {"channel": "", "transform": "", "compensated": False, "kind": ""} for n in var_names
        }
    assert not set(members) & {*STUDY_COLUMNS, "event"}
    sids = [str(r["sample_id"]) for r in recs]
    code = np.repeat(np.arange(len(recs)), sizes)

    def column(col, numeric=False):
        vals = [r.get(col) for r in recs]
        if numeric:
            v = np.array([float(x) if x not in (None, "") else np.nan for x in vals])
            return v[code]
        cats = list(dict.fromkeys("" if v is None else str(v) for v in vals))
        idx = {c: i for i, c in enumerate(cats)}
        codes = np.array([idx["" if v is None else str(v)] for v in vals], dtype=np.int32)
        return pd.Categorical.from_codes(codes[code], categories=cats)

    data = {
        "sample_id": pd.Categorical.from_codes(code.astype(np.int32), categories=sids),
        "patient_id": column("patient_id"),
        "visit_month": column("visit_month", numeric=True),
        "dose_group": column("dose_group"),
        "panel": column("panel"),
        "event": events,
    }
    data.update(members)
    obs = pd.DataFrame(data)
    obs.index = pd.Index([f"{sids[c]}:{e}" for c, e in zip(code, events, strict=True)])
    var = pd.DataFrame.from_dict({n: facts[n] for n in var_names}, orient="index")
    var.index = pd.Index([str(n) for n in var_names])
    uns = {
        "immuno": {
            "panel": str(template.name),
            "gating_file": str(template.source or ""),
            "gating_sha256": str(template.sha256 or ""),
            "compensation": str(template.panel.compensation),
            "transforms": {
                tid: json.dumps(t.spec()) for tid, t in template.panel.transforms.items()
            },
            "populations": list(members),
            "parents": dict(parents),
            "max_events_per_sample": -1 if cap is None else cap,
            "random_state": int(random_state),
            "X": "compensated and transformed as the panel's template says (gate space)",
        },
        "channels": channels,
    }
    return ad.AnnData(X=X, obs=obs, var=var, uns=uns)


def _h5_layout(path) -> dict:
    """Every element of an .h5ad file: its encoding, dtype, shape and dataframe attributes."""
    import h5py

    out = {}

    def visit(name, obj):
        a = obj.attrs
        enc = (a.get("encoding-type"), a.get("encoding-version"))
        extra = tuple(
            (k, [str(v) for v in np.atleast_1d(a[k])])
            for k in ("_index", "column-order", "ordered")
            if k in a
        )
        if isinstance(obj, h5py.Dataset):
            out[name] = (enc, str(obj.dtype), obj.shape, extra)
        else:
            out[name] = (enc, extra)

    with h5py.File(path, "r") as f:
        out["/"] = ((f.attrs["encoding-type"], f.attrs["encoding-version"]), ())
        f.visititems(visit)
    return out


def _assert_same_uns(got, want, where="uns"):
    assert type(got) is type(want), where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            _assert_same_uns(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        assert got == want, where


def _assert_same_h5ad(got_path, want_path):
    """Read back, the two files hold the same AnnData, bit for bit, in the same layout."""
    import anndata as ad
    import h5py

    got, want = ad.read_h5ad(got_path), ad.read_h5ad(want_path)
    assert got.X.dtype == want.X.dtype == np.float32 and got.X.shape == want.X.shape
    np.testing.assert_array_equal(got.X.view(np.uint32), want.X.view(np.uint32))
    assert got.obs_names.dtype == want.obs_names.dtype
    assert list(got.obs_names) == list(want.obs_names)
    pd.testing.assert_frame_equal(got.obs, want.obs, check_exact=True)
    assert list(got.obs.dtypes) == list(want.obs.dtypes)
    for col in want.obs.columns:
        if isinstance(want.obs[col].dtype, pd.CategoricalDtype):
            assert list(got.obs[col].cat.categories) == list(want.obs[col].cat.categories), col
    pd.testing.assert_frame_equal(got.var, want.var, check_exact=True)
    assert list(got.var.dtypes) == list(want.var.dtypes)
    _assert_same_uns(got.uns, want.uns)
    assert _h5_layout(got_path) == _h5_layout(want_path)
    with h5py.File(got_path, "r") as f:
        big = [f["X"], f["obs/_index"], f["obs/event"], f["obs/sample_id/codes"]]
        assert all(d.compression == "gzip" for d in big if d.size)


def _old_way(samples, template, path, cap, random_state=0):
    adata = _anndata_in_memory(samples, template, cap, random_state)
    adata.write_h5ad(path, compression="gzip")
    return path


def test_streamed_anndata_equals_the_in_memory_export(gated, tmp_path, templates_dir, monkeypatch):
    """The streamed .h5ad reads back as exactly the AnnData the in-memory export wrote:
    X bit for bit, obs (dtypes, categories, obs_names), var, uns, and the same HDF5
    elements with the same encodings. Also with chunks that cut through samples and with
    populations that first appear in a later sample (zeros before), and with no samples."""
    import immuno.export
    from immuno.autogate import load_template
    from immuno.export import export_anndata

    samples, _ = gated
    t = samples[samples.panel == "T"].reset_index(drop=True)
    template = load_template(templates_dir / "t_cell.yaml")
    for cap in (None, 700):
        new = export_anndata(t, template, tmp_path / f"new{cap}.h5ad", max_events_per_sample=cap)
        _assert_same_h5ad(new, _old_way(t, template, tmp_path / f"old{cap}.h5ad", cap))

    # Odd chunks (777 rows), repeated files under new ids, and two samples gated with other
    # gates (the quadrants), so that their populations' columns start mid-way.
    xml = tmp_path / "quadrants.xml"
    xml.write_text(QUADRANTS)
    more = t.assign(sample_id=t.sample_id + "-bis", patient_id="P99", visit_month=np.nan)
    quads = t.head(2).assign(sample_id=t.sample_id.head(2) + "-q", gates=str(xml))
    mixed = pd.concat([t, quads, more], ignore_index=True)
    monkeypatch.setattr(immuno.export, "_CHUNK_ROWS", 777)
    new = export_anndata(mixed, template, tmp_path / "mixed.h5ad", max_events_per_sample=1500)
    _assert_same_h5ad(new, _old_way(mixed, template, tmp_path / "mixed_old.h5ad", 1500))
    import anndata as ad

    obs = ad.read_h5ad(new).obs
    assert "scatter" in obs and obs["scatter"].sum() > 0
    assert not obs["scatter"].iloc[: 1500 * len(t)].any()  # before the quadrant samples

    new = export_anndata(t.head(0), template, tmp_path / "none.h5ad")
    _assert_same_h5ad(new, _old_way(t.head(0), template, tmp_path / "none_old.h5ad", 20000))


def _repeat_samples(t, n: int):
    """``n`` samples cycling over the rows of ``t`` (the same files), each its own id."""
    rows = [t.iloc[k % len(t)] for k in range(n)]
    out = pd.DataFrame(rows).reset_index(drop=True)
    out["sample_id"] = [f"{sid}-{k}" for k, sid in enumerate(out.sample_id)]
    return out


def test_anndata_export_memory_does_not_grow_with_the_cohort(gated, tmp_path, templates_dir):
    """Python's peak allocation (tracemalloc traces numpy's buffers) of exporting 27 samples
    exceeds that of 9 samples of the same files by less than a tenth of what the 36,000
    extra events' X, event and membership columns alone take in memory (the in-memory
    export held all of them, and the obs names, at once; its growth is about 4 times that)."""
    import tracemalloc

    from immuno.autogate import load_template
    from immuno.export import export_anndata

    samples, _ = gated
    t = samples[samples.panel == "T"].reset_index(drop=True)
    template = load_template(templates_dir / "t_cell.yaml")
    export_anndata(t.head(1), template, tmp_path / "warm.h5ad")  # imports, caches

    def peak(n: int) -> int:
        cohort = _repeat_samples(t, n)
        tracemalloc.start()
        try:
            export_anndata(cohort, template, tmp_path / f"{n}.h5ad", max_events_per_sample=None)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(9), peak(27)
    n_vars, n_pops = len(template.panel.markers), len(template.populations)
    extra = 18 * 2000 * (4 * n_vars + 8 + n_pops)
    assert large - small < extra / 10, (small, large, extra)


def test_anndata_export_refusals_leave_no_file(gated, tmp_path, templates_dir):
    """A population named like a study column is refused (the file is open by then: the
    temporary file is removed); as before, after every sample, naming the population."""
    from immuno.autogate import load_template
    from immuno.export import export_anndata

    samples, _ = gated
    t = samples[samples.panel == "T"].head(2)
    xml = tmp_path / "event.xml"
    xml.write_text(QUADRANTS.replace('"scatter"', '"event"'))
    template = load_template(templates_dir / "t_cell.yaml")
    with pytest.raises(ConfigError, match="study column") as err:
        export_anndata(t.assign(gates=str(xml)), template, tmp_path / "x.h5ad")
    assert err.value.field == "event"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["event.xml"]


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB file system of its own (tmpfs) at ``tmp_path/disk``: mounting needs root,
    which the CI container has; elsewhere the test says why it cannot run."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_anndata_export_on_a_full_disk_is_the_projects_error(gated, small_disk, templates_dir):
    """HDF5 crashed the process (SIGSEGV, an empty log) when a write met a full disk; the
    export stops first, with OutputError naming the output, and leaves no file behind."""
    from immuno.autogate import load_template
    from immuno.errors import OutputError
    from immuno.export import export_anndata

    samples, _ = gated
    t = _repeat_samples(samples[samples.panel == "T"].reset_index(drop=True), 500)
    out = small_disk / "T.h5ad"
    with pytest.raises(OutputError) as err:
        export_anndata(t, load_template(templates_dir / "t_cell.yaml"), out)
    assert err.value.file == str(out)
    assert "disk is full" in err.value.message
    assert list(small_disk.iterdir()) == []


def test_a_full_disk_under_any_atomic_writer_is_the_projects_error(tmp_path):
    import errno

    from immuno.errors import OutputError
    from immuno.util import atomic_path

    out = tmp_path / "counts.tsv"
    with pytest.raises(OutputError) as err, atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.file == str(out)
    assert "disk is full" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_anndata_is_imported_only_by_its_export():
    code = (
        "import sys, immuno.export, immuno.methods, immuno.cohort; "
        "assert 'anndata' not in sys.modules, 'anndata imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gated_fcs_keeps_raw_values_and_keywords(gated, tmp_path):
    from immuno.export import export_gated_cohort, export_gated_fcs
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    samples, counts = gated
    row = samples[samples.panel == "T"].iloc[0]
    src = read_fcs(row.fcs_path)
    n = export_gated_fcs(row.fcs_path, row.gates, "cd4", tmp_path / "cd4.fcs")
    out = read_fcs(tmp_path / "cd4.fcs")
    mask = load_gatingml(row.gates).apply(src).masks["cd4"]
    assert n == out.n_events == int(out.text["$TOT"]) == int(mask.sum())
    assert n == counts.set_index(["sample_id", "population"])["count"][(row.sample_id, "cd4")]
    np.testing.assert_array_equal(out.events, src.events[mask])  # raw values, FCS order
    assert out.channels == src.channels and out.markers == src.markers
    for key in ("$SPILLOVER", "$TIMESTEP", "$CYT", "$DATE", "TUBE NAME", "$P4R", "$P4G"):
        assert out.text[key] == src.text[key], key
    assert out.text["$FIL"] == "cd4.fcs" and out.text["IMMUNO POPULATION"] == "cd4"
    assert out.text["IMMUNO SOURCE"] == Path(row.fcs_path).name
    with pytest.raises(GatingError, match="naive_b") as err:
        export_gated_fcs(row.fcs_path, row.gates, "naive_b", tmp_path / "x.fcs")
    assert "treg" in err.value.hint  # the populations that exist

    files = export_gated_cohort(samples, "cd4", tmp_path / "cohort")
    index = pd.read_csv(tmp_path / "cohort" / "index.tsv", sep="\t")
    t_ids = list(samples.sample_id[samples.panel == "T"])
    assert list(index.sample_id) == t_ids  # B samples have no cd4 and are skipped
    assert [f.name for f in files] == [f"{s}.cd4.fcs" for s in t_ids]
    want = counts[(counts.population == "cd4")].set_index("sample_id")["count"]
    assert index.set_index("sample_id")["events"].to_dict() == want.to_dict()


def test_polygon_clipping_keeps_membership_inside_the_box():
    """The realised half-plane polygons (vertices at +-1e6) are clipped to a box that holds
    every event; the cut edge is not moved, so no point in the box changes side."""
    from immuno.export import _clip_polygon
    from immuno.gate import points_in_polygon

    rng = np.random.default_rng(0)
    w = np.array([1.0, -1.0]) / np.sqrt(2)  # the Treg projection: CD25 - CD127
    u = np.array([-w[1], w[0]])
    base, big = w * 0.1234567, 1e6
    verts = np.array([base - big * u, base + big * u, base + big * (u + w), base - big * (u - w)])
    box = [(-2.0, 3.0), (-2.5, 2.0)]
    clipped = _clip_polygon(verts, box)
    assert 3 <= len(clipped) <= 8
    assert np.all(clipped >= [-2.0, -2.5]) and np.all(clipped <= [3.0, 2.0])
    pts = rng.uniform([-2.0, -2.5], [3.0, 2.0], size=(100_000, 2))
    t = rng.uniform(-1.5, 1.5, 4000)
    off = rng.choice([-1, 1], 4000) * rng.uniform(1e-6, 1e-3, 4000)
    near = base + t[:, None] * u + off[:, None] * w  # just either side of the cut
    pts = np.vstack([pts, near])
    np.testing.assert_array_equal(points_in_polygon(pts, clipped), points_in_polygon(pts, verts))
    far = np.array([[100.0, 100.0], [101.0, 100.0], [100.0, 101.0]])
    assert len(_clip_polygon(far, box)) == 0  # wholly outside: nothing left


def test_stored_memberships_export_what_the_gates_give(gated, tmp_path, templates_dir):
    """The workflow's exports read each sample's memberships as its gating job stored them
    (immuno.memberships): the AnnData and gated FCS files equal those of the gates
    applied again, bit for bit, and a memberships file of another event count is refused."""
    from immuno.autogate import gate_one, load_template
    from immuno.export import export_anndata, export_gated_fcs, gated_samples
    from immuno.memberships import read_memberships, write_memberships
    from immuno.read import read_fcs

    samples, _ = gated
    t = samples[samples.panel == "T"].drop(columns="memberships")
    template = load_template(templates_dir / "t_cell.yaml")
    stored = tmp_path / "memberships"
    stored.mkdir()
    for row in t.itertuples():
        res = gate_one(read_fcs(row.fcs_path), template, sample_id=row.sample_id)
        parents = {g.id: g.parent for g in res.strategy.gates.values()}
        write_memberships(stored / f"{row.sample_id}.npz", res.masks, parents)
        masks, back = read_memberships(stored / f"{row.sample_id}.npz")
        assert list(masks) == list(res.masks) and back == parents
        assert all(np.array_equal(masks[p], res.masks[p]) for p in masks)
    gates_dir = Path(t["gates"].iloc[0]).parent
    with_stored = gated_samples(t.drop(columns="gates"), gates_dir, stored)
    assert with_stored["memberships"].ne("").all()
    a = export_anndata(t, template, tmp_path / "applied.h5ad", max_events_per_sample=500)
    b = export_anndata(with_stored, template, tmp_path / "stored.h5ad", max_events_per_sample=500)
    _assert_same_h5ad(b, a)
    row = with_stored.iloc[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    n_a = export_gated_fcs(row.fcs_path, row.gates, "cd4", tmp_path / "a" / "x.fcs")
    n_b = export_gated_fcs(
        row.fcs_path, row.gates, "cd4", tmp_path / "b" / "x.fcs", row.memberships
    )
    assert n_a == n_b > 0
    assert (tmp_path / "a" / "x.fcs").read_bytes() == (tmp_path / "b" / "x.fcs").read_bytes()
    masks, parents = read_memberships(row.memberships)
    write_memberships(tmp_path / "short.npz", {p: m[:-1] for p, m in masks.items()}, parents)
    with pytest.raises(GatingFileError, match="memberships hold"):
        export_gated_fcs(row.fcs_path, row.gates, "cd4", tmp_path / "c.fcs", tmp_path / "short.npz")
