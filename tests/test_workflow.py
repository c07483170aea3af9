"""The whole workflow on a small demo study: outputs, review figures, auditable Gating-ML
export, statistics, the report, and an idempotent rerun.

One Snakemake run (session fixture) in a scratch folder, on 10 patients of a demo
cohort at 5,000 events per file (~150 files): a couple of minutes. The accuracy floors
on the full demo cohort are in tests/test_accuracy.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
EVENTS = 5000
PATIENTS = [f"P{i:02d}" for i in range(1, 11)]

pytestmark = pytest.mark.workflow


def _snakemake(workdir: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    cmd = [
        str(SNAKEMAKE),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    from immuno.simulate import simulate_cohort

    work = tmp_path_factory.mktemp("workflow")
    demo = work / "demo"
    simulate_cohort(demo, seed=1, events=EVENTS)
    sheet = pd.read_csv(demo / "samples.tsv", sep="\t", dtype=str)
    sheet[sheet.patient_id.isin(PATIENTS)].to_csv(demo / "study.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = str(demo / "study.tsv")
    cfg["panels"] = {k: str(ROOT / v) for k, v in cfg["panels"].items()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(work, "--keep-going")
    return work, proc


def _read(path):
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def _review_data(review: Path) -> dict:
    """The data the review page holds inline."""
    import json
    import re

    page = (review / "index.html").read_text()
    blob = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(blob.group(1))


def test_outputs_exist_and_follow_the_contract(demo_run):
    work, _ = demo_run
    res = work / "results"
    for rel in [
        "counts.tsv",
        "failed_samples.tsv",
        "stats/paired_by_group.tsv",
        "stats/paired_pooled.tsv",
        "stats/between_groups.tsv",
        "figures/reconstitution.png",
        "figures/reconstitution.pdf",
        "figures/cohort_qc.png",
    ]:
        assert (res / rel).stat().st_size > 0, rel
    counts = _read(res / "counts.tsv")
    assert list(counts.columns) == [
        "sample_id", "patient_id", "dose_group", "visit_month", "panel", "population",
        "parent", "count", "parent_count", "percent_of_parent", "percent_of_lymphocytes",
        "absolute_count", "qc_flag", "qc_note",
    ]  # fmt: skip
    sheet = _read(work / "demo" / "study.tsv")
    assert set(counts["sample_id"]) == set(sheet["sample_id"])
    assert _read(res / "failed_samples.tsv").empty
    # Every sample has one Gating-ML file.
    assert {p.stem for p in (res / "gates").glob("*.xml")} == set(sheet["sample_id"])
    # absolute_count = percent_of_lymphocytes / 100 x lymphocyte_count, per row.
    m = counts.merge(sheet[["sample_id", "lymphocyte_count"]], on="sample_id")
    ok = m["absolute_count"].notna()
    # Both are rounded (4 and 6 decimals, immuno.count), each from the unrounded percentage.
    np.testing.assert_allclose(
        m.loc[ok, "absolute_count"],
        m.loc[ok, "percent_of_lymphocytes"] / 100 * m.loc[ok, "lymphocyte_count"],
        rtol=0,
        atol=5e-7 * m.loc[ok, "lymphocyte_count"].max() + 6e-7,
    )
    cd4 = counts[counts.population == "cd4"]
    pct = 100 * cd4["count"] / cd4["parent_count"]
    np.testing.assert_array_equal(cd4["percent_of_parent"], pct.round(4))


def test_review_figure_for_every_sample_and_exported_gates_reproduce_counts(demo_run):
    """Every gate on every sample can be seen, and re-applying the exported Gating-ML
    with our engine gives exactly the counts in counts.tsv."""
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    work, _ = demo_run
    sheet = _read(work / "demo" / "study.tsv")
    review = work / "results" / "review"
    assert {p.stem for p in (review / "figures").glob("*.png")} == set(sheet["sample_id"])
    assert {p.stem for p in (review / "thumbs").glob("*.png")} == set(sheet["sample_id"])
    assert {r["id"] for r in _review_data(review)["samples"]} == set(sheet["sample_id"])
    counts = _read(work / "results" / "counts.tsv")
    for row in sheet.head(12).itertuples():
        strategy = load_gatingml(work / "results" / "gates" / f"{row.sample_id}.xml")
        result = strategy.apply(read_fcs(work / "demo" / row.fcs_path))
        ours = counts[counts.sample_id == row.sample_id].set_index("population")["count"]
        assert {p: result.count(p) for p in result.masks} == ours.to_dict()


def test_exported_gates_reproduce_counts_in_flowkit(demo_run):
    """Every number is auditable outside the pipeline: FlowKit applies our Gating-ML."""
    import flowkit as fk

    from immuno.gatingml import population_ids

    work, _ = demo_run
    counts = _read(work / "results" / "counts.tsv")
    # Every sample whose time gate cut a clog out (a polygon on Time x FSC-A holding the
    # kept intervals, Time in seconds as FlowKit reads it) and two whose gate cut nothing.
    clean = counts[counts.population == "clean"]
    cut = list(clean.loc[clean.qc_note.fillna("").str.contains("time_removed"), "sample_id"])
    whole = list(clean.loc[~clean.sample_id.isin(cut), "sample_id"])[:2]
    assert cut, "the test cohort has clogged files"
    for sid in [*cut, *whole]:
        fcs = work / "demo" / "fcs" / f"{sid}.fcs"
        xml = work / "results" / "gates" / f"{sid}.xml"
        sample = fk.Sample(str(fcs))
        session = fk.Session(gating_strategy=fk.parse_gating_xml(str(xml)), fcs_samples=[sample])
        session.analyze_samples(sample_id=sample.id, use_mp=False)
        res = session.get_gating_results(sample.id)
        ours = counts[counts.sample_id == sid].set_index("population")["count"]
        ids = population_ids(xml)
        assert set(ids) == set(ours.index)
        for name, gid in ids.items():
            assert res.get_gate_count(gid) == int(ours[name]), (sid, name)


def test_stats_show_the_treg_and_naive_b_rises(demo_run):
    work, _ = demo_run
    pooled = _read(work / "results" / "stats" / "paired_pooled.tsv").set_index("population")
    for pop in ["treg", "naive_b"]:
        assert pooled.loc[pop, "median_change"] > 0
        assert pooled.loc[pop, "p_adjusted"] < 0.05
        assert pooled.loc[pop, "n_pairs"] >= 8
    # Sustained CD4/CD8 depletion, no dose-group difference.
    assert pooled.loc["cd4", "median_change"] < 0 and pooled.loc["cd4", "p_adjusted"] < 0.05
    between = _read(work / "results" / "stats" / "between_groups.tsv")
    assert (between["p_value"] > 0.05).all()


def test_rerun_has_nothing_to_do_and_report_builds(demo_run):
    work, _ = demo_run
    dry = _snakemake(work, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    _snakemake(work, "--report", str(work / "results" / "report.html"))
    html = (work / "results" / "report.html").read_text(errors="replace")
    assert "reconstitution.png" in html


CHROMIUM = Path(os.environ.get("IMMUNO_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, driven by playwright (nothing downloads a browser;
    ``make test`` installs chromium with ``scripts/install-browser.sh``)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/install-browser.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def test_review_page_in_a_browser_from_the_report_in_two_clicks(demo_run, browser):
    """A reviewer opens the report, follows its link to the review page (click 1), which
    opens on the flagged samples, and opens a flagged sample (click 2): every gate large,
    the flag beside its count. Filters, sorting and the keyboard work; nothing errs."""
    from immuno.review import write_review_page

    work, _ = demo_run
    results = work / "results"
    _snakemake(work, "--report", str(results / "report.html"))
    review = results / "review"
    data = _review_data(review)
    if not any(g[3] for s in data["samples"] for g in s["gates"]):
        # This small run may have no flag at all: flag one gate so the filter has work.
        data["samples"][3]["gates"][4][3] = "crowded_cluster(90%)"
        write_review_page(data["samples"], review / "index.html")
    flagged = {s["id"] for s in data["samples"] if any(g[3] for g in s["gates"])}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((results / "report.html").as_uri())
    link = page.locator("a[href*='review/index.html']").first
    link.wait_for(timeout=30000)
    with page.context.expect_page() if link.get_attribute("target") == "_blank" else _same(page):
        link.click()  # click 1
    page = page.context.pages[-1]
    page.wait_for_selector(".cell")
    assert page.is_checked("#flagged")
    cells = page.locator(".cell")
    assert cells.count() >= 1
    assert {cells.nth(i).get_attribute("data-sample") for i in range(cells.count())} <= flagged
    cells.first.click()  # click 2
    page.wait_for_function("document.getElementById('figure').naturalWidth > 0")
    sid = page.url.split("#sample=")[1]
    assert sid in flagged
    assert page.locator("#sample tr.flag").count() >= 1
    # Back with Esc; every sample of the gate without the filter; sorted by value.
    page.keyboard.press("Escape")
    page.uncheck("#flagged")
    gate = page.eval_on_selector("#gate", "e => e.value")
    panel, population = gate.split("/")
    expected = [s for s in data["samples"] if s["panel"] == panel]
    assert page.locator(".cell").count() == len(expected)
    page.select_option("#sort", "value")
    values = [
        next(g[2] for g in s["gates"] if g[0] == population)
        for s in sorted(expected, key=lambda s: s["id"])
    ]
    shown = page.locator(".cell .cap b").all_inner_texts()
    by_id = {s["id"]: next(g[2] for g in s["gates"] if g[0] == population) for s in expected}
    assert [by_id[i] for i in shown] == sorted(values, key=lambda v: -1 if v is None else v)
    # Thumbnails are real images (lazily loaded: the first rows at least).
    page.wait_for_function(
        "[...document.querySelectorAll('.thumb img')].slice(0, 4).every(i => i.naturalWidth > 0)"
    )
    # Keyboard: focus the first cell, Enter opens it, the right arrow moves to the next.
    page.locator(".cell").first.focus()
    page.keyboard.press("Enter")
    assert page.url.split("#sample=")[1] == shown[0]
    page.keyboard.press("ArrowRight")
    assert page.url.split("#sample=")[1] == shown[1]
    assert errors == []


class _same:
    """A no-op stand-in for ``expect_page`` when a link opens in the same tab."""

    def __init__(self, page):
        self.page = page

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.page.wait_for_load_state()
        return False


def test_a_reviewer_corrects_a_gate_in_the_browser_and_the_rerun_applies_it(
    demo_run, browser, tmp_path
):
    """Served by ``immuno review``, the page takes a reviewer from the flagged samples to
    a flagged gate in two clicks; dragging the cut moves its value, the typed value and
    the reason are saved into the study's corrections file (checked, with who and
    when), and the workflow's rerun gates that sample with the reviewer's cut: the
    count is the parent's events beyond it, flagged ``corrected``, listed with the
    counts before and after, and the file's hash is in the provenance record."""
    import datetime as dt
    import hashlib
    import json
    import shutil

    from immuno.corrections import load_corrections
    from immuno.gate import EventSpace
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs
    from immuno.review import write_review_page
    from immuno.server import ReviewServer, study_from_config

    work, _ = demo_run
    mine = tmp_path / "study"
    shutil.copytree(work, mine, symlinks=True)  # the shared run stays as it is
    results = mine / "results"
    before = _read(results / "counts.tsv")
    data = _review_data(results / "review")
    # The flag a reviewer acts on: one T sample's cd3 gate (this small run may flag none).
    sample = next(s for s in data["samples"] if s["panel"] == "T")
    gate = next(g for g in sample["gates"] if g[0] == "cd3")
    gate[3] = gate[3] or "borrowed_cut_in_a_peak(CD3)"
    write_review_page(data["samples"], results / "review" / "index.html")

    server = ReviewServer(results, port=0, **study_from_config(mine / "config.yaml", mine))
    server.start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "#flagged")
        page.wait_for_function("document.getElementById('mode').textContent.length > 0")
        page.select_option("#gate", "T/cd3")
        page.locator(f".cell[data-sample='{sample['id']}']").click()  # click 1
        page.locator("button.fix[data-gate='cd3']").click()  # click 2
        page.wait_for_selector("[data-handle='CD3']", state="attached")
        auto = float(page.input_value("input[data-dim='CD3']"))
        line = page.locator("[data-handle='CD3']").bounding_box()
        x, y = line["x"] + line["width"] / 2, line["y"] + line["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 30, y, steps=4)
        page.mouse.up()
        # dragged 30 px right: the cut moved by 30 px of the panel's data scale
        info = page.evaluate(f"EDIT[{json.dumps(sample['id'])}].gates.cd3")
        (left, _, right, _), (x0, x1) = info["box"], info["xlim"]
        per_px = (x1 - x0) / (right - left)
        moved = float(page.input_value("input[data-dim='CD3']")) - auto
        assert abs(moved - 30 * per_px) < 1.5 * per_px, (moved, 30 * per_px)
        cut = round(auto + 0.2, 4)  # into the lower side of the CD3+ peak
        page.fill("input[data-dim='CD3']", str(cut))
        page.fill("#reviewer", "R. Eviewer")
        page.click("#save")
        assert "reason" in page.text_content("#result")  # every entry says why
        page.fill("#reason", "NK cells above the valley")
        page.click("#save")
        page.wait_for_selector("#result.ok")
        assert errors == []
    finally:
        server.stop()
    saved = load_corrections(mine / "corrections.yaml")
    (entry,) = saved.entries
    assert (entry.sample, entry.population, entry.action) == (sample["id"], "cd3", "threshold")
    assert entry.value == {"CD3": cut} and entry.reviewer == "R. Eviewer"
    assert entry.date == dt.date.today().isoformat()

    _snakemake(mine)
    after = _read(results / "counts.tsv")
    row = after[(after.sample_id == sample["id"]) & (after.population == "cd3")].iloc[0]
    old = before[(before.sample_id == sample["id"]) & (before.population == "cd3")].iloc[0]
    assert row["qc_flag"] == "corrected" and row["count"] < old["count"]
    # the count is the lymphocytes at or above the reviewer's cut (gate space)
    fcs_path = _read(mine / "demo" / "study.tsv").set_index("sample_id").loc[sample["id"]]
    fcs = read_fcs(mine / "demo" / fcs_path["fcs_path"])
    gates = load_gatingml(results / "gates" / f"{sample['id']}.xml")
    lymph = gates.apply(fcs).masks["lymphocytes"]
    cd3 = EventSpace(fcs, gates, dtype=np.float64).values(gates.gates["cd3"].dims)[:, 0]
    assert row["count"] == int((lymph & (cd3 >= cut)).sum())
    # the children were fitted on the corrected gate
    cd4 = after[(after.sample_id == sample["id"]) & (after.population == "cd4")].iloc[0]
    assert cd4["parent_count"] == row["count"]
    listed = _read(results / "gating" / "corrections.tsv").iloc[0]
    assert (listed["count_before"], listed["count_after"]) == (old["count"], row["count"])
    assert "NK cells above the valley" in (results / "corrections.html").read_text()
    prov = yaml.safe_load((results / "provenance.json").read_text())
    digest = hashlib.sha256((mine / "corrections.yaml").read_bytes()).hexdigest()
    assert prov["corrections"]["sha256"] == digest
    # every other sample's counts are untouched
    others = after.sample_id != sample["id"]
    pd.testing.assert_frame_equal(
        after[others].reset_index(drop=True),
        before[before.sample_id != sample["id"]].reset_index(drop=True),
    )


def test_a_minimal_study_config_runs_from_its_own_folder_with_a_failed_panel(tmp_path):
    """A study's config with only ``samples:`` and ``panels:`` (its own panel names),
    run from its own folder: nothing of the demo's config leaks in, the defaults give
    the tests of the populations its gating defines, and a panel whose every file is
    missing is reported while the other panel gets its statistics and figure panels."""
    from immuno.simulate import simulate_cohort

    study = tmp_path / "my study"
    simulate_cohort(study / "data", seed=5, events=2000, patients=3)
    sheet = pd.read_csv(study / "data" / "samples.tsv", sep="\t", dtype=str)
    sheet["panel"] = sheet["panel"].map({"T": "Tcell", "B": "Bcell"})
    t_tube = sheet["panel"] == "Tcell"
    sheet.loc[t_tube, "fcs_path"] = "fcs/lost_" + sheet.loc[t_tube, "sample_id"] + ".fcs"
    sheet.to_csv(study / "data" / "sheet.tsv", sep="\t", index=False)  # paths: data/fcs/
    (study / "study.yaml").write_text(
        "samples: data/sheet.tsv\n"
        f"panels:\n  Tcell: {ROOT / 'gates/t_cell.yaml'}\n  Bcell: {ROOT / 'gates/b_cell.yaml'}\n"
    )
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--configfile", "study.yaml"]
    proc = subprocess.run([*cmd, "--cores", "2"], cwd=study, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Default statistics.tests: cd4 (absolute_count)" in proc.stderr
    res = study / "results"
    assert sorted(p.name for p in (res / "exports").glob("*.h5ad")) == ["Bcell.h5ad", "Tcell.h5ad"]
    assert "T, B" not in (res / "methods.rst").read_text()
    failed = _read(res / "failed_samples.tsv")
    assert set(failed["sample_id"]) == set(sheet.loc[t_tube, "sample_id"])
    pooled = _read(res / "stats" / "paired_pooled.tsv").set_index("population")
    assert pooled.loc["cd4", "method"].startswith("no values")
    assert pooled.loc["cd19", "n_pairs"] == 3 and np.isfinite(pooled.loc["cd19", "p_value"])
    assert (res / "figures" / "reconstitution.png").stat().st_size > 10_000
    assert not (ROOT / "data" / "sheet.tsv").exists()  # nothing written in the repository
    # the console says how far the long steps are, and sums the run up at the end
    # one line per gating job (a patient's files of one panel), with its failures
    assert (
        len(re.findall(r"^Bcell \S+: \d+ of \d+ samples gated \(pass 1\)$", proc.stderr, re.M)) == 3
    )
    lost = re.findall(
        r"^Tcell \S+: 0 of (\d+) samples gated \(pass 1\); failed: ", proc.stderr, re.M
    )
    assert sum(map(int, lost)) == 24
    summary = proc.stderr[proc.stderr.index("immuno: finished") :]
    assert "24 of 48 samples gated" in summary and "24 samples failed" in summary
    assert "FCSError: FCS file does not exist" in summary
    # another study's config in the same folder is told that results/ is not its own
    (study / "data" / "other.tsv").write_text((study / "data" / "sheet.tsv").read_text())
    (study / "other.yaml").write_text(
        (study / "study.yaml").read_text().replace("data/sheet.tsv", "data/other.tsv")
    )
    dry = subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--configfile", "other.yaml", "-n"],
        cwd=study,
        capture_output=True,
        text=True,
    )
    assert "results/ holds the outputs of another study" in dry.stdout + dry.stderr
