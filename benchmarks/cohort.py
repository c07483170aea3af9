"""Cohort scale: the simulated trial (23 patients x 8 visits x 2 tubes) through the workflow.

Usage::

    .venv/bin/python benchmarks/cohort.py [--out benchmarks/out/cohort] [--events 300000]
        [--cores 2] [--seed 1] [--profile-samples 2]

1. Simulates the cohort (``immuno simulate --out OUT/data --events N``) unless
   ``OUT/data/samples.tsv`` exists (timed when it runs).
2. Copies the workflow (the repository's tracked ``Snakefile``, ``config.yaml``,
   ``workflow/``, ``gates/``, ``profiles/``, ``envs/``) into a fresh ``OUT/run``
   (the code under test is the installed ``immuno`` of this venv) and runs
   ``snakemake --cores C --config samples=OUT/data/samples.tsv`` there, as one
   process tree: wall time, CPU time (user + system of all children) and the
   largest child's peak RSS; then ``snakemake --report results/report.html``
   (timed the same way): FCS to report is the sum.
3. Reports per rule the wall time between its start and its finish in the
   snakemake log, ``gate_samples``' own ``benchmark:`` line, and the events per
   second over all FCS files.
4. Profiles ``--profile-samples`` single samples in this process
   (:func:`immuno.autogate.gate_one` as ``gate_samples`` runs it, under
   cProfile), to show where a sample's gating time goes.

Prints a Markdown summary. Nothing in the repository is modified.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "out" / "cohort"
WORKFLOW_PARTS = ("Snakefile", "config.yaml", "workflow/", "gates/", "profiles/", "envs/")


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float, float]:
    """Run ``cmd`` (output to ``log``); (wall s, CPU s of the whole tree, peak RSS MiB)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    # The tree's CPU: wait4 gives the child's own plus its waited-for descendants'.
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def copy_workflow(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    if dest.exists():
        shutil.rmtree(dest)
    for rel in files:
        if rel in WORKFLOW_PARTS or rel.startswith(tuple(p for p in WORKFLOW_PARTS if "/" in p)):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
_RULE = re.compile(r"^(?:local)?rule (\w+):")
_JOBID = re.compile(r"^\s+jobid: (\d+)")
_DONE = re.compile(r"^Finished job(?:id:)? (\d+)")


def rule_times(log: Path) -> dict[str, float]:
    """Seconds from each job's start to its finish, summed per rule, from a snakemake log."""
    stamp = None
    started: dict[str, tuple[str, datetime]] = {}
    pending_rule = None
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        m = _RULE.match(line)
        if m:
            pending_rule = m.group(1)
            continue
        m = _JOBID.match(line)
        if m and pending_rule and stamp:
            started[m.group(1)] = (pending_rule, stamp)
            pending_rule = None
            continue
        m = _DONE.match(line.strip())
        if m and stamp and m.group(1) in started:
            rule, t0 = started.pop(m.group(1))
            out[rule] = out.get(rule, 0.0) + (stamp - t0).total_seconds()
    return out


def profile_samples(sheet: Path, count: int) -> str:
    """cProfile of ``count`` samples' pass-1 gating, the top functions by own time."""
    import yaml

    from immuno.autogate import SampleInput, _gate_path, load_template
    from immuno.cohort import load_sample_sheet

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    panels = config["panels"]
    df = load_sample_sheet(sheet, list(panels))
    out = []
    for panel in list(panels)[:count]:
        template = load_template(REPO / panels[panel])
        row = df[df["panel"] == panel].iloc[0]
        inp = SampleInput(row.sample_id, row.patient_id, row.fcs_path, row.visit_month)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        _gate_path((inp, template, None))
        prof.disable()
        wall = time.perf_counter() - t0
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        out.append(f"### {row.sample_id} ({panel} tube): {wall:.2f} s in-process\n")
        out.append("```\n" + "\n".join(buf.getvalue().splitlines()[4:28]) + "\n```\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile-samples", type=int, default=2)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    data = out / "data"
    sheet = data / "samples.tsv"
    print(f"# Cohort benchmark ({args.events:,} events per file, --cores {args.cores})\n")
    if not sheet.exists():
        w, c, m = timed(
            [
                str(bin_dir / "immuno"),
                "simulate",
                "--out",
                str(data),
                "--events",
                str(args.events),
                "--seed",
                str(args.seed),
            ],
            out,
            out / "simulate.log",
        )
        print(f"simulate: {w:.0f} s wall, {c:.0f} s CPU, {m:.0f} MiB peak\n")
    fcs = sorted((data / "fcs").glob("*.fcs"))
    size = sum(p.stat().st_size for p in fcs)
    print(f"{len(fcs)} FCS files, {size / 2**30:.2f} GiB, {len(fcs) * args.events:,} events\n")
    run = out / "run"
    copy_workflow(run)
    log = out / "snakemake.log"
    cmd = [str(bin_dir / "snakemake"), "--cores", str(args.cores), "--config", f"samples={sheet}"]
    print(f"command (in {run}): `{' '.join(cmd)}`\n")
    wall, cpu, rss = timed(cmd, run, log)
    print(
        f"**workflow: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} s CPU, "
        f"largest process {rss:.0f} MiB**; {len(fcs) * args.events / wall:,.0f} events/s\n"
    )
    report = [*cmd, "--report", "results/report.html"]
    r_wall, r_cpu, r_rss = timed(report, run, out / "report.log")
    size = (run / "results" / "report.html").stat().st_size / 2**20
    print(
        f"report (`{' '.join(report[1:])}`): {r_wall:.0f} s wall, {r_cpu:.0f} s CPU, "
        f"{r_rss:.0f} MiB, report.html {size:.1f} MiB\n"
    )
    print(
        f"**FCS to report: {wall + r_wall:.0f} s ({(wall + r_wall) / 60:.1f} min)** "
        f"(target: under 180 s)\n"
    )
    print("| rule | wall s (start to finish, summed over its jobs) |\n|---|---:|")
    for rule, secs in sorted(rule_times(log).items(), key=lambda kv: -kv[1]):
        print(f"| {rule} | {secs:.0f} |")
    bench = run / "results" / "benchmarks" / "gate_samples.tsv"
    if bench.exists():
        print(f"\n`gate_samples` benchmark: \n```\n{bench.read_text().strip()}\n```\n")
    if args.profile_samples:
        print(profile_samples(sheet, args.profile_samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
