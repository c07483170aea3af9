"""Statistical tests on the cohort table (the ``test`` verb; not a pytest module).

Calling convention: every test is ``test(counts, *, populations, metric, baseline,
followup, by) -> DataFrame``, one row per population (and group), where ``counts`` is the
cohort table ``results/counts.tsv`` (one row per sample and population; see
:func:`patient_table`) and ``metric`` names the column to test, e.g.
``"percent_of_parent"`` (percent, 0-100) or ``"absolute_count"`` (x10^9 cells/L).
Visits are months from entry (``visit_month``, float).

This follows the ALEVIATE analysis (Methods, "Statistical analysis"): medians and
interquartile ranges, entry compared with the 4.5-month visit within patients (Wilcoxon
signed-rank test, :func:`paired_change`), and the two dosing regimens compared with the
Mann-Whitney test (:func:`change_between_groups`, on the per-patient change; with more
than two groups every pair is compared). Two-sided
throughout; p-values are adjusted with Benjamini-Hochberg (:func:`bh_adjust`) across the
populations tested.

Rules shared by every test:

* Rows that need review (a ``qc_flag`` other than ``corrected``: the population's gate,
  or a gate above it, was flagged ``review``, or could not be placed, ``fail``, or a
  reviewer excluded it, ``excluded``/``upstream_excluded(...)``) are excluded before
  anything else; how many were excluded is logged and reported in the ``n_qc_excluded``
  column. A gate a reviewer set (``corrected``) is kept. :func:`write_stats` with
  ``include_review=True`` keeps the reviewed rows and excludes only ``fail`` and the
  reviewer's exclusions.
* One value per patient, population and visit: two rows for the same (e.g. two tubes, or
  a gate shared by two panels such as ``lymphocytes`` in the T and the B tube) is an
  :class:`~immuno.errors.ImmunoError`; filter ``counts`` on ``panel`` first.
* A patient belongs to one group (``by`` column) for the whole table.
* The p-value method is chosen explicitly and named in the ``method`` column:
  ``"exact"`` when there are no ties (and, for the signed-rank test, no zero
  differences) and n <= 50; ``"exact permutation (ties or zeros)"`` (exhaustive, so
  deterministic) when there are ties but the permutation space is small (at most 2^16
  sign flips or group assignments); otherwise ``"asymptotic (normal, tie- and
  continuity-corrected)"``. If every paired difference is zero, p is 1 (``"no non-zero
  differences"``). Differences are rounded to 12
  significant digits relative to their largest magnitude before ranking, so that
  floating-point noise neither creates nor hides ties.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .corrections import FLAG_CORRECTED, FLAG_EXCLUDED
from .errors import ConfigError, ImmunoError
from .util import write_tsv

__all__ = [
    "POOLED",
    "PAIRED_COLUMNS",
    "BETWEEN_COLUMNS",
    "bh_adjust",
    "failed_qc",
    "keep_reviewed",
    "patient_table",
    "paired_change",
    "change_between_groups",
    "write_stats",
]

log = logging.getLogger(__name__)

#: The ``group`` label of the rows that pool every patient.
POOLED = "all"

#: Columns of :func:`paired_change`, in order.
PAIRED_COLUMNS = [
    "group",
    "population",
    "metric",
    "baseline_month",
    "followup_month",
    "n_pairs",
    "n_excluded",
    "median_baseline",
    "q1_baseline",
    "q3_baseline",
    "median_followup",
    "q1_followup",
    "q3_followup",
    "median_change",
    "statistic",
    "p_value",
    "method",
    "p_adjusted",
    "n_qc_excluded",
]

#: Columns of :func:`change_between_groups`, in order.
BETWEEN_COLUMNS = [
    "population",
    "metric",
    "group_a",
    "group_b",
    "n_a",
    "n_b",
    "median_change_a",
    "median_change_b",
    "statistic",
    "p_value",
    "method",
    "p_adjusted",
    "n_qc_excluded",
]

_BASE_COLUMNS = ("patient_id", "visit_month", "population", "qc_flag")
_VISIT_DECIMALS = 6  # visit months are compared after rounding to 1e-6 month
_EXACT_MAX_N = 50  # exact null distribution up to this sample size (no ties)
_PERMUTATION_MAX = 2**16  # exhaustive permutation up to this many arrangements

_EXACT = "exact"
_PERMUTATION = "exact permutation (ties or zeros)"
_ASYMPTOTIC = "asymptotic (normal, tie- and continuity-corrected)"
_TOO_FEW_PAIRS = "too few pairs"
#: ``method`` of a test whose population has no row in the cohort table.
NO_VALUES = "no values (not in the cohort table)"
_TOO_FEW_PATIENTS = "too few patients"
_ALL_ZERO = "no non-zero differences"


# --------------------------------------------------------------------------- helpers


def bh_adjust(p_values: Iterable[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate).

    Parameters
    ----------
    p_values
        Raw p-values in [0, 1]; NaN entries (untestable) are ignored and stay NaN, and
        the family size is the number of non-NaN values.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape and order as the input, each ``min(1, min over
        j >= rank of p_(j) * m / j)``.
    """
    p = np.asarray(
        list(p_values) if not isinstance(p_values, np.ndarray) else p_values, dtype=float
    )
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    values = p[ok]
    if np.any((values < 0) | (values > 1)):
        raise ImmunoError(
            "p-values must lie in [0, 1]",
            field="p_value",
            hint="pass raw p-values, not statistics or -log10(p)",
        )
    order = np.argsort(values, kind="stable")
    scaled = values[order] * m / np.arange(1, m + 1)
    scaled = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(scaled, 1.0)
    out[ok] = adjusted
    return out


