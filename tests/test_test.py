"""Tests of ``immuno.test`` (statistical tests) on tiny synthetic cohort tables."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immuno.count import COUNT_COLUMNS
from immuno.errors import ConfigError, ImmunoError
from immuno.test import (
    BETWEEN_COLUMNS,
    PAIRED_COLUMNS,
    POOLED,
    bh_adjust,
    change_between_groups,
    failed_qc,
    keep_reviewed,
    paired_change,
    patient_table,
    write_stats,
)

VISITS = (0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 12.0)
COLUMNS = COUNT_COLUMNS


@pytest.fixture(scope="session")
def make_counts():
    """Factory: cohort table from ``{(patient, group): {visit: value}}`` per population.

    ``value`` goes into both ``percent_of_parent`` and ``absolute_count`` (so either
    metric can be tested); ``None`` leaves the visit out, NaN keeps the row with no
    value. ``qc`` maps ``(patient, visit, population)`` to a flag.
    """

    def build(data, *, qc=None, panel="T"):
        qc = qc or {}
        rows = []
        for population, patients in data.items():
            for (patient, group), visits in patients.items():
                for visit, value in visits.items():
                    if value is None:
                        continue
                    rows.append(
                        {
                            "sample_id": f"{patient}_m{visit:g}_{panel}",
                            "patient_id": patient,
                            "dose_group": group,
                            "visit_month": float(visit),
                            "panel": panel,
                            "population": population,
                            "parent": "cd4",
                            "count": 100,
                            "parent_count": 1000,
                            "percent_of_parent": value,
                            "percent_of_lymphocytes": value / 2,
                            "absolute_count": value,
                            "qc_flag": qc.get((patient, visit, population), ""),
                        }
                    )
        return pd.DataFrame(rows, columns=COLUMNS)

    return build


@pytest.fixture(scope="session")
def six_patients(make_counts):
    """6 patients (3 per dose), treg rises by 1..6 points; cd4 differences are null."""
    rise = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 6.0}
    null = {1: -3.0, 2: 3.0, 3: -2.0, 4: 2.0, 5: -1.0, 6: 1.0}
    base = {1: 7.0, 2: 8.0, 3: 6.5, 4: 9.0, 5: 7.5, 6: 5.0}

    def patients(delta):
        return {
            (f"P{i}", "30mg" if i <= 3 else "60mg"): {0.0: base[i], 4.5: base[i] + delta[i]}
            for i in base
        }

    return make_counts({"treg": patients(rise), "cd4": patients(null)})


@pytest.fixture(scope="session")
def random_cohort(make_counts):
    """Seeded cohort of 20 patients with all 8 visits: treg rises strongly, cd8 is noise."""
    rng = np.random.default_rng(20240501)
    treg, cd8 = {}, {}
    for i in range(20):
        key = (f"R{i:02d}", "30mg" if i % 2 else "60mg")
        b_treg, b_cd8 = rng.normal(7.5, 1.0), rng.normal(0.4, 0.05)
        treg[key] = {v: b_treg + (7.0 if v >= 4.5 else 0.0) + rng.normal(0, 0.5) for v in VISITS}
        cd8[key] = {v: b_cd8 + rng.normal(0, 0.05) for v in VISITS}
    return make_counts({"treg": treg, "cd8": cd8})


# ------------------------------------------------------------------------ BH adjust


def test_bh_matches_scipy():
    rng = np.random.default_rng(1)
    for size in (1, 2, 5, 17, 100):
        p = rng.uniform(0, 1, size) ** 3
        np.testing.assert_allclose(bh_adjust(p), stats.false_discovery_control(p))


def test_bh_hand_computed_and_nan_ignored():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5])
    # m = 4: 0.01*4/1 = 0.04, 0.03*4/2 = 0.06, 0.04*4/3 = 0.0533 -> monotone 0.0533
    expected = [0.04, np.nan, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5]
    np.testing.assert_allclose(bh_adjust(p), expected)
    assert np.isnan(bh_adjust([np.nan, np.nan])).all()
    assert bh_adjust([]).shape == (0,)


def test_bh_rejects_out_of_range():
    with pytest.raises(ImmunoError, match=r"\[0, 1\]"):
        bh_adjust([0.2, 1.5])


# --------------------------------------------------------------------- paired test


def test_paired_exact_hand_computed(six_patients):
    out = paired_change(six_patients, populations=["treg", "cd4"], metric="percent_of_parent")
    assert list(out.columns) == PAIRED_COLUMNS
    assert list(out["group"]) == ["30mg", "30mg", "60mg", "60mg", POOLED, POOLED]
    pooled = out[out["group"] == POOLED].set_index("population")
    # All six differences positive: W- = 0, exact two-sided p = 2 / 2**6.
    assert pooled.loc["treg", "p_value"] == pytest.approx(2 / 64)
    assert pooled.loc["treg", "statistic"] == 0
    assert pooled.loc["treg", "method"] == "exact"
    assert pooled.loc["treg", "n_pairs"] == 6
    assert pooled.loc["treg", "n_excluded"] == 0
    assert pooled.loc["treg", "median_change"] == pytest.approx(3.5)
    # Symmetric differences: W+ = W- = 10.5, p = 1.
    assert pooled.loc["cd4", "p_value"] == pytest.approx(1.0)
    assert pooled.loc["cd4", "median_change"] == pytest.approx(0.0)
    # Per group: 3 positive differences, p = 2 / 8.
    by_group = out[out["group"] == "30mg"].set_index("population")
    assert by_group.loc["treg", "p_value"] == pytest.approx(0.25)
    assert by_group.loc["treg", "n_pairs"] == 3


def test_paired_matches_scipy_and_quartiles(six_patients):
    out = paired_change(six_patients, populations=["treg"], metric="absolute_count")
    row = out[out["group"] == POOLED].iloc[0]
    wide = six_patients[six_patients["population"] == "treg"].pivot(
        index="patient_id", columns="visit_month", values="absolute_count"
    )
    base, follow = wide[0.0].to_numpy(), wide[4.5].to_numpy()
    ref = stats.wilcoxon(follow - base, method="exact")
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["statistic"] == pytest.approx(ref.statistic)
    q1, med, q3 = np.percentile(base, [25, 50, 75])
    assert (row["q1_baseline"], row["median_baseline"], row["q3_baseline"]) == pytest.approx(
        (q1, med, q3)
    )
    q1, med, q3 = np.percentile(follow, [25, 50, 75])
    assert (row["q1_followup"], row["median_followup"], row["q3_followup"]) == pytest.approx(
        (q1, med, q3)
    )
    assert row["baseline_month"] == 0.0 and row["followup_month"] == 4.5


def test_paired_bh_within_group(six_patients):
    out = paired_change(six_patients, populations=["treg", "cd4"], metric="percent_of_parent")
    for _, block in out.groupby("group"):
        np.testing.assert_allclose(
            block["p_adjusted"], stats.false_discovery_control(block["p_value"])
        )


def test_strong_rise_significant_null_not(random_cohort):
    out = paired_change(random_cohort, populations=["treg", "cd8"], metric="percent_of_parent")
    pooled = out[out["group"] == POOLED].set_index("population")
    assert pooled.loc["treg", "p_value"] < 0.001
    assert pooled.loc["treg", "p_adjusted"] < 0.05
    assert pooled.loc["treg", "median_change"] > 5
    assert pooled.loc["cd8", "p_value"] > 0.05
    assert pooled.loc["cd8", "n_pairs"] == 20


def test_paired_other_visits(random_cohort):
    out = paired_change(
        random_cohort, populations=["treg"], metric="percent_of_parent", baseline=0, followup=12
    )
    assert out["followup_month"].eq(12.0).all()
    with pytest.raises(ConfigError, match="visit month 5"):
        paired_change(random_cohort, populations=["treg"], metric="percent_of_parent", followup=5)
    with pytest.raises(ConfigError, match="same visit"):
        paired_change(random_cohort, populations=["treg"], metric="percent_of_parent", followup=0)


def test_exclusions_missing_qc_nan(make_counts):
    visits = {f"P{i}": {0.0: 5.0 + i, 4.5: 10.0 + 2 * i} for i in range(1, 9)}
    visits["P2"][4.5] = None  # follow-up missing
    visits["P3"][0.0] = np.nan  # no value (e.g. no lymphocyte count)
    data = {
        "treg": {(p, "30mg" if i < 4 else "60mg"): v for i, (p, v) in enumerate(visits.items())}
    }
    counts = make_counts(data, qc={("P4", 4.5, "treg"): "low_events;fail_viability"})
    assert failed_qc(counts).sum() == 1
    out = paired_change(counts, populations=["treg"], metric="absolute_count")
    pooled = out[out["group"] == POOLED].iloc[0]
    assert pooled["n_pairs"] == 5
    assert pooled["n_excluded"] == 3
    assert pooled["n_qc_excluded"] == 1
    kept = [i for i in range(1, 9) if i not in (2, 3, 4)]
    diffs = np.array([(10.0 + 2 * i) - (5.0 + i) for i in kept])
    assert pooled["p_value"] == pytest.approx(stats.wilcoxon(diffs, method="exact").pvalue)
    assert pooled["median_change"] == pytest.approx(np.median(diffs))
    group = out[out["group"] == "30mg"].iloc[0]  # P1..P4: only P1 is complete
    assert (group["n_pairs"], group["n_excluded"]) == (1, 3)
    assert np.isnan(group["p_value"]) and group["method"] == "too few pairs"
    assert np.isnan(group["p_adjusted"])


def test_review_flag_excluded_unless_kept(make_counts, tmp_path):
    data = {"treg": {(f"P{i}", "30mg"): {0.0: 1.0 * i, 4.5: 3.0 * i} for i in range(1, 5)}}
    counts = make_counts(data, qc={("P1", 0.0, "treg"): "upstream_review(lymphocytes)"})
    out = paired_change(counts, populations=["treg"], metric="percent_of_parent")
    assert out.iloc[0]["n_pairs"] == 3 and out.iloc[0]["n_qc_excluded"] == 1
    # statistics.include_review: the reviewed value counts again; "fail" never does.
    kept = keep_reviewed(counts)
    out = paired_change(kept, populations=["treg"], metric="percent_of_parent")
    assert out.iloc[0]["n_pairs"] == 4 and out.iloc[0]["n_qc_excluded"] == 0
    failed = make_counts(data, qc={("P1", 0.0, "treg"): "fit_failed;fail"})
    assert keep_reviewed(failed)["qc_flag"].str.contains("fail").sum() == 1
    spec = [{"population": "treg", "metric": "percent_of_parent"}]
    paths = write_stats(counts, tmp_path / "a", spec, include_review=True)
    pooled = pd.read_csv(paths["paired_pooled"], sep="\t")
    assert pooled.iloc[0]["n_pairs"] == 4


def test_qc_flag_read_back_as_nan(six_patients, tmp_path):
    path = tmp_path / "counts.tsv"
    six_patients.to_csv(path, sep="\t", index=False)
    counts = pd.read_csv(path, sep="\t")
    assert counts["qc_flag"].isna().all()
    out = paired_change(counts, populations=["treg"], metric="percent_of_parent")
    assert out.iloc[-1]["n_pairs"] == 6


def test_ties_and_zeros_use_permutation(make_counts):
    diffs = [1.0, 1.0, 2.0, 3.0, -0.5, 0.0, 4.0]
    data = {"cd4": {(f"P{i}", "30mg"): {0.0: 10.0, 4.5: 10.0 + d} for i, d in enumerate(diffs)}}
    out = paired_change(make_counts(data), populations=["cd4"], metric="absolute_count")
    row = out.iloc[-1]
    assert row["method"].startswith("exact permutation")
    ref = stats.wilcoxon(diffs, method=stats.PermutationMethod(n_resamples=np.inf))
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["n_pairs"] == 7


def test_float_noise_is_a_tie(make_counts):
    # 0.3 - 0.1 and 0.2 - 0.0 are both 0.2 but differ in the last bit.
    assert (0.3 - 0.1) != (0.2 - 0.0)
    pairs = [(0.1, 0.3), (0.0, 0.2), (2.0, 3.0), (4.0, 6.0), (1.0, 5.0)]
    data = {"treg": {(f"P{i}", "30mg"): {0.0: b, 4.5: f} for i, (b, f) in enumerate(pairs)}}
    out = paired_change(make_counts(data), populations=["treg"], metric="percent_of_parent")
    assert out.iloc[-1]["method"].startswith("exact permutation")


def test_large_tied_sample_asymptotic(make_counts):
    diffs = np.tile([1.0, 2.0, -1.0, 3.0], 6)  # n = 24 with ties
    data = {"cd8": {(f"P{i:02d}", "30mg"): {0.0: 5.0, 4.5: 5.0 + d} for i, d in enumerate(diffs)}}
    row = paired_change(make_counts(data), populations=["cd8"], metric="absolute_count").iloc[-1]
    assert row["method"].startswith("asymptotic")
    ref = stats.wilcoxon(diffs, method="asymptotic", correction=True)
    assert row["p_value"] == pytest.approx(ref.pvalue)


def test_all_zero_differences(make_counts):
    data = {"cd8": {(f"P{i}", "30mg"): {0.0: 5.0, 4.5: 5.0} for i in range(4)}}
    row = paired_change(make_counts(data), populations=["cd8"], metric="absolute_count").iloc[-1]
    assert row["p_value"] == 1.0 and row["method"] == "no non-zero differences"


def test_duplicate_rows_are_an_error(six_patients, make_counts):
    tube2 = six_patients[
        (six_patients["patient_id"] == "P2") & (six_patients["population"] == "treg")
    ].copy()
    tube2["sample_id"] = tube2["sample_id"] + "_tube2"
    counts = pd.concat([six_patients, tube2], ignore_index=True)
    with pytest.raises(ImmunoError, match=r"patient P2 has 2 rows for population treg") as err:
        paired_change(counts, populations=["treg"], metric="percent_of_parent")
    assert err.value.hint and "panel" in err.value.hint
    # A QC-failed duplicate is excluded first, so it is not a clash.
    tube2["qc_flag"] = "fail_clog"
    counts = pd.concat([six_patients, tube2], ignore_index=True)
    out = paired_change(counts, populations=["treg"], metric="percent_of_parent")
    assert out.iloc[-1]["n_pairs"] == 6 and out.iloc[-1]["n_qc_excluded"] == 2


def test_patient_in_two_groups_is_an_error(six_patients):
    counts = six_patients.copy()
    counts.loc[counts.index[0], "dose_group"] = "60mg"
    with pytest.raises(ImmunoError, match="several dose_group"):
        paired_change(counts, populations=["treg"], metric="percent_of_parent")


def test_bad_arguments(six_patients):
    with pytest.raises(ConfigError, match="cd99") as err:
        paired_change(six_patients, populations=["cd99"], metric="percent_of_parent")
    assert "treg" in err.value.hint
    with pytest.raises(ConfigError, match="not a column"):
        paired_change(six_patients, populations=["treg"], metric="percent")
    with pytest.raises(ConfigError, match="not numeric"):
        paired_change(six_patients, populations=["treg"], metric="panel")
    with pytest.raises(ImmunoError, match="lacks column"):
        paired_change(
            six_patients.drop(columns="qc_flag"), populations=["treg"], metric="percent_of_parent"
        )
    with pytest.raises(ImmunoError, match="lacks column"):
        paired_change(six_patients, populations=["treg"], metric="percent_of_parent", by="arm")
    clash = six_patients.assign(dose_group="all")
    with pytest.raises(ConfigError, match="clashes"):
        paired_change(clash, populations=["treg"], metric="percent_of_parent")


def test_groups_not_hard_coded(six_patients):
    counts = six_patients.replace({"dose_group": {"30mg": "low", "60mg": "high"}})
    out = paired_change(counts, populations=["treg"], metric="percent_of_parent")
    assert list(out["group"]) == ["high", "low", POOLED]


def test_patient_table(six_patients):
    wide = patient_table(six_patients, population="treg", metric="percent_of_parent")
    assert list(wide.columns) == ["dose_group", 0.0, 4.5]
    assert list(wide.index) == [f"P{i}" for i in range(1, 7)]
    assert wide.loc["P4", 4.5] == pytest.approx(13.0)


# ------------------------------------------------------------------ between groups


def test_between_groups_hand_computed(make_counts):
    # Changes: 30mg +1, +2, +3; 60mg +4, +5, +6 -> U_a = 0, exact p = 2 / C(6, 3).
    data = {
        "cd4": {
            (f"P{i}", "30mg" if i <= 3 else "60mg"): {0.0: 10.0, 4.5: 10.0 + i} for i in range(1, 7)
        },
        "cd8": {
            (f"P{i}", "30mg" if i <= 3 else "60mg"): {
                0.0: 10.0,
                4.5: 10.0 + [3, -1, 2, -3, 1, -2][i - 1],
            }
            for i in range(1, 7)
        },
    }
    out = change_between_groups(
        make_counts(data), populations=["cd4", "cd8"], metric="absolute_count"
    )
    assert list(out.columns) == BETWEEN_COLUMNS
    row = out.set_index("population").loc["cd4"]
    assert (row["group_a"], row["group_b"], row["n_a"], row["n_b"]) == ("30mg", "60mg", 3, 3)
    assert row["statistic"] == 0
    assert row["p_value"] == pytest.approx(2 / math.comb(6, 3))
    assert row["method"] == "exact"
    assert (row["median_change_a"], row["median_change_b"]) == (2.0, 5.0)
    cd8 = out.set_index("population").loc["cd8"]
    ref = stats.mannwhitneyu([3, -1, 2], [-3, 1, -2], method="exact")
    assert cd8["p_value"] == pytest.approx(ref.pvalue)
    np.testing.assert_allclose(out["p_adjusted"], stats.false_discovery_control(out["p_value"]))


def test_between_groups_random_cohort(random_cohort):
    out = change_between_groups(
        random_cohort, populations=["treg", "cd8"], metric="percent_of_parent"
    )
    wide = patient_table(random_cohort, population="treg", metric="percent_of_parent")
    change = wide[4.5] - wide[0.0]
    ref = stats.mannwhitneyu(
        change[wide["dose_group"] == "30mg"], change[wide["dose_group"] == "60mg"], method="exact"
    )
    row = out.set_index("population").loc["treg"]
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["p_value"] > 0.05  # same effect in both dose groups
    assert (row["n_a"], row["n_b"]) == (10, 10)


def test_between_groups_ties_and_too_few(make_counts):
    changes = {"P1": 1.0, "P2": 1.0, "P3": 2.0, "P4": 3.0, "P5": 3.0, "P6": 5.0}
    data = {
        "cd4": {
            (p, "30mg" if p <= "P3" else "60mg"): {0.0: 1.0, 4.5: 1.0 + c}
            for p, c in changes.items()
        }
    }
    row = change_between_groups(
        make_counts(data), populations=["cd4"], metric="absolute_count"
    ).iloc[0]
    assert row["method"].startswith("exact permutation")
    ref = stats.mannwhitneyu(
        [1, 1, 2], [3, 3, 5], method=stats.PermutationMethod(n_resamples=np.inf)
    )
    assert row["p_value"] == pytest.approx(ref.pvalue)
    data["cd4"][("P6", "60mg")] = {0.0: 1.0, 4.5: None}
    data["cd4"][("P5", "60mg")] = {0.0: 1.0, 4.5: None}
    row = change_between_groups(
        make_counts(data), populations=["cd4"], metric="absolute_count"
    ).iloc[0]
    assert row["n_b"] == 1 and row["method"] == "too few patients" and np.isnan(row["p_value"])


def test_between_groups_three_groups_pairwise(six_patients):
    counts = six_patients.copy()
    counts.loc[counts["patient_id"].isin(["P5", "P6"]), "dose_group"] = "90mg"
    out = change_between_groups(counts, populations=["treg", "cd4"], metric="absolute_count")
    pairs = list(zip(out["group_a"], out["group_b"], strict=True))
    assert pairs == [("30mg", "60mg"), ("30mg", "90mg"), ("60mg", "90mg")] * 2
    assert list(out["n_b"]) == [1, 2, 2] * 2
    testable = out["p_value"].notna()  # 60mg has a single patient
    assert list(testable) == [False, True, False] * 2
    np.testing.assert_allclose(
        out.loc[testable, "p_adjusted"], stats.false_discovery_control(out.loc[testable, "p_value"])
    )
    assert out.loc[~testable, "p_adjusted"].isna().all()


def test_between_groups_one_group(six_patients):
    with pytest.raises(ConfigError, match="only one dose_group"):
        change_between_groups(
            six_patients.assign(dose_group="30mg"), populations=["treg"], metric="absolute_count"
        )


# ---------------------------------------------------------------------- write_stats


def test_write_stats(random_cohort, tmp_path):
    spec = [
        {"population": "treg", "metric": "percent_of_parent"},
        {"population": "cd8", "metric": "absolute_count"},
    ]
    paths = write_stats(random_cohort, tmp_path / "stats", spec)
    umask = os.umask(0)
    os.umask(umask)
    assert set(paths) == {"paired_by_group", "paired_pooled", "between_groups"}
    for name, path in paths.items():
        assert path == tmp_path / "stats" / f"{name}.tsv"
        assert path.stat().st_size > 0
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path / "stats")) == sorted(p.name for p in paths.values())
    by_group = pd.read_csv(paths["paired_by_group"], sep="\t")
    pooled = pd.read_csv(paths["paired_pooled"], sep="\t")
    between = pd.read_csv(paths["between_groups"], sep="\t")
    assert list(by_group.columns) == PAIRED_COLUMNS
    assert set(by_group["group"]) == {"30mg", "60mg"}
    assert list(pooled["group"]) == [POOLED, POOLED]
    assert list(zip(pooled["population"], pooled["metric"], strict=True)) == [
        ("treg", "percent_of_parent"),
        ("cd8", "absolute_count"),
    ]
    # BH across the spec entries within each group.
    np.testing.assert_allclose(
        pooled["p_adjusted"], stats.false_discovery_control(pooled["p_value"])
    )
    direct = paired_change(random_cohort, populations=["treg"], metric="percent_of_parent")
    assert pooled.loc[0, "p_value"] == pytest.approx(direct.iloc[-1]["p_value"])
    assert list(between.columns) == BETWEEN_COLUMNS and len(between) == 2


def test_write_stats_single_group_keeps_the_paired_tests(random_cohort, tmp_path, caplog):
    """A single-arm cohort: paired tests as usual, an empty between-group table."""
    one = random_cohort.assign(dose_group="30mg")
    spec = [{"population": "treg", "metric": "percent_of_parent"}]
    with caplog.at_level("WARNING", logger="immuno.test"):
        paths = write_stats(one, tmp_path, spec)
    assert "only one dose_group (30mg)" in caplog.text
    pooled = pd.read_csv(paths["paired_pooled"], sep="\t")
    direct = paired_change(one, populations=["treg"], metric="percent_of_parent")
    assert pooled.loc[0, "p_value"] == pytest.approx(direct.iloc[-1]["p_value"])
    assert set(pd.read_csv(paths["paired_by_group"], sep="\t")["group"]) == {"30mg"}
    between = pd.read_csv(paths["between_groups"], sep="\t")
    assert list(between.columns) == BETWEEN_COLUMNS and between.empty
    with pytest.raises(ConfigError, match="only one dose_group"):
        change_between_groups(one, populations=["treg"], metric="percent_of_parent")


def test_write_stats_bad_spec(random_cohort, tmp_path):
    for spec in (
        [],
        {"population": "treg"},
        [{"population": "treg"}],
        [{"population": "treg", "metric": "count"}] * 2,
    ):
        with pytest.raises(ConfigError):
            write_stats(random_cohort, tmp_path, spec)
    assert list(tmp_path.iterdir()) == []


def test_a_population_no_sample_holds_does_not_stop_the_others(random_cohort, tmp_path, caplog):
    """Every sample of a panel failed: its populations are not in the cohort table. Their
    tests are reported as having no values, and the other panels' tests are run."""
    from immuno.test import NO_VALUES

    b_only = random_cohort[random_cohort["population"] != "cd8"]
    spec = [
        {"population": "cd8", "metric": "absolute_count"},
        {"population": "treg", "metric": "percent_of_parent"},
    ]
    with caplog.at_level("WARNING", logger="immuno.test"):
        paths = write_stats(b_only, tmp_path, spec)
    assert "population cd8 is not in the cohort table" in caplog.text
    pooled = pd.read_csv(paths["paired_pooled"], sep="\t").set_index("population")
    assert pooled.loc["cd8", "method"] == NO_VALUES and pooled.loc["cd8", "n_pairs"] == 0
    assert np.isnan(pooled.loc["cd8", "p_value"])
    direct = paired_change(b_only, populations=["treg"], metric="percent_of_parent")
    assert pooled.loc["treg", "p_value"] == pytest.approx(direct.iloc[-1]["p_value"])
    assert pooled.loc["treg", "p_adjusted"] == pytest.approx(pooled.loc["treg", "p_value"])
    between = pd.read_csv(paths["between_groups"], sep="\t")
    assert list(between["population"]) == ["treg"]
