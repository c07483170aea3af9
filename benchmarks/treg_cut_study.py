"""Why the Treg gate is a density-valley cut of CD25 - CD127: the alternatives, measured.

Usage:
    python benchmarks/treg_cut_study.py [--cohort DIR] [--every 1]

On the demo cohort's T tubes (generated if absent, seed 1, 20,000 events), on the TRUE CD4
events of each file (so only the Treg step is compared), each rule places a Treg gate in
logicle CD25/CD127 space; printed: median and 10th percentile of per-event F1, mean signed
error of Treg % of CD4 (points), and the share of files within 1.5 and 2 points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from immuno.autogate import FitFailure, _density, fit_mixture, mindensity_threshold
from immuno.compensate import Compensation, compensate
from immuno.read import read_fcs
from immuno.simulate import truth_masks
from immuno.transform import Logicle

W = np.array([1.0, -1.0]) / np.sqrt(2)


def _valley(z, adjust):
    try:
        return z >= mindensity_threshold(z, (-0.1, 0.35), adjust=adjust)
    except FitFailure:
        return np.zeros(len(z), dtype=bool)


def _mixture_weight_cut(z, k):
    w, m, _, _ = fit_mixture(z[:, None], k, random_state=0)
    return z >= np.quantile(z, 1 - w[np.argmax(m[:, 0])])


def _mixture_posterior(X, k):
    w, m, c, _ = fit_mixture(X, k, random_state=0)
    j = int(np.argmax(m @ W))
    logp = np.stack([
        np.log(w[i]) - 0.5 * (np.einsum("ij,jk,ik->i", X - m[i], np.linalg.inv(c[i]), X - m[i])
                              + np.linalg.slogdet(c[i])[1])
        for i in range(k)
    ], axis=1)  # fmt: skip
    return logp[:, j] >= logp.max(axis=1)


def _mirror(z):
    lo, hi = np.percentile(z, [0.1, 99.9])
    g, d = _density(z, lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    mode = g[np.argmax(d)]
    mirrored = np.interp(2 * mode - g, g, d, left=0, right=0)
    right = np.flatnonzero((g > mode) & (d - mirrored >= 2 * mirrored) & (d > 0))
    return z >= (g[right[0]] if len(right) else np.inf)


RULES = {
    "valley, bandwidth x1.3 (shipped)": lambda X, z: _valley(z, 1.3),
    "valley, bandwidth x1.0": lambda X, z: _valley(z, 1.0),
    "valley, bandwidth x0.6": lambda X, z: _valley(z, 0.6),
    "1-D mixture (2) weight quantile": lambda X, z: _mixture_weight_cut(z, 2),
    "1-D mixture (3) weight quantile": lambda X, z: _mixture_weight_cut(z, 3),
    "2-D mixture (3) posterior": lambda X, z: _mixture_posterior(X, 3),
    "2-D mixture (4) posterior": lambda X, z: _mixture_posterior(X, 4),
    "mirrored main peak, excess 2x": lambda X, z: _mirror(z),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=Path("/tmp/immuno_accuracy"))
    ap.add_argument("--every", type=int, default=1, help="use every n-th T file")
    args = ap.parse_args(argv)
    if not (args.cohort / "samples.tsv").exists():
        from immuno.simulate import simulate_cohort

        simulate_cohort(args.cohort, seed=1, events=20000)
    logicle = Logicle()
    scores: dict[str, list[tuple[float, float]]] = {k: [] for k in RULES}
    for fp in sorted((args.cohort / "fcs").glob("*_T.fcs"))[:: args.every]:
        fcs = read_fcs(fp)
        truth = truth_masks(args.cohort / "truth" / f"{fp.stem}.npz")
        names, spill = fcs.spillover()
        comp = compensate(fcs.events, fcs.channels, Compensation(names, spill), dtype=np.float64)
        cd4 = truth["cd4"]
        cols = [names.index(fcs.channels[fcs.markers.index(m)]) for m in ("CD25", "CD127")]
        X = logicle.apply(comp[cd4][:, cols])
        y = truth["treg"][cd4]
        z = X @ W
        for name, rule in RULES.items():
            p = rule(X, z)
            f1 = 2 * (p & y).sum() / max(p.sum() + y.sum(), 1)
            scores[name].append((f1, 100 * (p.mean() - y.mean())))
    print(f"{'rule':36s} {'F1 med':>7s} {'F1 p10':>7s} {'err mean':>9s} {'<=1.5':>6s} {'<=2':>6s}")
    for name, v in scores.items():
        a = np.array(v)
        print(f"{name:36s} {np.median(a[:, 0]):7.3f} {np.percentile(a[:, 0], 10):7.3f} "
              f"{a[:, 1].mean():+9.2f} {(abs(a[:, 1]) <= 1.5).mean():6.2f} "
              f"{(abs(a[:, 1]) <= 2).mean():6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
