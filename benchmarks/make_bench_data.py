"""Write the per-sample benchmark inputs: FCS files of a 14-channel panel and a gating file.

Usage::

    .venv/bin/python benchmarks/make_bench_data.py [--out benchmarks/out/bench]
        [--sizes 200000,500000,1000000,2000000] [--seed 1]

Writes ``<out>/events_<n>.fcs`` for every size and ``<out>/gates.xml``.

The files look like a BD Fortessa T/B/NK phenotyping tube: 14 float32 channels
(``FSC-A FSC-H SSC-A SSC-H``, nine fluorescence detectors and ``Time``), raw
(uncompensated) detector values in linear units with a 9 x 9 ``$SPILLOVER``.
Every event is drawn from a labelled type (debris, doublets, dead cells,
granulocytes, monocytes, NK, naive/memory B, CD4 and CD8 T subsets):
``observed = true intensities @ S + autofluorescence + electronic + photon
noise``. The same ``--seed`` gives the same files; a smaller file has the same
distribution as a larger one (not a prefix of it).

``gates.xml`` is Gating-ML 2.0 written by :func:`immuno.gatingml.write_gatingml`:
13 populations in a T/B hierarchy, every fluorescence dimension compensated with
the file's own matrix (``compensation-ref="FCS"``) and shown on a logicle scale
(three different ``W``), SSC on a ``flin`` scale; scatter polygons in channel
units, a polygon on logicle axes, an ellipse, 1-D ranges, 2-D rectangles and a
boolean gate. The coordinates are constants (a person drew them once), so every
size is gated by the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "out" / "bench"
DEFAULT_SIZES = (200_000, 500_000, 1_000_000, 2_000_000)

SCATTER = ("FSC-A", "FSC-H", "SSC-A", "SSC-H")
# Detector, marker.
FLUOR = (
    ("FITC-A", "CD45RA"),
    ("PE-A", "CCR7"),
    ("PE-CF594-A", "CD27"),
    ("PE-Cy7-A", "CD19"),
    ("APC-A", "CD4"),
    ("APC-H7-A", "CD8"),
    ("BV421-A", "CD3"),
    ("BV510-A", "Live/Dead"),
    ("BV605-A", "CD45"),
)
DETECTORS = tuple(d for d, _ in FLUOR)
MARKERS = tuple(m for _, m in FLUOR)
CHANNELS = (*SCATTER, *DETECTORS, "Time")
MAX_VALUE = 262143.0

# Spillover (source row -> detector column); unlisted pairs 0, diagonal 1.
SPILL = {
    ("FITC-A", "PE-A"): 0.16,
    ("FITC-A", "PE-CF594-A"): 0.05,
    ("FITC-A", "BV510-A"): 0.012,
    ("PE-A", "FITC-A"): 0.01,
    ("PE-A", "PE-CF594-A"): 0.32,
    ("PE-A", "PE-Cy7-A"): 0.045,
    ("PE-CF594-A", "PE-A"): 0.08,
    ("PE-CF594-A", "PE-Cy7-A"): 0.11,
    ("PE-CF594-A", "APC-A"): 0.02,
    ("PE-Cy7-A", "PE-A"): 0.015,
    ("PE-Cy7-A", "APC-H7-A"): 0.04,
    ("APC-A", "PE-Cy7-A"): 0.006,
    ("APC-A", "APC-H7-A"): 0.08,
    ("APC-H7-A", "PE-Cy7-A"): 0.02,
    ("APC-H7-A", "APC-A"): 0.02,
    ("BV421-A", "BV510-A"): 0.10,
    ("BV421-A", "FITC-A"): 0.004,
    ("BV510-A", "BV421-A"): 0.006,
    ("BV510-A", "BV605-A"): 0.03,
    ("BV510-A", "FITC-A"): 0.03,
    ("BV605-A", "PE-CF594-A"): 0.04,
    ("BV605-A", "BV510-A"): 0.01,
}
ELECTRONIC_SD = 30.0  # units, every fluorescence detector
PHOTON_K = 3.0  # photon-noise variance per unit of signal

# Event types: share of events, FSC-A median, SSC-A median, autofluorescence factor,
# and the positive markers with their median true intensity (units). Markers not
# listed are negative (true intensity ~ N(0, 80)).
TYPES = {
    "debris": (0.08, 9000, 4000, 0.5, {}),
    "doublet": (0.04, 0, 0, 1.0, {}),  # two lymphocytes side by side (built below)
    "dead": (0.07, 42000, 16000, 1.6, {"Live/Dead": 15000, "CD45": 3000}),
    "granulocyte": (0.06, 90000, 120000, 2.5, {"CD45": 1500}),
    "monocyte": (0.10, 95000, 42000, 3.0, {"CD45": 6000, "CD4": 900}),
    "nk": (0.05, 60000, 18000, 1.0, {"CD45": 5000, "CD45RA": 4000, "CD8": 600}),
    "b_naive": (
        0.05,
        56000,
        13000,
        1.0,
        {"CD45": 4500, "CD19": 5000, "CD45RA": 3500, "CCR7": 2500},
    ),
    "b_memory": (0.03, 57000, 14000, 1.0, {"CD45": 4500, "CD19": 5000, "CD27": 3000}),
    "cd4_naive": (
        0.16,
        58000,
        14000,
        1.0,
        {"CD45": 5000, "CD3": 6000, "CD4": 4000, "CD45RA": 4000, "CCR7": 3000, "CD27": 3500},
    ),
    "cd4_cm": (
        0.10,
        58000,
        14000,
        1.0,
        {"CD45": 5000, "CD3": 6000, "CD4": 4000, "CCR7": 2500, "CD27": 3500},
    ),
    "cd4_em": (0.06, 59000, 15000, 1.0, {"CD45": 5000, "CD3": 6000, "CD4": 4000, "CD27": 1200}),
    "cd8_naive": (
        0.07,
        58000,
        14000,
        1.0,
        {"CD45": 5000, "CD3": 6000, "CD8": 8000, "CD45RA": 4000, "CCR7": 3000, "CD27": 3500},
    ),
    "cd8_em": (0.04, 59000, 15000, 1.0, {"CD45": 5000, "CD3": 6000, "CD8": 8000, "CD27": 1500}),
    "cd8_temra": (
        0.04,
        60000,
        15000,
        1.0,
        {"CD45": 5000, "CD3": 6000, "CD8": 8000, "CD45RA": 5000},
    ),
    "t_dn": (0.01, 58000, 14000, 1.0, {"CD45": 5000, "CD3": 6000}),
}
AUTOFLUORESCENCE = 60.0  # lymphocyte median, units, every detector


def spillover_matrix() -> np.ndarray:
    idx = {d: i for i, d in enumerate(DETECTORS)}
    s = np.eye(len(DETECTORS))
    for (src, det), v in SPILL.items():
        s[idx[src], idx[det]] = v
    return s


def simulate(n: int, seed: int) -> np.ndarray:
    """``(n, 14)`` float32 raw channel values of one tube."""
    rng = np.random.default_rng([seed, n])
    names = list(TYPES)
    share = np.array([TYPES[t][0] for t in names])
    kind = rng.choice(len(names), size=n, p=share / share.sum())
    k = len(DETECTORS)
    true = rng.normal(0.0, 80.0, size=(n, k)).astype(np.float32)
    fsc = np.empty(n, dtype=np.float32)
    ssc = np.empty(n, dtype=np.float32)
    af = np.empty(n, dtype=np.float32)
    marker_col = {m: j for j, m in enumerate(MARKERS)}
    lymph = [t for t in names if t.startswith(("cd4", "cd8", "b_"))]
    for ti, t in enumerate(names):
        rows = np.flatnonzero(kind == ti)
        m = rows.size
        if t == "doublet":
            # Two lymphocytes: markers of a random lymphocyte type, doubled signals.
            other = TYPES[lymph[int(rng.integers(len(lymph)))]]
            fsc_med, ssc_med, af_f, pos = 2 * 58000, 2 * 14000, 2.0, other[4]
        else:
            _, fsc_med, ssc_med, af_f, pos = TYPES[t]
        fsc[rows] = fsc_med * rng.lognormal(0.0, 0.45 if t == "debris" else 0.11, m)
        ssc[rows] = ssc_med * rng.lognormal(0.0, 0.7 if t == "debris" else 0.25, m)
        af[rows] = af_f
        for marker, med in pos.items():
            true[rows, marker_col[marker]] = med * rng.lognormal(0.0, 0.35, m)
    singlet = np.where(
        kind == names.index("doublet"),
        rng.normal(0.55, 0.05, n),
        rng.normal(0.85, 0.03, n),
    ).astype(np.float32)
    true += (AUTOFLUORESCENCE * af)[:, None] * rng.lognormal(0.0, 0.3, (n, k)).astype(np.float32)
    obs = true @ spillover_matrix().astype(np.float32)
    noise_sd = np.sqrt(ELECTRONIC_SD**2 + PHOTON_K * np.maximum(obs, 0.0))
    obs += noise_sd * rng.standard_normal((n, k), dtype=np.float32)
    out = np.empty((n, len(CHANNELS)), dtype=np.float32)
    out[:, 0] = fsc
    out[:, 1] = fsc * singlet
    out[:, 2] = ssc
    out[:, 3] = ssc * rng.normal(0.9, 0.03, n).astype(np.float32)
    out[:, 4 : 4 + k] = obs
    out[:, :4] = np.clip(out[:, :4], 0.0, MAX_VALUE)
    out[:, 4 : 4 + k] = np.clip(out[:, 4 : 4 + k], -MAX_VALUE, MAX_VALUE)
    out[:, -1] = np.sort(rng.uniform(0.0, n / 2000.0, n)).astype(np.float32)
    return out


def write_fcs_file(path: Path, n: int, seed: int) -> Path:
    from immuno.write import write_fcs

    data = simulate(n, seed)
    text = {"$CYT": "BD LSRFortessa (simulated)", "$TIMESTEP": "0.01"}
    for j in range(len(CHANNELS)):
        text[f"$P{j + 1}R"] = "262144"
    return write_fcs(
        path,
        data,
        CHANNELS,
        ["", "", "", "", *MARKERS, ""],
        text=text,
        spillover=(DETECTORS, spillover_matrix()),
    )


def strategy():
    """The 13-population T/B gating strategy (coordinates fixed, in each axis' space)."""
    from immuno.gate import (
        BooleanGate,
        Dimension,
        EllipseGate,
        GatingStrategy,
        PolygonGate,
        RectangleGate,
    )
    from immuno.transform import Linear, Logicle

    s = GatingStrategy()
    s.scaling = "gain"
    s.require_spillover = True
    s.transforms["lgcl"] = Logicle(262144, 0.5, 4.5, 0, id="lgcl")
    s.transforms["lgcl_w1"] = Logicle(262144, 1.0, 4.5, 0, id="lgcl_w1")
    s.transforms["lgcl_w075"] = Logicle(262144, 0.75, 4.5, 0, id="lgcl_w075")
    s.transforms["ssc_lin"] = Linear(262144, 0, id="ssc_lin")
    tr = {
        "FITC-A": "lgcl",
        "PE-A": "lgcl_w075",
        "PE-CF594-A": "lgcl_w1",
        "PE-Cy7-A": "lgcl",
        "APC-A": "lgcl",
        "APC-H7-A": "lgcl_w075",
        "BV421-A": "lgcl",
        "BV510-A": "lgcl",
        "BV605-A": "lgcl",
    }

    def fl(det):
        return Dimension(det, "FCS", tr[det])

    fsc_a, fsc_h, ssc_a = Dimension("FSC-A"), Dimension("FSC-H"), Dimension("SSC-A")
    cells = [[22000, 3000], [250000, 3000], [250000, 90000], [150000, 110000], [35000, 60000]]
    s.add_gate(PolygonGate("Cells", None, (fsc_a, ssc_a), vertices=np.array(cells, float)))
    singlets = [[20000, 15000], [250000, 190000], [250000, 240000], [20000, 24000]]
    s.add_gate(PolygonGate("Singlets", "Cells", (fsc_a, fsc_h), vertices=np.array(singlets, float)))
    s.add_gate(RectangleGate("Live", "Singlets", (fl("BV510-A"),), (None,), (0.52,)))
    s.add_gate(
        EllipseGate(
            "Lymphocytes",
            "Live",
            (fl("BV605-A"), Dimension("SSC-A", None, "ssc_lin")),
            mean=np.array([0.64, 0.058]),
            covariance=np.array([[0.0036, 0.0], [0.0, 0.0012]]),
            distance_square=4.0,
        )
    )
    cd3, cd19 = fl("BV421-A"), fl("PE-Cy7-A")
    s.add_gate(RectangleGate("T cells", "Lymphocytes", (cd3, cd19), (0.5, None), (None, 0.45)))
    s.add_gate(RectangleGate("B cells", "Lymphocytes", (cd3, cd19), (None, 0.5), (0.45, None)))
    cd4, cd8 = fl("APC-A"), fl("APC-H7-A")
    s.add_gate(RectangleGate("CD4+", "T cells", (cd4, cd8), (0.48, None), (None, 0.5)))
    s.add_gate(RectangleGate("CD8+", "T cells", (cd4, cd8), (None, 0.5), (0.48, None)))
    ra, ccr7 = fl("FITC-A"), fl("PE-A")
    naive = [[0.5, 0.48], [0.95, 0.48], [0.95, 0.95], [0.55, 0.95], [0.48, 0.7]]
    s.add_gate(PolygonGate("CD4 naive", "CD4+", (ra, ccr7), vertices=np.array(naive)))
    # Not "CD4+ and not naive": FlowKit 1.3.2 loses a boolean gate that names its own
    # parent as an operand (no path from root); the parent restricts it anyway.
    s.add_gate(BooleanGate("CD4 memory", "CD4+", (), op="not", operands=[("CD4 naive", False)]))
    s.add_gate(RectangleGate("CD8 naive", "CD8+", (ra, ccr7), (0.5, 0.48), (None, None)))
    cd27 = fl("PE-CF594-A")
    s.add_gate(RectangleGate("B memory", "B cells", (cd27,), (0.46,), (None,)))
    s.add_gate(RectangleGate("B naive", "B cells", (cd27,), (None,), (0.46,)))
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--sizes",
        default=",".join(str(n) for n in DEFAULT_SIZES),
        help="comma-separated event counts",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    from immuno.gatingml import write_gatingml

    args.out.mkdir(parents=True, exist_ok=True)
    write_gatingml(strategy(), args.out / "gates.xml")
    print(args.out / "gates.xml")
    for n in (int(s) for s in args.sizes.split(",")):
        path = write_fcs_file(args.out / f"events_{n}.fcs", n, args.seed)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