def _flags(counts: pd.DataFrame) -> pd.Series:
    """``qc_flag`` of each row as a list of its ``;``-separated reasons."""
    _require_columns(counts, ["qc_flag"])
    text = counts["qc_flag"].fillna("").astype(str)
    return text.map(lambda t: [f.strip() for f in t.split(";") if f.strip()])


def _always_out(flag: str) -> bool:
    """A reason no setting keeps: no gate, or a reviewer's exclusion (here or above)."""
    return flag in ("fail", FLAG_EXCLUDED) or flag.startswith("upstream_excluded(")


def failed_qc(counts: pd.DataFrame) -> pd.Series:
    """Boolean mask of the rows excluded from statistics: a ``qc_flag`` reason other
    than ``corrected``.

    ``qc_flag`` is ``""`` (or NaN, as read back from a TSV) for a row that needs no
    review, else a ``;``-separated list of the reasons to look (``fail`` among them
    when no gate could be placed). ``corrected`` says a reviewer set the gate: that
    value is the final word, and kept.
    """
    return _flags(counts).map(lambda fs: any(f != FLAG_CORRECTED for f in fs)).astype(bool)


def keep_reviewed(counts: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``counts`` whose review flags no longer exclude rows (only ``fail`` and
    a reviewer's exclusions still do)."""
    flags = _flags(counts).map(lambda fs: ";".join(f for f in fs if _always_out(f)))
    return counts.assign(qc_flag=flags)


def _require_columns(counts: pd.DataFrame, columns: Iterable[str]) -> None:
    if not isinstance(counts, pd.DataFrame):
        raise ImmunoError(
            f"the cohort table must be a pandas DataFrame, not {type(counts).__name__}",
            hint="read results/counts.tsv with pandas.read_csv(path, sep='\\t')",
        )
    missing = [c for c in columns if c not in counts.columns]
    if missing:
        raise ImmunoError(
            f"the cohort table lacks column(s) {', '.join(missing)}",
            field=missing[0],
            hint="pass the cohort table results/counts.tsv produced by the count step",
        )


def _visit_key(month: float) -> float:
    return round(float(month), _VISIT_DECIMALS)


def _check_metric(counts: pd.DataFrame, metric: str) -> None:
    if metric not in counts.columns:
        numeric = [c for c in counts.columns if pd.api.types.is_numeric_dtype(counts[c])]
        raise ConfigError(
            f"metric {metric!r} is not a column of the cohort table",
            field=metric,
            hint=f"choose one of {', '.join(map(str, numeric))}",
        )
    if not pd.api.types.is_numeric_dtype(counts[metric]):
        raise ConfigError(
            f"metric {metric!r} is not numeric",
            field=metric,
            hint="test a numeric column such as percent_of_parent or absolute_count",
        )


def _check_populations(counts: pd.DataFrame, populations: Sequence[str]) -> list[str]:
    if isinstance(populations, str):
        populations = [populations]
    populations = list(populations)
    if not populations:
        raise ConfigError(
            "no populations given",
            field="populations",
            hint="name at least one population, e.g. ['cd4']",
        )
    present = set(counts["population"].astype(str))
    unknown = [p for p in populations if p not in present]
    if unknown:
        raise ConfigError(
            f"population(s) {', '.join(unknown)} not in the cohort table",
            field="population",
            hint=f"the table has {', '.join(sorted(present))}",
        )
    if len(set(populations)) != len(populations):
        raise ConfigError(
            "a population is named twice", field="populations", hint="name each population once"
        )
    return populations


def _check_visits(counts: pd.DataFrame, *visits: float) -> None:
    present = sorted({_visit_key(v) for v in counts["visit_month"].dropna()})
    for visit in visits:
        if _visit_key(visit) not in present:
            raise ConfigError(
                f"visit month {visit:g} is not in the cohort table",
                field="visit_month",
                hint=f"the table has visit months {', '.join(f'{v:g}' for v in present)}",
            )


def _roster(counts: pd.DataFrame, by: str) -> pd.Series:
    """Group (``by``) of every patient in the table, QC-failed rows included."""
    _require_columns(counts, [by])
    pairs = counts[["patient_id", by]].drop_duplicates()
    if pairs[by].isna().any():
        patient = str(pairs.loc[pairs[by].isna(), "patient_id"].iloc[0])
        raise ImmunoError(
            f"patient {patient} has no {by}",
            field=by,
            hint=f"fill in {by} for every row of the cohort table",
        )
    multi = pairs["patient_id"].duplicated(keep=False)
    if multi.any():
        patient = str(pairs.loc[multi, "patient_id"].iloc[0])
        groups = sorted(pairs.loc[pairs["patient_id"] == patient, by].astype(str))
        raise ImmunoError(
            f"patient {patient} belongs to several {by} values ({', '.join(groups)})",
            field=by,
            hint=f"a patient keeps one {by} for the whole trial; correct the sample sheet",
        )
    roster = pairs.set_index("patient_id")[by].astype(str)
    if POOLED in set(roster):
        raise ConfigError(
            f"{by} value {POOLED!r} clashes with the label of the pooled rows",
            field=by,
            hint=f"rename that {by} in the sample sheet",
        )
    return roster.sort_index()


def patient_table(
    counts: pd.DataFrame,
    *,
    population: str,
    metric: str,
    by: str = "dose_group",
) -> pd.DataFrame:
    """One row per patient, one column per visit: the values a test or a plot uses.

    Parameters
    ----------
    counts
        The cohort table (``results/counts.tsv``): one row per sample and population with
        at least ``patient_id, visit_month, population, qc_flag``, ``by`` and ``metric``.
    population
        The population to extract, e.g. ``"cd4"``.
    metric
        The value column, e.g. ``"absolute_count"`` (x10^9 cells/L) or
        ``"percent_of_parent"`` (percent).
    by
        The grouping column (dose group).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``patient_id`` (every patient of the table, also those without a row
        for ``population``); column ``by`` (str) then one float column per visit month
        present in the table (sorted), NaN where the visit is missing, failed QC or has
        no value. ``attrs["n_qc_excluded"]`` holds the number of rows of this population
        excluded for failed QC.

    Raises
    ------
    ImmunoError
        If a patient has several rows for the same population and visit, or several
        groups.
    """
    _require_columns(counts, [*_BASE_COLUMNS, by])
    _check_metric(counts, metric)
    roster = _roster(counts, by)
    visits = sorted({_visit_key(v) for v in counts["visit_month"].dropna()})

    rows = counts[counts["population"].astype(str) == population]
    failed = failed_qc(rows)
    n_failed = int(failed.sum())
    if n_failed:
        log.info("%s: excluded %d row(s) flagged for review from statistics", population, n_failed)
    rows = rows[~failed]
    keyed = pd.DataFrame(
        {
            "patient_id": rows["patient_id"].to_numpy(),
            "visit": [_visit_key(v) for v in rows["visit_month"]],
            "value": pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float),
            "sample_id": (
                rows["sample_id"].astype(str).to_numpy()
                if "sample_id" in rows
                else [""] * len(rows)
            ),
        }
    )
    dup = keyed.duplicated(["patient_id", "visit"], keep=False)
    if dup.any():
        first = keyed[dup].iloc[0]
        clash = keyed[
            (keyed["patient_id"] == first["patient_id"]) & (keyed["visit"] == first["visit"])
        ]
        samples = ", ".join(s for s in clash["sample_id"] if s)
        raise ImmunoError(
            f"patient {first['patient_id']} has {len(clash)} rows for population "
            f"{population} at visit month {first['visit']:g}"
            + (f" (samples {samples})" if samples else ""),
            sample=samples.split(", ")[0] if samples else None,
            field="population",
            hint="keep one tube/panel per population and visit, e.g. filter the table "
            "on the panel column, or drop the repeated tube, before testing",
        )
    wide = keyed.pivot(index="patient_id", columns="visit", values="value")
    wide = wide.reindex(index=roster.index, columns=visits)
    wide.columns = [float(c) for c in wide.columns]
    wide.columns.name = "visit_month"
    wide.insert(0, by, roster)
    wide.attrs["n_qc_excluded"] = n_failed
    return wide


def _round_relative(values: np.ndarray) -> np.ndarray:
    """Round to 12 significant digits relative to the largest magnitude (ties/zeros)."""
    values = np.asarray(values, dtype=float)
    scale = np.max(np.abs(values)) if values.size else 0.0
    if not np.isfinite(scale) or scale == 0:
        return values
    return np.round(values / scale, 12) * scale


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    """(median, lower quartile, upper quartile), linear interpolation (R type 7)."""
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float(med), float(q1), float(q3)


def _signed_rank(diff: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank test of paired differences: (statistic, p, method)."""
    from scipy import stats  # here, not at the top: the gating jobs import this module

    d = _round_relative(diff)
    n = len(d)
    if n < 2:
        return np.nan, np.nan, _TOO_FEW_PAIRS
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        # Every patient unchanged: no evidence of change at all.
        return 0.0, 1.0, _ALL_ZERO
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    zeros = len(nonzero) < n
    if not ties and not zeros and n <= _EXACT_MAX_N:
        res = stats.wilcoxon(d, method="exact")
        method = _EXACT
    elif 2**n <= _PERMUTATION_MAX:
        res = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf))
        method = _PERMUTATION
    else:
        res = stats.wilcoxon(d, method="asymptotic", correction=True)
        method = _ASYMPTOTIC
    return float(res.statistic), float(res.pvalue), method


def _rank_sum(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U test, U of ``a``: (statistic, p, method)."""
    from scipy import stats

    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return np.nan, np.nan, _TOO_FEW_PATIENTS
    both = _round_relative(np.concatenate([a, b]))
    a, b = both[:n_a], both[n_a:]
    ties = len(np.unique(both)) < len(both)
    if not ties and max(n_a, n_b) <= _EXACT_MAX_N:
        res = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
        method = _EXACT
    elif math.comb(n_a + n_b, n_a) <= _PERMUTATION_MAX:
        res = stats.mannwhitneyu(
            a, b, alternative="two-sided", method=stats.PermutationMethod(n_resamples=np.inf)
        )
        method = _PERMUTATION.replace("ties or zeros", "ties")
    else:
        res = stats.mannwhitneyu(
            a, b, alternative="two-sided", method="asymptotic", use_continuity=True
        )
        method = _ASYMPTOTIC
    return float(res.statistic), float(res.pvalue), method


def _adjust_within(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Fill ``p_adjusted`` with BH over the rows of each ``keys`` block."""
    table = table.copy()
    table["p_adjusted"] = np.nan
    if table.empty:
        return table
    for _, idx in table.groupby(keys, sort=False).groups.items():
        table.loc[idx, "p_adjusted"] = bh_adjust(table.loc[idx, "p_value"].to_numpy(float))
    return table


def _n_failed_at(
    counts: pd.DataFrame, population: str, visits: Sequence[float], by: str, group: str | None
) -> int:
    rows = counts[counts["population"].astype(str) == population]
    keys = np.array([_visit_key(v) for v in rows["visit_month"]], dtype=float)
    mask = np.isin(keys, [_visit_key(v) for v in visits]) & failed_qc(rows).to_numpy()
    if group is not None:
        mask &= (rows[by].astype(str) == group).to_numpy()
    return int(mask.sum())


# ----------------------------------------------------------------------------- tests


def paired_change(
    counts: pd.DataFrame,
    *,
    populations: Sequence[str],
    metric: str,
    baseline: float = 0.0,
    followup: float = 4.5,
    by: str = "dose_group",
) -> pd.DataFrame:
    """Wilcoxon signed-rank test of follow-up against baseline, within patients.

    One test per population for each group of ``by`` (sorted) and for all patients
    pooled (``group == "all"``), as in ALEVIATE (entry vs 4.5 months).

    Parameters
    ----------
    counts
        The cohort table (see :func:`patient_table`).
    populations
        Populations to test, e.g. ``["treg", "naive_b"]``; output keeps this order.
    metric
        Value column, e.g. ``"percent_of_parent"`` (percent) or ``"absolute_count"``
        (x10^9 cells/L).
    baseline, followup
        Visit months (months from entry) compared; both must occur in the table.
    by
        Grouping column (dose group).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PAIRED_COLUMNS`. ``n_pairs`` patients have a value at both visits;
        ``n_excluded`` patients of the group lack one of them (missing, QC-failed or
        NaN). Medians and quartiles are in the units of ``metric``;
        ``median_change`` is the median of the per-patient ``followup - baseline``.
        ``statistic`` is the smaller of the signed-rank sums (two-sided); ``method``
        names how the p-value was computed (module docstring); ``p_adjusted`` is
        Benjamini-Hochberg across the populations of one group. With ``n_pairs < 2`` the
        p-value is NaN and ``method`` is ``"too few pairs"``. ``n_qc_excluded`` counts
        rows of that group, population and the two visits excluded for failed QC.
    """
    _require_columns(counts, [*_BASE_COLUMNS, by])
    populations = _check_populations(counts, populations)
    _check_metric(counts, metric)
    _check_visits(counts, baseline, followup)
    if _visit_key(baseline) == _visit_key(followup):
        raise ConfigError(
            "baseline and follow-up are the same visit",
            field="followup",
            hint="compare two different visit months, e.g. 0 and 4.5",
        )
    b_key, f_key = _visit_key(baseline), _visit_key(followup)
    records = []
    for population in populations:
        wide = patient_table(counts, population=population, metric=metric, by=by)
        groups = sorted(set(wide[by]))
        for group in [*groups, POOLED]:
            sub = wide if group == POOLED else wide[wide[by] == group]
            both = sub[[b_key, f_key]].dropna()
            base = both[b_key].to_numpy(float)
            follow = both[f_key].to_numpy(float)
            statistic, p_value, method = _signed_rank(follow - base)
            med_b, q1_b, q3_b = _quartiles(base)
            med_f, q1_f, q3_f = _quartiles(follow)
            records.append(
                {
                    "group": group,
                    "population": population,
                    "metric": metric,
                    "baseline_month": float(baseline),
                    "followup_month": float(followup),
                    "n_pairs": len(both),
                    "n_excluded": len(sub) - len(both),
                    "median_baseline": med_b,
                    "q1_baseline": q1_b,
                    "q3_baseline": q3_b,
                    "median_followup": med_f,
                    "q1_followup": q1_f,
                    "q3_followup": q3_f,
                    "median_change": _quartiles(follow - base)[0],
                    "statistic": statistic,
                    "p_value": p_value,
                    "method": method,
                    "p_adjusted": np.nan,
                    "n_qc_excluded": _n_failed_at(
                        counts,
                        population,
                        [baseline, followup],
                        by,
                        None if group == POOLED else group,
                    ),
                }
            )
    table = pd.DataFrame.from_records(records, columns=PAIRED_COLUMNS)
    order = {g: i for i, g in enumerate([*sorted(set(table["group"]) - {POOLED}), POOLED])}
    table = table.sort_values("group", key=lambda s: s.map(order), kind="stable")
    table = _adjust_within(table, ["group"]).reset_index(drop=True)
    return table[PAIRED_COLUMNS]


def change_between_groups(
    counts: pd.DataFrame,
    *,
    populations: Sequence[str],
    metric: str,
    baseline: float = 0.0,
    followup: float = 4.5,
    by: str = "dose_group",
) -> pd.DataFrame:
    """Mann-Whitney U test of the per-patient change between groups (dosing regimens).

    The change is ``followup - baseline`` per patient (patients lacking either visit
    are left out). With two groups there is one row per population; with more than
    two, every pair of groups is compared (``group_a < group_b``, sorted).

    Parameters
    ----------
    counts
        The cohort table (see :func:`patient_table`).
    populations
        Populations to test; output keeps this order.
    metric
        Value column, e.g. ``"absolute_count"`` (x10^9 cells/L).
    baseline, followup
        Visit months (months from entry).
    by
        Grouping column (dose group); at least two groups must be present.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BETWEEN_COLUMNS`. ``statistic`` is U of ``group_a``
        (two-sided test); medians of change are in the units of ``metric``.
        ``p_adjusted`` is Benjamini-Hochberg across all rows (populations, and group
        pairs when there are more than two groups). Fewer than two patients with a
        change in either group gives p NaN and method ``"too few patients"``.
    """
    _require_columns(counts, [*_BASE_COLUMNS, by])
    populations = _check_populations(counts, populations)
    _check_metric(counts, metric)
    _check_visits(counts, baseline, followup)
    groups = sorted(set(_roster(counts, by)))
    if len(groups) < 2:
        raise ConfigError(
            f"only one {by} ({', '.join(groups)}) in the cohort table",
            field=by,
            hint="a between-group test needs two groups; use paired_change for one group",
        )
    b_key, f_key = _visit_key(baseline), _visit_key(followup)
    records = []
    for population in populations:
        wide = patient_table(counts, population=population, metric=metric, by=by)
        change = (wide[f_key] - wide[b_key]).dropna()
        group_of = wide.loc[change.index, by]
        for i, group_a in enumerate(groups):
            for group_b in groups[i + 1 :]:
                a = change[group_of == group_a].to_numpy(float)
                b = change[group_of == group_b].to_numpy(float)
                statistic, p_value, method = _rank_sum(a, b)
                records.append(
                    {
                        "population": population,
                        "metric": metric,
                        "group_a": group_a,
                        "group_b": group_b,
                        "n_a": len(a),
                        "n_b": len(b),
                        "median_change_a": _quartiles(a)[0],
                        "median_change_b": _quartiles(b)[0],
                        "statistic": statistic,
                        "p_value": p_value,
                        "method": method,
                        "p_adjusted": np.nan,
                        "n_qc_excluded": _n_failed_at(
                            counts, population, [baseline, followup], by, None
                        ),
                    }
                )
    table = pd.DataFrame.from_records(records, columns=BETWEEN_COLUMNS)
    table["p_adjusted"] = bh_adjust(table["p_value"].to_numpy(float))
    return table[BETWEEN_COLUMNS]


# ---------------------------------------------------------------------------- output


def _check_spec(spec: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    if isinstance(spec, Mapping) or isinstance(spec, str) or not len(spec):
        raise ConfigError(
            "the statistics spec must be a non-empty list of {population, metric} entries",
            field="spec",
            hint='e.g. [{"population": "treg", "metric": "percent_of_parent"}]',
        )
    items = []
    for entry in spec:
        if not isinstance(entry, Mapping) or not {"population", "metric"} <= set(entry):
            raise ConfigError(
                f"statistics spec entry {entry!r} lacks population or metric",
                field="spec",
                hint='each entry is {"population": "cd4", "metric": "absolute_count"}',
            )
        items.append((str(entry["population"]), str(entry["metric"])))
    if len(set(items)) != len(items):
        raise ConfigError(
            "a (population, metric) pair is listed twice",
            field="spec",
            hint="list each population and metric once",
        )
    return items


def write_stats(
    counts: pd.DataFrame,
    outdir: str | os.PathLike,
    spec: Sequence[Mapping[str, str]],
    *,
    baseline: float = 0.0,
    followup: float = 4.5,
    by: str = "dose_group",
    include_review: bool = False,
) -> dict[str, Path]:
    """Run the paired and between-group tests of ``spec`` and write three TSV tables.

    Rows flagged for review are left out (counted in ``n_qc_excluded``) unless
    ``include_review``; rows flagged ``fail`` are always left out.

    Parameters
    ----------
    counts
        The cohort table (see :func:`patient_table`).
    outdir
        Output directory, created if needed.
    spec
        List of ``{"population": ..., "metric": ...}``, e.g. treg and naive_b with
        ``percent_of_parent`` (percent), cd4, cd8 and cd19 with ``absolute_count``
        (x10^9 cells/L).
    baseline, followup
        Visit months compared (months from entry).
    by
        Grouping column (dose group).

    Returns
    -------
    dict of str to pathlib.Path
        ``{"paired_by_group": outdir/paired_by_group.tsv, "paired_pooled":
        outdir/paired_pooled.tsv, "between_groups": outdir/between_groups.tsv}``.
        Each file is tab-separated, missing values are empty fields (as in the cohort
        table), and is written atomically. With a single ``by`` group there is no
        between-group test: ``between_groups.tsv`` has its header and no rows (and a
        warning is logged). ``p_adjusted`` is Benjamini-Hochberg across
        every entry of ``spec`` (within each group for the paired tables).

        A population of ``spec`` with no row in the cohort table (every sample of its
        panel failed) does not stop the others: it gets one pooled row with no pairs
        and the method :data:`NO_VALUES`, and a warning is logged.
    """
    items = _check_spec(spec)
    if include_review:
        counts = keep_reviewed(counts)
    kwargs = {"baseline": baseline, "followup": followup, "by": by}
    present = set(counts["population"].astype(str)) if "population" in counts else set()
    absent = [(p, m) for p, m in items if p not in present]
    items = [(p, m) for p, m in items if p in present]
    for p, m in absent:
        log.warning(
            "population %s is not in the cohort table (every sample of its panel failed?): "
            "no %s test",
            p,
            m,
        )
    empty = pd.DataFrame(
        [
            {
                "group": POOLED,
                "population": p,
                "metric": m,
                "baseline_month": baseline,
                "followup_month": followup,
                "n_pairs": 0,
                "n_excluded": 0,
                "n_qc_excluded": 0,
                "method": NO_VALUES,
            }
            for p, m in absent
        ],
        columns=PAIRED_COLUMNS,
    )
    paired = pd.concat(
        [
            *(paired_change(counts, populations=[p], metric=m, **kwargs) for p, m in items),
            empty,
        ],
        ignore_index=True,
    )
    order = {g: i for i, g in enumerate([*sorted(set(paired["group"]) - {POOLED}), POOLED])}
    paired = paired.sort_values("group", key=lambda s: s.map(order), kind="stable")
    paired = _adjust_within(paired, ["group"]).reset_index(drop=True)[PAIRED_COLUMNS]
    groups = sorted(set(_roster(counts, by)))
    if len(groups) < 2:
        # A single-arm study (or a subset of one): the paired tests stand on their own.
        log.warning(
            "only one %s (%s) in the cohort table: no between-group test "
            "(between_groups.tsv has no rows)",
            by,
            ", ".join(map(str, groups)) or "none",
        )
        between = pd.DataFrame(columns=BETWEEN_COLUMNS)
    else:
        between = pd.concat(
            [change_between_groups(counts, populations=[p], metric=m, **kwargs) for p, m in items]
            or [pd.DataFrame(columns=BETWEEN_COLUMNS)],
            ignore_index=True,
        )
        between["p_adjusted"] = bh_adjust(between["p_value"].to_numpy(float))
    n_failed = int(failed_qc(counts).sum())
    if n_failed:
        log.warning(
            "excluded %d row(s) of the cohort table flagged for review from statistics "
            "(statistics.include_review: true keeps them)",
            n_failed,
        )
    outdir = Path(outdir)
    is_pooled = paired["group"] == POOLED
    return {
        "paired_by_group": write_tsv(paired[~is_pooled], outdir / "paired_by_group.tsv"),
        "paired_pooled": write_tsv(paired[is_pooled], outdir / "paired_pooled.tsv"),
        "between_groups": write_tsv(between, outdir / "between_groups.tsv"),
    }
