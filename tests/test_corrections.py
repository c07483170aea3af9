"""Reviewers' corrections: the file's checks, and how gating applies them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immuno.autogate import gate_one, load_template
from immuno.cohort import gate_cohort, load_sample_sheet, load_templates
from immuno.corrections import (
    Correction,
    CorrectionsError,
    append_correction,
    load_corrections,
)
from immuno.read import read_fcs
from immuno.test import failed_qc, keep_reviewed

ROOT = Path(__file__).resolve().parents[1]
TODAY = dt.date.today().isoformat()


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "corrections.yaml"
    p.write_text(text)
    return p


def _entry(**kw) -> str:
    base = {
        "sample": "S1",
        "population": "cd3",
        "reviewer": "A. Reviewer",
        "date": TODAY,
        "reason": "the valley was missed",
    }
    base.update(kw)
    lines = []
    for k, v in base.items():
        if v is None:
            continue
        lines.append(f"  {k}: {v}")
    lines[0] = "-" + lines[0][1:]
    return "\n".join(lines) + "\n"


def test_a_missing_file_is_no_corrections_and_entries_load(tmp_path):
    assert load_corrections(tmp_path / "absent.yaml").history == []
    assert load_corrections(None).entries == []
    p = _write(
        tmp_path,
        "# header comment\ncorrections:\n"
        + _entry(threshold="{CD3: 0.45}")
        + _entry(population="live", exclude="true")
        + _entry(threshold="{CD3: 0.5}", reason="second look"),
    )
    c = load_corrections(p)
    assert len(c.history) == 3 and c.superseded() == 1
    assert c.sha256 and len(c.sha256) == 64
    by = c.for_sample("S1")
    assert by["cd3"].value == {"CD3": 0.5} and by["cd3"].reason == "second look"
    assert by["cd3"].line == 15  # the later entry wins, and knows its line
    assert by["live"].action == "exclude"


@pytest.mark.parametrize(
    "entry, field, words",
    [
        (_entry(threshold="{CD3: 0.45}", reason=None), "reason", "required"),
        (_entry(threshold="{CD3: 0.45}", reviewer="''"), "reviewer", "does not match"),
        (_entry(threshold="{CD3: 0.45}", exclude="true"), "action", "exclude, threshold"),
        (_entry(), "action", "no action"),
        (_entry(threshold="{CD3: 0.45}", date="2026-13-40"), "date", "no date"),
        (_entry(threshold="{CD3: 0.45}", date="3026-01-01"), "date", "in the future"),
        (_entry(threshold="{CD3: .nan}"), "threshold", "finite"),
        (_entry(threshold="{CD3: high}"), "threshold.CD3", "not of type"),
        (_entry(polygon="[[0, 0], [1, 1]]"), "polygon", "too short"),
        (_entry(sample="007", threshold="{CD3: 0.4}"), "sample", "quote"),
        (_entry(threshold="{CD3: 0.4}", colour="red"), None, "colour"),
    ],
)
def test_a_bad_entry_gets_the_projects_error_with_line_and_field(tmp_path, entry, field, words):
    p = _write(tmp_path, "corrections:\n" + entry)
    with pytest.raises(CorrectionsError) as err:
        load_corrections(p)
    text = str(err.value)
    assert str(p) in text and "line 2" in text
    assert err.value.field == field
    assert words in text


def test_a_file_that_is_not_a_corrections_list_is_refused(tmp_path):
    for text, words in [
        ("corrections: [\n", "cannot parse"),
        ("- a\n- b\n", "no 'corrections:' list"),
        ("corrections: {}\n", "must be a list"),
        ("corrections: []\nextra: 1\n", "unknown key"),
    ]:
        with pytest.raises(CorrectionsError, match=words):
            load_corrections(_write(tmp_path, text))
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(CorrectionsError, match="directory"):
        load_corrections(tmp_path / "dir.yaml")


@pytest.fixture(scope="module")
def sheet_and_templates(demo_cohort):
    sheet = load_sample_sheet(demo_cohort / "samples.tsv", ["T", "B"])
    templates = load_templates({"T": ROOT / "gates/t_cell.yaml", "B": ROOT / "gates/b_cell.yaml"})
    return sheet, templates


@pytest.mark.parametrize(
    "kw, field, words",
    [
        ({"sample": "NOPE", "threshold": "{CD3: 0.4}"}, "sample", "not in the sample sheet"),
        ({"population": "cd19", "threshold": "{CD19: 0.4}"}, "population", "no population"),
        ({"threshold": "{CD4: 0.4}"}, "cd3.threshold", "cuts CD3"),
        (
            {"population": "lymphocytes", "threshold": "{FSC-A: 0.4}"},
            "lymphocytes.threshold",
            "no thresholds",
        ),
        ({"polygon": "[[0, 0], [1, 0], [1, 1]]"}, "cd3.polygon", "needs 2 dimensions"),
        ({"rectangle": "{min: [0.2, 0.1], max: [null, null]}"}, "cd3.rectangle.min", "1 dim"),
        ({"rectangle": "{min: [0.6], max: [0.5]}"}, "cd3.rectangle.CD3", "not below"),
        ({"rectangle": "{min: [null], max: [null]}"}, "cd3.rectangle", "bounds nothing"),
    ],
)
def test_an_entry_the_study_cannot_apply_is_refused(
    tmp_path, sheet_and_templates, kw, field, words
):
    sheet, templates = sheet_and_templates
    kw.setdefault("sample", sheet[sheet.panel == "T"].sample_id.iloc[0])
    p = _write(tmp_path, "corrections:\n" + _entry(**kw))
    c = load_corrections(p)
    with pytest.raises(CorrectionsError) as err:
        c.check(sheet, templates)
    assert err.value.field == field and words in str(err.value) and "line 2" in str(err.value)


def test_append_keeps_the_file_and_its_comments_and_refuses_what_it_cannot_extend(tmp_path):
    p = tmp_path / "c.yaml"
    first = Correction("S1", "cd3", "threshold", {"CD3": 0.41}, "Ann Lee", TODAY, "missed: NK")
    append_correction(p, first)
    text = p.read_text()
    assert text.startswith("# Gate corrections") and load_corrections(p).history == [
        Correction(**{**first.__dict__, "line": 4})
    ]
    p.write_text(text.replace("corrections:", "# kept by hand\ncorrections:"))
    triangle = [[0.1, 0.2], [0.5, 0.2], [0.3, 0.9]]
    second = Correction("S1", "cd3", "polygon", triangle, "B", TODAY, "r")
    append_correction(p, second)
    assert "# kept by hand" in p.read_text()
    assert [c.action for c in load_corrections(p).entries] == ["polygon"]
    flow = tmp_path / "flow.yaml"
    flow.write_text("corrections: []\n")
    with pytest.raises(CorrectionsError):
        append_correction(flow, first)
    assert flow.read_text() == "corrections: []\n"


def _first_t_sample(cohort):
    """The T-cell template, the cohort's first T-tube row and its events."""
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t")
    row = sheet[sheet.panel == "T"].iloc[0]
    return load_template(ROOT / "gates/t_cell.yaml"), row, read_fcs(cohort / row.fcs_path)


