"""The ``immuno`` command line.

Each sub-command is a thin adapter over one library function; errors raised on
purpose (:class:`~immuno.errors.ImmunoError`) are printed as one line, never as a
traceback, and give exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import ImmunoError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .read import inspect_files

    return inspect_files(args.fcs, out=sys.stdout)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate_cohort

    simulate_cohort(
        args.out,
        seed=args.seed,
        events=args.events,
        profile=args.profile,
        patients=args.patients,
    )
    return 0


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS reports one, e.g. a Slurm
    allocation on Linux; else every CPU)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _cmd_apply_gates(args: argparse.Namespace) -> int:
    from .gating import apply_gates_to_file

    threads = args.threads or _usable_cpus()
    print(
        apply_gates_to_file(
            args.gates, args.fcs, sample_id=args.sample_id, out=args.out, threads=threads
        )
    )
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from .server import ReviewServer, study_from_config

    study = study_from_config(args.config, args.directory)
    server = ReviewServer(Path(args.directory) / args.results, port=args.port, **study)
    print(
        f"Review page: {server.url}  (corrections are saved to {study['corrections']}; "
        "Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


EXAMPLES = """examples:
  immuno inspect data/demo/fcs/*.fcs                 one line per file
  immuno simulate --out my_demo --patients 4         a small demo cohort with truth
  immuno apply-gates --gates results/gates/P01_m0_T.xml --fcs P01_m0_T.fcs --out out/
  immuno apply-gates --gates gates/t_cell.yaml --fcs my_file.fcs --out out/
  immuno review results                              correct gates at http://127.0.0.1:8765/

each command: immuno <command> --help"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="immuno",
        description="immuno: flow cytometry immunophenotyping.\nThe workflow runs with "
        "snakemake (README.md); these commands serve single files and the review.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="one line per FCS file: version, events, channels, markers")
    s.add_argument("fcs", nargs="+", help="FCS files")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("simulate", help="write the deterministic ALEVIATE-like demo cohort")
    s.add_argument("--out", required=True, help="output folder (FCS files, truth, samples.tsv)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    s.add_argument("--events", type=int, default=20000, help="events per FCS file (<= 1,000,000)")
    s.add_argument(
        "--profile",
        default="fortessa",
        help="instrument profile: fortessa (default; float, linear, uncompensated), "
        "canto_export (flowCore export: compensated, logicle 0..4096) or log1024 "
        "(16-bit integers, 4-decade log fluorescence, 0..1023)",
    )
    s.add_argument(
        "--patients",
        type=int,
        default=None,
        help="simulate only the first N of the 23 patients (default: all)",
    )
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("apply-gates", help="apply a gating file to one FCS file")
    s.add_argument("--gates", required=True, help="Gating-ML 2.0 (.xml), FlowJo (.wsp) or template")
    s.add_argument("--fcs", required=True, help="FCS file")
    s.add_argument("--sample-id", default=None, help="sample id (default: file name stem)")
    s.add_argument("--out", required=True, help="output folder: counts.tsv, membership.csv.gz")
    s.add_argument(
        "--threads",
        type=int,
        default=0,
        help="blocks of events gated at once (default 0: one per available CPU)",
    )
    s.set_defaults(func=_cmd_apply_gates)

    s = sub.add_parser(
        "review",
        help="serve the gate review page on 127.0.0.1 and save corrections from it",
    )
    s.add_argument("results", help="the workflow's results folder (holds review/index.html)")
    s.add_argument(
        "--config",
        default="config.yaml",
        help="workflow config naming the sheet, panels and corrections file (default config.yaml)",
    )
    s.add_argument(
        "--directory",
        default=".",
        help="the workflow's folder, as snakemake's --directory: RESULTS and the config's "
        "relative paths are read from it (default: the current folder)",
    )
    s.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    s.set_defaults(func=_cmd_review)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ImmunoError as exc:
        print(f"immuno {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
