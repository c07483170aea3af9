"""A cohort: the sample sheet, the input checks, gating every sample, atomic outputs.

The end-to-end part follows the issue "Bad input and faults": a small demo cohort
in which one file is truncated, one is 10 random bytes, one has a renamed marker
and one sheet row points at no file. The other samples must keep their results,
each bad one must be reported with its stage, error class, field and cause, and
nothing may be changed or left behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immuno.cohort import (
    REQUIRED_COLUMNS,
    check_inputs,
    gate_cohort,
    load_sample_sheet,
    load_templates,
)
from immuno.errors import SampleSheetError
from immuno.util import atomic_path, sha256_file, write_tsv

HEADER = [*REQUIRED_COLUMNS, "lymphocyte_count"]
GOOD_ROWS = [
    ["S1", "P1", "30mg", "0", "T", "fcs/S1.fcs", "1.25"],
    ["S2", "P1", "30mg", "1.5", "B", "fcs/S2.fcs", ""],
    ["S3", "P2", "60mg", "4.5", "T", "fcs/S3.fcs", "0.4"],
]


def _write_sheet(folder: Path, rows, header=HEADER, touch=True) -> Path:
    """A sheet in ``folder`` (tab-separated); touch the FCS files it names."""
    folder.mkdir(parents=True, exist_ok=True)
    sheet = folder / "samples.tsv"
    lines = ["\t".join(header), *("\t".join(r) for r in rows)]
    sheet.write_text("\n".join(lines) + "\n")
    if touch and "fcs_path" in header:
        col = header.index("fcs_path")
        for r in rows:
            if col < len(r) and r[col]:
                p = Path(r[col]) if Path(r[col]).is_absolute() else folder / r[col]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
    return sheet


def _with(rows, i: int, column: str, value: str):
    out = [list(r) for r in rows]
    out[i][HEADER.index(column)] = value
    return out


def _sheet_error(sheet: Path, **kwargs) -> SampleSheetError:
    with pytest.raises(SampleSheetError) as info:
        load_sample_sheet(sheet, **kwargs)
    assert info.value.file is not None
    return info.value


# --- load_sample_sheet: a valid sheet -------------------------------------------------


def test_valid_sheet_types_and_resolved_paths(tmp_path, monkeypatch):
    sheet = _write_sheet(tmp_path / "study", GOOD_ROWS)
    monkeypatch.chdir(tmp_path)  # not the sheet's folder: paths must not depend on cwd
    df = load_sample_sheet(sheet, ["T", "B"])
    assert list(df["sample_id"]) == ["S1", "S2", "S3"]
    assert df["visit_month"].tolist() == [0.0, 1.5, 4.5]
    assert df["visit_month"].dtype == float
    assert df["lymphocyte_count"].iloc[0] == 1.25 and np.isnan(df["lymphocyte_count"].iloc[1])
    assert df["fcs_path"].tolist() == [
        str(tmp_path / "study" / "fcs" / f"S{i}.fcs") for i in (1, 2, 3)
    ]


def test_relative_paths_resolve_against_the_sheets_folder_not_cwd(tmp_path, monkeypatch):
    _write_sheet(tmp_path / "a" / "b", GOOD_ROWS)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    df = load_sample_sheet(Path("..") / "a" / "b" / "samples.tsv")
    for p in df["fcs_path"]:
        assert Path(p).is_file()


def test_absolute_paths_are_kept(tmp_path):
    absolute = tmp_path / "store" / "x.fcs"
    rows = _with(GOOD_ROWS, 1, "fcs_path", str(absolute))
    df = load_sample_sheet(_write_sheet(tmp_path / "study", rows))
    assert df["fcs_path"].iloc[1] == str(absolute)


def test_cells_are_stripped_and_a_tab_at_the_end_of_every_row_is_no_index(tmp_path):
    _write_sheet(tmp_path, GOOD_ROWS)  # the FCS files
    sheet = _write_sheet(tmp_path, [[f" {c} " for c in r] + [""] for r in GOOD_ROWS], touch=False)
    df = load_sample_sheet(sheet)
    assert list(df["sample_id"]) == ["S1", "S2", "S3"]
    assert list(df["panel"]) == ["T", "B", "T"]


def test_lymphocyte_count_is_optional(tmp_path):
    rows = [r[:-1] for r in GOOD_ROWS]
    df = load_sample_sheet(_write_sheet(tmp_path, rows, header=REQUIRED_COLUMNS))
    assert "lymphocyte_count" not in df


# --- load_sample_sheet: one error per problem ----------------------------------------


def test_sheet_that_does_not_exist(tmp_path):
    exc = _sheet_error(tmp_path / "nope.tsv")
    assert exc.file == str(tmp_path / "nope.tsv")
    assert "does not exist" in exc.message


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_column(tmp_path, column):
    i = HEADER.index(column)
    header = [c for c in HEADER if c != column]
    rows = [r[:i] + r[i + 1 :] for r in GOOD_ROWS]
    exc = _sheet_error(_write_sheet(tmp_path, rows, header=header))
    assert exc.field == column
    assert column in exc.message
    assert exc.file == str(tmp_path / "samples.tsv")


@pytest.mark.parametrize("column", ["patient_id", "dose_group", "visit_month", "panel", "fcs_path"])
def test_empty_cell(tmp_path, column):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 1, column, "")))
    assert exc.field == column
    assert exc.sample == "S2"
    assert f"empty {column}" in exc.message and "line 3" in exc.message


def test_empty_sample_id(tmp_path):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 2, "sample_id", "")))
    assert exc.field == "sample_id"
    assert "line 4" in exc.message


def test_short_row_is_an_empty_cell(tmp_path):
    rows = [GOOD_ROWS[0], GOOD_ROWS[1][:5]]  # no fcs_path, no lymphocyte_count
    exc = _sheet_error(_write_sheet(tmp_path, rows, touch=False))
    assert exc.field == "fcs_path" and exc.sample == "S2"


def test_duplicate_sample_id(tmp_path):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 2, "sample_id", "S1")))
    assert exc.field == "sample_id"
    assert exc.sample == "S1"
    assert "more than once" in exc.message


@pytest.mark.parametrize("bad", ["../S2", "a/b", "a\\b", ".."])
def test_sample_id_that_cannot_name_a_file(tmp_path, bad):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 1, "sample_id", bad)))
    assert exc.field == "sample_id" and exc.sample == bad


@pytest.mark.parametrize("bad", ["baseline", "4,5", "inf", "nan"])
def test_non_numeric_visit_month(tmp_path, bad):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 2, "visit_month", bad)))
    assert exc.field == "visit_month"
    assert exc.sample == "S3"
    assert repr(bad) in exc.message


@pytest.mark.parametrize("bad", ["1,5", "high", "inf"])
def test_non_numeric_lymphocyte_count(tmp_path, bad):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 0, "lymphocyte_count", bad)))
    assert exc.field == "lymphocyte_count"
    assert exc.sample == "S1"
    assert repr(bad) in exc.message


def test_negative_lymphocyte_count(tmp_path):
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 2, "lymphocyte_count", "-0.3")))
    assert exc.field == "lymphocyte_count"
    assert exc.sample == "S3"
    assert "negative" in exc.message


def test_unknown_panel(tmp_path):
    exc = _sheet_error(
        _write_sheet(tmp_path, _with(GOOD_ROWS, 1, "panel", "NK")), panels=["T", "B"]
    )
    assert exc.field == "panel"
    assert exc.sample == "S2"
    assert "'NK'" in exc.message
    assert "T, B" in exc.hint


def test_panels_are_not_checked_without_a_list(tmp_path):
    df = load_sample_sheet(_write_sheet(tmp_path, _with(GOOD_ROWS, 1, "panel", "NK")))
    assert df["panel"].iloc[1] == "NK"


@pytest.mark.parametrize("content", ["", 'sample_id\tpatient_id\n"unclosed\t1\n'])
def test_unparseable_sheet(tmp_path, content):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(content)
    exc = _sheet_error(sheet)
    assert exc.file == str(sheet)


def test_a_quote_that_joins_two_rows_is_an_error_not_a_lost_sample(tmp_path):
    # '"S2' opens a quoted field that runs to the next '"': pandas reads S2 and S3 as one row.
    rows = _with(_with(GOOD_ROWS, 1, "sample_id", '"S2'), 2, "fcs_path", 'fcs/S3.fcs"')
    exc = _sheet_error(_write_sheet(tmp_path, rows, touch=False))
    assert "3 sample lines but 2 rows parsed" in exc.message
    assert "line 3 holds a double quote" in exc.message
    assert exc.sample == '"S2'
    assert "quote" in exc.hint


def test_a_sample_id_too_long_for_a_file_name_is_the_sheets_error(tmp_path):
    long_id = "S" * 240
    exc = _sheet_error(_write_sheet(tmp_path, _with(GOOD_ROWS, 2, "sample_id", long_id)))
    assert "line 4" in exc.message and "200 bytes" in exc.message
    assert exc.sample == long_id and exc.field == "sample_id"
    ok = "é" * 100  # 200 bytes: the longest id allowed
    df = load_sample_sheet(_write_sheet(tmp_path / "ok", _with(GOOD_ROWS, 2, "sample_id", ok)))
    assert df["sample_id"].iloc[2] == ok


def test_blank_and_tab_only_lines_are_counted_as_pandas_reads_them(tmp_path):
    sheet = _write_sheet(tmp_path, GOOD_ROWS)
    sheet.write_text(sheet.read_text() + "\n   \n")  # blank lines: skipped, as pandas does
    assert list(load_sample_sheet(sheet)["sample_id"]) == ["S1", "S2", "S3"]
    sheet.write_text(sheet.read_text() + "\t\t\t\t\t\n")  # a row of empty cells
    assert "empty sample_id on line" in _sheet_error(sheet).message


def test_a_whole_field_in_quotes_is_read_as_its_text(tmp_path):
    df = load_sample_sheet(_write_sheet(tmp_path, _with(GOOD_ROWS, 1, "dose_group", '"30 mg"')))
    assert list(df["sample_id"]) == ["S1", "S2", "S3"]
    assert df["dose_group"].iloc[1] == "30 mg"


def test_a_sheet_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    import os

    fifo = tmp_path / "samples.tsv"
    os.mkfifo(fifo)
    exc = _sheet_error(fifo)  # reading it would block until a writer came
    assert "not a regular file" in exc.message


def test_sheet_without_rows(tmp_path):
    exc = _sheet_error(_write_sheet(tmp_path, [], header=HEADER))
    assert "no samples" in exc.message


# --- load_sample_sheet: missing FCS files ---------------------------------------------


def test_one_missing_fcs_file_is_left_to_check_inputs(tmp_path, caplog):
    """Decision: a missing file is one sample's problem, not the sheet's."""
    sheet = _write_sheet(tmp_path, GOOD_ROWS)
    (tmp_path / "fcs" / "S2.fcs").unlink()
    with caplog.at_level(logging.WARNING, logger="immuno.cohort"):
        df = load_sample_sheet(sheet, ["T", "B"])
    assert list(df["sample_id"]) == ["S1", "S2", "S3"]
    assert df["fcs_path"].iloc[1] == str(tmp_path / "fcs" / "S2.fcs")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "S2" in warned[0] and "S2.fcs" in warned[0] and "does not exist" in warned[0]


def test_no_fcs_file_exists_is_an_error_of_the_sheet(tmp_path):
    sheet = _write_sheet(tmp_path, GOOD_ROWS, touch=False)
    exc = _sheet_error(sheet)
    assert exc.field == "fcs_path"
    assert exc.file == str(sheet)
    assert exc.sample == "S1"
    assert "none of the 3" in exc.message
    assert str(tmp_path) in exc.hint


def test_files_are_not_looked_at_without_check_files(tmp_path):
    df = load_sample_sheet(_write_sheet(tmp_path, GOOD_ROWS, touch=False), check_files=False)
    assert len(df) == 3


# --- check_inputs and gate_cohort on single problems ----------------------------------


@pytest.fixture(scope="session")
def templates(templates_dir):
    return load_templates({"T": templates_dir / "t_cell.yaml", "B": templates_dir / "b_cell.yaml"})


@pytest.fixture(scope="session")
def demo_sheet(demo_cohort) -> pd.DataFrame:
    return load_sample_sheet(demo_cohort / "samples.tsv", ["T", "B"])


def _first(sheet: pd.DataFrame, panel: str) -> pd.Series:
    return sheet[sheet["panel"] == panel].iloc[0]


def _replace_once(path: Path, pattern: bytes, repl: bytes) -> None:
    """Edit TEXT bytes in place, keeping the length (offsets stay valid)."""
    data = path.read_bytes()
    hits = list(re.finditer(pattern, data))
    assert len(hits) == 1, f"{pattern!r} found {len(hits)} times in {path}"
    new = re.sub(pattern, repl, data)
    assert len(new) == len(data)
    path.write_bytes(new)


def test_check_inputs_reports_a_good_file(demo_sheet, templates):
    row = _first(demo_sheet, "T")
    checks = check_inputs(demo_sheet[demo_sheet["sample_id"] == row["sample_id"]], templates)
    rec = checks.iloc[0].to_dict()
    assert rec["status"] == "ok" and rec["error"] == ""
    assert (rec["version"], rec["events"]) == ("FCS3.1", 2000)


def test_check_inputs_reports_a_damaged_event_count(tmp_path, demo_sheet, templates):
    row = _first(demo_sheet, "T").copy()
    path = tmp_path / "bad_tot.fcs"
    shutil.copyfile(row["fcs_path"], path)
    _replace_once(path, rb"\$TOT/2000/", b"$TOT/2x00/")
    row["fcs_path"] = str(path)
    rec = check_inputs(pd.DataFrame([row]), templates).iloc[0]
    assert (rec["status"], rec["error"], rec["field"]) == ("error", "FCSError", "$TOT")
    assert "'2x00'" in rec["message"]


def test_check_inputs_reports_a_panel_without_template(demo_sheet, templates):
    row = _first(demo_sheet, "T").copy()
    row["panel"] = "NK"
    rec = check_inputs(pd.DataFrame([row]), templates).iloc[0]
    assert (rec["status"], rec["error"], rec["field"]) == ("error", "ConfigError", "panel")
    assert "'NK'" in rec["message"]


def test_check_inputs_reports_an_unexpected_fault_and_goes_on(demo_sheet, templates, monkeypatch):
    import immuno.read

    sub = demo_sheet[demo_sheet["panel"] == "T"].iloc[:2]
    real = immuno.read.read_text

    def faulty(path):
        if path == sub["fcs_path"].iloc[0]:
            raise IndexError("reader bug")
        return real(path)

    monkeypatch.setattr(immuno.read, "read_text", faulty)
    checks = check_inputs(sub, templates)
    assert checks["status"].tolist() == ["error", "ok"]
    assert (checks["error"].iloc[0], checks["message"].iloc[0]) == ("IndexError", "reader bug")


def test_gate_cohort_fails_a_sample_whose_gates_cannot_be_exported(
    tmp_path, demo_sheet, templates, monkeypatch
):
    import immuno.cohort
    from immuno.errors import GatingFileError

    sub = demo_sheet[demo_sheet["panel"] == "B"].iloc[:2]
    victim = sub["sample_id"].iloc[1]
    real = immuno.cohort._export_gates

    def export(res, path):
        if res.sample_id == victim:
            raise GatingFileError("gate cannot be written", field="cd19")
        return real(res, path)

    monkeypatch.setattr(immuno.cohort, "_export_gates", export)
    out = tmp_path / "results"
    gate_cohort(
        sub,
        templates,
        check_inputs(sub, templates),
        counts_path=out / "counts.tsv",
        params_path=out / "params.tsv",
        failed_path=out / "failed.tsv",
        gates_dir=out / "gates",
    )
    counts = pd.read_csv(out / "counts.tsv", sep="\t", dtype=str, keep_default_na=False)
    failed = pd.read_csv(out / "failed.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(counts["sample_id"]) == set(sub["sample_id"]) - {victim}
    assert failed["sample_id"].tolist() == [victim]
    rec = failed.iloc[0]
    assert (rec["stage"], rec["error"], rec["field"]) == ("export_gates", "GatingFileError", "cd19")
    assert sorted(p.name for p in (out / "gates").iterdir()) == sorted(
        f"{s}.xml" for s in sub["sample_id"] if s != victim
    )


def test_gate_cohort_reads_ids_from_a_checks_table_typed_as_numbers(tmp_path, templates):
    # pd.read_csv(checks.tsv) without dtype=str turns the ids "101", "102" into numbers
    sheet = pd.DataFrame(
        {
            "sample_id": ["101", "102"],
            "patient_id": ["P1", "P1"],
            "panel": ["T", "B"],
            "fcs_path": ["a.fcs", "b.fcs"],
            "visit_month": [0.0, 0.0],
        }
    )
    checks = pd.DataFrame(
        {
            "sample_id": [101],
            "status": ["error"],
            "error": ["FCSError"],
            "field": ["HEADER"],
            "message": ["not an FCS file"],
            "hint": [""],
        }
    )
    out = tmp_path / "results"
    gate_cohort(
        sheet,
        templates,
        checks,
        counts_path=out / "counts.tsv",
        params_path=out / "params.tsv",
        failed_path=out / "failed.tsv",
        gates_dir=out / "gates",
    )
    failed = pd.read_csv(out / "failed.tsv", sep="\t", dtype=str, keep_default_na=False)
    by_id = failed.set_index("sample_id")
    assert by_id.loc["101", "message"] == "not an FCS file"
    assert by_id.loc["101", "field"] == "HEADER"
    assert "missing from the input check" in by_id.loc["102", "message"]
    assert (by_id["stage"] == "input_check").all()


# --- a cohort with bad input ------------------------------------------------------------


BAD = {
    # kind: (stage, error class, field, words of the message)
    "truncated": ("gating", "FCSError", "$TOT", ["truncated"]),
    "random_bytes": ("input_check", "FCSError", "HEADER", ["shorter than the 58-byte"]),
    "renamed_marker": ("input_check", "PanelError", "CD4", ["'CD4'", "not found"]),
    "missing_file": ("input_check", "FCSError", "fcs_path", ["does not exist"]),
}


def _tree_digest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


def _leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*") if p.name.endswith(".tmp") or "~" in p.name]


@pytest.fixture(scope="session")
def bad_cohort(tmp_path_factory, demo_cohort, templates):
    """Two patients of the demo cohort, four samples of them broken; gated once."""
    root = tmp_path_factory.mktemp("bad_cohort")
    study, results = root / "study", root / "results"
    (study / "fcs").mkdir(parents=True)
    demo = pd.read_csv(demo_cohort / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    patients = list(dict.fromkeys(demo["patient_id"]))[:2]
    demo = demo[demo["patient_id"].isin(patients)].reset_index(drop=True)
    for rel in demo["fcs_path"]:
        shutil.copyfile(demo_cohort / rel, study / rel)
    t_ids = list(demo.loc[demo["panel"] == "T", "sample_id"])
    b_ids = list(demo.loc[demo["panel"] == "B", "sample_id"])
    assert len(t_ids) >= 4 and len(b_ids) >= 4
    bad = {"truncated": t_ids[1], "random_bytes": b_ids[1], "renamed_marker": t_ids[2]}
    bad["missing_file"] = b_ids[2]

    fcs = study / "fcs"
    truncated = fcs / f"{bad['truncated']}.fcs"
    os.truncate(truncated, truncated.stat().st_size // 2)  # HEADER and TEXT intact, DATA cut
    (fcs / f"{bad['random_bytes']}.fcs").write_bytes(np.random.default_rng(5).bytes(10))
    _replace_once(fcs / f"{bad['renamed_marker']}.fcs", rb"(\$P\d+S/)CD4/", rb"\1CDX/")
    (fcs / f"{bad['missing_file']}.fcs").unlink()
    demo.loc[demo["sample_id"] == bad["missing_file"], "fcs_path"] = "fcs/not_transferred.fcs"
    demo.to_csv(study / "samples.tsv", sep="\t", index=False)

    before = _tree_digest(study)
    # the workflow's steps, in order; nothing may raise
    sheet = load_sample_sheet(study / "samples.tsv", ["T", "B"])
    checks = check_inputs(sheet, templates)
    gate_cohort(
        sheet,
        templates,
        checks,
        counts_path=results / "gating" / "gating_counts.tsv",
        params_path=results / "gating" / "gate_params.tsv",
        failed_path=results / "failed_samples.tsv",
        gates_dir=results / "gates",
        workers=1,
    )

    def read(rel):
        return pd.read_csv(results / rel, sep="\t", dtype={"sample_id": str}, keep_default_na=False)

    return {
        "study": study,
        "results": results,
        "sheet": sheet,
        "checks": checks,
        "bad": bad,
        "good": [s for s in sheet["sample_id"] if s not in bad.values()],
        "before": before,
        "counts": read("gating/gating_counts.tsv"),
        "failed": read("failed_samples.tsv").set_index("sample_id"),
        "params": read("gating/gate_params.tsv"),
    }


def test_the_sheet_keeps_the_row_whose_file_is_missing(bad_cohort):
    assert bad_cohort["bad"]["missing_file"] in set(bad_cohort["sheet"]["sample_id"])


def test_input_check_catches_all_but_the_truncated_data(bad_cohort):
    status = bad_cohort["checks"].set_index("sample_id")["status"].to_dict()
    bad = bad_cohort["bad"]
    assert status[bad["truncated"]] == "ok"  # HEADER and TEXT are intact
    for kind in ("random_bytes", "renamed_marker", "missing_file"):
        assert status[bad[kind]] == "error", kind
    assert all(status[s] == "ok" for s in bad_cohort["good"])


def test_every_good_sample_has_counts_and_gates(bad_cohort):
    counts, results = bad_cohort["counts"], bad_cohort["results"]
    assert set(counts["sample_id"]) == set(bad_cohort["good"])
    per_sample = counts.groupby("sample_id")["population"].apply(set)
    for sid, pops in per_sample.items():
        assert {"clean", "cells", "singlets", "live", "lymphocytes", "cd3"} <= pops, sid
        assert (results / "gates" / f"{sid}.xml").is_file()
    assert set(bad_cohort["params"]["sample_id"]) <= set(bad_cohort["good"])


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_sample_is_reported_with_stage_error_field_and_cause(bad_cohort, kind):
    stage, error, field, words = BAD[kind]
    sid = bad_cohort["bad"][kind]
    failed = bad_cohort["failed"]
    assert sid in failed.index, f"{kind} sample {sid} is not in failed_samples.tsv"
    rec = failed.loc[sid]
    assert (rec["stage"], rec["error"], rec["field"]) == (stage, error, field)
    for w in words:
        assert w in rec["message"], (kind, rec["message"])
    row = bad_cohort["sheet"].set_index("sample_id").loc[sid]
    assert (rec["patient_id"], rec["panel"], rec["fcs_path"]) == (
        row["patient_id"],
        row["panel"],
        row["fcs_path"],
    )
    assert not (bad_cohort["results"] / "gates" / f"{sid}.xml").exists()


def test_the_renamed_marker_hint_shows_the_files_stains(bad_cohort):
    rec = bad_cohort["failed"].loc[bad_cohort["bad"]["renamed_marker"]]
    assert "=CDX" in rec["hint"]


def test_every_sample_is_in_exactly_one_of_counts_and_failed(bad_cohort):
    counted = set(bad_cohort["counts"]["sample_id"])
    failed = set(bad_cohort["failed"].index)
    assert not counted & failed
    assert counted | failed == set(bad_cohort["sheet"]["sample_id"])
    assert failed == set(bad_cohort["bad"].values())


def test_failed_samples_table_columns(bad_cohort):
    assert list(bad_cohort["failed"].reset_index().columns) == [
        "sample_id",
        "patient_id",
        "panel",
        "fcs_path",
        "stage",
        "error",
        "field",
        "message",
        "hint",
    ]


def test_inputs_are_unchanged(bad_cohort):
    assert _tree_digest(bad_cohort["study"]) == bad_cohort["before"]


def test_no_temporary_files_are_left_behind(bad_cohort):
    assert _leftovers(bad_cohort["study"], bad_cohort["results"]) == []
    hidden = [p for p in bad_cohort["results"].rglob(".*")]
    assert hidden == []


def test_outputs_have_the_usual_permissions(bad_cohort):
    umask = os.umask(0)
    os.umask(umask)
    for rel in ["failed_samples.tsv", "gating/gating_counts.tsv", "gating/gate_params.tsv"]:
        mode = (bad_cohort["results"] / rel).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, rel


# --- atomic outputs (immuno.util, through which every table is written) ----------------


def test_atomic_path_writes_on_success(tmp_path):
    target = tmp_path / "new" / "table.tsv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("a\tb\n")
        assert not target.exists()  # nothing appears before the writer is done
    assert target.read_text() == "a\tb\n"
    assert list(target.parent.iterdir()) == [target]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_path_leaves_no_partial_file_when_the_writer_raises(tmp_path, exc):
    target = tmp_path / "table.tsv"
    with pytest.raises(type(exc)):
        with atomic_path(target) as tmp:
            tmp.write_text("half a ta")
            raise exc
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("finished\n")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "finished\n"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_removes_what_a_killed_writer_left(tmp_path):
    """A writer killed outright (SIGKILL, a segfault on a full disk) leaves its temporary
    file; the next successful write of the same target removes it, and nobody else's."""
    target = tmp_path / "T.h5ad"
    stale = tmp_path / ".T.h5ad.k1l2e3d4.tmp"
    other = tmp_path / ".B.h5ad.k1l2e3d4.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]


