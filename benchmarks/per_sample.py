"""Per-sample speed: ``immuno apply-gates`` against FlowKit, as whole processes.

Usage::

    .venv/bin/python benchmarks/make_bench_data.py          # once: FCS files + gates.xml
    .venv/bin/python benchmarks/per_sample.py [--data benchmarks/out/bench]
        [--sizes 200000,500000,1000000,2000000] [--repeats 5] [--no-flowkit]
    .venv/bin/python benchmarks/per_sample.py --ablation 2000000 [--repeats 3]

For every size it runs, alternately and ``--repeats`` times each, two processes
on the same FCS file and the same Gating-ML file:

* ``immuno apply-gates --gates gates.xml --fcs events_N.fcs --out DIR`` (the
  console script of this venv: start-up, read, gate, write ``counts.tsv`` and
  ``membership.csv.gz``);
* a FlowKit script: ``import flowkit``, ``flowkit.Sample(fcs)``,
  ``flowkit.parse_gating_xml(gates)``, ``strategy.gate_sample(sample)``, and the
  counts written to a TSV (what FlowKit does to get counts; it writes no
  per-event table).

Wall time is measured around each process, CPU time (user + system) and peak
memory (``ru_maxrss``) come from ``os.wait4``; "FlowKit / immuno" is the median
of the per-repeat ratios of wall times (each pair run back to back, so a change
of load on a shared machine hits both). Children run without
``PYTHONDONTWRITEBYTECODE`` (bytecode cached as in a normal install) after one
warm-up run of each. Every run's counts are compared, population by
population (FlowKit names gates by their Gating-ML id, mapped back to population
names through the file's ``<immuno:name>``), and any difference is reported and
makes the script exit 1. In the same run, in this process: the ``numpy.fromfile``
floor (the DATA segment read into an ``(n, 14)`` float32 array) and
``immuno.read.read_fcs``, alternately, median of ``--repeats * 3``; and one
in-process breakdown of the immuno steps (read, load gates, gate, write).

``--ablation N`` instead measures, in one process on ``events_N.fcs``, what the
changes buy: the exact float64 engine against the fast path, the zlib
membership writer (level 6 as before, and level 1) against the direct deflate
stream, and what ``import pandas`` would add.

Prints a Markdown table of medians (the machine is shared: compare ratios from
one run, not figures from different runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT / "out" / "bench"
DEFAULT_SIZES = (200_000, 500_000, 1_000_000, 2_000_000)
IMMUNO_NS = "urn:immuno:gating-ml:1"

FLOWKIT_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import flowkit as fk
fcs, gates, out = sys.argv[1:4]
sample = fk.Sample(fcs)
strategy = fk.parse_gating_xml(gates)
res = strategy.gate_sample(sample)
rep = res.report
with open(out, "w") as f:
    f.write("gate\\tcount\\n")
    for name, count in zip(rep["gate_name"], rep["count"]):
        f.write(f"{name}\\t{int(count)}\\n")
"""


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"nproc {os.cpu_count()}, {cpu}, RAM {mem}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average at start {load:.2f}"
    )


