"""Accuracy and flags of the shipped templates on every simulated instrument profile.

Each profile (a BD Fortessa-like linear float file, a compensated and logicle-transformed
0-4096 GatingSet-style export, an integer 4-decade log-amplified 0-1023 instrument) is gated
with the same, unchanged `gates/t_cell.yaml` and `gates/b_cell.yaml`, exactly as the workflow
gates it (`gate_samples`: two passes, borrowing, outlier replacement), and scored against the
per-event truth (`immuno.accuracy`). The cohort is not the demo's: seed 2, 8 patients (108
files, the depleted nadir visits, clogs, low-density granulocytes and IgD shoulders included),
8,000 events per file. `benchmarks/accuracy_profiles.py` measures the full 23-patient cohorts.

Floors: the issue's ("Gates that hold on data the templates were not tuned to") where they are
met on every profile; where a profile does not meet one yet, the test pins what was measured
(so it cannot get worse unnoticed) and a strict xfail names the issue's floor, which fails as
soon as it is met so that the floor is raised.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immuno.accuracy import (
    by_cell_type,
    gate_cohort,
    score_cohort,
    summarise,
    summarise_by_cell_type,
)
from immuno.simulate import simulate_cohort

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("fortessa", "canto_export", "log1024")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gated(tmp_path_factory):
    """``gated(profile) -> (cohort, results, sheet)``: each profile simulated and gated once."""
    cache: dict[str, tuple] = {}

    def get(profile: str):
        if profile not in cache:
            cohort = tmp_path_factory.mktemp(f"accuracy_{profile}")
            simulate_cohort(cohort, seed=2, events=8000, profile=profile, patients=8)
            results, sheet, _ = gate_cohort(cohort, ROOT / "gates", workers=2)
            for res in results:
                assert res.error is None, res.error
            cache[profile] = (cohort, results, sheet)
        return cache[profile]

    return get


@pytest.fixture(scope="session")
def scored(gated):
    cache: dict[str, pd.DataFrame] = {}

    def get(profile: str) -> pd.DataFrame:
        if profile not in cache:
            cache[profile] = score_cohort(*gated(profile))
        return cache[profile]

    return get


def test_cell_type_breakdown_adds_up_to_the_scored_counts(gated, scored):
    cohort, results, _ = gated("fortessa")
    table = by_cell_type(cohort, results, ("lymphocytes",))
    rows = scored("fortessa").query("population == 'lymphocytes'").set_index("sample_id")
    per_file = table.groupby("sample_id")[["n_true", "n_gated"]].sum()
    # Every true lymphocyte and every gated event belongs to exactly one cell type.
    assert (per_file["n_true"] == rows.loc[per_file.index, "true_count"]).all()
    assert (per_file["n_gated"] == rows.loc[per_file.index, "count"]).all()
    pooled = summarise_by_cell_type(table).set_index("cell_type")
    assert not pooled["member"].get("monocyte", False)
    assert pooled["share_of_gate"].get("monocyte", 0.0) < 0.02
    assert pooled.loc["t_cd4_conv", "kept"] > 0.95
    assert pooled["share_of_gate"].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_file_gated_and_clogs_cut_out_not_the_steady_events(scored, profile):
    s = summarise(scored(profile))
    assert s["files"] == 108
    assert s["clogged_files"] >= 2
    assert s["clogged_min_kept"] >= 0.95  # the issue's floor
    assert s["unclogged_min_kept"] >= 0.99


@pytest.mark.parametrize("profile", PROFILES)
def test_review_flags_are_few(scored, profile):
    # Issue floor: at most 10% of the files of a cohort carry a review flag.
    assert summarise(scored(profile))["files_review_share"] <= 0.10


@pytest.mark.parametrize("profile", ["fortessa", "canto_export"])
def test_lymphocyte_count_within_10_percent(scored, profile):
    s = summarise(scored(profile))
    assert s["lymphocytes_within_10pct"] >= 0.97  # the issue's floor
    assert len(s["lymphocytes_off_unflagged"]) <= 1


MET = [
    ("fortessa", "cd4"),
    ("fortessa", "cd8"),
    ("fortessa", "cd19"),
    ("canto_export", "cd4"),
    ("canto_export", "cd8"),
    ("log1024", "cd4"),
]


@pytest.mark.parametrize("profile, pop", MET)
def test_p90_error_meets_the_floor(scored, profile, pop):
    assert summarise(scored(profile))["p90_abs_err"][pop] <= 1.0


# Measured (p90, percentage points, with ~25% headroom), not yet the issue's floors: pinned so
# that they cannot get worse unnoticed. Measured: fortessa cd3 1.53, naive_b 3.30, treg 2.29;
# canto_export cd19 1.03, cd3 1.63, naive_b 1.49, treg 2.74; log1024 cd8 1.03, cd19 1.23,
# cd3 1.97, naive_b 4.30, treg 3.26 (`benchmarks/accuracy_profiles.py --seed 2 --events 8000
# --patients 8`).
PINNED = {
    ("fortessa", "cd3"): 2.0,
    ("fortessa", "naive_b"): 4.1,
    ("fortessa", "treg"): 2.9,
    ("canto_export", "cd19"): 1.3,
    ("canto_export", "cd3"): 2.0,
    ("canto_export", "naive_b"): 1.9,
    ("canto_export", "treg"): 3.4,
    ("log1024", "cd8"): 1.3,
    ("log1024", "cd19"): 1.55,
    ("log1024", "cd3"): 2.5,
    ("log1024", "naive_b"): 5.4,
    ("log1024", "treg"): 4.1,
}


@pytest.mark.parametrize("profile, pop", sorted(PINNED))
def test_p90_error_no_worse_than_measured(scored, profile, pop):
    assert summarise(scored(profile))["p90_abs_err"][pop] <= PINNED[profile, pop]


@pytest.mark.parametrize("profile, pop", sorted(PINNED))
@pytest.mark.xfail(strict=True, reason="issue 11 floor (1.0 pp; treg 1.5 pp) not met yet")
def test_p90_error_issue_floor(scored, profile, pop):
    limit = 1.5 if pop == "treg" else 1.0
    assert summarise(scored(profile))["p90_abs_err"][pop] <= limit


@pytest.mark.parametrize("profile", PROFILES)
def test_silent_wrong_numbers_no_more_than_measured(scored, profile):
    # Issue floor: no file above 5 points on a reported population without a review flag on
    # its lineage. Measured on these 108 files: 3 on each profile (Tregs of a few hundred CD4
    # cells from a borrowed cut, naive B of IgD-shoulder patients).
    limit = {"fortessa": 3, "canto_export": 3, "log1024": 3}[profile]
    assert len(summarise(scored(profile))["silent_over_5pp"]) <= limit


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.xfail(strict=True, reason="issue 11 floor (no silent error above 5 pp) not met yet")
def test_silent_wrong_numbers_issue_floor(scored, profile):
    assert summarise(scored(profile))["silent_over_5pp"] == []


def test_log1024_lymphocyte_count_no_worse_than_measured(scored):
    # The live gate (a tail cut of the viability dye) loses live cells when the dye is
    # log-amplified: measured 90.7% of files within 10%, against the issue's 97%.
    s = summarise(scored("log1024"))
    assert s["lymphocytes_within_10pct"] >= 0.85
