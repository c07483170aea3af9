"""Faults: a run killed with SIGKILL in the middle of gating leaves no half-written
table, and a rerun (after --unlock) finishes with the same results as an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TARGET = "results/counts.tsv"


def _setup(work: Path, cohort: Path) -> list[str]:
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str)
    sheet = sheet[sheet.patient_id.isin(["P01", "P02", "P03"])].copy()
    sheet["fcs_path"] = [str(cohort / p) for p in sheet["fcs_path"]]
    sheet.to_csv(work / "samples.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = str(work / "samples.tsv")
    cfg["panels"] = {k: str(ROOT / v) for k, v in cfg["panels"].items()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "config.yaml"), "--cores", "2"]  # fmt: skip


def _study(tmp_path: Path, name: str, cohort: Path) -> tuple[Path, list[str], pd.DataFrame]:
    """A study folder ``tmp_path/name`` set up by :func:`_setup`: ``(folder, command, sheet)``."""
    work = tmp_path / name
    work.mkdir()
    cmd = _setup(work, cohort)
    return work, cmd, pd.read_csv(work / "samples.tsv", sep="\t", dtype=str)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from immuno.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("faults_cohort")
    simulate_cohort(out, seed=5, events=20000)
    return out


def test_kill_9_during_gating_then_rerun(tmp_path, cohort):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    killed.mkdir()
    cmd_ref = _setup(ref, cohort)
    subprocess.run([*cmd_ref, TARGET], check=True, capture_output=True)

    cmd = _setup(killed, cohort)
    proc = subprocess.Popen([*cmd, TARGET], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    logs = killed / "logs" / "fit_batch"

    def gating() -> bool:
        return (
            any(" gated" in p.read_text() for p in logs.rglob("*.log")) if logs.exists() else False
        )

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not gating():
        time.sleep(0.05)
    assert gating(), "gating never started"
    time.sleep(0.5)  # in the middle of gating
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Nothing half-written: the gating outputs are absent or complete, no temp files kept.
    gating = killed / "results" / "gating" / "gating_counts.tsv"
    assert not (killed / TARGET).exists()
    if gating.exists():
        pd.read_csv(gating, sep="\t")  # parses: written whole or not at all
    # The rerun: unlock (the killed run held the lock), then finish normally.
    subprocess.run([*cmd, "--unlock"], check=True, capture_output=True)
    done = subprocess.run([*cmd, TARGET, "--rerun-incomplete"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a = pd.read_csv(ref / TARGET, sep="\t")
    b = pd.read_csv(killed / TARGET, sep="\t")
    pd.testing.assert_frame_equal(a, b)
    leftovers = [p for p in (killed / "results").rglob("*.tmp")]
    assert not leftovers


def test_bad_files_do_not_cost_the_others_their_results(tmp_path, cohort):
    """A truncated file, a non-FCS file and a missing file: the run succeeds, every other
    sample has counts, the three are in failed_samples.tsv with the reason, inputs untouched."""
    import hashlib
    import shutil

    work, cmd, sheet = _study(tmp_path, "bad", cohort)
    local = work / "fcs"
    local.mkdir()
    for p in sheet["fcs_path"]:
        shutil.copy(p, local / Path(p).name)
    sheet["fcs_path"] = [str(local / Path(p).name) for p in sheet["fcs_path"]]
    truncated, garbage, missing = sheet["sample_id"].iloc[[1, 4, 7]]
    by_id = dict(zip(sheet["sample_id"], sheet["fcs_path"], strict=True))
    data = Path(by_id[truncated]).read_bytes()
    Path(by_id[truncated]).write_bytes(data[: len(data) // 2])
    Path(by_id[garbage]).write_bytes(b"not an FCS file at all, just some bytes " * 4)
    Path(by_id[missing]).unlink()
    sheet.to_csv(work / "samples.tsv", sep="\t", index=False)
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
              for p in sheet["fcs_path"] if Path(p).exists()}  # fmt: skip

    done = subprocess.run([*cmd, TARGET], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = pd.read_csv(work / TARGET, sep="\t", dtype={"sample_id": str})
    failed = pd.read_csv(work / "results" / "failed_samples.tsv", sep="\t", dtype=str)
    assert set(failed["sample_id"]) == {truncated, garbage, missing}
    assert set(counts["sample_id"]) == set(sheet["sample_id"]) - {truncated, garbage, missing}
    reasons = failed.set_index("sample_id")
    assert "truncated" in reasons.loc[truncated, "message"] + reasons.loc[truncated, "hint"]
    assert "not an FCS file" in reasons.loc[garbage, "message"]
    assert "does not exist" in reasons.loc[missing, "message"]
    assert all(reasons["error"].str.endswith("Error"))
    after = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before}
    assert before == after


def test_ids_that_look_like_numbers_keep_their_results(tmp_path, cohort):
    """Trial ids such as 0001 and 007 stay text in every table the workflow writes and reads
    back: every sample gets counts, a review figure and its place in the paired tests."""
    work, cmd, sheet = _study(tmp_path, "numeric_ids", cohort)
    sheet = sheet[sheet["visit_month"].isin(["0", "4.5"])].copy()
    sheet["sample_id"] = [f"{i:04d}" for i in range(1, len(sheet) + 1)]
    sheet["patient_id"] = sheet["patient_id"].str.replace("P", "0")  # P01 -> 001
    sheet.to_csv(work / "samples.tsv", sep="\t", index=False)

    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = work / "results"
    failed = pd.read_csv(results / "failed_samples.tsv", sep="\t", dtype=str)
    assert failed.empty, failed.to_dict("records")
    counts = pd.read_csv(results / "counts.tsv", sep="\t", dtype=str)
    assert set(counts["sample_id"]) == set(sheet["sample_id"])
    assert set(counts["patient_id"]) == {"001", "002", "003"}
    assert {p.stem for p in (results / "review" / "figures").glob("*.png")} == set(
        sheet["sample_id"]
    )
    paired = pd.read_csv(results / "stats" / "paired_pooled.tsv", sep="\t")
    assert (paired["n_pairs"] == 3).all(), paired[["population", "n_pairs"]]


def test_a_panel_name_that_leaves_the_results_folder_is_refused(tmp_path, cohort):
    """Panel names become file names (results/exports/<panel>.h5ad): '../x' is refused by the
    config schema before any job runs, and nothing is written beside the study folder."""
    work, cmd, _ = _study(tmp_path, "study", cohort)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["panels"] = {"../escape_T" if k == "T" else k: v for k, v in cfg["panels"].items()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode != 0
    assert "'../escape_T' does not match" in done.stderr
    assert "panels" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]
    assert not (work / "results").exists()


def test_an_fcs_path_with_braces_is_gated_and_tracked(tmp_path, cohort):
    """Snakemake reads { } in an input path as a wildcard: a file in a folder 'run{1}' is read
    from the sheet, gated like the others, and a change to it reruns its jobs."""
    import shutil

    work, cmd, sheet = _study(tmp_path, "braces", cohort)
    sheet = sheet[sheet["visit_month"].isin(["0", "4.5"])].copy()
    odd = work / "run{1}"
    odd.mkdir()
    first = sheet.index[0]
    shutil.copy(sheet.loc[first, "fcs_path"], odd / "a.fcs")
    sheet.loc[first, "fcs_path"] = str(odd / "a.fcs")
    sheet.to_csv(work / "samples.tsv", sep="\t", index=False)
    done = subprocess.run([*cmd, TARGET], capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    counts = pd.read_csv(work / TARGET, sep="\t", dtype=str)
    assert set(counts["sample_id"]) == set(sheet["sample_id"])
    again = subprocess.run([*cmd, TARGET, "-n"], capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr
    (odd / "a.fcs").touch()
    os.utime(odd / "a.fcs", ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = subprocess.run([*cmd, TARGET, "-n"], capture_output=True, text=True)
    said = changed.stdout + changed.stderr
    assert "fit_batch" in said and "Params have changed" in said


def test_a_brace_in_the_configs_paths_is_named_not_a_wildcard_error(tmp_path, cohort):
    import shutil

    work, cmd, _ = _study(tmp_path, "brace_config", cohort)
    odd = work / "gates{1}"
    odd.mkdir()
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    shutil.copy(cfg["panels"]["T"], odd / "t_cell.yaml")
    cfg["panels"]["T"] = str(odd / "t_cell.yaml")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([*cmd, "-n"], capture_output=True, text=True)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "WildcardError" not in said
    assert "ConfigError" in said and "'panels' path" in said and "gates{1}" in said
