"""The workflow's gating as jobs: a fit per patient, pooling per panel, finishing per
patient, gathering (``workflow/rules/gating.smk``).

A batch is one patient's samples of one panel (:func:`batch_key`): adding patients adds
batches and leaves the others' jobs as they are; adding a visit reruns that patient's.

* :func:`fit_batch`: the input check and pass 1 of every sample of the batch (automated,
  without corrections; :func:`~immuno.autogate.gate_input`), its realised gates, counts
  and review figure, into a batch folder.
* :func:`pool_panel`: the panel's pass-1 fits pooled (:func:`~immuno.autogate.pool_fits`):
  the outlier reference, what each sample to gate again borrows, and per batch the digest
  of what its pass 2 depends on (a rerun of a batch is decided by its digest alone).
* :func:`finish_batch`: pass 2 of the batch's samples that need it (borrowing, outliers,
  corrections), judged by the pool's reference; the other samples' products are linked
  from the fit folder, not redone. Only batches with such a sample have this job.
* :func:`gather_gating` and :func:`gather_review`: the cohort's tables, ``results/gates``
  and ``results/review`` from the batch folders (files linked, not copied, where the
  file system allows).

A batch folder holds ``samples.json`` (``{"panel", "patient_id", "samples": [...]}``, one
:func:`~immuno.cohort.sample_entry` per sample with its sheet ``row``, pooling
``record`` and ``review`` gate order) and ``gates/``, ``figures/``, ``thumbs/``, ``edit/``
with one file per gated sample. The in-process path (:func:`immuno.cohort.gate_cohort`)
runs the same steps and gives the same results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from .util import atomic_path, plain

__all__ = [
    "batch_key",
    "fit_batch",
    "pool_panel",
    "finish_batch",
    "gather_gating",
    "gather_review",
    "stale_outputs",
    "remove_stale",
]

log = logging.getLogger(__name__)

#: The per-sample files of a batch folder: (subfolder, suffix).
PRODUCTS = (
    ("gates", ".xml"),
    ("memberships", ".npz"),
    ("figures", ".png"),
    ("thumbs", ".png"),
    ("edit", ".js"),
)
#: What results/review holds of a batch's products.
REVIEW_PRODUCTS = PRODUCTS[2:]
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def batch_key(patient_id: str) -> str:
    """The folder name of a patient's batch: the id itself when it is a plain name (up to
    64 letters, digits, ``.``, ``_``, ``-``), else ``p-`` and 12 hex digits of its SHA-1.
    It depends on the patient alone, so adding patients renames no batch."""
    pid = str(patient_id)
    if _SAFE.fullmatch(pid) and pid not in (".", ".."):
        return pid
    return "p-" + hashlib.sha1(pid.encode("utf-8")).hexdigest()[:12]


def _write_json(doc, path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(plain(doc), indent=1))


def read_batch(folder: str | Path) -> dict:
    """The ``samples.json`` of a batch folder."""
    return json.loads((Path(folder) / "samples.json").read_text())


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of ``src`` (a copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _load_template(panel: str, template_path: str):
    from .cohort import load_templates

    return load_templates({panel: template_path})[panel]


def _gate_and_draw(inp, template, out: Path, specs: dict, *, pass1: bool = False, **kwargs):
    """Gate one sample (:func:`~immuno.autogate.gate_input`), store its event memberships
    (:func:`~immuno.memberships.write_memberships`) and draw its review figure from the
    same events and masks: ``(result, gate ids or None)``. A figure that cannot be drawn
    is logged and costs the sample nothing but its figure. In ``pass1``, a sample that
    borrows a gate gets neither: pass 2 gates it again."""
    from .autogate import gate_input
    from .cohort import draw_review
    from .memberships import write_memberships

    drawn: list = [None]

    def done(fcs, res):
        if pass1 and any("needs_borrowing" in f.flags for f in res.fits.values()):
            return
        parents = {g.id: g.parent for g in res.strategy.gates.values()}
        write_memberships(out / "memberships" / f"{inp.sample_id}.npz", res.masks, parents)
        flags = {pop: res.flag(pop) for pop in res.table["population"]}
        try:
            drawn[0] = draw_review(fcs, res.strategy, res.masks, inp.sample_id, flags, out, specs)
        except Exception:  # a figure must not cost the sample its counts
            log.exception("no review figure for %s", inp.sample_id)

    res = gate_input(inp, template, on_gated=done, **kwargs)
    return res, drawn[0]


def _entry(row, res, template, out: Path, check, review) -> dict:
    from .cohort import sample_entry

    entry = sample_entry(row, res, template, out / "gates", check)
    entry["row"] = plain(row)
    entry["record"] = res.record() if res is not None and res.error is None else None
    entry["review"] = review if entry["failed"] is None else None
    return entry


def _mkdirs(out: Path, products=PRODUCTS) -> None:
    for sub, _ in products:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _say_batch(panel: str, patient: str, samples: list[dict], step: str, gated: int) -> None:
    """One console line per batch (the job's stderr reaches the console) and the log."""
    import sys

    failed = [e["sample_id"] for e in samples if e["failed"] is not None]
    line = f"{panel} {patient}: {gated - len(failed)} of {gated} samples gated ({step})"
    if failed:
        line += f"; failed: {', '.join(failed)} (results/failed_samples.tsv says why)"
    print(line, file=sys.stderr, flush=True)
    log.info("%s", line)


def _log_sample(entry: dict, i: int, n: int, step: str) -> None:
    """One log line per sample: gated, or failed with its error."""
    failed = entry["failed"]
    if failed is None:
        log.info("%s %d/%d: %s gated", step, i, n, entry["sample_id"])
    else:
        log.warning(
            "%s %d/%d: %s failed [%s] %s: %s",
            step,
            i,
            n,
            entry["sample_id"],
            failed["stage"],
            failed["error"],
            failed["message"],
        )


def fit_batch(rows: Sequence[dict], panel: str, template_path: str, out_dir: str | Path) -> dict:
    """Check and gate (pass 1) one batch's samples into ``out_dir``; returns the
    ``samples.json`` document. ``rows``: the batch's sample-sheet rows."""
    import pandas as pd

    from .cohort import check_inputs, review_specs, sample_input

    out = Path(out_dir)
    _mkdirs(out)
    template = _load_template(panel, template_path)
    checks = check_inputs(pd.DataFrame(list(rows)), {panel: template}).to_dict("records")
    specs = review_specs(template)
    samples = []
    for i, (row, check) in enumerate(zip(rows, map(plain, checks), strict=True), 1):
        if check["status"] != "ok":
            samples.append(_entry(row, None, template, out, check, None))
        else:
            res, review = _gate_and_draw(sample_input(row), template, out, specs, pass1=True)
            samples.append(_entry(row, res, template, out, check, review))
        _log_sample(samples[-1], i, len(rows), "pass 1")
    doc = {
        "panel": panel,
        "patient_id": str(rows[0]["patient_id"]) if rows else "",
        "samples": samples,
    }
    _write_json(doc, out / "samples.json")
    _say_batch(panel, doc["patient_id"], samples, "pass 1", len(samples))
    return doc


def pool_panel(
    fit_dirs: Iterable[str | Path],
    panel: str,
    template_path: str,
    corrections_path: str | None,
    out_path: str | Path,
) -> dict:
    """Pool a panel's pass-1 fits (:func:`~immuno.autogate.pool_fits`) and write the
    pool: ``{"redo", "reference", "batches": {batch: {"digest", "redo": [ids]}}}``.

    Beside it, ``<out_path without .json>/<batch>.digest`` holds each batch's digest of
    what its pass 2 depends on (:meth:`~immuno.autogate.Pool.digest`, and the batch's
    corrections), rewritten only when it changes: its date is what reruns the batch's
    pass 2 (an input by date; a new pool alone reruns nothing)."""
    from .autogate import Pool, SampleGating, pool_fits
    from .corrections import load_corrections

    template = _load_template(panel, template_path)
    corrections = load_corrections(corrections_path)
    results, batch_of = [], {}
    for folder in fit_dirs:
        doc = read_batch(folder)
        for e in doc["samples"]:
            if e["record"] is not None:
                results.append(SampleGating.from_record(e["record"]))
            batch_of[e["sample_id"]] = batch_key(e["row"]["patient_id"])
    pool: Pool = pool_fits(
        results, template, {r.sample_id: corrections.for_sample(r.sample_id) for r in results}
    )
    members: dict[str, list[str]] = {}
    for sid, key in batch_of.items():
        members.setdefault(key, []).append(sid)
    doc = pool.to_json()
    doc["batches"] = {}
    digests = Path(out_path).with_suffix("")
    digests.mkdir(parents=True, exist_ok=True)
    for key, ids in sorted(members.items()):
        own = [
            c.entry() | {"line": c.line}
            for s in sorted(ids)
            for c in corrections.for_sample(s).values()
        ]
        digest = hashlib.sha256(
            json.dumps([pool.digest(ids), own], sort_keys=True).encode()
        ).hexdigest()
        doc["batches"][key] = {"digest": digest, "redo": sorted(s for s in ids if s in pool.redo)}
        path = digests / f"{key}.digest"
        if not path.exists() or path.read_text() != digest:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(digest)
    log.info(
        "panel %s: %d of %d samples gated again (in %d of %d batches)",
        panel,
        len(pool.redo),
        len(batch_of),
        sum(1 for b in doc["batches"].values() if b["redo"]),
        len(members),
    )
    _write_json(doc, Path(out_path))
    return doc


def finish_batch(
    fit_dir: str | Path,
    panel: str,
    template_path: str,
    pool_path: str | Path,
    corrections_path: str | None,
    out_dir: str | Path,
) -> dict:
    """Pass 2 of the batch's samples the pool names, into ``out_dir``, with their
    corrections from ``corrections_path``; the other samples' files are linked from
    ``fit_dir``."""
    from dataclasses import replace

    from .autogate import Pool
    from .cohort import review_specs, sample_input
    from .corrections import load_corrections

    out, fit_dir = Path(out_dir), Path(fit_dir)
    _mkdirs(out)
    template = _load_template(panel, template_path)
    pool = Pool.from_json(json.loads(Path(pool_path).read_text()))
    corrections = load_corrections(corrections_path)
    fitted = read_batch(fit_dir)
    specs = review_specs(template)
    samples = []
    redo = sum(e["sample_id"] in pool.redo for e in fitted["samples"])
    for e in fitted["samples"]:
        sid = e["sample_id"]
        if sid not in pool.redo:
            for sub, suffix in PRODUCTS:
                src = fit_dir / sub / f"{sid}{suffix}"
                if src.exists():
                    _link(src, out / sub / f"{sid}{suffix}")
            samples.append(e)
            continue
        inp = replace(sample_input(e["row"]), corrections=corrections.for_sample(sid))
        borrowed, redo_pops, reference = pool.instruction(sid)
        res, review = _gate_and_draw(
            inp,
            template,
            out,
            specs,
            borrowed=borrowed,
            replace=redo_pops,
            reference=reference,
        )
        samples.append(_entry(e["row"], res, template, out, e["check"], review))
        _log_sample(samples[-1], len(samples), len(fitted["samples"]), "pass 2")
    again = [e for e in samples if e["sample_id"] in pool.redo]
    _say_batch(panel, fitted["patient_id"], again, "pass 2", redo)
    log.info("%d of %d samples gated again; the others' files linked", redo, len(samples))
    doc = {**fitted, "samples": samples}
    _write_json(doc, out / "samples.json")
    return doc


def _entries(batch_dirs: Iterable[str | Path], sheet) -> tuple[list[dict], dict[str, Path]]:
    """The samples' entries in the sheet's order, and the batch folder of each."""
    by_id, where = {}, {}
    for folder in batch_dirs:
        for e in read_batch(folder)["samples"]:
            by_id[e["sample_id"]] = e
            where[e["sample_id"]] = Path(folder)
    entries = []
    for row in sheet.to_dict("records"):
        sid = str(row["sample_id"])
        if sid in by_id:
            entries.append(by_id[sid])
        else:  # not expected: every row is in a batch; said, not lost
            from .cohort import sample_entry

            check = {
                "sample_id": sid,
                "status": "error",
                "error": "",
                "message": "sample is in no gating batch",
                "hint": "run the workflow again; report it if it stays",
            }
            entries.append(sample_entry(row, None, None, Path(), check))
    return entries, where


def gather_gating(
    batch_dirs: Iterable[str | Path],
    sheet,
    *,
    corrections=None,
    counts_path,
    params_path,
    failed_path,
    corrections_path,
    checks_path,
    gates_dir,
    memberships_dir,
) -> None:
    """The cohort's gating tables (:func:`~immuno.cohort.write_gating_tables`),
    ``gates_dir/<sample_id>.xml`` and ``memberships_dir/<sample_id>.npz`` from the batch
    folders, with one warning per panel for files read on another scale."""
    from .autogate import warn_scale
    from .cohort import write_gating_tables

    entries, where = _entries(batch_dirs, sheet)
    for folder, (sub, suffix) in ((gates_dir, PRODUCTS[0]), (memberships_dir, PRODUCTS[1])):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for e in entries:
            if e["failed"] is None:
                sid = e["sample_id"]
                _link(where[sid] / sub / f"{sid}{suffix}", Path(folder) / f"{sid}{suffix}")
    write_gating_tables(
        entries,
        counts_path=counts_path,
        params_path=params_path,
        failed_path=failed_path,
        corrections=corrections,
        corrections_path=corrections_path,
        checks_path=checks_path,
    )
    by_panel: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        if e["failed"] is None:
            by_panel.setdefault(e["panel"], {})[e["sample_id"]] = e["scale_notes"]
    for panel, notes in by_panel.items():
        warn_scale(panel, notes, len(notes))


def gather_review(
    batch_dirs: Iterable[str | Path], sheet, counts, out_dir: str | Path
) -> list[str]:
    """``out_dir`` (``results/review``): every sample's review figure, thumbnails and
    edit script linked from its batch folder, and the review page. Returns the gated
    samples that have no figure (logged)."""
    from .review import review_records, write_review_page

    out = Path(out_dir)
    _mkdirs(out, REVIEW_PRODUCTS)
    entries, where = _entries(batch_dirs, sheet)
    order, missing = {}, []
    for e in entries:
        if e["failed"] is not None:
            continue
        sid = e["sample_id"]
        if e["review"] is None:
            missing.append(sid)
            continue
        for sub, suffix in REVIEW_PRODUCTS:
            _link(where[sid] / sub / f"{sid}{suffix}", out / sub / f"{sid}{suffix}")
        order[sid] = e["review"]
    write_review_page(review_records(counts.astype({"sample_id": str}), order), out / "index.html")
    if missing:
        log.warning(
            "%d gated samples without a review figure: %s", len(missing), ", ".join(missing)
        )
    return missing


def stale_outputs(
    results: str | Path,
    panels: Iterable[str],
    batches: Iterable[tuple[str, str]],
    *,
    gated_fcs: bool = True,
) -> list[Path]:
    """What an earlier configuration or sheet left in ``results`` that this one does not
    make: the AnnData export of a panel no longer configured, the gated-FCS export when it
    is no longer asked for, and the gating folders (fit, finish, pool) of panels and of
    batches (patients) no longer in the sheet. ``batches``: the ``(panel, batch)`` pairs
    of the sheet (:func:`batch_key`). Nothing else under ``results`` is looked at."""
    results = Path(results)
    panels, batches = set(panels), set(batches)
    stale: list[Path] = []
    exports = results / "exports"
    if exports.is_dir():
        stale += [p for p in sorted(exports.glob("*.h5ad")) if p.stem not in panels]
        if not gated_fcs and (exports / "gated_fcs").is_dir():
            stale.append(exports / "gated_fcs")
    for step in ("fit", "final"):
        for panel_dir in sorted((results / "gating" / step).glob("*")):
            if not panel_dir.is_dir():
                continue
            if panel_dir.name not in panels:
                stale.append(panel_dir)
                continue
            stale += [
                d for d in sorted(panel_dir.iterdir()) if (panel_dir.name, d.name) not in batches
            ]
    pool = results / "gating" / "pool"
    for p in sorted(pool.glob("*")):
        name = p.name.removesuffix(".json")
        if name not in panels:
            stale.append(p)
        elif p.is_dir():
            stale += [d for d in sorted(p.glob("*.digest")) if (name, d.stem) not in batches]
    return stale


def remove_stale(paths: Iterable[Path]) -> list[Path]:
    """Remove ``paths`` (files and folders); the ones removed, logged."""
    removed = []
    for p in paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
        log.info("removed %s: no longer made by this configuration and sheet", p)
    return removed
