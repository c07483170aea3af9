"""Counts: the tidy cohort table, percent of lymphocytes and absolute counts."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from immuno.count import COUNT_COLUMNS, cohort_table, descendants
from immuno.errors import SampleSheetError

# One tree per sample: root -> cells -> {lymphocytes -> cd3 -> {cd4, cd8}, monocytes}
TREE = [
    ("cells", "root"),
    ("lymphocytes", "cells"),
    ("cd3", "lymphocytes"),
    ("cd4", "cd3"),
    ("cd8", "cd3"),
    ("monocytes", "cells"),
]


def _gating(sample_id: str, counts: dict[str, int], flags: dict[str, str] | None = None):
    parents = dict(TREE)
    rows = []
    for pop, par in TREE:
        if pop not in counts:
            continue
        n_par = counts.get(par, 1000)
        rows.append(
            {
                "sample_id": sample_id,
                "population": pop,
                "parent": par,
                "count": counts[pop],
                "parent_count": n_par,
                "percent_of_parent": 100.0 * counts[pop] / n_par if n_par else np.nan,
                "qc_flag": (flags or {}).get(pop, ""),
            }
        )
    assert set(counts) <= set(parents)
    return pd.DataFrame(rows)


def _sheet(rows: list[tuple]) -> pd.DataFrame:
    cols = ["sample_id", "patient_id", "dose_group", "visit_month", "panel", "lymphocyte_count"]
    return pd.DataFrame(rows, columns=cols)


S1 = {"cells": 1000, "lymphocytes": 400, "cd3": 300, "cd4": 200, "cd8": 80, "monocytes": 150}


@pytest.fixture
def table():
    gating = _gating("S1", S1)
    sheet = _sheet([("S1", "P1", "30mg", 0.0, "T", 1.5)])
    return cohort_table(gating, sheet)


@pytest.fixture
def one_sample(table):
    return table.set_index("population")


def test_columns_are_the_contract_in_order(table):
    assert list(table.columns) == COUNT_COLUMNS
    assert COUNT_COLUMNS[-4:] == ["percent_of_lymphocytes", "absolute_count", "qc_flag", "qc_note"]


def test_percent_of_lymphocytes_by_hand(one_sample):
    pct = one_sample["percent_of_lymphocytes"]
    assert pct["lymphocytes"] == pytest.approx(100.0)
    assert pct["cd3"] == pytest.approx(75.0)  # 300 / 400
    assert pct["cd4"] == pytest.approx(50.0)  # 200 / 400
    assert pct["cd8"] == pytest.approx(20.0)  # 80 / 400


def test_percent_of_lymphocytes_is_empty_above_and_beside_lymphocytes(one_sample):
    pct = one_sample["percent_of_lymphocytes"]
    assert np.isnan(pct["cells"])  # the parent
    assert np.isnan(pct["monocytes"])  # a sibling branch


def test_absolute_count_is_percent_of_lymphocytes_times_lymphocyte_count(one_sample):
    abs_ = one_sample["absolute_count"]
    assert abs_["lymphocytes"] == pytest.approx(1.5)
    assert abs_["cd3"] == pytest.approx(1.125)  # 75 % of 1.5 x10^9/L
    assert abs_["cd4"] == pytest.approx(0.75)
    assert abs_["cd8"] == pytest.approx(0.3)
    assert np.isnan(abs_["cells"]) and np.isnan(abs_["monocytes"])


def test_sheet_metadata_and_gating_columns_are_carried(one_sample):
    row = one_sample.loc["cd4"]
    assert (row["sample_id"], row["patient_id"], row["dose_group"], row["panel"]) == (
        "S1",
        "P1",
        "30mg",
        "T",
    )
    assert row["visit_month"] == 0.0
    assert row["parent"] == "cd3" and row["count"] == 200 and row["parent_count"] == 300
    assert row["percent_of_parent"] == pytest.approx(200 / 3)


def test_zero_lymphocytes_give_nan_not_inf():
    counts = {"cells": 1000, "lymphocytes": 0, "cd3": 0, "cd4": 0, "cd8": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the way
        out = cohort_table(_gating("S1", counts), _sheet([("S1", "P1", "g", 0.0, "T", 1.5)]))
    assert out["percent_of_lymphocytes"].isna().all()
    assert out["absolute_count"].isna().all()
    assert not np.isinf(out[["percent_of_lymphocytes", "absolute_count"]].to_numpy()).any()


def test_sample_without_a_lymphocyte_gate_has_no_percent_of_lymphocytes():
    counts = {"cells": 1000, "monocytes": 150}
    out = cohort_table(_gating("S1", counts), _sheet([("S1", "P1", "g", 0.0, "T", 1.5)]))
    assert out["percent_of_lymphocytes"].isna().all()
    assert out["absolute_count"].isna().all()


def test_missing_lymphocyte_count_column_gives_nan_absolute_counts():
    sheet = _sheet([("S1", "P1", "g", 0.0, "T", 1.5)]).drop(columns="lymphocyte_count")
    out = cohort_table(_gating("S1", S1), sheet)
    assert list(out.columns) == COUNT_COLUMNS
    out = out.set_index("population")
    assert out["absolute_count"].isna().all()
    assert out.loc["cd4", "percent_of_lymphocytes"] == pytest.approx(50.0)


def test_empty_lymphocyte_count_gives_nan_for_that_sample_only():
    gating = pd.concat([_gating("S1", S1), _gating("S2", S1)], ignore_index=True)
    sheet = _sheet([("S1", "P1", "g", 0.0, "T", 2.0), ("S2", "P1", "g", 1.5, "T", np.nan)])
    out = cohort_table(gating, sheet).set_index(["sample_id", "population"])
    assert out.loc[("S1", "cd4"), "absolute_count"] == pytest.approx(1.0)
    assert np.isnan(out.loc[("S2", "cd4"), "absolute_count"])
    assert out.loc[("S2", "cd4"), "percent_of_lymphocytes"] == pytest.approx(50.0)


def test_each_sample_uses_its_own_lymphocytes_and_blood_count():
    s2 = {"cells": 500, "lymphocytes": 100, "cd3": 10, "cd4": 1, "cd8": 9}
    gating = pd.concat([_gating("S1", S1), _gating("S2", s2)], ignore_index=True)
    sheet = _sheet([("S1", "P1", "g", 0.0, "T", 1.5), ("S2", "P2", "g", 0.0, "T", 0.4)])
    out = cohort_table(gating, sheet).set_index(["sample_id", "population"])
    assert out.loc[("S2", "cd3"), "percent_of_lymphocytes"] == pytest.approx(10.0)
    assert out.loc[("S2", "cd8"), "absolute_count"] == pytest.approx(0.09 * 0.4)
    assert out.loc[("S1", "cd3"), "absolute_count"] == pytest.approx(1.125)


def test_denominator_population_can_be_renamed():
    gating = _gating("S1", S1)
    out = cohort_table(gating, _sheet([("S1", "P1", "g", 0.0, "T", 1.0)]), lymphocytes="cd3")
    out = out.set_index("population")
    assert out.loc["cd4", "percent_of_lymphocytes"] == pytest.approx(200 / 3)
    assert np.isnan(out.loc["lymphocytes", "percent_of_lymphocytes"])


def test_rows_are_sorted_by_panel_patient_visit_sample_keeping_the_tree_order():
    gating = pd.concat(
        [_gating("B2", S1), _gating("T2", S1), _gating("T1", S1), _gating("B1", S1)],
        ignore_index=True,
    )
    sheet = _sheet(
        [
            ("T1", "P1", "g", 0.0, "T", 1.0),
            ("T2", "P1", "g", 1.5, "T", 1.0),
            ("B1", "P2", "g", 0.0, "B", 1.0),
            ("B2", "P1", "g", 4.5, "B", 1.0),
        ]
    )
    out = cohort_table(gating, sheet)
    order = list(dict.fromkeys(out["sample_id"]))
    assert order == ["B2", "B1", "T1", "T2"]
    assert list(out.loc[out["sample_id"] == "T1", "population"]) == [p for p, _ in TREE]
    assert list(out.index) == list(range(len(out)))


def test_missing_qc_flag_becomes_empty_text():
    gating = _gating("S1", S1, flags={"cd4": "default_gate"})
    gating.loc[gating["population"] == "cd8", "qc_flag"] = np.nan
    out = cohort_table(gating, _sheet([("S1", "P1", "g", 0.0, "T", 1.0)]))
    flags = dict(zip(out["population"], out["qc_flag"], strict=True))
    assert flags["cd4"] == "default_gate"
    assert flags["cd8"] == ""


def test_numeric_sample_ids_read_back_from_a_table_still_join():
    # pd.read_csv without dtype=str turns the id "12" into the number 12
    gating = _gating("12", S1).assign(sample_id=12)
    out = cohort_table(gating, _sheet([("12", "P1", "g", 0.0, "T", 1.0)]))
    assert (out["patient_id"] == "P1").all()
    assert out["sample_id"].tolist() == ["12"] * len(out)


def test_gated_sample_missing_from_the_sheet_is_a_sample_sheet_error():
    gating = pd.concat([_gating("S1", S1), _gating("S9", S1)], ignore_index=True)
    with pytest.raises(SampleSheetError) as info:
        cohort_table(gating, _sheet([("S1", "P1", "g", 0.0, "T", 1.0)]))
    assert info.value.sample == "S9"
    assert info.value.field == "sample_id"


def test_descendants():
    parents = dict(TREE)
    assert descendants(parents, "lymphocytes") == {"lymphocytes", "cd3", "cd4", "cd8"}
    assert descendants(parents, "cd4") == {"cd4"}
    assert descendants(parents, "cells") == {p for p, _ in TREE}
    # order of the map does not matter
    assert descendants(dict(reversed(TREE)), "lymphocytes") == {"lymphocytes", "cd3", "cd4", "cd8"}


def test_percentages_and_absolute_counts_have_fixed_decimals(tmp_path):
    """counts.tsv mixed 89.46 and 81.78866587957496: every percentage is rounded to
    DECIMALS places and every absolute count to ABSOLUTE_DECIMALS, in memory as in the
    file read back."""
    from immuno.count import ABSOLUTE_DECIMALS, DECIMALS
    from immuno.util import read_tsv, write_tsv

    counts = {"cells": 3000, "lymphocytes": 2999, "cd3": 1000, "cd4": 333, "cd8": 77}
    table = cohort_table(_gating("S1", counts), _sheet([("S1", "P1", "30mg", 0.0, "T", 1.2345)]))
    write_tsv(table, tmp_path / "counts.tsv")
    cols = ("percent_of_parent", "percent_of_lymphocytes", "absolute_count")
    back = read_tsv(tmp_path / "counts.tsv", na_values=dict.fromkeys(cols, [""]))
    for col in cols:
        places = ABSOLUTE_DECIMALS if col == "absolute_count" else DECIMALS
        values = back[col].dropna().to_numpy()
        assert len(values) and np.array_equal(values, np.round(values, places)), col
        assert np.array_equal(values, table[col].dropna().to_numpy()), col
    cd4 = back.set_index("population").loc["cd4"]
    assert cd4["percent_of_parent"] == 33.3 and cd4["percent_of_lymphocytes"] == 11.1037
    assert cd4["absolute_count"] == 0.137075  # 333 / 2999 x 1.2345, not 0.1371
