"""Any gating file applied to one FCS file: the one place that tells a Gating-ML 2.0
file (``.xml``), a FlowJo workspace (``.wsp``) and a data-driven template (``.yaml``)
apart for a single file (the workflow's panels: :func:`immuno.autogate.load_gating`).

Calling convention: ``apply_gates_to_file(gates, fcs, sample_id=, out=)`` writes
``out/counts.tsv`` and ``out/membership.csv.gz`` (:func:`write_gating_result`) and
returns one line saying what it did. It sits above :mod:`immuno.gatingml`,
:mod:`immuno.flowjo` and :mod:`immuno.autogate` and imports them; none of them imports
it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import GatingError, GatingFileError
from .gate import GatingResult
from .gatingml import load_gatingml
from .util import atomic_path, file_problem

__all__ = ["apply_gates_to_file", "write_gating_result"]

log = logging.getLogger(__name__)


def write_gating_result(
    result: GatingResult,
    out: str | os.PathLike,
    sample_id: str,
    flags: dict[str, str] | None = None,
) -> None:
    """Write ``out/counts.tsv`` and ``out/membership.csv.gz`` for one sample.

    ``counts.tsv``: ``sample_id, population, parent, count, parent_count,
    percent_of_parent`` (percent 0-100 of the parent's events; the parent of a
    top-level population is ``root``, all events), and ``qc_flag`` when ``flags``
    (``{population: qc_flag}``) are given. ``membership.csv.gz``: one
    0/1 column per population (header: the population names), one row per
    event in FCS order (a standard gzip file, written by
    :func:`immuno.gate.write_membership`). Each file is written to a temporary
    file beside it and renamed into place, so a reader never sees a partial file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "counts.tsv") as tmp:
        Path(tmp).write_bytes(result.counts_tsv(sample_id, flags).encode("utf-8"))
    with atomic_path(out / "membership.csv.gz") as tmp:
        result.write_membership(tmp)


def _flowjo_sample(gates: Path, fcs_path: Path, sample_id: str | None) -> str | None:
    from .flowjo import workspace_samples

    names = workspace_samples(gates)
    for cand in (sample_id, fcs_path.name, fcs_path.stem):
        if cand and cand in names:
            return cand
    if len(names) == 1:
        return names[0]
    raise GatingFileError(
        f"the workspace holds {len(names)} samples and none is called {fcs_path.name!r}",
        file=str(gates),
        sample=sample_id,
        hint=f"pass --sample-id with one of: {', '.join(names)}",
    )


def apply_gates_to_file(
    gates: str | os.PathLike,
    fcs: str | os.PathLike,
    *,
    sample_id: str | None = None,
    out: str | os.PathLike,
    threads: int = 1,
) -> str:
    """Apply a gating file to one FCS file and write counts and memberships.

    Parameters
    ----------
    gates
        ``.xml`` (Gating-ML 2.0), ``.wsp`` (FlowJo 10 workspace: the sample named
        ``sample_id`` or the FCS file's name; a one-sample workspace needs
        neither) or ``.yaml``/``.yml`` (a data-driven template, fitted to this
        file by :func:`immuno.autogate.gate_template`, whose review reasons fill
        ``qc_flag``).
    fcs
        The FCS file (read-only).
    sample_id
        Sample id for ``counts.tsv`` (default: the FCS file name without suffix).
    out
        Output folder; gets ``counts.tsv`` and ``membership.csv.gz``
        (see :func:`write_gating_result`).
    threads
        Blocks of events gated at once (see :meth:`GatingStrategy.apply`); the
        counts do not depend on it.

    Returns
    -------
    str
        One line: the sample, how many populations were gated with which file, how
        many carry a ``qc_flag`` (a template's review reasons; a fixed gating file has
        none) and where the outputs are.
    """
    from .read import read_fcs

    gpath, fpath = Path(gates), Path(fcs)
    suffix = gpath.suffix.lower()
    if suffix not in (".xml", ".wsp", ".yaml", ".yml"):
        raise GatingFileError(
            f"unknown gating file type {suffix or '(none)'!r}",
            file=str(gpath),
            hint="use a Gating-ML 2.0 .xml, a FlowJo .wsp or a template .yaml",
        )
    problem = file_problem(gpath)
    if problem:
        raise GatingFileError(f"gating file {problem}", file=str(gpath), hint="check the path")
    sid = sample_id or fpath.stem
    data = read_fcs(fpath)
    flags: dict[str, str] = {}
    if suffix == ".xml":
        strategy = load_gatingml(gpath)
    elif suffix == ".wsp":
        from .flowjo import load_flowjo

        strategy = load_flowjo(gpath, sample=_flowjo_sample(gpath, fpath, sample_id))
    else:
        from .autogate import gate_template

        fitted = gate_template(gpath, data, sid)
        strategy = fitted.strategy
        flags = {pop: fitted.flag(pop) for pop in fitted.fits}
    try:
        result = strategy.apply(data, sample_id=sid, threads=threads)
    except GatingError as exc:
        if exc.sample is None:
            exc.sample = sid
        if exc.file is None:
            exc.file = str(fpath)
        raise
    write_gating_result(result, out, sid, {p: flags.get(p, "") for p in result.masks})
    n_flagged = sum(bool(flags.get(p)) for p in result.masks)
    line = (
        f"{sid}: {len(result.masks)} populations gated with {gpath.name}, "
        f"{n_flagged} with a qc_flag -> {Path(out) / 'counts.tsv'}, membership.csv.gz"
    )
    log.info("%s", line)
    return line
