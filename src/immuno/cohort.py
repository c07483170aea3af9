"""A cohort: the sample sheet, the input checks, and gating every sample.

These functions are what the workflow's rules call (each ``workflow/scripts``
file is a thin adapter over one of them):

* :func:`load_sample_sheet` reads and validates the sheet (one clear
  :class:`~immuno.errors.SampleSheetError` per structural problem: missing
  columns, empty cells, duplicate ids, unknown panels, non-numeric visits);
* :func:`check_inputs` checks that every FCS file exists and reads only its
  HEADER and TEXT against its panel before any gating; a missing or bad file
  is reported for its sample, and the other samples go on;
* :func:`gate_cohort` gates every sample that passed, panel by panel, and writes
  the per-sample Gating-ML, the gating counts, the fitted parameters and the
  list of failed samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .corrections import CORRECTION_COLUMNS
from .errors import ConfigError, FCSError, ImmunoError, SampleSheetError
from .util import file_problem, special_file, write_tsv

__all__ = [
    "REQUIRED_COLUMNS",
    "load_sample_sheet",
    "load_templates",
    "check_inputs",
    "gate_cohort",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ["sample_id", "patient_id", "dose_group", "visit_month", "panel", "fcs_path"]
FAILED_COLUMNS = [
    "sample_id",
    "patient_id",
    "panel",
    "fcs_path",
    "stage",
    "error",
    "field",
    "message",
    "hint",
]


#: Longest sample id (UTF-8 bytes): it names output files, whose names may be at most 255
#: bytes with the suffix and an atomic write's temporary prefix and suffix.
MAX_ID_BYTES = 200


def _check_row_count(path: Path, parsed: int) -> None:
    """Every non-blank line below the header is one sample: a double quote that opens a
    quoted field across tabs or lines would join rows (or split one) without a word."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    # pandas skips empty and space-only lines; a line of tabs is a row (of empty cells).
    rows = [i for i, line in enumerate(lines[1:], start=2) if line.strip(" ")]
    if len(rows) == parsed:
        return
    quoted = next((i for i in rows if '"' in lines[i - 1]), None)
    where = f"; line {quoted} holds a double quote" if quoted else ""
    raise SampleSheetError(
        f"{len(rows)} sample lines but {parsed} rows parsed{where}",
        file=str(path),
        sample=lines[quoted - 1].split("\t", 1)[0] if quoted else None,
        hint='a " opens a quoted field that runs over tabs and lines: remove it, or quote '
        'the whole field and double every " inside it',
    )


