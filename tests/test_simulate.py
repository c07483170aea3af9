"""Tests of immuno.simulate: design, files, truth and kinetics of the demo cohort."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from immuno import simulate as sim
from immuno.cli import main as cli_main
from immuno.errors import ConfigError
from immuno.read import read_fcs, read_text

EVENTS = 2000
SHEET_COLUMNS = [
    "sample_id",
    "patient_id",
    "dose_group",
    "visit_month",
    "panel",
    "fcs_path",
    "lymphocyte_count",
]


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    sheet = sim.simulate_cohort(out, seed=7, events=EVENTS)
    assert sheet == out / "samples.tsv"
    return out


@pytest.fixture(scope="session")
def sheet(cohort) -> list[dict[str, str]]:
    return _read_tsv(cohort / "samples.tsv")


@pytest.fixture(scope="session")
def truth(cohort) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["sample_id"], r["population"]): r for r in _read_tsv(cohort / "truth.tsv")}


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _compensated(path: Path) -> tuple[np.ndarray, list[str]]:
    d = read_fcs(path)
    names, s = d.spillover()
    idx = [d.channels.index(n) for n in names]
    x = d.events.astype(np.float64)
    x[:, idx] = x[:, idx] @ np.linalg.inv(s)
    return x, d.channels


def _labels(cohort: Path, sid: str) -> np.ndarray:
    with np.load(cohort / "truth" / f"{sid}.npz") as z:
        return z["names"][z["label"]].astype(str)


def _per_visit_median(rows, value) -> dict[float, float]:
    by_visit: dict[float, list[float]] = {}
    for r in rows:
        by_visit.setdefault(float(r["visit_month"]), []).append(value(r))
    return {v: float(np.median(x)) for v, x in sorted(by_visit.items())}


# --- Determinism and arguments ------------------------------------------------------


def test_same_seed_gives_byte_identical_files(cohort, tmp_path):
    again = tmp_path / "again"
    sim.simulate_cohort(again, seed=7, events=EVENTS)
    files = sorted(p.relative_to(cohort) for p in cohort.rglob("*") if p.is_file())
    files_again = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == files_again
    assert len(files) == 2 * 324 + 3
    for rel in files:
        assert (cohort / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_other_seed_gives_other_cohort(cohort, tmp_path):
    other = tmp_path / "other"
    sim.simulate_cohort(other, seed=8, events=EVENTS)
    assert (other / "fcs/P01_m0_T.fcs").read_bytes() != (cohort / "fcs/P01_m0_T.fcs").read_bytes()
    assert (other / "samples.tsv").read_bytes() != (cohort / "samples.tsv").read_bytes()


@pytest.mark.parametrize("events", [999, 1_000_001, 2000.0, True, "2000"])
def test_events_out_of_range_is_a_config_error(tmp_path, events):
    with pytest.raises(ConfigError) as info:
        sim.simulate_cohort(tmp_path, seed=1, events=events)
    assert info.value.field == "events" and "1,000" in info.value.hint
    assert not (tmp_path / "samples.tsv").exists()


def test_negative_seed_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        sim.simulate_cohort(tmp_path, seed=-1)


def test_cli_reports_bad_events_in_one_line(tmp_path, capsys):
    assert cli_main(["simulate", "--out", str(tmp_path), "--events", "10"]) == 1
    err = capsys.readouterr().err
    assert "ConfigError" in err and "events" in err and err.count("\n") == 1


# --- Design -------------------------------------------------------------------------


def test_sample_sheet_columns_and_patients(cohort, sheet):
    header = (cohort / "samples.tsv").read_text().splitlines()[0].split("\t")
    assert header == SHEET_COLUMNS
    patients = {r["patient_id"]: r["dose_group"] for r in sheet}
    assert sorted(patients) == [f"P{i:02d}" for i in range(1, 24)]
    assert sum(d == "30mg" for d in patients.values()) == 13
    assert sum(d == "60mg" for d in patients.values()) == 10
    assert len({(r["patient_id"], r["dose_group"]) for r in sheet}) == 23
    months = {"0", "1.5", "3", "4.5", "6", "7.5", "9", "12"}
    assert {r["visit_month"] for r in sheet} == months
    for r in sheet:
        assert r["sample_id"] == f"{r['patient_id']}_m{r['visit_month']}_{r['panel']}"
        assert r["fcs_path"] == f"fcs/{r['sample_id']}.fcs"
        assert (cohort / r["fcs_path"]).is_file()
        assert (cohort / "truth" / f"{r['sample_id']}.npz").is_file()
    assert len({r["sample_id"] for r in sheet}) == len(sheet) == 324


def test_both_tubes_per_visit_share_the_blood_count(sheet):
    visits: dict[tuple[str, str], dict[str, str]] = {}
    for r in sheet:
        visits.setdefault((r["patient_id"], r["visit_month"]), {})[r["panel"]] = r[
            "lymphocyte_count"
        ]
    for tubes in visits.values():
        assert set(tubes) == {"T", "B"}
        assert tubes["T"] == tubes["B"] and float(tubes["T"]) > 0


def test_withdrawals_and_missed_visits(sheet):
    visits: dict[str, set[float]] = {}
    dose = {}
    for r in sheet:
        visits.setdefault(r["patient_id"], set()).add(float(r["visit_month"]))
        dose[r["patient_id"]] = r["dose_group"]
    withdrawn = [p for p, v in visits.items() if max(v) <= 6]
    assert len(withdrawn) == 6
    assert sorted(dose[p] for p in withdrawn) == ["30mg"] * 3 + ["60mg"] * 3
    for p in withdrawn:
        assert visits[p] == {0, 1.5, 3, 4.5, 6}
    all_visits = set(sim.VISITS)
    missed = [
        (p, m)
        for p, v in visits.items()
        for m in (all_visits - v)
        if not (p in withdrawn and m > 6)
    ]
    assert len(missed) == sim.N_MISSED
    assert all(m != 0 for _, m in missed)
    assert sum(m == 4.5 for _, m in missed) <= 2


# --- Files --------------------------------------------------------------------------


def test_files_have_the_panel_channels_markers_and_spillover(cohort, sheet):
    aliases = set()
    for r in sheet:
        version, text = read_text(cohort / r["fcs_path"])
        assert version == "FCS3.1" and text["$TOT"] == str(EVENTS)
        n = int(text["$PAR"])
        channels = [text[f"$P{i}N"] for i in range(1, n + 1)]
        markers = [text.get(f"$P{i}S", "") for i in range(1, n + 1)]
        assert channels == list(sim.CHANNELS)
        expected = list(sim.PANEL_MARKERS[r["panel"]][:-1])
        assert markers[3:9] == expected and markers[:3] == ["", "", ""] and markers[10] == ""
        assert markers[9] in sim.VIABILITY_NAMES
        aliases.add(markers[9])
        assert all(text[f"$P{i}R"] == "262144" for i in range(1, n + 1))
    assert aliases == set(sim.VIABILITY_NAMES)  # every viability alias is exercised

    d = read_fcs(cohort / sheet[0]["fcs_path"])
    names, s = d.spillover()
    assert names == list(sim.FLUOR_CHANNELS)
    np.testing.assert_array_equal(np.diag(s), 1.0)
    f = sim.FLUOR_CHANNELS.index
    for (src, dst), (lo, hi) in sim.SPILLOVER_RANGES.items():
        assert lo - 1e-4 <= s[f(src), f(dst)] <= hi + 1e-4
    assert s[f("FITC-A"), f("PE-A")] >= 0.12 and s[f("APC-A"), f("APC-H7-A")] >= 0.05
    assert np.all(d.events[:, :10] <= 262143.0)
    assert np.all(np.diff(d.events[:, 10]) >= 0)  # Time never goes back


def test_viability_alias_is_fixed_per_patient(cohort, sheet):
    per_patient: dict[str, set[str]] = {}
    for r in sheet:
        _, text = read_text(cohort / r["fcs_path"])
        per_patient.setdefault(r["patient_id"], set()).add(text["$P10S"])
    assert all(len(v) == 1 for v in per_patient.values())
    names = [next(iter(v)) for v in per_patient.values()]
    assert names.count("LIVE DEAD Aqua") > len(names) / 2


def test_readme_states_seed_events_legend_and_truth(cohort):
    text = (cohort / "README.md").read_text()
    assert "seed 7" in text and "2,000 events per file" in text
    for name in sim.LEGENDS["T"] + sim.LEGENDS["B"]:
        assert name in text
    for panel in sim.PANELS:
        for name, parent, _ in sim.population_definitions(panel):
            assert f"| {name} | {parent} |" in text


# --- Truth --------------------------------------------------------------------------


def test_truth_tsv_matches_npz_labels(cohort, sheet, truth):
    header = (cohort / "truth.tsv").read_text().splitlines()[0].split("\t")
    assert header == [
        "sample_id",
        "population",
        "parent",
        "count",
        "parent_count",
        "percent_of_parent",
    ]
    expected_pops = {
        "T": ["singlets", "live", "lymphocytes", "cd3", "cd4", "cd8", "treg"],
        "B": ["singlets", "live", "lymphocytes", "cd3", "cd19", "naive_b"],
    }
    assert len(truth) == sum(len(expected_pops[r["panel"]]) for r in sheet)
    for r in sheet:
        sid = r["sample_id"]
        npz = cohort / "truth" / f"{sid}.npz"
        with np.load(npz) as z:
            assert z["label"].dtype == np.uint8 and z["label"].shape == (EVENTS,)
            assert tuple(z["names"]) == sim.LEGENDS[r["panel"]]
            assert z["time_artifact"].dtype == bool and z["time_artifact"].shape == (EVENTS,)
        masks = sim.truth_masks(npz)
        assert list(masks) == ["root", *expected_pops[r["panel"]]]
        for name in expected_pops[r["panel"]]:
            row = truth[(sid, name)]
            parent = masks[row["parent"]]
            assert not np.any(masks[name] & ~parent)  # nested in the parent
            assert int(row["count"]) == int(masks[name].sum())
            assert int(row["parent_count"]) == int(parent.sum())
            pct = 100 * masks[name].sum() / parent.sum()
            assert float(row["percent_of_parent"]) == pytest.approx(pct, abs=1e-4)


def test_truth_masks_follow_the_label_definitions(cohort):
    names = _labels(cohort, "P02_m0_T")
    m = sim.truth_masks(cohort / "truth" / "P02_m0_T.npz")
    np.testing.assert_array_equal(m["singlets"], ~np.isin(names, ["debris", "doublet"]))
    np.testing.assert_array_equal(m["live"], m["singlets"] & ~np.char.startswith(names, "dead_"))
    np.testing.assert_array_equal(m["treg"], names == "t_cd4_treg")
    np.testing.assert_array_equal(m["cd4"], np.isin(names, ["t_cd4_conv", "t_cd4_treg"]))
    np.testing.assert_array_equal(m["lymphocytes"] & (names == "monocyte"), False)
    b = sim.truth_masks(cohort / "truth" / "P02_m0_B.npz")
    names_b = _labels(cohort, "P02_m0_B")
    np.testing.assert_array_equal(b["cd3"], names_b == "t_cell")
    np.testing.assert_array_equal(b["naive_b"], names_b == "b_naive")
    assert "treg" not in b and "cd19" not in m


def test_event_composition(cohort, sheet):
    debris: dict[str, list[float]] = {"0": [], "1.5": []}
    doublet, dead = [], []
    for r in sheet[::3]:
        names = _labels(cohort, r["sample_id"])
        if r["visit_month"] in debris:
            debris[r["visit_month"]].append(np.mean(names == "debris"))
        doublet.append(np.mean(names == "doublet"))
        dead.append(np.mean(np.char.startswith(names, "dead_")))
    assert 0.10 <= np.median(debris["0"]) <= 0.20
    assert 0.25 <= np.median(debris["1.5"]) <= 0.35
    assert 0.035 <= np.median(doublet) <= 0.065
    assert 0.05 <= np.median(dead) <= 0.15


# --- Kinetics -----------------------------------------------------------------------


def _pct(truth, population):
    return lambda r: float(truth[(r["sample_id"], population)]["percent_of_parent"])


def test_treg_share_of_cd4_rises_by_4_5_months(sheet, truth):
    t_rows = [r for r in sheet if r["panel"] == "T"]
    med = _per_visit_median(t_rows, _pct(truth, "treg"))
    assert 5.5 <= med[0] <= 9.5  # paper: 7.5% at entry
    assert 12.0 <= med[4.5] <= 18.0  # paper: 14.85% at 4.5 months
    assert med[4.5] - med[0] >= 4.0


def test_naive_share_of_b_cells_rises_by_4_5_months(sheet, truth):
    b_rows = [r for r in sheet if r["panel"] == "B"]
    med = _per_visit_median(b_rows, _pct(truth, "naive_b"))
    assert 58.0 <= med[0] <= 72.0  # paper: 65.2% at entry
    assert 84.0 <= med[4.5] <= 94.0  # paper: 89.1% at 4.5 months


def _absolute(truth, population):
    # Absolute count = share of lymphocytes x full-blood-count lymphocytes (x10^9/L).
    def value(r):
        n = int(truth[(r["sample_id"], population)]["count"])
        ly = int(truth[(r["sample_id"], "lymphocytes")]["count"])
        return n / ly * float(r["lymphocyte_count"])

    return value


def test_cd4_depletion_is_profound_and_sustained(sheet, truth):
    t_rows = [r for r in sheet if r["panel"] == "T"]
    cd4 = _per_visit_median(t_rows, _absolute(truth, "cd4"))
    assert 0.42 <= cd4[0] <= 0.85  # 0.60 x10^9/L at entry
    assert cd4[1.5] <= 0.05 and cd4[7.5] <= 0.05
    assert max(cd4[m] for m in (3, 4.5, 6, 9, 12)) <= 0.2  # low all year
    assert cd4[0] / cd4[1.5] >= 10
    cd8 = _per_visit_median(t_rows, _absolute(truth, "cd8"))
    assert cd8[0] >= 0.2 and cd8[1.5] <= 0.06


def test_b_cells_recover_by_4_5_months(sheet, truth):
    b_rows = [r for r in sheet if r["panel"] == "B"]
    cd19 = _per_visit_median(b_rows, _absolute(truth, "cd19"))
    assert cd19[1.5] <= 0.02 and cd19[7.5] <= 0.02
    assert cd19[4.5] >= 0.5 * cd19[0] and cd19[6] >= 0.5 * cd19[0]


def test_lymphocyte_count_tracks_the_file_composition(sheet, truth):
    # Patients with more lymphocytes per the blood count have more lymphocyte events.
    rows = [r for r in sheet if r["panel"] == "T"]
    count = np.array([float(r["lymphocyte_count"]) for r in rows])
    share = np.array([_pct(truth, "lymphocytes")(r) for r in rows])
    assert np.corrcoef(np.log(count), share)[0, 1] > 0.8


# --- Instrument realism -------------------------------------------------------------


@pytest.fixture(scope="session")
def pooled(cohort, sheet):
    """Compensated events and labels of the first 6 patients, per panel."""
    out = {}
    for panel in sim.PANELS:
        xs, ls, raws = [], [], []
        for r in sheet:
            if r["panel"] == panel and r["patient_id"] <= "P06":
                x, _ = _compensated(cohort / r["fcs_path"])
                xs.append(x)
                raws.append(read_fcs(cohort / r["fcs_path"]).events)
                ls.append(_labels(cohort, r["sample_id"]))
        out[panel] = (np.concatenate(xs), np.concatenate(raws), np.concatenate(ls))
    return out


@pytest.mark.parametrize(
    "panel, cell_type, channel, bright_source",
    [
        ("T", "t_cd8", "PE-A", "FITC-A"),  # CD25- CD3+ cells: FITC spills into PE
        ("T", "t_cd4_conv", "APC-H7-A", "APC-A"),  # CD8- CD4+ cells: APC into APC-H7
        ("B", "b_naive", "PE-A", "FITC-A"),  # CD27- IgD+ cells: FITC into PE
        ("B", "t_cell", "PE-Cy7-A", "APC-H7-A"),  # CD24- CD3+ cells
    ],
)
def test_compensation_centres_negative_populations_near_zero(
    pooled, panel, cell_type, channel, bright_source
):
    comp, raw, names = pooled[panel]
    j = sim.CHANNELS.index(channel)
    cells = names == cell_type
    assert cells.sum() > 200
    assert np.median(raw[cells, sim.CHANNELS.index(bright_source)]) > 3000
    raw_median = np.median(raw[cells, j])
    comp_median = np.median(comp[cells, j])
    assert raw_median > 2 * abs(comp_median) + 80  # spillover is visible before...
    assert abs(comp_median) < 120  # ...and gone after compensation


def test_scatter_viability_and_doublets(pooled):
    comp, raw, names = pooled["T"]
    ratio = raw[:, 0] / raw[:, 1]
    single_cells = ~np.isin(names, ["debris", "doublet"])
    doublets = names == "doublet"
    assert np.median(ratio[single_cells]) == pytest.approx(1 / 0.85, rel=0.03)
    assert np.median(ratio[doublets]) > 1.4
    overlap = np.mean(ratio[doublets] < np.quantile(ratio[single_cells], 0.99))
    assert 0.01 < overlap < 0.2  # clearly higher, but not perfectly separable
    lymph = np.isin(names, ["t_cd4_conv", "t_cd8", "nk", "b_cell"])
    mono = names == "monocyte"
    assert 45_000 < np.median(raw[lymph, 0]) < 75_000 and 9_000 < np.median(raw[lymph, 2]) < 22_000
    assert np.median(raw[mono, 0]) > 1.3 * np.median(raw[lymph, 0])
    assert np.median(raw[mono, 2]) > 2 * np.median(raw[lymph, 2])
    assert np.quantile(raw[names == "debris", 0], 0.9) < 25_000 * 1.2
    via = comp[:, sim.CHANNELS.index("BV510-A")]
    dead = np.char.startswith(names, "dead_")
    assert 50 < np.median(via[single_cells & ~dead]) < 400
    assert np.median(via[dead]) > 10_000
    assert np.mean(via[dead] < 1500) > 0.02  # a dim-dead tail: live/dead is not trivial


def test_clogs_are_time_gaps_with_flagged_events(cohort, sheet):
    text = (cohort / "README.md").read_text()
    clogged = set(re.findall(r"P\d\d_m[\d.]+_[TB]", text.split("short clog")[1].split("\n\n")[0]))
    assert len(clogged) == round(0.05 * len(sheet))
    for r in sheet:
        with np.load(cohort / "truth" / f"{r['sample_id']}.npz") as z:
            art = z["time_artifact"]
        if r["sample_id"] not in clogged:
            assert not art.any()
            continue
        assert art.sum() == round(0.01 * EVENTS)
        first = int(np.argmax(art))
        t = read_fcs(cohort / r["fcs_path"]).events[:, 10]
        gap = (t[first] - t[first - 1]) * sim.TIMESTEP
        assert gap >= 3.0  # seconds without events
        assert np.median(np.diff(t)) * sim.TIMESTEP < 0.5


def test_out_must_be_a_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        sim.simulate_cohort(target, events=1000)
