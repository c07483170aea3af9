"""Cohort scale: the simulated trial (23 patients x 8 visits x 2 tubes) through the workflow.

Usage::

    .venv/bin/python benchmarks/cohort.py [--out benchmarks/out/cohort] [--events 300000]
        [--cores 2] [--seed 1] [--profile-samples 2] [--scaling 3,6,12]

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
   snakemake log and the largest job's peak RSS (each rule's ``benchmark:``
   file), and the events per second over all FCS files.
4. With ``--scaling``: the same on the first k patients' files for each k, in
   fresh copies ``OUT/run_k``: FCS-to-report time and largest job against the
   number of files, with a least-squares line.
5. Profiles ``--profile-samples`` single samples in this process
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

import numpy as np

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
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):")
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

    from immuno.autogate import SampleInput, gate_input, load_template
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
        gate_input(inp, template)
        prof.disable()
        wall = time.perf_counter() - t0
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        out.append(f"### {row.sample_id} ({panel} tube): {wall:.2f} s in-process\n")
        out.append("```\n" + "\n".join(buf.getvalue().splitlines()[4:28]) + "\n```\n")
    return "\n".join(out)


def max_channels(fcs: list[Path]) -> int:
    """``$PAR`` of the first file (all files of the simulated cohort have the same)."""
    from immuno.read import read_text

    _, text = read_text(fcs[0])
    return int(text["$PAR"])


def job_memory(results: Path) -> dict[str, tuple[int, float]]:
    """Per rule: (number of jobs, largest ``max_rss`` MiB) from its ``benchmark:`` files."""
    out: dict[str, tuple[int, float]] = {}
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        lines = path.read_text().splitlines()
        if len(lines) < 2:
            continue
        head = lines[0].split("\t")
        row = dict(zip(head, lines[-1].split("\t"), strict=False))
        try:
            rss = float(row.get("max_rss", "nan"))
        except ValueError:
            rss = float("nan")
        jobs, top = out.get(rule, (0, float("nan")))
        out[rule] = (jobs + 1, rss if not top >= rss else top)
    return out


def run_cohort(sheet: Path, run: Path, out: Path, cores: int, bin_dir: Path) -> dict:
    """The workflow on ``sheet`` in a fresh copy ``run``, then its report; figures."""
    copy_workflow(run)
    tag = run.name
    log = out / f"snakemake_{tag}.log"
    cmd = [str(bin_dir / "snakemake"), "--cores", str(cores), "--config", f"samples={sheet}"]
    wall, cpu, rss = timed(cmd, run, log)
    report = [*cmd, "--report", "results/report.html"]
    r_wall, r_cpu, _ = timed(report, run, out / f"report_{tag}.log")
    return {
        "cmd": cmd,
        "wall": wall,
        "cpu": cpu,
        "rss": rss,
        "report_wall": r_wall,
        "report_cpu": r_cpu,
        "report_mib": (run / "results" / "report.html").stat().st_size / 2**20,
        "rules": rule_times(log),
        "memory": job_memory(run / "results"),
    }


def scaling(args, sheet: Path, out: Path, bin_dir: Path, n_all: int, t_all: float) -> str:
    """The workflow on the first k patients of the cohort (k from ``--scaling``): time
    and the largest job's memory against the number of files, with a least-squares line."""
    import csv

    rows = list(csv.DictReader(sheet.open(), delimiter="\t"))
    patients = list(dict.fromkeys(r["patient_id"] for r in rows))
    points = []
    lines = [
        "| patients | files | events (M) | FCS to report s | CPU s | largest job MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k in args.scaling:
        keep = set(patients[:k])
        sub = [r for r in rows if r["patient_id"] in keep]
        path = out / "data" / f"samples_{k}_patients.tsv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(sub)
        res = run_cohort(path, out / f"run_{k}", out, args.cores, bin_dir)
        total = res["wall"] + res["report_wall"]
        top = max((m for _, m in res["memory"].values() if m == m), default=float("nan"))
        points.append((len(sub), total, top))
        lines.append(
            f"| {k} | {len(sub)} | {len(sub) * args.events / 1e6:.1f} | {total:.0f} | "
            f"{res['cpu'] + res['report_cpu']:.0f} | {top:.0f} |"
        )
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, icept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (icept + slope * x)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    lines.append(
        f"\nTime = {icept:.1f} s + {slope:.3f} s per file (R^2 {r2:.3f}; "
        f"the full cohort, {n_all} files, measured {t_all:.0f} s, line says "
        f"{icept + slope * n_all:.0f} s)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile-samples", type=int, default=2)
    ap.add_argument(
        "--scaling",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="also run the first k patients for each k (e.g. 3,6,12): time vs files",
    )
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
    res = run_cohort(sheet, out / "run", out, args.cores, bin_dir)
    wall, r_wall = res["wall"], res["report_wall"]
    print(f"command (in {out / 'run'}): `{' '.join(res['cmd'])}`\n")
    print(
        f"**workflow: {wall:.0f} s wall ({wall / 60:.1f} min), {res['cpu']:.0f} s CPU, "
        f"largest process {res['rss']:.0f} MiB**; {len(fcs) * args.events / wall:,.0f} events/s\n"
    )
    print(
        f"report (`--report results/report.html`): {r_wall:.0f} s wall, "
        f"{res['report_cpu']:.0f} s CPU, report.html {res['report_mib']:.1f} MiB\n"
    )
    print(
        f"**FCS to report: {wall + r_wall:.0f} s ({(wall + r_wall) / 60:.1f} min)** "
        f"(target: under 180 s)\n"
    )
    matrix = args.events * max_channels(fcs) * 4 / 2**20
    print("| rule | jobs | wall s (summed over its jobs) | peak RSS MiB (largest job) |")
    print("|---|---:|---:|---:|")
    for rule, secs in sorted(res["rules"].items(), key=lambda kv: -kv[1]):
        jobs, mem = res["memory"].get(rule, (0, float("nan")))
        print(f"| {rule} | {jobs or ''} | {secs:.0f} | {mem:.0f} |")
    print(
        f"\nLargest event matrix: {args.events:,} events x {max_channels(fcs)} channels, "
        f"float32: {matrix:.1f} MiB (peak RSS from each rule's `benchmark:` file: the job's "
        "process tree, interpreter and libraries included).\n"
    )
    if args.scaling:
        print(scaling(args, sheet, out, bin_dir, len(fcs), wall + r_wall))
    if args.profile_samples:
        print(profile_samples(sheet, args.profile_samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
