"""Tests of immuno.simulate: design, files, truth and kinetics of the demo cohort."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import flowio
import numpy as np
import pytest

from immuno import simulate as sim
from immuno.cli import main as cli_main
from immuno.errors import ConfigError
from immuno.read import read_fcs, read_text
from immuno.transform import Logicle

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
    """Median per visit month, ignoring NaN (a percentage of an empty parent)."""
    by_visit: dict[float, list[float]] = {}
    for r in rows:
        by_visit.setdefault(float(r["visit_month"]), []).append(value(r))
    return {v: float(np.nanmedian(x)) for v, x in sorted(by_visit.items())}


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
            if parent.sum() == 0:  # e.g. no B cell among 2,000 events at a nadir visit
                assert row["percent_of_parent"] == ""
                continue
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
    return lambda r: float(truth[(r["sample_id"], population)]["percent_of_parent"] or "nan")


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
    listed = text.split("Files with a clog")[1].split("\n\n")[0]
    clogged = set(re.findall(r"P\d\d_m[\d.]+_[TB]", listed))
    assert len(clogged) == round(0.05 * len(sheet))
    shares = []
    for r in sheet:
        with np.load(cohort / "truth" / f"{r['sample_id']}.npz") as z:
            art = z["time_artifact"]
        if r["sample_id"] not in clogged:
            assert not art.any()
            continue
        shares.append(art.mean())
        _check_clog(read_fcs(cohort / r["fcs_path"]), art, sim.TIMESTEP)
    assert min(shares) >= 0.02 - 1 / EVENTS and max(shares) <= 0.06 + 1 / EVENTS
    assert max(shares) - min(shares) > 0.01  # drawn per file, not one fixed share


def _check_clog(d, art: np.ndarray, timestep: float) -> None:
    """A clog: a contiguous block of 2-6% of events after a gap of >= 3 s, at a burst
    rate, with shifted scatter; steady acquisition before and after."""
    n = art.size
    first, last = int(np.argmax(art)), n - int(np.argmax(art[::-1]))
    assert art[first:last].all()  # one contiguous block in acquisition order
    assert 0.02 - 1 / n <= art.mean() <= 0.06 + 1 / n
    assert 0.2 * n <= first and last < n
    t = d.scaled()[:, d.channel_index("Time")] * timestep  # seconds
    assert np.all(np.diff(t) >= 0)
    assert t[first] - t[first - 1] >= 3.0 - timestep  # seconds without events
    before = (t[first - 1] - t[0]) / (first - 1)  # mean s per event, steady
    after = (t[-1] - t[last]) / (n - 1 - last)
    during = (t[last - 1] - t[first]) / (last - 1 - first)
    assert 0.6 < after / before < 1.6
    assert during < 0.5 * before  # a burst
    fsc = d.events[:, d.channel_index("FSC-A")]
    assert np.median(fsc[art]) < 0.95 * np.median(fsc[~art])


def test_out_must_be_a_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        sim.simulate_cohort(target, events=1000)


# --- Instrument profiles ------------------------------------------------------------

SMALL = {"seed": 6, "events": 3000, "patients": 3}  # 3 patients with 5 clogged files
LOGICLE = Logicle(262144, 0.5, 4.5, 0)


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> dict[str, Path]:
    """The first 3 patients of seed 6 in every profile: ``{profile: folder}``."""
    out = {}
    for name in sim.PROFILES:
        folder = tmp_path_factory.mktemp(f"small_{name}")
        sim.simulate_cohort(folder, profile=name, **SMALL)
        out[name] = folder
    return out


def _sheet_of(folder: Path) -> list[dict[str, str]]:
    return _read_tsv(folder / "samples.tsv")


def _pn(text: dict[str, str], letter: str) -> list[str]:
    return [text[f"$P{i}{letter}"] for i in range(1, int(text["$PAR"]) + 1)]


def test_profiles_are_exported():
    assert {"fortessa", "canto_export", "log1024"} <= set(sim.PROFILES)
    fortessa = sim.PROFILES["fortessa"]
    assert fortessa.channels == sim.CHANNELS and fortessa.timestep == sim.TIMESTEP
    assignments = {
        (name, panel): p.assignment[panel] for name, p in sim.PROFILES.items() for panel in "TB"
    }
    for panel in "TB":  # every profile puts the markers on other detectors
        names = [assignments[(n, panel)] for n in sim.PROFILES]
        assert len({tuple(a) for a in names}) == len(names)
    assert len(sim.PROFILES["canto_export"].detectors) == 8


@pytest.mark.parametrize("profile", sorted(sim.PROFILES))
def test_every_profile_reads_back_with_tot_events(small, profile):
    prof = sim.PROFILES[profile]
    folder = small[profile]
    sheet = _sheet_of(folder)
    assert {r["patient_id"] for r in sheet} == {"P01", "P02", "P03"}
    for r in sheet:
        d = read_fcs(folder / r["fcs_path"])
        assert d.warnings == []
        assert d.n_events == int(d.text["$TOT"]) == SMALL["events"]
        assert d.channels == list(prof.channels)
        assert d.text["$TIMESTEP"] == f"{prof.timestep:g}"
        # Markers ($PnS) on the profile's detectors; the viability name per patient.
        panel = r["panel"]
        expected = dict(zip(prof.assignment[panel], sim.PANEL_MARKERS[panel], strict=True))
        for det, marker in zip(d.channels, d.markers, strict=True):
            want = expected.get(det, "")
            if want == sim.VIABILITY:
                assert marker in sim.VIABILITY_NAMES
            else:
                assert marker == want, (det, marker)
        names, s = d.spillover()
        assert names == list(prof.detectors) and np.all(np.diag(s) == 1.0)
        fd = flowio.FlowData(str(folder / r["fcs_path"]))
        assert fd.event_count == SMALL["events"]
        np.testing.assert_array_equal(fd.as_array(preprocess=False), d.events)


def test_fortessa_profile_is_float_linear_uncompensated(small):
    folder = small["fortessa"]
    for r in _sheet_of(folder)[:6]:
        d = read_fcs(folder / r["fcs_path"])
        assert d.text["$DATATYPE"] == "F" and set(_pn(d.text, "B")) == {"32"}
        assert set(_pn(d.text, "R")) == {"262144"} and set(_pn(d.text, "E")) == {"0,0"}
        assert d.events.dtype == np.float32 and d.events[:, 3:10].min() < 0  # raw negatives


def test_canto_export_is_compensated_logicle_0_4096(small):
    folder = small["canto_export"]
    single, double = [], []
    for r in _sheet_of(folder):
        d = read_fcs(folder / r["fcs_path"])
        text = d.text
        assert text["$DATATYPE"] == "F"
        assert _pn(text, "R") == ["262144"] * 3 + ["4096"] * 8 + ["262144"]
        assert set(_pn(text, "E")) == {"0,0"}
        assert text["TRANSFORMATION"] == "custom" and text["FLOWCORE_$P4RMAX"] == "4096"
        fl = d.events[:, 3:11]
        assert fl.min() >= 0.0 and fl.max() <= 4096.0
        assert np.median(fl) > 300  # logicle scale, not raw linear values near 0
        assert np.all(d.events[:, :3] >= 0) and d.events[:, :3].max() > 4096  # raw scatter
        t = d.events[:, 11]
        assert np.all(t == np.round(t)) and t.max() * 0.001 > 50  # whole ticks of 1 ms
        # The unused detector holds no marker: autofluorescence and residual spread only.
        unused = [c for c, m in zip(d.channels[3:11], d.markers[3:11], strict=True) if not m]
        assert len(unused) == 1
        empty = LOGICLE.inverse(d.events[:, d.channel_index(unused[0])] / 4096.0)
        assert -20 < np.median(empty) < 150 and np.quantile(empty, 0.99) < 800
        if r["panel"] != "T":
            continue
        # Already compensated: CD8 T cells are CD4- in PerCP-Cy5-5-A (which PE, CD127
        # here, spills into); compensating again pushes them far below zero.
        names, s = d.spillover()
        x = LOGICLE.inverse(fl.astype(np.float64) / 4096.0)
        cells = _labels(folder, r["sample_id"]) == "t_cd8"
        if cells.sum() < 30:
            continue
        j = names.index("PerCP-Cy5-5-A")
        single.append(np.median(x[cells, j]))
        double.append(np.median((x @ np.linalg.inv(s))[cells, j]))
    assert len(single) >= 5
    assert max(abs(v) for v in single) < 100
    assert np.median(double) < np.median(single) - 80


def test_log1024_is_integer_log_amplified(small):
    folder = small["log1024"]
    negatives, brightest, fsc, spilled, compensated = [], [], [], [], []
    for r in _sheet_of(folder):
        d = read_fcs(folder / r["fcs_path"])
        text = d.text
        assert text["$DATATYPE"] == "I" and set(_pn(text, "B")) == {"16"}
        assert set(_pn(text, "R")) == {"1024"}
        assert _pn(text, "E") == ["0,0"] * 3 + ["4,0"] * 7 + ["0,0"]
        assert text["$TIMESTEP"] == "0.2"
        x = d.events
        assert np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 1023
        lin = d.scaled()
        decoded = 10 ** (4 * x[:, 3:10].astype(np.float64) / 1024)
        np.testing.assert_allclose(lin[:, 3:10], decoded, rtol=1e-12)
        np.testing.assert_array_equal(lin[:, :3], x[:, :3])  # scatter is linear
        names = _labels(folder, r["sample_id"])
        if r["panel"] == "B":  # NK cells: negative for CD19 and IgD (and their spill sources)
            for marker in ("CD19", "IgD"):
                negatives.append(np.median(lin[names == "nk", d.markers.index(marker)]))
        live = ~np.char.startswith(names, "dead_") & ~np.isin(names, ["debris", "doublet"])
        brightest.append(np.quantile(lin[live, 3:9], 0.999))
        lymph = np.isin(names, ["t_cd4_conv", "t_cd8", "t_cell", "nk"])
        fsc.append(np.median(x[lymph, 0]))
        if r["panel"] == "B":  # $SPILLOVER applies to the decoded values: CD3 (FL1) of T
            names_s, s = d.spillover()  # cells spills into IgD (FL2), compensation removes it
            j = d.channel_index("FL2-A")
            comp = lin[:, 3:10] @ np.linalg.inv(s)
            spilled.append(np.median(lin[names == "t_cell", j]))
            compensated.append(np.median(comp[names == "t_cell", names_s.index("FL2-A")]))
        fd = flowio.FlowData(str(folder / r["fcs_path"]))  # flowio decodes $PnE alike
        np.testing.assert_allclose(fd.as_array(preprocess=True)[:, 3:10], lin[:, 3:10])
    assert 1.0 <= min(negatives) and np.median(negatives) <= 12.0
    assert max(brightest) < 1e4
    assert 150 <= np.median(fsc) <= 350
    assert min(spilled) > 50 and max(compensated) < 15


@pytest.mark.parametrize("profile", sorted(sim.PROFILES))
def test_same_arguments_same_bytes_in_every_profile(small, profile, tmp_path):
    sim.simulate_cohort(tmp_path, profile=profile, **SMALL)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    ref = small[profile]
    assert files == sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (small[profile] / rel).read_bytes(), rel


def test_truth_is_the_same_in_every_profile(small):
    ref = small["fortessa"]
    for name in ("canto_export", "log1024"):
        for rel in ["truth.tsv", "samples.tsv", *(f"truth/{p.name}" for p in ref.glob("truth/*"))]:
            assert (small[name] / rel).read_bytes() == (ref / rel).read_bytes(), rel
    a = (ref / "fcs/P01_m0_T.fcs").read_bytes()
    assert a != (small["canto_export"] / "fcs/P01_m0_T.fcs").read_bytes()


def test_first_patients_are_those_of_a_larger_cohort(small, tmp_path):
    sim.simulate_cohort(tmp_path, seed=6, events=3000, patients=2)
    sheet = _sheet_of(tmp_path)
    assert {r["patient_id"] for r in sheet} == {"P01", "P02"}
    for r in sheet:
        assert (tmp_path / r["fcs_path"]).read_bytes() == (
            small["fortessa"] / r["fcs_path"]
        ).read_bytes()
    assert "the first 2 of 23 patients" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("profile", sorted(sim.PROFILES))
def test_clogs_in_every_profile(small, profile):
    folder = small[profile]
    prof = sim.PROFILES[profile]
    n_clogged = 0
    for r in _sheet_of(folder):
        with np.load(folder / "truth" / f"{r['sample_id']}.npz") as z:
            art = z["time_artifact"]
        if art.any():
            n_clogged += 1
            _check_clog(read_fcs(folder / r["fcs_path"]), art, prof.timestep)
    assert n_clogged == 5
    listed = (folder / "README.md").read_text().split("Files with a clog")[1]
    assert listed.split("\n\n")[0].count("_m") == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"profile": "aria"}, "profile"),
        ({"profile": None}, "profile"),
        ({"patients": 0}, "patients"),
        ({"patients": 24}, "patients"),
        ({"patients": True}, "patients"),
        ({"patients": 2.0}, "patients"),
    ],
)
def test_bad_profile_or_patients_is_a_config_error(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as info:
        sim.simulate_cohort(tmp_path, events=1000, **kwargs)
    assert info.value.field == field
    assert not (tmp_path / "samples.tsv").exists()


def test_cli_profile_and_patients(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["simulate", "--out", str(out), "--events", "1000", "--seed", "3"]
    assert cli_main([*argv, "--profile", "log1024", "--patients", "1"]) == 0
    sheet = _sheet_of(out)
    assert {r["patient_id"] for r in sheet} == {"P01"}
    assert read_text(out / sheet[0]["fcs_path"])[1]["$DATATYPE"] == "I"
    assert cli_main([*argv, "--profile", "nope"]) == 1
    err = capsys.readouterr().err
    assert "ConfigError" in err and "profile" in err and err.count("\n") == 1
    from immuno.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["simulate"]
    help_text = " ".join(sub.format_help().split())
    assert all(name in help_text for name in sim.PROFILES)


# --- Harder biology -----------------------------------------------------------------


def _composition_of(cohort: Path, sid: str) -> dict[str, float]:
    names = _labels(cohort, sid)
    m = sim.truth_masks(cohort / "truth" / f"{sid}.npz")
    lymph = int(m["lymphocytes"].sum())
    return {
        "lymph": lymph,
        "lymph_of_live": lymph / max(int(m["live"].sum()), 1),
        "mono_debris": int(np.sum(names == "monocyte") + np.sum(names == "debris")),
        "granulocyte_of_cells": float(np.mean(names[m["singlets"]] == "granulocyte")),
    }


def test_depleted_visits_have_more_monocytes_and_debris_than_lymphocytes(small, cohort, sheet):
    comp = {r["sample_id"]: _composition_of(small["fortessa"], r["sample_id"])
            for r in _sheet_of(small["fortessa"])}  # fmt: skip
    heavy = [c for c in comp.values() if c["mono_debris"] > 2 * c["lymph"]]
    assert any(c["lymph_of_live"] < 0.25 for c in heavy)
    # Whole cohort: every nadir file, and strongly depleted patients most of all.
    effects = [sim._patient_effects(7, p) for p in range(23)]
    strong = {sim.patient_id(p) for p, e in enumerate(effects) if e["strong_depletion"]}
    share: dict[bool, list[float]] = {True: [], False: []}
    for r in sheet:
        if r["visit_month"] in ("1.5", "7.5"):
            c = _composition_of(cohort, r["sample_id"])
            assert c["mono_debris"] > c["lymph"], r["sample_id"]
            share[r["patient_id"] in strong].append(c["lymph_of_live"])
    assert 3 <= len(strong) <= 12
    assert 0.08 <= np.median(share[True]) <= 0.25
    assert np.median(share[True]) < np.median(share[False]) - 0.03


def test_low_density_granulocytes_in_a_share_of_files(cohort, sheet):
    by_visit: dict[tuple[str, str], set[bool]] = {}
    shares = []
    for r in sheet:
        c = _composition_of(cohort, r["sample_id"])
        shares.append(c["granulocyte_of_cells"])
        by_visit.setdefault((r["patient_id"], r["visit_month"]), set()).add(shares[-1] > 0)
    shares_a = np.array(shares)
    assert 0.15 <= np.mean(shares_a > 0) <= 0.75
    assert shares_a.max() <= 0.12 and shares_a.max() >= 0.06
    assert all(len(v) == 1 for v in by_visit.values() if any(v))  # both tubes or neither
    # High SSC, not lymphocytes.
    r = sheet[int(np.argmax(shares_a))]
    names = _labels(cohort, r["sample_id"])
    ssc = read_fcs(cohort / r["fcs_path"]).events[:, 2]
    gran = names == "granulocyte"
    lymph = sim.truth_masks(cohort / "truth" / f"{r['sample_id']}.npz")["lymphocytes"]
    assert not np.any(lymph & gran)
    assert np.median(ssc[gran]) > 4 * np.median(ssc[lymph])
    assert "granulocyte" in sim.LEGENDS["T"] and "dead_granulocyte" in sim.LEGENDS["B"]


def test_igd_is_one_peak_with_a_shoulder_in_some_patients(cohort, sheet):
    """Ashman's D of logicle IgD between naive and IgD- memory B cells: in shoulder
    patients above 2 (two populations an eye or a two-Gaussian fit can place) but close
    (a shoulder on the naive peak at their ~10:1 weights, not a valley), far apart in the
    others. Measured on this cohort (seed 7): 2.7-4.2 (median 3.5) against a median 6.3."""
    shoulder = {sim.patient_id(p) for p in range(23) if sim._patient_effects(7, p)["shoulder"]}
    assert 2 <= len(shoulder) <= 12
    d_of: dict[bool, list[float]] = {True: [], False: []}
    dim_share: dict[bool, list[float]] = {True: [], False: []}
    for r in sheet:
        if float(r["visit_month"]) < 3:
            continue
        x, channels = _compensated(cohort / r["fcs_path"])
        names = _labels(cohort, r["sample_id"])
        if r["panel"] == "B":
            y = LOGICLE.apply(x[:, channels.index("FITC-A")])  # IgD on the Fortessa
            naive = y[names == "b_naive"]
            memory = y[np.isin(names, ["b_memory_switched", "b_dn"])]
            if memory.size >= 15:
                dd = np.sqrt(2) * abs(naive.mean() - memory.mean())
                d_of[r["patient_id"] in shoulder].append(dd / np.sqrt(naive.var() + memory.var()))
        else:
            cd4 = x[names == "t_cd4_conv", channels.index("APC-A")]
            if cd4.size >= 50:
                dim_share[r["patient_id"] in shoulder].append(np.mean(cd4 < 0.55 * np.median(cd4)))
    assert len(d_of[True]) >= 3 and len(d_of[False]) >= 10
    assert 2.0 < min(d_of[True]) and np.median(d_of[True]) < 4.5
    assert np.median(d_of[False]) > np.median(d_of[True]) + 1.5
    assert np.median(dim_share[True]) > np.median(dim_share[False]) + 0.05


def test_marker_and_scatter_scales_vary_widely(cohort, sheet):
    assert sim.MARKER_SCALE_RANGE[0] <= 0.6 and sim.MARKER_SCALE_RANGE[1] >= 1.5
    assert sim.SCATTER_SCALE_RANGE[0] <= 0.75 and sim.SCATTER_SCALE_RANGE[1] >= 1.3
    cd3, fsc = [], []
    for r in sheet[::4]:
        if r["panel"] != "T":
            continue
        x, channels = _compensated(cohort / r["fcs_path"])
        cd8 = _labels(cohort, r["sample_id"]) == "t_cd8"
        cd3.append(np.median(x[cd8, channels.index("FITC-A")]))
        fsc.append(np.median(x[cd8, 0]))
    assert max(cd3) / min(cd3) > 2.0
    assert max(fsc) / min(fsc) > 1.4
