"""Counts: from per-sample gating tables to the tidy cohort table.

``cohort_table(gating, sheet)`` returns one row per sample and population with
the columns of ``results/counts.tsv`` (README, "Contract"):
``sample_id, patient_id, dose_group, visit_month, panel, population, parent,
count, parent_count, percent_of_parent, percent_of_lymphocytes, absolute_count,
qc_flag, qc_note``: ``qc_flag`` says why a person must look at the value (empty:
nothing to review), ``qc_note`` what was done that needs no action.

Percentages are rounded to :data:`DECIMALS` (4) decimal places and absolute counts
(x10^9/L) to :data:`ABSOLUTE_DECIMALS` (6: a Treg count of 0.0037 x10^9/L keeps 4
significant digits), in every table and every step that reads them (the statistics, the
figures); counts are whole numbers of events.

``percent_of_lymphocytes`` is the population's events as a percentage of the
sample's ``lymphocytes`` population (defined for it and its descendants, empty
above it). ``absolute_count`` (x10^9 cells/L, dual-platform) is
``percent_of_lymphocytes / 100 * lymphocyte_count`` where the sample sheet gives
the full-blood-count ``lymphocyte_count`` (x10^9/L).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import SampleSheetError

__all__ = ["ABSOLUTE_DECIMALS", "COUNT_COLUMNS", "DECIMALS", "cohort_table", "descendants"]

#: Decimal places of percentages (of parent, of lymphocytes; percentage points).
DECIMALS = 4
#: Decimal places of absolute counts (x10^9 cells/L).
ABSOLUTE_DECIMALS = 6

COUNT_COLUMNS = [
    "sample_id",
    "patient_id",
    "dose_group",
    "visit_month",
    "panel",
    "population",
    "parent",
    "count",
    "parent_count",
    "percent_of_parent",
    "percent_of_lymphocytes",
    "absolute_count",
    "qc_flag",
    "qc_note",
]


def descendants(parents: dict[str, str], root: str) -> set[str]:
    """``root`` and every population below it, from a ``{population: parent}`` map."""
    out = {root}
    changed = True
    while changed:
        changed = False
        for pop, par in parents.items():
            if par in out and pop not in out:
                out.add(pop)
                changed = True
    return out


def cohort_table(
    gating: pd.DataFrame, sheet: pd.DataFrame, *, lymphocytes: str = "lymphocytes"
) -> pd.DataFrame:
    """Join per-sample gating counts with the sample sheet into the cohort table.

    Parameters
    ----------
    gating
        Columns ``sample_id, population, parent, count, parent_count,
        percent_of_parent, qc_flag`` (one row per sample and population).
    sheet
        The sample sheet (``sample_id, patient_id, dose_group, visit_month,
        panel`` and optionally ``lymphocyte_count`` in x10^9/L).
    lymphocytes
        Name of the population that is the denominator of
        ``percent_of_lymphocytes``.

    Raises
    ------
    SampleSheetError
        A gated sample is not in the sheet (ids are compared as text).
    """
    meta_cols = ["sample_id", "patient_id", "dose_group", "visit_month", "panel"]
    meta = sheet[meta_cols + (["lymphocyte_count"] if "lymphocyte_count" in sheet else [])]
    # Ids are text: a table read back without dtype=str turns "12" into 12.
    meta = meta.assign(sample_id=meta["sample_id"].astype(str))
    gating = gating.assign(sample_id=gating["sample_id"].astype(str))
    unknown = sorted(set(gating["sample_id"]) - set(meta["sample_id"]))
    if unknown:
        raise SampleSheetError(
            f"{len(unknown)} gated sample(s) are not in the sample sheet: {', '.join(unknown[:5])}",
            sample=unknown[0],
            field="sample_id",
            hint="gate again after editing the sheet; read tables with dtype=str for ids",
        )
    df = gating.merge(meta, on="sample_id", how="left", validate="many_to_one")
    pct_lymph = np.full(len(df), np.nan)
    for _sid, idx in df.groupby("sample_id", sort=False).groups.items():
        sub = df.loc[idx]
        parents = dict(zip(sub["population"], sub["parent"], strict=True))
        if lymphocytes not in parents:
            continue
        below = descendants(parents, lymphocytes)
        n_lymph = float(sub.loc[sub["population"] == lymphocytes, "count"].iloc[0])
        if n_lymph <= 0:
            continue
        inside = sub["population"].isin(below).to_numpy()
        pos = df.index.get_indexer(idx)
        pct_lymph[pos[inside]] = 100.0 * sub["count"].to_numpy()[inside] / n_lymph
    df["percent_of_lymphocytes"] = pct_lymph
    if "lymphocyte_count" in df:
        df["absolute_count"] = df["percent_of_lymphocytes"] / 100.0 * df["lymphocyte_count"]
    else:
        df["absolute_count"] = np.nan
    for col in ("percent_of_parent", "percent_of_lymphocytes"):
        df[col] = pd.to_numeric(df[col]).round(DECIMALS)
    df["absolute_count"] = pd.to_numeric(df["absolute_count"]).round(ABSOLUTE_DECIMALS)
    df["qc_flag"] = df["qc_flag"].fillna("")
    df["qc_note"] = df["qc_note"].fillna("") if "qc_note" in df else ""
    return (
        df[COUNT_COLUMNS]
        .sort_values(["panel", "patient_id", "visit_month", "sample_id"], kind="stable")
        .reset_index(drop=True)
    )