def load_sample_sheet(
    path: str | Path, panels: list[str] | None = None, *, check_files: bool = True
) -> pd.DataFrame:
    """Read a sample sheet (TSV) and validate it.

    ``fcs_path`` is resolved relative to the sheet's folder unless absolute; the
    resolved path replaces it. ``visit_month`` becomes float, ``lymphocyte_count``
    (optional, x10^9/L) float with empty as NaN.

    A missing FCS file is a problem of one sample, not of the sheet: with
    ``check_files`` it is logged as a warning and :func:`check_inputs` reports
    it in that sample's row, so the other samples are still gated. Only when
    *none* of the sheet's files exist (paths relative to the wrong folder) is
    it an error of the sheet.

    Raises
    ------
    SampleSheetError
        With the sheet, the row's sample id and the column at fault.
    """
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise SampleSheetError(
            "sample sheet does not exist",
            file=src,
            hint="set 'samples:' in the config to your sheet (TSV)",
        )
    kind = special_file(path)
    if kind:  # a folder, or a FIFO, which reading would wait on for ever
        raise SampleSheetError(
            f"sample sheet is {kind}, not a regular file",
            file=src,
            hint="set 'samples:' in the config to your sheet (TSV)",
        )
    try:
        # utf-8-sig: a byte-order mark (spreadsheet export) is not part of the first
        # column's name; index_col=False: a tab at the end of every row is no index.
        df = pd.read_csv(
            path,
            sep="\t",
            dtype=str,
            keep_default_na=False,
            comment=None,
            encoding="utf-8-sig",
            index_col=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SampleSheetError(
            f"cannot parse as TSV: {exc}", file=src, hint="a tab-separated table with a header"
        ) from None
    _check_row_count(path, len(df))
    df.columns = [str(c).strip() for c in df.columns]
    df = df.fillna("")  # cells missing at the end of a short row
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SampleSheetError(
            f"missing column(s): {', '.join(missing)}",
            file=src,
            field=missing[0],
            hint=f"required: {', '.join(REQUIRED_COLUMNS)} (tab-separated)",
        )
    if df.empty:
        raise SampleSheetError(
            "sample sheet lists no samples", file=src, hint="one row per FCS file below the header"
        )
    for c in df.columns:
        df[c] = df[c].str.strip()
    for c in REQUIRED_COLUMNS:
        _first_bad(df, df[c] == "", src, c, "empty {field} on line {line}")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise SampleSheetError(
            f"sample_id {dup.iloc[0]!r} appears more than once",
            file=src,
            sample=dup.iloc[0],
            field="sample_id",
            hint="every FCS file needs its own sample_id",
        )
    _first_bad(
        df,
        df["sample_id"].str.contains(r"[/\\]") | df["sample_id"].isin([".", ".."]),
        src,
        "sample_id",
        "sample_id {value!r} cannot name a file",
        "sample ids name output files (results/gates/<sample_id>.xml): no '/' or '\\'",
    )
    _first_bad(
        df,
        df["sample_id"].map(lambda v: len(v.encode("utf-8")) > MAX_ID_BYTES),
        src,
        "sample_id",
        f"sample_id on line {{line}} is longer than {MAX_ID_BYTES} bytes",
        "sample ids name output files (results/review/<sample_id>.png), and file names "
        "are at most 255 bytes: use a shorter id",
    )
    visits = pd.to_numeric(df["visit_month"], errors="coerce")
    _first_bad(
        df,
        ~np.isfinite(visits),
        src,
        "visit_month",
        "visit_month {value!r} is not a finite number",
        "months from entry, e.g. 0, 1.5, 4.5",
    )
    df["visit_month"] = visits.astype(float)
    if "lymphocyte_count" in df.columns:
        lc = pd.to_numeric(df["lymphocyte_count"].replace("", np.nan), errors="coerce")
        _first_bad(
            df,
            (lc.isna() & (df["lymphocyte_count"] != "")) | np.isinf(lc),
            src,
            "lymphocyte_count",
            "lymphocyte_count {value!r} is not a finite number",
            "x10^9 cells/L from the full blood count, or leave it empty",
        )
        _first_bad(df, lc < 0, src, "lymphocyte_count", "lymphocyte_count is negative")
        df["lymphocyte_count"] = lc
    if panels is not None:
        _first_bad(
            df,
            ~df["panel"].isin(panels),
            src,
            "panel",
            "panel {value!r} is not configured",
            f"configured panels: {', '.join(panels)}",
        )
    base = path.parent
    df["fcs_path"] = [str(p if Path(p).is_absolute() else (base / p)) for p in df["fcs_path"]]
    if check_files:
        problems = {i: file_problem(p) for i, p in zip(df.index, df["fcs_path"], strict=True)}
        missing = [i for i, why in problems.items() if why]
        if missing and len(missing) == len(df):
            row = df.loc[missing[0]]
            raise SampleSheetError(
                f"none of the {len(df)} FCS files can be read (first: {row['fcs_path']} "
                f"{problems[missing[0]]})",
                file=src,
                sample=row["sample_id"],
                field="fcs_path",
                hint=f"relative paths are resolved against the sheet's folder {base}",
            )
        for i in missing:
            log.warning(
                "sample %s: FCS file %s %s; it will be reported as failed",
                df.loc[i, "sample_id"],
                df.loc[i, "fcs_path"],
                problems[i],
            )
    return df


def _first_bad(
    df: pd.DataFrame, mask, src: str, field: str, message: str, hint: str | None = None
) -> None:
    """Raise :class:`SampleSheetError` for the first row where ``mask`` holds.

    ``message`` may use ``{value}`` (the row's ``field``), ``{field}`` and ``{line}``
    (the sheet's line number, header = 1).
    """
    rows = df.index[np.asarray(mask, dtype=bool)]
    if len(rows):
        row = df.loc[rows[0]]
        raise SampleSheetError(
            message.format(value=row.get(field), field=field, line=rows[0] + 2),
            file=src,
            sample=row["sample_id"] or None,
            field=field,
            hint=hint,
        )


def _failed_row(row, stage: str, err: dict) -> dict:
    return {
        "sample_id": row["sample_id"],
        "patient_id": row["patient_id"],
        "panel": row["panel"],
        "fcs_path": row["fcs_path"],
        "stage": stage,
        "error": err.get("error", ""),
        "field": err.get("field", ""),
        "message": err.get("message", ""),
        "hint": err.get("hint", ""),
    }


def _count_keyword(text: dict, key: str, path: str) -> int:
    raw = (text.get(key) or "0").strip()
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise FCSError(f"{key} is {raw!r}, not a count", file=path, field=key)
    return value


class _Text:
    """The attributes :meth:`Panel.resolve` needs, from HEADER and TEXT only."""

    def __init__(self, path: str, text: dict):
        n = _count_keyword(text, "$PAR", path)
        self.path = path
        # as read_fcs names them: a channel without $PnN is "Pn"
        self.channels = [(text.get(f"$P{i}N") or "").strip() or f"P{i}" for i in range(1, n + 1)]
        self.markers = [(text.get(f"$P{i}S") or "").strip() for i in range(1, n + 1)]


def check_inputs(sheet: pd.DataFrame, templates: dict) -> pd.DataFrame:
    """Check every FCS file against its panel before gating (HEADER + TEXT only).

    Returns one row per sample: ``sample_id, status ("ok"/"error"), version,
    events, error, field, message, hint``. Nothing is raised for a bad file
    (missing, not FCS, damaged TEXT, panel mismatch): it is reported, and the
    other samples go on.
    """
    from .read import read_text

    rows = []
    for _, s in sheet.iterrows():
        rec = {
            "sample_id": s["sample_id"],
            "status": "ok",
            "version": "",
            "events": np.nan,
            "error": "",
            "field": "",
            "message": "",
            "hint": "",
        }
        try:
            fcs_path = s["fcs_path"]
            problem = file_problem(fcs_path)
            if problem:
                raise FCSError(
                    f"FCS file {problem}",
                    file=fcs_path,
                    field="fcs_path",
                    hint="fcs_path in the sample sheet is relative to the sheet's folder",
                )
            if s["panel"] not in templates:
                raise ConfigError(
                    f"no gating template for panel {s['panel']!r}",
                    field="panel",
                    hint=f"templates: {', '.join(templates) or 'none'}",
                )
            version, text = read_text(fcs_path)
            rec["version"] = version
            rec["events"] = _count_keyword(text, "$TOT", fcs_path)
            templates[s["panel"]].resolve(_Text(fcs_path, text), sample=s["sample_id"])
        except ImmunoError as exc:
            if exc.sample is None:
                exc.sample = s["sample_id"]
            rec.update(
                status="error",
                **{
                    k: v
                    for k, v in exc.as_record().items()
                    if k in ("error", "field", "message", "hint")
                },
            )
        except Exception as exc:  # a reader fault on one odd file must not stop the cohort
            log.exception("sample %s: unexpected error checking %s", s["sample_id"], s["fcs_path"])
            rec.update(
                status="error",
                error=type(exc).__name__,
                message=str(exc) or repr(exc),
                hint="unexpected error: please report it with this file",
            )
        rows.append(rec)
    return pd.DataFrame(rows)


#: Columns of the gating counts table (results/gating/gating_counts.tsv).
COUNT_COLUMNS = [
    "sample_id",
    "population",
    "parent",
    "count",
    "parent_count",
    "percent_of_parent",
    "qc_flag",
    "qc_note",
]


def gate_cohort(
    sheet: pd.DataFrame,
    templates: dict,
    checks: pd.DataFrame,
    *,
    counts_path: str | Path,
    params_path: str | Path,
    failed_path: str | Path,
    gates_dir: str | Path,
    workers: int = 1,
    corrections=None,
    corrections_path: str | Path | None = None,
) -> None:
    """Gate every sample that passed :func:`check_inputs`, panel by panel, in this
    process (the workflow runs the same steps as jobs per patient: :mod:`immuno.batch`).

    Writes ``counts_path`` (per sample and population: ``sample_id, population,
    parent, count, parent_count, percent_of_parent, qc_flag, qc_note``), ``params_path``
    (every fitted threshold or centre, for the cohort QC view), ``failed_path``
    (samples that failed, with the ``stage``: ``input_check``, ``gating`` or
    ``export_gates``, and the error class, field, message and hint) and
    ``gates_dir/<sample_id>.xml`` (the realised gates, Gating-ML 2.0). Every
    sample of the sheet is in exactly one of the counts and the failed
    samples. Every table is written atomically.

    ``corrections`` (:class:`~immuno.corrections.Corrections`, checked against this
    sheet) are applied as the final word; ``corrections_path`` lists each applied one
    (:data:`CORRECTION_COLUMNS`: the population's count and percent of parent with
    the automated gate and after the correction, who, when and why).
    """
    from .autogate import gate_samples

    gates_dir = Path(gates_dir)
    gates_dir.mkdir(parents=True, exist_ok=True)
    # ids as text: a checks table read back without dtype=str may hold numbers
    by_check = {str(r["sample_id"]): r for r in checks.to_dict("records")}
    not_checked = {
        "status": "error",
        "error": "",
        "message": "sample is missing from the input check table",
        "hint": "run check_inputs on this sample sheet again",
    }
    entries = {}
    for r in sheet.to_dict("records"):
        check = by_check.get(str(r["sample_id"]), not_checked)
        if check["status"] != "ok":
            entries[str(r["sample_id"])] = sample_entry(r, None, None, gates_dir, check)
    for panel, template in templates.items():
        ok = [
            r
            for r in sheet.to_dict("records")
            if r["panel"] == panel and str(r["sample_id"]) not in entries
        ]
        if not ok:
            continue
        inputs = [sample_input(r, corrections) for r in ok]
        log.info("gating %d samples of panel %s with %d workers", len(inputs), panel, workers)
        results = gate_samples(inputs, template, workers=workers, label=panel)
        for r, res in zip(ok, results, strict=True):
            entries[str(r["sample_id"])] = sample_entry(r, res, template, gates_dir)
    ordered = [entries[str(sid)] for sid in sheet["sample_id"] if str(sid) in entries]
    write_gating_tables(
        ordered,
        counts_path=counts_path,
        params_path=params_path,
        failed_path=failed_path,
        corrections=corrections,
        corrections_path=corrections_path,
    )


def sample_input(row: dict, corrections=None):
    """The :class:`~immuno.autogate.SampleInput` of a sheet row, with its corrections."""
    from .autogate import SampleInput

    sid = str(row["sample_id"])
    return SampleInput(
        sid,
        str(row["patient_id"]),
        row["fcs_path"],
        float(row["visit_month"]),
        corrections.for_sample(sid) if corrections is not None else {},
    )


def sample_entry(row: dict, res, template, gates_dir: Path, check: dict | None = None) -> dict:
    """One sample's share of the cohort tables, JSON-ready, its realised gates written
    to ``gates_dir/<sample_id>.xml`` (Gating-ML 2.0).

    ``{"sample_id", "panel", "failed": row of failed_samples.tsv or None, "counts",
    "params", "corrections": rows, "time_gates": ids of gates on Time, "scale_notes"}``.
    ``res`` is the sample's :class:`~immuno.autogate.SampleGating` (``None`` when
    ``check``, its :func:`check_inputs` row, is not ``ok``).
    """
    from .autogate import realised_params, scale_notes
    from .gatingml import time_gates

    sid = str(row["sample_id"])
    entry = {
        "sample_id": sid,
        "panel": row["panel"],
        "check": check,
        "failed": None,
        "counts": [],
        "params": [],
        "corrections": [],
        "time_gates": [],
        "scale_notes": [],
    }
    if check is not None and check.get("status") != "ok":
        entry["failed"] = _failed_row(row, "input_check", check)
        return entry
    if res.error is not None:
        entry["failed"] = _failed_row(row, "gating", res.error)
        return entry
    try:
        _export_gates(res, Path(gates_dir) / f"{sid}.xml")
    except ImmunoError as exc:
        # counts without their gates cannot be audited: the sample fails
        entry["failed"] = _failed_row(row, "export_gates", exc.as_record())
        return entry
    t = res.table.copy()
    t.insert(0, "sample_id", sid)
    entry["counts"] = _records(t[COUNT_COLUMNS])
    entry["corrections"] = _correction_rows(res, t)
    fitted = realised_params([res], template)
    fitted.insert(0, "panel", row["panel"])
    entry["params"] = _records(fitted)
    entry["time_gates"] = sorted(time_gates(res.strategy))
    entry["scale_notes"] = scale_notes(res)
    return entry


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (JSON-ready; NaN stays NaN)."""
    from .util import plain

    return plain(df.to_dict("records"))


def write_gating_tables(
    entries: list[dict],
    *,
    counts_path: str | Path,
    params_path: str | Path,
    failed_path: str | Path,
    corrections=None,
    corrections_path: str | Path | None = None,
    checks_path: str | Path | None = None,
) -> None:
    """Write the cohort's gating tables from the samples' entries (:func:`sample_entry`,
    in the sheet's order), atomically: counts, fitted params, failed samples, applied
    corrections (and those of failed samples, listed as not applied) and, with
    ``checks_path``, the input checks. One warning per panel for gates on Time."""
    failed = [e["failed"] for e in entries if e["failed"] is not None]
    counts = [r for e in entries for r in e["counts"]]
    params = [r for e in entries for r in e["params"]]
    applied = [r for e in entries for r in e["corrections"]]
    timed: dict[str, set[str]] = {}
    for e in entries:
        timed.setdefault(e["panel"], set()).update(e["time_gates"])
    for panel, gates in timed.items():
        if gates:
            log.warning(
                "panel %s: gates on the Time channel (%s) in results/gates/*.xml hold time as "
                "Gating-ML defines it (stored value / $PnG); FlowKit also multiplies it by "
                "$TIMESTEP, so FlowKit gates these populations on another scale (the FlowJo "
                "export corrects for it)",
                panel,
                ", ".join(sorted(gates)),
            )
    write_tsv(pd.DataFrame(counts, columns=COUNT_COLUMNS), counts_path)
    write_tsv(pd.DataFrame(params) if params else pd.DataFrame(), params_path)
    write_tsv(pd.DataFrame(failed, columns=FAILED_COLUMNS), failed_path)
    if checks_path is not None:
        write_tsv(pd.DataFrame([e["check"] for e in entries if e.get("check")]), checks_path)
    if corrections is not None:
        # a correction of a sample that failed is not lost from sight: listed, not applied
        lost = {str(r["sample_id"]): r["stage"] for r in failed}
        for c in corrections.entries:
            if c.sample in lost:
                log.warning(
                    "correction of %s in %s (line %d) not applied: the sample failed (%s)",
                    c.population,
                    c.sample,
                    c.line,
                    lost[c.sample],
                )
                applied.append(
                    {
                        **dict.fromkeys(CORRECTION_COLUMNS, np.nan),
                        "sample_id": c.sample,
                        "population": c.population,
                        "action": c.action,
                        "qc_flag": f"not_applied(sample_failed_{lost[c.sample]})",
                        "reviewer": c.reviewer,
                        "date": c.date,
                        "reason": c.reason,
                        "line": c.line,
                    }
                )
    if corrections_path is not None:
        write_tsv(pd.DataFrame(applied, columns=CORRECTION_COLUMNS), corrections_path)
    if corrections is not None and corrections.history:
        log.info(
            "%d corrections applied from %s (%d superseded entries)",
            len(applied),
            corrections.path,
            corrections.superseded(),
        )


def _correction_rows(res, table: pd.DataFrame) -> list[dict]:
    """One row per correction applied to a gated sample (its population's count with
    the automated gate and with the reviewer's word)."""
    rows = []
    by_pop = table.set_index("population")
    for pop, c in res.corrections.items():
        if pop not in by_pop.index:
            continue
        r = by_pop.loc[pop]
        after, parent = int(r["count"]), int(r["parent_count"])
        fit = res.fits.get(pop)
        before = fit.before if fit is not None and fit.before is not None else after
        rows.append(
            {
                "sample_id": res.sample_id,
                "population": pop,
                "action": c.action,
                "count_before": before,
                "count_after": after,
                "percent_before": 100.0 * before / parent if parent else np.nan,
                "percent_after": 100.0 * after / parent if parent else np.nan,
                "qc_flag": r["qc_flag"],
                "reviewer": c.reviewer,
                "date": c.date,
                "reason": c.reason,
                "line": c.line,
            }
        )
    return rows


def _export_gates(res, path: Path) -> None:
    """Write the realised gates of one sample as Gating-ML 2.0 (atomically).

    The per-file note on Time gates is logged once per cohort by
    :func:`gate_cohort` instead (it is the same for every sample).
    """
    from .gatingml import write_gatingml
    from .util import atomic_path

    with atomic_path(path) as tmp:
        write_gatingml(res.strategy, tmp, warn_time=False)


def load_templates(panels: dict[str, str]) -> dict:
    """Load the gating of every panel: ``{panel: Template | StaticGating}``.

    A panel's gating is a data-driven template (``.yaml``), a Gating-ML 2.0 file
    (``.xml``) or a FlowJo workspace (``.wsp``); all report the same tables.
    """
    from .autogate import load_gating

    return {name: load_gating(path, name=name) for name, path in panels.items()}


#: One :class:`~immuno.plot.GateReviewer` per process (it keeps its figures).
_REVIEWER = None


def draw_review(fcs, strategy, masks, sample_id: str, flags: dict, outdir: Path, specs: dict):
    """Draw one sample's review figure, thumbnails and edit script into ``outdir``
    (``figures/``, ``thumbs/``, ``edit/<sample_id>``); returns the gate ids in the
    order of the thumbnails. ``flags``: ``{population: qc_flag}``; ``specs``: the
    panel's gates as :func:`review_specs` gives them."""
    global _REVIEWER
    from .plot import GateReviewer
    from .review import gate_edits, save_review_images, write_edit_script

    if _REVIEWER is None:
        _REVIEWER = GateReviewer()
    fig = _REVIEWER.figure(fcs, strategy, masks, title=sample_id, flags=flags)
    geometry: dict = {}
    gates = save_review_images(
        fig,
        outdir / "figures" / f"{sample_id}.png",
        outdir / "thumbs" / f"{sample_id}.png",
        geometry=geometry,
    )
    write_edit_script(
        sample_id, gate_edits(strategy, specs, geometry), outdir / "edit" / f"{sample_id}.js"
    )
    return gates


def review_specs(gating) -> dict:
    """``{population: {"dims", "method", "select"}}`` of a template (what a correction
    of each gate names); empty for fixed gates."""
    return {
        p.name: {"dims": list(p.dims), "method": p.method, "select": p.params.get("select")}
        for p in getattr(gating, "populations", [])
    }


def _review_one(args) -> tuple[str, list[str] | None]:
    """Draw one sample's review figure from its exported gates: ``(sample_id, gate
    ids)``, or ``(sample_id, None)`` when it could not be drawn (logged)."""
    sample_id, fcs_path, gates_path, flags, outdir, specs = args
    from .gatingml import load_gatingml
    from .read import read_fcs

    try:
        strategy = load_gatingml(gates_path)
        fcs = read_fcs(fcs_path)
        masks = strategy.apply(fcs, sample_id=sample_id).masks
        return sample_id, draw_review(fcs, strategy, masks, sample_id, flags, outdir, specs)
    except ImmunoError as exc:
        log.warning("no review figure for %s: %s", sample_id, exc)
        return sample_id, None


def review_cohort(
    sheet: pd.DataFrame,
    counts: pd.DataFrame,
    gates_dir: str | Path,
    outdir: str | Path,
    *,
    workers: int = 1,
    templates: dict | None = None,
) -> list[str]:
    """Draw every gated sample's review figure and write the review page.

    Writes ``outdir/figures/<sample_id>.png`` (every gate, large),
    ``outdir/thumbs/<sample_id>.png`` (one thumbnail per gate),
    ``outdir/edit/<sample_id>.js`` (where each gate is on the figure and what a
    correction of it names: :func:`immuno.review.gate_edits`, from the panel's
    template in ``templates``) and ``outdir/index.html``
    (:func:`immuno.review.write_review_page`). The gates come
    from each sample's exported Gating-ML file (so the figure shows exactly what a
    reviewer can re-apply), flags from the counts table. Returns the sample ids that
    could not be drawn.
    """
    from concurrent.futures import ProcessPoolExecutor

    from .review import review_records, write_review_page

    outdir = Path(outdir)
    for sub in ("figures", "thumbs", "edit"):
        (outdir / sub).mkdir(parents=True, exist_ok=True)
    counts = counts.astype({"sample_id": str})
    flags = {
        sid: dict(zip(g["population"], g["qc_flag"].fillna(""), strict=True))
        for sid, g in counts.groupby("sample_id")
    }
    specs = {panel: review_specs(gating) for panel, gating in (templates or {}).items()}
    jobs = []
    for row in sheet.itertuples():
        gates = Path(gates_dir) / f"{row.sample_id}.xml"
        if gates.exists():
            sid = str(row.sample_id)
            jobs.append(
                (
                    row.sample_id,
                    row.fcs_path,
                    gates,
                    flags.get(sid, {}),
                    outdir,
                    specs.get(row.panel, {}),
                )
            )
    from .util import Progress

    progress = Progress("review figures", len(jobs), logger=log)
    if workers <= 1:
        drawn = list(progress.wrap(_review_one(j) for j in jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            chunks = max(1, len(jobs) // (4 * workers))
            drawn = list(progress.wrap(ex.map(_review_one, jobs, chunksize=chunks)))
    order = {sid: gates for sid, gates in drawn if gates is not None}
    write_review_page(review_records(counts, order), outdir / "index.html")
    return [sid for sid, gates in drawn if gates is None]


def run_summary(results: str | Path, *, limit: int = 10) -> str:
    """The run in a few lines for the console: samples gated, samples failed (with their
    error, the first ``limit``), samples with a value to review, and where to look.

    Reads ``results/counts.tsv`` (or, before it exists, ``results/gating/gating_counts.tsv``)
    and ``results/failed_samples.tsv``; what is missing is said, not guessed.
    """
    from .util import read_tsv

    results = Path(results)
    lines = []
    counts_path = next(
        (
            p
            for p in (results / "counts.tsv", results / "gating" / "gating_counts.tsv")
            if p.exists()
        ),
        None,
    )
    failed_path = results / "failed_samples.tsv"
    failed = read_tsv(failed_path) if failed_path.exists() else None
    if counts_path is None:
        lines.append("no samples gated yet (results/counts.tsv is not written)")
    else:
        counts = read_tsv(counts_path, na_values={"percent_of_parent": [""]})
        gated = counts["sample_id"].astype(str).nunique()
        # a reviewer's word (corrected, excluded) needs no more looking at
        settled = ("corrected", "excluded", "upstream_excluded(")
        flags = counts["qc_flag"].fillna("").astype(str).str.split(";")
        open_ = flags.map(lambda fs: any(f.strip() and not f.startswith(settled) for f in fs))
        review = counts.loc[open_, "sample_id"].astype(str).unique()
        total = gated + (len(failed) if failed is not None else 0)
        lines.append(f"{gated} of {total} samples gated ({counts_path})")
        if len(review):
            shown = ", ".join(sorted(review)[:limit]) + (" ..." if len(review) > limit else "")
            page = results / "review" / "index.html"
            lines.append(
                f"{len(review)} sample{'s' if len(review) != 1 else ''} with a value to "
                f"review: {shown}" + (f" (see {page}#flagged)" if page.exists() else "")
            )
        else:
            lines.append("no value to review")
    if failed is not None and len(failed):
        lines.append(
            f"{len(failed)} sample{'s' if len(failed) != 1 else ''} failed (see {failed_path}):"
        )
        for r in failed.head(limit).itertuples():
            lines.append(f"  {r.sample_id} [{r.stage}] {r.error}: {r.message}")
        if len(failed) > limit:
            lines.append(f"  ... and {len(failed) - limit} more")
    return "\n".join(lines)
