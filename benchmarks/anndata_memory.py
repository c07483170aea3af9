"""AnnData export memory: peak RSS and wall time of one panel's ``.h5ad`` against cohort size.

Usage::

    .venv/bin/python benchmarks/cohort.py                   # once: the gated cohort
    .venv/bin/python benchmarks/anndata_memory.py [--data benchmarks/out/cohort/data]
        [--gates benchmarks/out/cohort/run/results/gates] [--template gates/t_cell.yaml]
        [--panel T] [--samples 40,80,162] [--max-events 20000] [--keep DIR]

Exports the first n samples (sample sheet order) of ``--panel`` for every n of
``--samples``, and the panel's largest FCS file alone, each with
:func:`immuno.export.export_anndata` (``max_events_per_sample=--max-events``) in a
child process of its own: peak memory is the child's ``ru_maxrss`` from
``os.wait4``, wall time is measured around the child (start-up and imports
included), and the file's size is reported. The realised Gating-ML gates are
copied to a temporary folder first (a cohort run in progress may rewrite
``--gates``). The output files go to a temporary folder (``--keep DIR`` keeps
them there).

The export streams sample by sample, so its peak should not grow with n: it is
bounded by the largest FCS file and its gating (the "largest file alone" row).

Prints a Markdown table (the machine may be shared: wall times vary with load;
peak RSS does not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_DATA = ROOT / "out" / "cohort" / "data"
DEFAULT_GATES = ROOT / "out" / "cohort" / "run" / "results" / "gates"


def panel_samples(data: Path, gates: Path, panel: str):
    """The panel's gated samples, in sheet order (the table export_anndata takes)."""
    from immuno.cohort import load_sample_sheet
    from immuno.export import gated_samples

    sheet = load_sample_sheet(data / "samples.tsv", check_files=False)
    return gated_samples(sheet[sheet["panel"] == panel], gates).reset_index(drop=True)


def child(args) -> None:
    """Export in this process and print what was written as JSON (run by :func:`main`)."""
    from immuno.export import export_anndata

    samples = panel_samples(args.data, args.gates, args.panel)
    if args.largest:
        sizes = [os.path.getsize(p) for p in samples["fcs_path"]]
        samples = samples.iloc[[sizes.index(max(sizes))]]
    else:
        samples = samples.head(args.n)
    out = export_anndata(samples, args.template, args.out, max_events_per_sample=args.max_events)
    import h5py

    with h5py.File(out, "r") as f:
        shape = f["X"].shape
    print(json.dumps({"samples": len(samples), "events": shape[0], "vars": shape[1]}))


def measure(args, n: int | None, gates: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--data",
        str(args.data),
        "--gates",
        str(gates),
        "--template",
        str(args.template),
        "--panel",
        args.panel,
        "--max-events",
        str(args.max_events),
        "--out",
        str(out),
    ]
    cmd += ["--largest"] if n is None else ["--n", str(n)]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the export of {n or 'the largest file'} failed: {' '.join(cmd)}")
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_mib=usage.ru_maxrss / 1024.0,  # KiB on Linux
        file_mb=out.stat().st_size / 1e6,
    )
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--gates", type=Path, default=DEFAULT_GATES)
    ap.add_argument("--template", type=Path, default=REPO / "gates" / "t_cell.yaml")
    ap.add_argument("--panel", default="T")
    ap.add_argument("--samples", default="40,80,162")
    ap.add_argument("--max-events", type=int, default=20000)
    ap.add_argument("--keep", type=Path, default=None)
    # Internal: one export in a child process.
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--largest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return
    if not (args.data / "samples.tsv").is_file():
        raise SystemExit(f"no {args.data / 'samples.tsv'}: run benchmarks/cohort.py first")
    with tempfile.TemporaryDirectory(prefix="anndata_memory.") as tmp:
        tmp = Path(tmp)
        gates = tmp / "gates"
        shutil.copytree(args.gates, gates)
        outs = args.keep or tmp
        outs.mkdir(parents=True, exist_ok=True)
        n_panel = len(panel_samples(args.data, gates, args.panel))
        sizes = [int(s) for s in args.samples.split(",")]
        rows = [("largest file alone", measure(args, None, gates, outs / "largest.h5ad"))]
        for n in sizes:
            if n > n_panel:
                print(f"panel {args.panel} has {n_panel} gated samples; skipping n={n}")
                continue
            rows.append((str(n), measure(args, n, gates, outs / f"{args.panel}_{n}.h5ad")))
    print(
        f"\nAnnData export of panel {args.panel} ({args.data}), "
        f"max_events_per_sample={args.max_events}, one child process per row\n"
    )
    print("| samples | events | peak RSS (MiB) | wall (s) | CPU (s) | file (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['events']:,} | {r['peak_mib']:.0f} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {r['file_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
