"""Accuracy and flags of the shipped templates on every simulated instrument profile.

Usage:
    python benchmarks/accuracy_profiles.py [--profiles fortessa,canto_export,log1024]
        [--seed 1] [--events 20000] [--patients 23] [--workers 2] [--root /tmp/immuno_profiles]
        [--out benchmarks/out/accuracy_profiles]

For each profile, simulates the cohort (unless ROOT/<profile> holds one of the same size), gates
it with gates/t_cell.yaml and gates/b_cell.yaml unchanged, exactly as the workflow does (two passes,
borrowing, outlier replacement), and scores it against the per-event truth
(:mod:`immuno.accuracy`): the 90th percentile of |pipeline - truth| per reported population (cd3,
cd4, cd8, cd19 as % of lymphocytes; treg % of CD4; naive_b % of CD19), the share of files whose
lymphocyte count is within 10% of the truth and whether those outside carry a review flag, the
files with an error above 5 points and no review flag on the population's lineage, the share of
files with any review flag, and the share of steady events the time gate keeps in clogged files.
Writes one TSV of rows per profile and prints a table of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_profile(cohort: Path, workers: int) -> tuple[pd.DataFrame, float]:
    from immuno.accuracy import gate_cohort, score_cohort

    results, sheet, elapsed = gate_cohort(cohort, ROOT / "gates", workers=workers)
    for res in results:
        if res.error:
            print("FAILED", res.sample_id, res.error, file=sys.stderr)
    return score_cohort(cohort, results, sheet), elapsed


def main(argv=None) -> int:
    from immuno.accuracy import P90_LIMITS, summarise
    from immuno.simulate import simulate_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="fortessa,canto_export,log1024")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--patients", type=int, default=23)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/immuno_profiles"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/accuracy_profiles")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table = {}
    for profile in args.profiles.split(","):
        cohort = args.root / f"{profile}_s{args.seed}_e{args.events}_p{args.patients}"
        if not (cohort / "samples.tsv").exists():
            simulate_cohort(
                cohort,
                seed=args.seed,
                events=args.events,
                profile=profile,
                patients=args.patients,
            )
        scored, elapsed = run_profile(cohort, args.workers)
        scored.to_csv(args.out / f"{profile}.tsv", sep="\t", index=False)
        s = summarise(scored)
        s["gating_s"] = round(elapsed, 1)
        table[profile] = s
        print(profile, json.dumps(s, default=str), flush=True)
    rows = []
    for name in ("cd3", "cd4", "cd8", "cd19", "naive_b", "treg"):
        rows.append(
            [f"p90 abs error {name} (pp; issue floor {P90_LIMITS[name]})"]
            + [f"{table[p]['p90_abs_err'].get(name, float('nan')):.2f}" for p in table]
        )
    rows += [
        ["files"] + [str(table[p]["files"]) for p in table],
        ["lymphocytes within 10%"] + [f"{table[p]['lymphocytes_within_10pct']:.1%}" for p in table],
        ["  outside and not flagged"]
        + [str(len(table[p]["lymphocytes_off_unflagged"])) for p in table],
        ["files > 5 pp without review"] + [str(len(table[p]["silent_over_5pp"])) for p in table],
        ["files with a review flag"] + [f"{table[p]['files_review_share']:.1%}" for p in table],
        ["clogged files"] + [str(table[p]["clogged_files"]) for p in table],
        ["  least steady share kept"] + [f"{table[p]['clogged_min_kept']:.2%}" for p in table],
        ["gating time (s)"] + [str(table[p]["gating_s"]) for p in table],
    ]
    print("\n| figure | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
