"""Can IgD on CD27- B cells tell naive from IgD-low B cells in the simulator's shoulder patients?

Usage:
    python benchmarks/experiments/shoulder_mixture_check.py --patients P01,P03,P04,P06,P08,P14,P17
        [--cohort /tmp/immuno_profiles/fortessa_s1_e20000_p23]

Gates the cohort (as ``accuracy_profiles.py`` made it) with the shipped templates, then for the B
files of the listed patients (the cohort README names its shoulder patients) fits one and two
Gaussians (:func:`immuno.autogate.fit_mixture`) to IgD of the CD27- B cells under the realised
naive B gate's CD27 cut, and compares the two-Gaussian upper weight (as % of CD19) with the
true naive B share. Prints one row per file and the counts the RESULTS note quotes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    from immuno.accuracy import gate_cohort
    from immuno.autogate import fit_mixture
    from immuno.gate import EventSpace
    from immuno.read import read_fcs
    from immuno.simulate import truth_masks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", required=True)
    ap.add_argument(
        "--cohort", type=Path, default=Path("/tmp/immuno_profiles/fortessa_s1_e20000_p23")
    )
    args = ap.parse_args(argv)
    patients = set(args.patients.split(","))
    results, _, _ = gate_cohort(args.cohort, ROOT / "gates")
    rows = []
    for res in results:
        params = res.fits.get("naive_b").params if "naive_b" in res.fits else None
        if res.patient_id not in patients or not params:
            continue
        fcs = read_fcs(args.cohort / "fcs" / f"{res.sample_id}.fcs")
        masks = res.strategy.apply(fcs, sample_id=res.sample_id).masks
        gate = res.strategy.gates["naive_b"]
        b_cells = np.flatnonzero(masks["cd19"])
        values = EventSpace(fcs, res.strategy, dtype=np.float64).estimates(gate.dims, b_cells)
        igd = values[values[:, 1] < params["CD27"], 0][:, None]
        true_pct = (
            100.0
            * truth_masks(args.cohort / "truth" / f"{res.sample_id}.npz")["naive_b"][b_cells].mean()
        )
        w, m, _, bic2 = fit_mixture(igd, 2, random_state=0)
        bic1 = fit_mixture(igd, 1, random_state=0)[3]
        upper = 100.0 * w[int(np.argmax(m[:, 0]))] * len(igd) / len(b_cells)
        rows.append(
            {
                "sample_id": res.sample_id,
                "cd27_neg_b": len(igd),
                "bic1_minus_bic2": round(bic1 - bic2, 1),
                "true_naive_pct": round(true_pct, 2),
                "two_gaussian_upper_pct": round(upper, 2),
                "abs_diff": round(abs(upper - true_pct), 2),
            }
        )
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print(
        f"\n{len(df)} files; one Gaussian better by BIC in {(df['bic1_minus_bic2'] < 0).sum()}; "
        "median |two-Gaussian upper weight - true naive share| = "
        f"{df['abs_diff'].median():.1f} points"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
