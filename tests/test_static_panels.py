"""A panel gated with fixed gates (Gating-ML 2.0 or a FlowJo workspace) runs through the
same cohort path as the data-driven templates and reports the same tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from immuno.autogate import gate_one, load_template
from immuno.cohort import check_inputs, gate_cohort, load_sample_sheet, load_templates
from immuno.errors import GatingFileError
from immuno.gatingml import write_gatingml
from immuno.read import read_fcs

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, sheet_rows, panels):
    sheet_path = tmp_path / "samples.tsv"
    pd.DataFrame(sheet_rows).to_csv(sheet_path, sep="\t", index=False)
    templates = load_templates(panels)
    sheet = load_sample_sheet(sheet_path, list(panels))
    checks = check_inputs(sheet, templates)
    out = tmp_path / "out"
    gate_cohort(sheet, templates, checks, counts_path=out / "counts.tsv",
                params_path=out / "params.tsv", failed_path=out / "failed.tsv",
                gates_dir=out / "gates")  # fmt: skip
    read = lambda p: pd.read_csv(p, sep="\t", keep_default_na=False)  # noqa: E731
    return read(out / "counts.tsv"), read(out / "failed.tsv"), out


def test_gatingml_panel_reports_the_strategy_counts(tmp_path, demo_cohort):
    sheet = pd.read_csv(demo_cohort / "samples.tsv", sep="\t")
    t = sheet[sheet.panel == "T"].head(3)
    # A lab's fixed gates: the realised gates of the first sample, as Gating-ML.
    first = read_fcs(demo_cohort / t.iloc[0].fcs_path)
    fitted = gate_one(first, load_template(ROOT / "gates" / "t_cell.yaml"), sample_id="x")
    xml = tmp_path / "lab_gates.xml"
    write_gatingml(fitted.strategy, xml)
    rows = [{**r, "fcs_path": str(demo_cohort / r["fcs_path"])} for r in t.to_dict("records")]
    counts, failed, out = _run(tmp_path, rows, {"T": str(xml)})
    assert failed.empty
    for r in rows:
        expected = fitted.strategy.apply(read_fcs(r["fcs_path"])).masks
        got = counts[counts.sample_id == r["sample_id"]].set_index("population")["count"]
        assert got.to_dict() == {p: int(m.sum()) for p, m in expected.items()}
        assert set(counts.loc[counts.sample_id == r["sample_id"], "qc_flag"]) == {""}
        assert (out / "gates" / f"{r['sample_id']}.xml").exists()


def test_flowjo_panel_and_a_file_missing_a_channel(tmp_path, shared_data):
    src = shared_data / "flowkit_testdata" / "data" / "simple_diamond_example"
    fcs = src / "test_data_diamond_01.fcs"
    wsp = src / "simple_diamond_example_quad_gate.wsp"
    # A second file without the gated channels: that sample fails, the other goes on.
    other = shared_data / "flowkit_testdata" / "data" / "test_data_2d_01.fcs"
    local = tmp_path / "test_data_diamond_01.fcs"
    shutil.copy(fcs, local)
    rows = [
        {"sample_id": "d1", "patient_id": "p1", "dose_group": "a", "visit_month": 0,
         "panel": "Q", "fcs_path": str(local)},
        {"sample_id": "d2", "patient_id": "p1", "dose_group": "a", "visit_month": 1,
         "panel": "Q", "fcs_path": str(other)},
    ]  # fmt: skip
    counts, failed, _ = _run(tmp_path, rows, {"Q": str(wsp)})
    assert set(counts["sample_id"]) == {"d1"}
    # FlowJo's own counts for the four quadrants (DERIVED_wsp_flowjo_counts.tsv).
    assert sorted(counts["count"])[-4:] == [49403, 49671, 50330, 50596]
    assert list(failed["sample_id"]) == ["d2"]
    assert failed.iloc[0]["error"] in ("PanelError", "GatingFileError")


def test_unknown_gating_file_type(tmp_path):
    bad = tmp_path / "gates.txt"
    bad.write_text("x")
    with pytest.raises(GatingFileError, match="unknown gating file type"):
        load_templates({"T": str(bad)})
