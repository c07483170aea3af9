"""Incremental reruns of the workflow's gating (immuno.batch, workflow/rules/gating.smk).

A small study (4 patients, 2 panels, 3,000 events per file) is gated; then two patients
are added to the sheet, then a reviewer corrects one sample. Each rerun must run the
gating jobs of what changed only: the new patients' batches, the batches whose pass 2
depends on a pooled value that changed (read off the pool's digests), and the summaries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TARGETS = ["results/counts.tsv", "results/review"]

pytestmark = pytest.mark.workflow


def _run(work: Path, *args: str) -> str:
    cmd = [
        str(SNAKEMAKE),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--cores",
        "2",
        *args,
        *TARGETS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _jobs(out: str) -> dict[str, set[str]]:
    """``{rule: {"panel/batch" or ""}}`` of the jobs a run started (its console)."""
    jobs: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?(?:rule|checkpoint) )", out):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if not m:
            continue
        w = re.search(r"wildcards: panel=([^,\n]+), batch=([^\n]+)", block)
        jobs.setdefault(m.group(1), set()).add(f"{w.group(1)}/{w.group(2)}" if w else "")
    return jobs


def _pool(work: Path, panel: str) -> dict:
    return json.loads((work / "results" / "gating" / "pool" / f"{panel}.json").read_text())


def _digests(work: Path) -> dict[str, str]:
    return {
        f"{panel}/{b}": v["digest"]
        for panel in ("T", "B")
        for b, v in _pool(work, panel)["batches"].items()
        if v["redo"]
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from immuno.simulate import simulate_cohort

    work = tmp_path_factory.mktemp("incremental")
    simulate_cohort(work / "data", seed=3, events=3000, patients=6)
    sheet = pd.read_csv(work / "data" / "samples.tsv", sep="\t", dtype=str)
    patients = sorted(sheet["patient_id"].unique())
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = "study.tsv"
    cfg["panels"] = {k: str(ROOT / v) for k, v in cfg["panels"].items()}
    cfg["corrections"] = "corrections.yaml"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    sheet["fcs_path"] = "data/" + sheet["fcs_path"]
    sheet[sheet["patient_id"].isin(patients[:4])].to_csv(work / "study.tsv", sep="\t", index=False)
    first = _run(work)
    return work, sheet, patients, first


def test_a_first_run_gates_every_batch_once(study):
    work, sheet, patients, first = study
    jobs = _jobs(first)
    assert jobs["fit_batch"] == {f"{p}/{pid}" for p in ("T", "B") for pid in patients[:4]}
    # pass 2 runs for the batches the pool names, and for no other
    assert jobs.get("finish_batch", set()) == set(_digests(work))
    counts = pd.read_csv(work / "results" / "counts.tsv", sep="\t", dtype={"sample_id": str})
    assert counts["sample_id"].nunique() == sheet["patient_id"].isin(patients[:4]).sum()
    assert "Nothing to be done" in _run(work, "-n")


def test_adding_patients_reruns_their_batches_and_what_their_pooling_changed(study):
    work, sheet, patients, _ = study
    before = _digests(work)
    old = pd.read_csv(work / "results" / "gating" / "gating_counts.tsv", sep="\t", dtype=str)
    sheet.to_csv(work / "study.tsv", sep="\t", index=False)  # two more patients
    jobs = _jobs(_run(work))
    after = _digests(work)
    new = {f"{p}/{pid}" for p in ("T", "B") for pid in patients[4:]}
    assert jobs["fit_batch"] == new
    changed = {b for b, d in after.items() if before.get(b) != d}
    assert jobs.get("finish_batch", set()) == changed
    assert jobs["pool_panel"] == {""} and "gather_gating" in jobs
    # the old patients' batches that did not run keep their counts, row for row
    kept = {f"{p}/{pid}" for p in ("T", "B") for pid in patients[:4]} - changed
    now = pd.read_csv(work / "results" / "gating" / "gating_counts.tsv", sep="\t", dtype=str)
    batch = {r.sample_id: f"{r.panel}/{r.patient_id}" for r in sheet.itertuples(index=False)}
    a = old[old["sample_id"].map(batch).isin(kept)].reset_index(drop=True)
    b = now[now["sample_id"].map(batch).isin(kept)].reset_index(drop=True)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    assert now["sample_id"].nunique() == len(sheet)
    # fewer gating jobs than a full rerun would take
    full = 2 * len(patients) + len(after)
    ran = len(jobs["fit_batch"]) + len(jobs.get("finish_batch", ()))
    assert ran < full
    print(f"adding {len(patients) - 4} patients ran {ran} gating jobs of {full}: {sorted(jobs)}")


def test_a_correction_reruns_pass_2_of_its_patient_only(study):
    work, sheet, patients, _ = study
    sample = sheet[(sheet["patient_id"] == patients[1]) & (sheet["panel"] == "T")].iloc[0]
    (work / "corrections.yaml").write_text(
        "corrections:\n"
        f"  - sample: {sample['sample_id']}\n"
        "    population: cd3\n"
        "    exclude: true\n"
        "    reviewer: A. Reviewer\n"
        "    date: 2026-12-06\n"
        "    reason: clumps in the tube\n"
    )
    jobs = _jobs(_run(work))
    assert "fit_batch" not in jobs
    assert jobs["finish_batch"] == {f"T/{patients[1]}"}
    counts = pd.read_csv(work / "results" / "counts.tsv", sep="\t", dtype={"sample_id": str})
    row = counts[(counts["sample_id"] == sample["sample_id"]) & (counts["population"] == "cd3")]
    assert row["qc_flag"].str.contains("excluded").all()


def test_outputs_of_an_earlier_configuration_or_sheet_do_not_survive(study):
    """A study run in the folder of another kept that study's panels' exports and gating;
    a patient taken off the sheet kept its batches. After a successful run they are gone,
    and the console says so; what this sheet makes stays."""
    work, sheet, patients, _ = study
    results = work / "results"
    (results / "exports").mkdir(exist_ok=True)
    (results / "exports" / "OLD.h5ad").write_text("an earlier study's export")
    (results / "gating" / "fit" / "OLD" / "P99").mkdir(parents=True)
    (results / "gating" / "pool" / "OLD.json").write_text("{}")
    sheet[sheet["patient_id"] != patients[5]].to_csv(work / "study.tsv", sep="\t", index=False)
    out = _run(work)
    assert "output(s) of an earlier configuration or sheet" in out
    assert not (results / "exports" / "OLD.h5ad").exists()
    assert not (results / "gating" / "fit" / "OLD").exists()
    assert not (results / "gating" / "pool" / "OLD.json").exists()
    for panel in ("T", "B"):
        assert not (results / "gating" / "fit" / panel / patients[5]).exists()
        assert (results / "gating" / "fit" / panel / patients[4]).is_dir()
    counts = pd.read_csv(results / "counts.tsv", sep="\t", dtype={"sample_id": str})
    assert patients[5] not in set(counts["patient_id"].astype(str))
    assert "of an earlier configuration or sheet" not in _run(work)  # nothing more
