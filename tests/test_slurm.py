"""The workflow on a real single-node Slurm cluster gives the same results as a local run.

tests/slurm/start.sh starts the cluster (installing slurm-wlm and munge with apt-get when
missing; needs root), tests/slurm/stop.sh stops it. The workflow runs twice on the same
tiny cohort, each time in its own copy of the workflow in a temporary folder (the working
tree's results/ is never touched): once locally, once with ``--workflow-profile
profiles/slurm`` (as users run it; see the profile's header).
Under CI (``CI`` set) a cluster that cannot start is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immuno.util import sha256_file

pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "tests" / "slurm"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# What a run needs of the repository (the library itself is installed in the venv).
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "gates", "profiles", "envs")
COMPARED = (
    "counts.tsv",
    "failed_samples.tsv",
    "stats/paired_by_group.tsv",
    "stats/paired_pooled.tsv",
    "stats/between_groups.tsv",
)
RUN_TIMEOUT = 600  # seconds, per workflow run; a normal run takes well under two minutes


def _unavailable(reason: str):
    """Fail under CI, where Slurm must work; skip on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(f"Slurm test cluster unavailable under CI: {reason}")
    pytest.skip(f"Slurm test cluster unavailable: {reason}")


def _daemons_running(scratch: Path) -> bool:
    for name in ("slurmctld.pid", "slurmd.pid"):
        pid_file = scratch / name
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running test cluster: ``{"env": environment for its clients, "scratch": Path}``.

    Started by tests/slurm/start.sh and stopped at the end of the session by stop.sh,
    unless it was already running before the session (then it is left running).
    """
    if os.name != "posix":
        _unavailable("needs Linux")
    if os.geteuid() != 0:
        _unavailable("start.sh needs root (apt-get install slurm-wlm munge, slurmd)")
    scratch = Path(os.environ.get("IMMUNO_SLURM_DIR", "/tmp/immuno-slurm"))
    env = {**os.environ, "IMMUNO_SLURM_DIR": str(scratch)}
    was_running = _daemons_running(scratch)
    try:
        res = subprocess.run(
            ["bash", str(SLURM_DIR / "start.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        _unavailable("start.sh did not finish in 10 minutes")
    if res.returncode != 0:
        _unavailable(f"start.sh exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    env["SLURM_CONF"] = str(scratch / "slurm.conf")
    yield {"env": env, "scratch": scratch}
    if not was_running:
        subprocess.run(
            ["bash", str(SLURM_DIR / "stop.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 16-file cohort with 2,000 events per file; returns its config file.

    The demo cohort cut down to two patients per dose group, at baseline and at the
    follow-up month, both panels: enough for every statistic to have pairs in each group.
    """
    from immuno.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("slurm_cohort")
    sheet = pd.read_csv(simulate_cohort(root / "demo", seed=1, events=2000), sep="\t", dtype=str)
    stats = yaml.safe_load((REPO / "config.yaml").read_text())["statistics"]
    visits = {float(stats["baseline_month"]), float(stats["followup_month"])}
    sheet = sheet[sheet["visit_month"].astype(float).isin(visits)]
    per_patient = len(visits) * sheet["panel"].nunique()
    complete = sheet.groupby("patient_id")["sample_id"].transform("size") == per_patient
    sheet = sheet[complete]
    patients = sheet.drop_duplicates("patient_id").groupby(stats["group_column"]).head(2)
    sheet = sheet[sheet["patient_id"].isin(patients["patient_id"])].copy()
    sheet["fcs_path"] = "demo/" + sheet["fcs_path"]
    sheet.to_csv(root / "samples.tsv", sep="\t", index=False)
    config = root / "tiny.yaml"
    # a study's config replaces the demo's: the shipped one with this cohort's sheet
    study = yaml.safe_load((REPO / "config.yaml").read_text())
    study["samples"] = str(root / "samples.tsv")
    config.write_text(yaml.safe_dump(study))
    return config