def test_write_tsv_leaves_no_partial_file_when_the_frame_fails_to_write(tmp_path):
    class HalfWritten:
        def to_csv(self, path, **kwargs):
            Path(path).write_text("sample_id\tcount\nS1\t")
            raise OSError("disk full")

    target = tmp_path / "counts.tsv"
    with pytest.raises(OSError, match="disk full"):
        write_tsv(HalfWritten(), target)
    assert list(tmp_path.iterdir()) == []


def test_write_tsv_writes_nan_as_empty_and_no_index(tmp_path):
    target = write_tsv(pd.DataFrame({"a": [1.5, np.nan], "b": ["x", ""]}), tmp_path / "t.tsv")
    assert target.read_text() == "a\tb\n1.5\tx\n\t\n"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_have_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_tsv(pd.DataFrame({"a": [1]}), tmp_path / "t.tsv")
        with atomic_path(tmp_path / "u.txt") as tmp:
            tmp.write_text("x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    for name in ("t.tsv", "u.txt"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask == plain.stat().st_mode & 0o777, name


def test_the_run_summary_says_what_was_done_what_failed_and_what_to_review(tmp_path):
    from immuno.cohort import run_summary

    res = tmp_path / "results"
    assert "no samples gated yet" in run_summary(res)
    (res / "review").mkdir(parents=True)
    (res / "review" / "index.html").write_text("")
    pd.DataFrame(
        {
            "sample_id": ["0001", "0001", "0002", "0003"],
            "population": ["live", "cd3", "live", "live"],
            "count": [10, 5, 10, 10],
            "qc_flag": ["", "upstream_review(live)", "corrected", "excluded"],
        }
    ).to_csv(res / "counts.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "sample_id": [f"S{i}" for i in range(12)],
            "stage": "input_check",
            "error": "FCSError",
            "message": "FCS file does not exist",
        }
    ).to_csv(res / "failed_samples.tsv", sep="\t", index=False)
    text = run_summary(res, limit=3)
    assert text.splitlines()[0] == f"3 of 15 samples gated ({res / 'counts.tsv'})"
    # a reviewer's word (corrected, excluded) is settled; an ordinary flag is not
    assert f"1 sample with a value to review: 0001 (see {res}/review/index.html#flagged)" in text
    assert (
        "12 samples failed" in text
        and "  S0 [input_check] FCSError: FCS file does not exist" in text
    )
    assert text.splitlines()[-1] == "  ... and 9 more"


def test_progress_lines_are_spaced_in_time_and_end_at_the_total(capsys):
    from immuno.util import Progress

    p = Progress("gating T", 5, every=3600)
    assert list(p.wrap(range(5))) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err.splitlines() == ["gating T: 1/5 (20%)", "gating T: 5/5 (100%)"]


def test_an_fcs_path_too_long_to_look_at_is_reported_not_raised(tmp_path, caplog):
    """Path.is_file raised a bare OSError (ENAMETOOLONG) out of load_sample_sheet."""
    good = tmp_path / "a.fcs"
    good.write_bytes(b"FCS3.1")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(
        "sample_id\tpatient_id\tdose_group\tvisit_month\tpanel\tfcs_path\n"
        f"S1\tP1\t30mg\t0\tT\t{good}\n"
        f"S2\tP1\t30mg\t4.5\tT\t{tmp_path}/{'x' * 300}.fcs\n"
    )
    with caplog.at_level(logging.WARNING):
        df = load_sample_sheet(sheet, ["T"])
    assert list(df["sample_id"]) == ["S1", "S2"]
    assert "S2" in caplog.text and "File name too long" in caplog.text