def child_env() -> dict[str, str]:
    """This environment, but letting Python cache bytecode as it normally does.

    (A sandbox that sets PYTHONDONTWRITEBYTECODE makes every process recompile
    the project's own modules, ~0.1-0.2 s that no installed copy pays.)
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall s, CPU s (user + system), peak RSS MiB).

    Raises on a non-zero exit.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or child_env()
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def names_by_id(gates: Path) -> dict[str, str]:
    """Gating-ML gate id -> population name (``<immuno:name>``)."""
    out = {}
    for el in ET.parse(gates).getroot():
        gid = next((v for k, v in el.attrib.items() if k.endswith("}id") or k == "id"), None)
        name = el.find(f".//{{{IMMUNO_NS}}}name")
        if gid and name is not None:
            out[gid] = name.text.strip()
    return out


def read_counts(path: Path, key: str, rename: dict[str, str] | None = None) -> dict[str, int]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    k, c = head.index(key), head.index("count")
    out = {}
    for line in lines[1:]:
        f = line.split("\t")
        name = rename.get(f[k], f[k]) if rename else f[k]
        out[name] = int(f[c])
    return out


def data_offset(path: Path) -> tuple[int, int]:
    """(DATA offset, channels) of a file written by ``immuno.write.write_fcs``."""
    from immuno.read import read_text

    _, text = read_text(path)
    return int(text["$BEGINDATA"]), int(text["$PAR"])


def read_times(path: Path, n: int, repeats: int) -> tuple[float, float]:
    """Median seconds of the ``numpy.fromfile`` floor and of ``read_fcs`` (alternating)."""
    from immuno.read import read_fcs

    off, npar = data_offset(path)
    floor, ours = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = np.fromfile(path, dtype="<f4", count=n * npar, offset=off).reshape(n, npar)
        floor.append(time.perf_counter() - t)
        del a
        t = time.perf_counter()
        d = read_fcs(path)
        ours.append(time.perf_counter() - t)
        assert d.n_events == n
        del d
    return statistics.median(floor), statistics.median(ours)


def breakdown(gates: Path, fcs: Path, out: Path, repeats: int) -> dict[str, float]:
    """In-process medians of the steps of ``apply_gates_to_file``."""
    from immuno.gating import write_gating_result
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    steps: dict[str, list[float]] = {"s_read": [], "s_load": [], "s_gate": [], "s_write": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = read_fcs(fcs)
        t1 = time.perf_counter()
        s = load_gatingml(gates)
        t2 = time.perf_counter()
        res = s.apply(data, sample_id="x")
        t3 = time.perf_counter()
        write_gating_result(res, out, "x")
        t4 = time.perf_counter()
        for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[k].append(v)
        del data, res
    return {k: statistics.median(v) for k, v in steps.items()}


def zlib_membership(result, path: Path, level: int) -> None:
    """The membership writer as it was before the hand-made deflate stream (zlib)."""
    import gzip

    pops = list(result.masks)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(
            filename="membership.csv", mode="wb", fileobj=raw, compresslevel=level, mtime=0
        ) as gz,
    ):
        gz.write((",".join(pops) + "\n").encode())
        for a in range(0, result.n_events, 262144):
            block = np.column_stack([result.masks[p][a : a + 262144] for p in pops])
            chars = np.empty((block.shape[0], 2 * block.shape[1]), dtype="S1")
            chars[:, 0::2] = np.where(block, b"1", b"0")
            chars[:, 1::2] = b","
            chars[:, -1] = b"\n"
            gz.write(chars.tobytes())


def ablation(gates: Path, fcs: Path, repeats: int) -> None:
    """What each change buys, in this process (CPU seconds, medians), at one size."""
    from immuno.gatingml import load_gatingml
    from immuno.read import read_fcs

    def cpu(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        return med(times)

    data = read_fcs(fcs)
    s = load_gatingml(gates)
    res = s.apply(data)
    tmp = Path(tempfile.mkdtemp(prefix="ablation_", dir=ROOT / "out"))
    try:
        rows = [
            (
                "gating: exact float64 engine (`apply(fast=False)`)",
                cpu(lambda: s.apply(data, fast=False)),
            ),
            ("gating: fast path (`apply()`)", cpu(lambda: s.apply(data))),
            (
                "membership.csv.gz: zlib level 6 (before)",
                cpu(lambda: zlib_membership(res, tmp / "a.gz", 6)),
            ),
            ("membership.csv.gz: zlib level 1", cpu(lambda: zlib_membership(res, tmp / "b.gz", 1))),
            (
                "membership.csv.gz: direct deflate (`write_membership`)",
                cpu(lambda: res.write_membership(tmp / "c.gz")),
            ),
        ]
        sizes = {k: (tmp / f"{k}.gz").stat().st_size / 2**20 for k in "abc"}
        imp = [run([sys.executable, "-c", "import pandas"])[0] for _ in range(repeats)]
        rows.append(("`import pandas` (whole process; counts.tsv no longer needs it)", med(imp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nablation at {data.n_events:,} events (CPU s, median of {repeats}):\n")
    print("| step | s |\n|---|---:|")
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} |")
    print(
        f"\nmembership.csv.gz sizes: level 6 {sizes['a']:.1f} MiB, level 1 {sizes['b']:.1f} MiB, "
        f"direct {sizes['c']:.1f} MiB"
    )


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-flowkit", action="store_true", help="time immuno only")
    ap.add_argument(
        "--ablation",
        type=int,
        metavar="N",
        help="only the in-process ablation (exact vs fast gating, zlib vs direct deflate) "
        "on events_N.fcs",
    )
    args = ap.parse_args(argv)
    gates = args.data / "gates.xml"
    if not gates.is_file():
        print(f"{gates} is missing: run benchmarks/make_bench_data.py first", file=sys.stderr)
        return 2
    if args.ablation:
        print(f"machine: {machine()}", flush=True)
        ablation(gates, args.data / f"events_{args.ablation}.fcs", args.repeats)
        return 0
    immuno = Path(sys.executable).parent / "immuno"
    id_names = names_by_id(gates)
    (ROOT / "out").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="per_sample_", dir=ROOT / "out"))
    fk_script = work / "flowkit_gate.py"
    fk_script.write_text(FLOWKIT_SCRIPT)
    print(f"machine: {machine()}", flush=True)
    rows = []
    mismatches = 0
    sizes = [int(v) for v in args.sizes.split(",")]
    try:
        # Warm-up: bytecode caches and the page cache hold what a second run would have.
        smallest = args.data / f"events_{min(sizes)}.fcs"
        run(
            [
                str(immuno),
                "apply-gates",
                "--gates",
                str(gates),
                "--fcs",
                str(smallest),
                "--out",
                str(work / "warm"),
            ]
        )
        if not args.no_flowkit:
            run([sys.executable, str(fk_script), str(smallest), str(gates), str(work / "w.tsv")])
            imp = [run([sys.executable, "-c", "import flowkit"])[0] for _ in range(args.repeats)]
            print(f"import flowkit alone: {med(imp):.2f} s", flush=True)
        for n in sizes:
            fcs = args.data / f"events_{n}.fcs"
            floor, ours_read = read_times(fcs, n, args.repeats * 3)
            r = {k: [] for k in ("imm_t", "imm_c", "imm_m", "fk_t", "fk_c", "fk_m", "ratio")}
            for rep in range(args.repeats):
                out = work / f"immuno_{n}_{rep}"
                w, c, m = run(
                    [
                        str(immuno),
                        "apply-gates",
                        "--gates",
                        str(gates),
                        "--fcs",
                        str(fcs),
                        "--out",
                        str(out),
                    ]
                )
                r["imm_t"].append(w)
                r["imm_c"].append(c)
                r["imm_m"].append(m)
                ours = read_counts(out / "counts.tsv", "population")
                if not args.no_flowkit:
                    fk_out = work / f"flowkit_{n}_{rep}.tsv"
                    fw, fc, fm = run(
                        [sys.executable, str(fk_script), str(fcs), str(gates), str(fk_out)]
                    )
                    r["fk_t"].append(fw)
                    r["fk_c"].append(fc)
                    r["fk_m"].append(fm)
                    r["ratio"].append(fw / w)
                    theirs = read_counts(fk_out, "gate", id_names)
                    if theirs != ours:
                        mismatches += 1
                        diff = {
                            p: (ours.get(p), theirs.get(p))
                            for p in sorted(set(ours) | set(theirs))
                            if ours.get(p) != theirs.get(p)
                        }
                        print(f"MISMATCH n={n}: (immuno, flowkit) {diff}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
            steps = breakdown(gates, fcs, work / "breakdown", args.repeats)
            row = {"n": n, "floor": floor, "read": ours_read, **steps}
            row.update({k: med(v) for k, v in r.items()})
            rows.append(row)
            print(
                f"n={n:,}: immuno {row['imm_t']:.3f} s (CPU {row['imm_c']:.3f}) "
                f"{row['imm_m']:.0f} MiB | FlowKit {row['fk_t']:.3f} s (CPU {row['fk_c']:.3f}) "
                f"{row['fk_m']:.0f} MiB | paired ratio x{row['ratio']:.1f} | fromfile "
                f"{floor:.4f} s, read_fcs {ours_read:.4f} s | in-process: "
                + ", ".join(f"{k[2:]} {row[k]:.3f}" for k in steps),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "| events | immuno s (CPU s) | immuno MiB | FlowKit s (CPU s) | FlowKit MiB | "
        "FlowKit / immuno | `fromfile` s | `read_fcs` s | read / floor | "
        "in-process read, load, gate, write s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['imm_t']:.3f} ({r['imm_c']:.3f}) | {r['imm_m']:.0f} | "
            f"{r['fk_t']:.2f} ({r['fk_c']:.2f}) | {r['fk_m']:.0f} | {r['ratio']:.1f}x | "
            f"{r['floor']:.4f} | {r['read']:.4f} | {r['read'] / r['floor']:.2f} | "
            f"{r['s_read']:.3f}, {r['s_load']:.3f}, {r['s_gate']:.3f}, {r['s_write']:.3f} |"
        )
    if mismatches:
        print(f"\n{mismatches} run(s) with counts that differ from FlowKit", file=sys.stderr)
        return 1
    if not args.no_flowkit:
        print("\ncounts identical to FlowKit in every run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