def _workflow_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _snakemake(workdir: Path, args: list[str], env: dict, log: Path) -> str:
    """Run snakemake in ``workdir``; return its output (also written to ``log``)."""
    cmd = [str(SNAKEMAKE), *args]
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGINT lets snakemake cancel its Slurm jobs before it exits.
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    text = log.read_text()
    took = time.monotonic() - start
    if rc != 0:
        status = f"timed out after {RUN_TIMEOUT} s" if rc is None else f"exited {rc}"
        pytest.fail(f"{' '.join(cmd)} {status} in {workdir}:\n{text[-6000:]}")
    print(f"{' '.join(cmd[1:3])}: {took:.0f} s")
    return text


def _sheet(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["samples"])


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_slurm_run_matches_local_run(slurm_cluster, tiny_cohort, tmp_path):
    env = {k: v for k, v in slurm_cluster["env"].items() if not k.startswith("SNAKEMAKE_")}
    # The compared tables (and provenance, once the workflow has it), not the figures:
    # the review plots alone would double the runtime, and Slurm adds nothing to test there.
    targets = [f"results/{name}" for name in COMPARED]
    if "rules/report.smk" in (REPO / "Snakefile").read_text():
        targets.append("results/provenance.json")
    common = ["--configfile", str(tiny_cohort), "--", *targets]

    local = _workflow_copy(tmp_path / "local")
    _snakemake(local, ["--cores", "2", *common], env, tmp_path / "local.log")

    cluster = _workflow_copy(tmp_path / "slurm")
    text = _snakemake(
        cluster,
        [
            "--workflow-profile",
            "profiles/slurm",
            # Test-only settings, so the user profile keeps its own:
            # poll Slurm from the first second on, not after 40 s,
            "--slurm-init-seconds-before-status-checks",
            "1",
            # and fit every job on this one small node: a group of 8 gating batches would ask
            # 8 CPUs and 16 GB; within these limits Snakemake stacks them in series.
            "--max-threads",
            str(len(os.sched_getaffinity(0))),
            "--cores",
            str(len(os.sched_getaffinity(0))),
            "--resources",
            "mem_mb=8000",
            *common,
        ],
        env,
        tmp_path / "slurm.log",
    )

    # Jobs really went through Slurm: snakemake names their Slurm job ids, and Slurm
    # itself lists each of them as completed (finished jobs stay listed for MinJobAge).
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", text)
    assert ids, f"no Slurm submission in the snakemake log:\n{text[-4000:]}"
    squeue = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(ids)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    states = dict(line.split("|", 1) for line in squeue.split())
    assert states == dict.fromkeys(ids, "COMPLETED"), squeue
    # Grouping batches the rules: fewer submissions than jobs run on the cluster.
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text)
    cluster_jobs = [rule for rule in finished if rule != "all"]
    assert len(ids) < len(cluster_jobs), (ids, cluster_jobs)
    print(f"{len(ids)} Slurm submissions for {len(cluster_jobs)} jobs: {sorted(cluster_jobs)}")
    # Gating is one job per patient and panel, up to 8 of them to a submission
    # (group-components), and the pooling and gathering run where snakemake runs: fewer
    # submissions than gating jobs, plus the summaries.
    fits, finishes = cluster_jobs.count("fit_batch"), cluster_jobs.count("finish_batch")
    assert fits == 2 * pd.read_csv(_sheet(tiny_cohort), sep="\t")["patient_id"].nunique()
    here = re.findall(r"Finished jobid: \d+ \(Rule: (pool_panel|gather_gating)\)", text)
    assert len(here) == 3 and not re.search(r"submitted.*(pool_panel|gather_gating)", text)
    assert len(ids) < fits + finishes, (ids, cluster_jobs)
    print(f"{fits} fit_batch and {finishes} finish_batch jobs")

    # The same results, byte for byte (and as tables, for a readable failure).
    for name in COMPARED:
        a, b = local / "results" / name, cluster / "results" / name
        pd.testing.assert_frame_equal(_read(a), _read(b), obj=name)
        assert a.read_bytes() == b.read_bytes(), name
    assert len(_read(local / "results" / "counts.tsv")) > 0

    # Where the run writes provenance, it ties the counts to their bytes.
    for run in (local, cluster):
        prov = run / "results" / "provenance.json"
        if prov.exists():
            record = json.loads(prov.read_text())
            assert record["outputs"]["results/counts.tsv"]["sha256"] == sha256_file(
                run / "results" / "counts.tsv"
            )
