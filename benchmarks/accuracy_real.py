"""Data-driven gating on real files, against the published gating where there is one.

Usage:
    python benchmarks/accuracy_real.py [--data ../shared/data] [--out benchmarks/out/real]
        [--dpi 130]

Gates each file on its own (``immuno.autogate.gate_one``) with its example template:

- the four CytoExploreR activation files (mouse splenocytes, LSR II) with
  ``gates/examples/cytoexplorer_activation.yaml``, compared with the published CytoExploreR
  gating (``DERIVED_Activation_<n>_gatingset.json``: gates, compensation, logicle parameters and
  counts; recomputed here and checked to reproduce the published counts exactly);
- ``flowkit_testdata/data/100715.fcs`` (human PBMC, FACSAria) with
  ``gates/examples/pbmc_100715.yaml``;
- the OMIP-021 files ``cytopipeline_omip021/Donor{1,2}.fcs`` (human PBMC, Fortessa) with
  ``gates/examples/omip021.yaml``.

Like with like: every percentage is percent of parent *within its own hierarchy*: ours
``live``/``singlets``, ``t_cells``/``live``, ``cd4``/``t_cells``, ``cd8``/``t_cells`` against the
published ``Live Cells``/``Single Cells``, ``T Cells``/``Live Cells``, ``CD4 T Cells``/``T Cells``,
``CD8 T Cells``/``T Cells``. The parents are not the same events (our cells and singlets gates
are fitted, theirs drawn by hand), so two more columns separate gate placement from upstream
differences: ``pub_gate_on_ours`` is the published gate applied to *our* parent population, and
``f1`` is the per-event agreement of our population with the published one.

Writes ``<out>/accuracy_real.tsv`` (one row per file and population) and one review figure per
file, ``<out>/<file>.png``; on the CytoExploreR figures the published gates are drawn dashed
(green) over ours (orange) where they share axes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ACTIVATION = [1, 2, 31, 32]
#: our population -> (published population, published parent)
PUBLISHED = {
    "live": ("Live Cells", "Single Cells"),
    "t_cells": ("T Cells", "Live Cells"),
    "cd4": ("CD4 T Cells", "T Cells"),
    "cd8": ("CD8 T Cells", "T Cells"),
}
OTHER = [
    ("flowkit_testdata/data/100715.fcs", "gates/examples/pbmc_100715.yaml"),
    ("cytopipeline_omip021/Donor1.fcs", "gates/examples/omip021.yaml"),
    ("cytopipeline_omip021/Donor2.fcs", "gates/examples/omip021.yaml"),
]
#: Columns of the printed comparison.
COMPARE_COLUMNS = "file population ours_pct published_pct diff pub_gate_on_ours f1 qc_flag".split()
#: CytoExploreR shows logicle on 0..M decades; Gating-ML logicle (ours) is 0..1.
PUB_M = 4.5


def published_strategy(path: Path, *, flat: bool = False):
    """The published CytoExploreR gating of one file as an ``immuno`` strategy.

    Built from ``DERIVED_Activation_<n>_gatingset.json``: the file's spillover, a logicle
    transform per channel with the stored T, W, M, A, and every gate with its coordinates
    divided by M where the channel is logicle-scaled. With ``flat`` every gate is re-parented to
    all events (``Live Cells``, a NOT of ``Dead Cells``, stays a NOT of the flat ``Dead Cells``),
    so a gate can be applied to any other parent population.

    Returns ``(strategy, {population: published count})``.
    """
    from immuno.gate import (
        BooleanGate,
        Dimension,
        EllipseGate,
        GatingStrategy,
        PolygonGate,
        RectangleGate,
    )
    from immuno.transform import Logicle

    doc = json.loads(path.read_text())
    s = GatingStrategy()
    for ch, t in doc["transformations"].items():
        lg = t["lgt"]
        s.transforms[ch] = Logicle(T=lg["T"], W=lg["W"], M=lg["M"], A=lg["A"], id=ch)

    def dim(ch: str) -> Dimension:
        return Dimension(ch, "FCS", ch) if ch in s.transforms else Dimension(ch)

    def scale(ch: str) -> float:
        return 1.0 / PUB_M if ch in s.transforms else 1.0

    pops = doc["populations"]
    counts = {}
    for p in pops[1:]:
        name = p["path"].rsplit("/", 1)[1]
        parent_path = pops[p["parent_index"]]["path"]
        parent = None if (flat or parent_path == "root") else parent_path.rsplit("/", 1)[1]
        counts[name] = int(p["computed_count"])
        g = p["gate"]
        chans = g.get("pg", {}).get("param", {}).get("params") or []
        dims = tuple(dim(c) for c in chans)
        sx, sy = (scale(chans[0]), scale(chans[1])) if len(chans) == 2 else (1.0, 1.0)
        if g["type"] == "POLYGON_GATE":
            v = np.array([[q["x"] * sx, q["y"] * sy] for q in g["pg"]["param"]["vertices"]])
            s.add_gate(PolygonGate(name, parent, dims, vertices=v))
        elif g["type"] == "RECT_GATE":
            lo, hi = g["pg"]["param"]["vertices"]
            s.add_gate(
                RectangleGate(
                    name, parent, dims, (lo["x"] * sx, lo["y"] * sy), (hi["x"] * sx, hi["y"] * sy)
                )
            )
        elif g["type"] == "ELLIPSE_GATE":
            e = g["eg"]
            cov = np.array([[c["x"], c["y"]] for c in e["cov"]]) * np.outer([sx, sy], [sx, sy])
            s.add_gate(
                EllipseGate(
                    name,
                    parent,
                    dims,
                    mean=np.array([e["mu"]["x"] * sx, e["mu"]["y"] * sy]),
                    covariance=cov,
                    distance_square=float(e["dist"]),
                )
            )
        elif g["type"] == "BOOL_GATE":
            ops = [(b["path"][-1], bool(b["isNot"])) for b in g["bg"]["boolOpSpec"]]
            s.add_gate(BooleanGate(name, parent, (), op="and", operands=ops))
        else:
            raise ValueError(f"{path.name}: gate type {g['type']} not handled")
    return s, counts


def _pct(n: int, d: int) -> float:
    return 100.0 * n / d if d else float("nan")


def compare_activation(n: int, data: Path, template, out: Path, dpi: int) -> list[dict]:
    """Gate one activation file, compare with the published gating, write its figure."""
    from immuno.autogate import gate_one
    from immuno.read import read_fcs

    folder = data / "cytoexplorerdata_activation"
    fcs = read_fcs(folder / "Activation" / f"Activation_{n}.fcs")
    gj = folder / f"DERIVED_Activation_{n}_gatingset.json"
    res = gate_one(fcs, template, sample_id=f"Activation_{n}")
    ours = res.strategy.apply(fcs).masks
    pub_s, pub_counts = published_strategy(gj)
    pub = pub_s.apply(fcs).masks
    for name, c in pub_counts.items():  # the recomputed published gating is the published one
        if int(pub[name].sum()) != c:
            raise AssertionError(f"Activation_{n}: {name} recomputed {pub[name].sum()} != {c}")
    flat = published_strategy(gj, flat=True)[0].apply(fcs).masks
    table = res.table.set_index("population")
    rows = []
    for pop, (ppop, ppar) in PUBLISHED.items():
        our_parent = ours[template.population(pop).parent]
        a, b = ours[pop], pub[ppop]
        rows.append(
            {
                "file": f"Activation_{n}.fcs",
                "population": pop,
                "ours_pct": float(table.loc[pop, "percent_of_parent"]),
                "published_pct": _pct(pub_counts[ppop], pub_counts[ppar]),
                "pub_gate_on_ours": _pct(int((flat[ppop] & our_parent).sum()), our_parent.sum()),
                "f1": 2 * (a & b).sum() / (a.sum() + b.sum()),
                "count": int(a.sum()),
                "published_count": pub_counts[ppop],
                "qc_flag": res.flag(pop),
            }
        )
    fig = _review(fcs, res, f"Activation_{n}.fcs: {Path(template.source).name}")
    _overlay_published(fig, res.strategy, pub_s)
    _save(fig, out / f"Activation_{n}.png", dpi)
    return rows


def gate_other(relpath: str, template_path: str, data: Path, out: Path, dpi: int) -> list[dict]:
    """Gate a file without published gates; one row per population, and its figure."""
    from immuno.autogate import gate_one, load_template
    from immuno.read import read_fcs

    template = load_template(ROOT / template_path)
    fcs = read_fcs(data / relpath)
    name = Path(relpath).name
    res = gate_one(fcs, template, sample_id=Path(relpath).stem)
    rows = [
        {
            "file": name,
            "population": r.population,
            "ours_pct": r.percent_of_parent,
            "published_pct": float("nan"),
            "pub_gate_on_ours": float("nan"),
            "f1": float("nan"),
            "count": int(r.count),
            "published_count": -1,
            "qc_flag": r.qc_flag,
        }
        for r in res.table.itertuples()
    ]
    _save(_review(fcs, res, f"{name}: {Path(template_path).name}"), out / f"{name[:-4]}.png", dpi)
    return rows


def _review(fcs, res, title: str):
    from immuno.plot import gate_review_figure

    masks = res.strategy.apply(fcs).masks
    flags = {p: res.flag(p) for p in res.fits}
    # Axis labels: the file's $PnS where it has one, else the template's marker name.
    names = {ch: marker for marker, ch in res.channel_map.items()}
    names.update({c: m for c, m in zip(fcs.channels, fcs.markers, strict=True) if m.strip()})
    return gate_review_figure(fcs, res.strategy, masks, title=title, flags=flags, names=names)


def _overlay_published(fig, strategy, pub) -> None:
    """Draw the published gates (dashed green) on the panels that share their axes."""
    from matplotlib.patches import Ellipse, Polygon

    from immuno.gate import BooleanGate

    gates = [g for g in strategy.gates.values() if not isinstance(g, BooleanGate) and g.dims]
    axes = dict(zip([g.id for g in gates], fig.axes, strict=False))
    style = {"color": "#009E73", "lw": 1.2, "ls": "--"}
    if "singlets" in axes:  # same raw FSC-A x FSC-H axes
        axes["singlets"].add_patch(
            Polygon(pub.gates["Single Cells"].vertices, closed=True, fill=False, **style)
        )
    if "live" in axes:  # published dead = bright on 405 AND 430; its 430 edge
        axes["live"].axvline(pub.gates["Dead Cells"].mins[1], **style)
    if "t_cells" in axes:  # same CD11c x Va2 logicle axes
        g = pub.gates["T Cells"]
        vals, vecs = np.linalg.eigh(np.asarray(g.covariance))
        w, h = 2 * np.sqrt(vals * g.distance_square)
        ang = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
        axes["t_cells"].add_patch(
            Ellipse(
                g.mean, width=h, height=w, angle=ang, fill=False, ec=style["color"], lw=1.2, ls="--"
            )
        )
    for ours, theirs in (("cd4", "CD4 T Cells"), ("cd8", "CD8 T Cells")):
        if ours in axes:  # same CD4 x CD8 axes: the rectangle's inner edges
            g = pub.gates[theirs]
            ax = axes[ours]
            ax.axvline(g.mins[0] if ours == "cd4" else g.maxs[0], **style)
            ax.axhline(g.maxs[1] if ours == "cd4" else g.mins[1], **style)
    fig.text(0.99, 0.005, "orange: data-driven; dashed green: published", ha="right", fontsize=7)


def _save(fig, path: Path, dpi: int) -> None:
    from immuno.plot import save_figure

    save_figure(fig, path, dpi=dpi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/real")
    ap.add_argument("--dpi", type=int, default=130)
    args = ap.parse_args(argv)
    from immuno.autogate import load_template

    t0 = time.perf_counter()
    activation = load_template(ROOT / "gates/examples/cytoexplorer_activation.yaml")
    rows = []
    for n in ACTIVATION:
        rows += compare_activation(n, args.data, activation, args.out, args.dpi)
    for relpath, tpath in OTHER:
        rows += gate_other(relpath, tpath, args.data, args.out, args.dpi)
    elapsed = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    df["diff"] = df["ours_pct"] - df["published_pct"]
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "accuracy_real.tsv", sep="\t", index=False)
    pd.set_option("display.width", 200)
    pub = df[df["published_count"] >= 0]
    print("CytoExploreR activation: percent of parent, ours vs published (like with like)\n")
    print(
        pub[COMPARE_COLUMNS]
        .round({"ours_pct": 1, "published_pct": 1, "diff": 1, "pub_gate_on_ours": 1, "f1": 3})
        .to_string(index=False)
    )
    print(f"\nmax |ours - published| = {pub['diff'].abs().max():.2f} points")
    print("\nFiles without published gates: percent of parent and guard-rail flags\n")
    print(
        df[df["published_count"] < 0][["file", "population", "count", "ours_pct", "qc_flag"]]
        .round({"ours_pct": 1})
        .to_string(index=False)
    )
    print(f"\n{df['file'].nunique()} files gated in {elapsed:.1f} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