def test_a_corrected_gate_is_final_and_its_children_are_refitted(demo_cohort):
    template, row, fcs = _first_t_sample(demo_cohort)
    auto = gate_one(fcs, template, sample_id=row.sample_id)
    cut = float(auto.fits["cd3"].params["CD3"]) + 0.08
    c = Correction(row.sample_id, "cd3", "threshold", {"CD3": cut}, "A", TODAY, "r")
    res = gate_one(fcs, template, sample_id=row.sample_id, corrections={"cd3": c})
    counts = res.table.set_index("population")["count"]
    # the count is the lymphocytes at or above the reviewer's cut, in gate space
    from immuno.gate import EventSpace

    lym = res.strategy.apply(fcs).masks["lymphocytes"]
    dim = res.strategy.gates["cd3"].dims
    x = EventSpace(fcs, res.strategy, dtype=np.float64).values(dim)[:, 0]
    assert counts["cd3"] == int((lym & (x >= cut)).sum())
    assert counts["cd3"] < auto.table.set_index("population")["count"]["cd3"]
    assert res.fits["cd3"].before == auto.table.set_index("population")["count"]["cd3"]
    assert res.flag("cd3") == "corrected" and "corrected(threshold)" in res.note("cd3")
    assert res.flag("cd4") == ""  # a corrected gate above is no reason to look
    # children re-fitted on the corrected parent: their parent count is the new cd3
    assert res.table.set_index("population")["parent_count"]["cd4"] == counts["cd3"]


