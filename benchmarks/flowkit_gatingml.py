"""FlowKit re-gates every sample's exported Gating-ML: its counts against ``counts.tsv``.

Usage (after a workflow run, e.g. ``make demo``)::

    .venv/bin/python benchmarks/flowkit_gatingml.py [--results results]
        [--sheet data/demo/samples.tsv] [--limit N]

For every sample of the sheet (or the first ``N``, clogged files first: those whose time
gate removed events, ``time_removed`` in ``qc_note``), loads ``RESULTS/gates/<id>.xml``
with ``flowkit.parse_gating_xml``, gates the FCS file with FlowKit 1.3.2 and compares every
population's count with the pipeline's ``RESULTS/counts.tsv``. Prints how many samples and
counts agree, split by whether the time gate cut the file, and exits 1 if any count differs.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    import flowkit as fk

    from immuno.gatingml import population_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--sheet", type=Path, default=Path("data/demo/samples.tsv"))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    counts = pd.read_csv(args.results / "counts.tsv", sep="\t", dtype={"sample_id": str})
    counts["qc_note"] = counts["qc_note"].fillna("")
    sheet = pd.read_csv(args.sheet, sep="\t", dtype={"sample_id": str})
    clean = counts[counts["population"] == "clean"].set_index("sample_id")["qc_note"]
    cut = {s for s, note in clean.items() if "time_removed" in note}
    order = sorted(sheet["sample_id"], key=lambda s: (s not in cut, s))
    if args.limit:
        order = order[: args.limit]
    tally = {True: [0, 0, 0], False: [0, 0, 0]}  # samples, counts, differing counts
    t0 = time.perf_counter()
    for sid in order:
        fcs = args.sheet.parent / sheet.set_index("sample_id").loc[sid, "fcs_path"]
        xml = args.results / "gates" / f"{sid}.xml"
        sample = fk.Sample(str(fcs))
        session = fk.Session(gating_strategy=fk.parse_gating_xml(str(xml)), fcs_samples=[sample])
        session.analyze_samples(sample_id=sample.id, use_mp=False)
        res = session.get_gating_results(sample.id)
        ours = counts[counts["sample_id"] == sid].set_index("population")["count"]
        row = tally[sid in cut]
        row[0] += 1
        for name, gid in population_ids(xml).items():
            row[1] += 1
            if res.get_gate_count(gid) != int(ours[name]):
                row[2] += 1
                print(f"DIFFERS {sid} {name}: FlowKit {res.get_gate_count(gid)}, ours {ours[name]}")
    print("| samples | files | populations compared | identical |")
    print("|---|---|---|---|")
    for key, label in ((True, "time gate cut a clog out"), (False, "time gate cut nothing")):
        n, c, bad = tally[key]
        print(f"| {label} | {n} | {c} | {c - bad} |")
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if tally[True][2] or tally[False][2] else 0


if __name__ == "__main__":
    sys.exit(main())
