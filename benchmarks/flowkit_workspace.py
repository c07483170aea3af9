"""FlowKit re-gates the exported FlowJo workspace: its counts against ``counts.tsv``.

Usage (after a workflow run, e.g. ``make demo``)::

    .venv/bin/python benchmarks/flowkit_workspace.py [--results results]
        [--sheet data/demo/samples.tsv] [--processes 2]

Opens ``RESULTS/exports/cohort.wsp`` with ``flowkit.Workspace`` (FlowKit 1.3.2, the
FCS files of the sample sheet), gates every sample with FlowKit and compares each
population's count with the pipeline's ``RESULTS/counts.tsv``. Prints a Markdown
table per gate kind (the kind of the population's own gate in the sample's
Gating-ML file ``RESULTS/gates/<sample_id>.xml``) and exits 1 if any count differs.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pandas as pd


def gate_kinds(gates_dir: Path, samples: list[str]) -> dict[tuple[str, str], str]:
    from immuno.gatingml import load_gatingml

    out = {}
    for sid in samples:
        st = load_gatingml(gates_dir / f"{sid}.xml")
        for gid, gate in st.gates.items():
            out[(sid, gid)] = type(gate).__name__
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--sheet", type=Path, default=Path("data/demo/samples.tsv"))
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args(argv)

    import flowkit as fk

    from immuno.cohort import load_sample_sheet

    counts = pd.read_csv(args.results / "counts.tsv", sep="\t", dtype={"sample_id": str})
    sheet = load_sample_sheet(args.sheet, sorted(counts["panel"].unique()), check_files=False)
    sheet = sheet[sheet["sample_id"].isin(set(counts["sample_id"]))]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = fk.Workspace(
            str(args.results / "exports" / "cohort.wsp"),
            fcs_samples=[str(p) for p in sheet["fcs_path"]],
        )
        ws.analyze_samples(use_mp=args.processes > 1)
        report = ws.get_analysis_report()
    secs = time.perf_counter() - t0
    report["sample_id"] = report["sample_id"].str.removesuffix(".fcs")
    m = counts.merge(
        report[["sample_id", "gate_name", "count"]],
        left_on=["sample_id", "population"],
        right_on=["sample_id", "gate_name"],
        how="left",
        suffixes=("", "_flowkit"),
    )
    kinds = gate_kinds(args.results / "gates", sorted(m["sample_id"].unique()))
    m["gate"] = [kinds.get((s, p), "?") for s, p in zip(m.sample_id, m.population, strict=True)]
    m["diff"] = m["count_flowkit"] - m["count"]
    print(
        f"FlowKit {fk.__version__}: {m['sample_id'].nunique()} samples, {len(m)} population "
        f"counts, gated in {secs:.0f} s\n"
    )
    print("| gate kind | counts | identical | differ | missing in FlowKit | largest difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, g in m.groupby("gate"):
        missing = int(g["count_flowkit"].isna().sum())
        same = int((g["diff"] == 0).sum())
        largest = g["diff"].abs().max()
        print(
            f"| {kind} | {len(g)} | {same} | {len(g) - same - missing} | {missing} | "
            f"{0 if pd.isna(largest) else int(largest)} |"
        )
    bad = m[(m["diff"] != 0) | m["count_flowkit"].isna()]
    if len(bad):
        print("\nFirst differences:\n")
        print(bad[["sample_id", "population", "gate", "count", "count_flowkit"]].head(20))
        return 1
    print("\nEvery population of every sample: FlowKit's count equals the pipeline's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