def test_accept_clears_and_exclude_flags_the_lineage(demo_cohort):
    template, row, fcs = _first_t_sample(demo_cohort)
    res = gate_one(fcs, template, sample_id=row.sample_id)
    res.fits["lymphocytes"].flags.append("crowded_cluster(80%)")
    assert res.flag("cd3") == "upstream_review(lymphocytes)"
    res.corrections = {
        "lymphocytes": Correction(row.sample_id, "lymphocytes", "accept", True, "A", TODAY, "ok"),
        "cd4": Correction(row.sample_id, "cd4", "exclude", True, "A", TODAY, "clumps"),
    }
    assert res.flag("lymphocytes") == "" and res.note("lymphocytes").endswith(
        "accepted(crowded_cluster(80%))"
    )
    assert res.flag("cd3") == ""
    assert res.flag("cd4") == "excluded" and res.flag("treg") == "upstream_excluded(cd4)"
    res.refresh_table()
    t = res.table.assign(patient_id="P", visit_month=0.0)
    kept = ~failed_qc(t)
    assert dict(zip(t.population, kept, strict=True))["cd3"]
    assert not dict(zip(t.population, kept, strict=True))["treg"]
    # include_review keeps review flags but never a reviewer's exclusion
    again = keep_reviewed(t.assign(qc_flag=t.qc_flag.where(t.population != "cd8", "review_x")))
    assert set(again.loc[again.qc_flag != "", "population"]) == {"cd4", "treg"}
    # a gate that could not be placed cannot be accepted into the statistics
    res.fits["cd8"].flags = ["fit_failed(x)", "fail"]
    res.corrections["cd8"] = Correction(row.sample_id, "cd8", "accept", True, "A", TODAY, "ok")
    assert res.flag("cd8") == "fail"
    corrected = pd.DataFrame({"qc_flag": ["corrected", "corrected;upstream_review(x)", ""]})
    assert failed_qc(corrected).tolist() == [False, True, False]


def test_gate_cohort_lists_every_applied_correction(tmp_path, demo_cohort):
    from immuno.cohort import check_inputs

    sheet = load_sample_sheet(demo_cohort / "samples.tsv", ["T", "B"])
    sheet = sheet[sheet.patient_id.isin(["P01", "P02"])]
    templates = load_templates({"T": ROOT / "gates/t_cell.yaml", "B": ROOT / "gates/b_cell.yaml"})
    t_id = sheet[sheet.panel == "T"].sample_id.iloc[0]
    b_id = sheet[sheet.panel == "B"].sample_id.iloc[0]
    lost_id = sheet[sheet.panel == "B"].sample_id.iloc[1]
    sheet.loc[sheet.sample_id == lost_id, "fcs_path"] = str(tmp_path / "gone.fcs")
    p = _write(
        tmp_path,
        "corrections:\n"
        + _entry(sample=t_id, population="cd3", threshold="{CD3: 0.55}")
        + _entry(sample=b_id, population="cd19", exclude="true")
        + _entry(sample=lost_id, population="cd19", accept="true"),
    )
    corrections = load_corrections(p)
    corrections.check(sheet, templates)
    out = tmp_path / "out"
    gate_cohort(
        sheet,
        templates,
        check_inputs(sheet, templates),
        counts_path=out / "counts.tsv",
        params_path=out / "params.tsv",
        failed_path=out / "failed.tsv",
        gates_dir=out / "gates",
        corrections=corrections,
        corrections_path=out / "corrections.tsv",
    )
    listed = pd.read_csv(out / "corrections.tsv", sep="\t")
    listed = listed[listed.sample_id != lost_id].set_index("population")
    counts = pd.read_csv(out / "counts.tsv", sep="\t", keep_default_na=False)
    cd3 = counts[(counts.sample_id == t_id) & (counts.population == "cd3")].iloc[0]
    assert listed.loc["cd3", "count_after"] == cd3["count"]
    assert listed.loc["cd3", "count_before"] != cd3["count"]
    assert listed.loc["cd3", "qc_flag"] == "corrected" == cd3["qc_flag"]
    assert listed.loc["cd19", "action"] == "exclude"
    assert listed.loc["cd19", "count_before"] == listed.loc["cd19", "count_after"]
    assert set(listed.columns) >= {"reviewer", "date", "reason", "percent_before"}
    lost = pd.read_csv(out / "corrections.tsv", sep="\t").set_index("sample_id").loc[lost_id]
    assert lost["qc_flag"] == "not_applied(sample_failed_input_check)"
    assert np.isnan(lost["count_after"])
    # the exported gate is the reviewer's: re-applying it gives the corrected count
    from immuno.gatingml import load_gatingml

    gates = load_gatingml(out / "gates" / f"{t_id}.xml")
    row = sheet.set_index("sample_id").loc[t_id]
    assert int(gates.apply(read_fcs(row.fcs_path)).masks["cd3"].sum()) == cd3["count"]
