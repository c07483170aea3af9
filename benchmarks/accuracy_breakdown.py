"""Where the shipped templates' errors come from, per simulated cell type.

Usage:
    python benchmarks/accuracy_breakdown.py [--profiles fortessa,canto_export,log1024]
        [--populations live,lymphocytes,naive_b] [--seed 1] [--events 20000] [--patients 23]
        [--workers 2] [--root /tmp/immuno_profiles] [--out benchmarks/out/accuracy_breakdown]

Gates the same cohorts as ``benchmarks/accuracy_profiles.py`` (simulated unless ROOT holds them)
with gates/t_cell.yaml and gates/b_cell.yaml unchanged, and for each population counts, per
simulated cell type, the share of the type's true members the gate keeps and the type's share
of the gate's events (:func:`immuno.accuracy.by_cell_type`). A lymphocyte gate that loses NK
cells shows as NK's ``kept`` below the T cells'; a naive B gate that takes double-negative B
cells shows as ``b_dn``'s ``share_of_gate``. Writes one TSV per profile (per sample) and prints
the pooled table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from immuno.accuracy import by_cell_type, gate_cohort, summarise_by_cell_type
    from immuno.simulate import simulate_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="fortessa,canto_export,log1024")
    ap.add_argument("--populations", default="live,lymphocytes,naive_b")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--patients", type=int, default=23)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/immuno_profiles"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/accuracy_breakdown")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pops = tuple(args.populations.split(","))
    for profile in args.profiles.split(","):
        cohort = args.root / f"{profile}_s{args.seed}_e{args.events}_p{args.patients}"
        if not (cohort / "samples.tsv").exists():
            simulate_cohort(
                cohort, seed=args.seed, events=args.events, profile=profile, patients=args.patients
            )
        results, _, _ = gate_cohort(cohort, ROOT / "gates", workers=args.workers)
        table = by_cell_type(cohort, results, pops)
        table.to_csv(args.out / f"{profile}.tsv", sep="\t", index=False)
        pooled = summarise_by_cell_type(table)
        pooled = pooled[(pooled["member"]) | (pooled["share_of_gate"] >= 0.001)]
        print(f"\n## {profile}\n")
        print("| population | cell type | member | kept | median kept | share of gate |")
        print("|---|---|---|---|---|---|")
        for r in pooled.itertuples():
            kept = f"{r.kept:.1%}" if r.member else ""
            med = f"{r.median_kept:.1%}" if r.member else ""
            print(
                f"| {r.population} | {r.cell_type} | {'yes' if r.member else 'no'} | {kept} "
                f"| {med} | {r.share_of_gate:.1%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
