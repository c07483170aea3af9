# Helpers shared by all rules: config and sample-sheet validation, and get_<thing> functions.
import functools
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _check_config():
    """Unknown keys (with the nearest known name) and schema violations, in one line each,
    before Snakemake's own validation fills the defaults."""
    from immuno.config import check_config
    from immuno.errors import ImmunoError

    try:
        check_config(
            config,
            Path(workflow.current_basedir) / "../schemas/config.schema.yaml",
            source=", ".join(map(str, workflow.configfiles)) or None,
        )
    except ImmunoError as exc:
        raise WorkflowError(f"{type(exc).__name__}: {exc}") from None


_check_config()
validate(config, "../schemas/config.schema.yaml")


def _refuse_braces(sheet):
    """Snakemake reads '{x}' in an input path as a wildcard and stops the whole run at
    parse time: name the config's path instead (the sheet or a template). An FCS path
    with braces is read from the sheet and tracked by get_fcs_stamp()."""
    from immuno.errors import ConfigError

    paths = [
        ("samples", str(sheet)),
        *(("panels", p) for p in config["panels"].values()),
    ]
    for field, path in paths:
        if "{" in path or "}" in path:
            raise ConfigError(
                f"the config's {field!r} path {path!r} holds a brace",
                field=field,
                hint="Snakemake reads { } in a path as a wildcard: rename the folder or file",
            )


def _load_samples():
    """Read and validate the sample sheet (parsing writes nothing: the demo cohort is
    created by `make demo`, scripts/demo-data.py)."""
    from immuno.cohort import load_sample_sheet
    from immuno.errors import ImmunoError

    sheet = Path(config["samples"])
    demo_sheet = Path(config.get("demo", {}).get("out", "data/demo")) / "samples.tsv"
    if not sheet.exists() and sheet.resolve() == demo_sheet.resolve():
        raise WorkflowError(
            f"the demo cohort is not created yet ({sheet}): `make demo` creates it and "
            "runs the workflow (or: python scripts/demo-data.py config.yaml)"
        )
    try:
        df = load_sample_sheet(sheet, list(config["panels"]))
        _refuse_braces(sheet)
    except ImmunoError as exc:
        raise WorkflowError(f"{type(exc).__name__}: {exc}") from None
    validate(df, "../schemas/samples.schema.yaml")
    return df


samples = _load_samples()


@functools.cache
def _templates():
    """The panels' gating, loaded once at parse time; None when one does not load (its
    error is reported by the gating jobs of its panel)."""
    from immuno.cohort import load_templates
    from immuno.errors import ImmunoError

    try:
        return load_templates(config["panels"])
    except ImmunoError:
        return None


def _study_populations():
    """Tests and figure panels for the reported populations the study's gating defines,
    where the config leaves them out, and every population the config names checked
    against it (nothing is checked when a gating's populations are not known here)."""
    from immuno.config import check_populations, defined_populations, study_defaults
    from immuno.errors import ImmunoError

    templates = _templates()
    defined = None if templates is None else defined_populations(templates)
    has_counts = "lymphocyte_count" in samples.columns
    for note in study_defaults(config, defined, has_counts=has_counts):
        logger.info(f"Default {note}")
    try:
        check_populations(
            config, defined, source=", ".join(map(str, workflow.configfiles)) or None
        )
    except ImmunoError as exc:
        raise WorkflowError(f"{type(exc).__name__}: {exc}") from None


_study_populations()


def _warn_other_study():
    """results/ of another study (another sample sheet or panels): say so before anything
    runs; the outputs this one does not make go after a successful run (_summary)."""
    import json

    record = Path("results/provenance.json")
    if not record.is_file():
        return
    try:
        old = json.loads(record.read_text()).get("config") or {}
    except (OSError, ValueError):
        return
    same_sheet = str(Path(old.get("samples", "")).resolve()) == str(
        Path(config["samples"]).resolve()
    )
    same_panels = set(old.get("panels") or {}) == set(config["panels"])
    if not (same_sheet and same_panels):
        logger.warning(
            f"results/ holds the outputs of another study (sheet {old.get('samples')}, "
            f"panels {', '.join(old.get('panels') or {})}): the outputs this study does not "
            "make are removed when it has run. Run each study in its own folder "
            "(snakemake -s .../Snakefile --configfile study.yaml) to keep both."
        )


_warn_other_study()


def get_corrections():
    """The corrections file as an input when it exists (editing it reruns the gating)."""
    path = config.get("corrections")
    return [path] if path and Path(path).exists() else []


def get_corrections_sha():
    """SHA-256 of the corrections file (a param: its content, not its date, reruns)."""
    from immuno.util import sha256_file

    return sha256_file(get_corrections()[0]) if get_corrections() else None


@functools.cache
def _corrections():
    from immuno.corrections import load_corrections

    return load_corrections(config.get("corrections"))


def _check_corrections():
    """Refuse a corrections file that cannot be applied before any job starts (with a
    template that does not load, its panel's gating jobs report it)."""
    from immuno.errors import ImmunoError

    try:
        corrections = _corrections()
        if corrections.history and _templates() is not None:
            corrections.check(samples, _templates())
    except ImmunoError as exc:
        raise WorkflowError(f"{type(exc).__name__}: {exc}") from None


_check_corrections()


def _braced(path):
    return "{" in path or "}" in path


def _is_input(path):
    """Missing files are not inputs: the gating's input check reports them per sample
    (results/failed_samples.tsv) and the other samples go on. Nor is a path with braces
    (Snakemake reads them as wildcards): its stamp (_stamp) is a param instead."""
    return Path(path).is_file() and not _braced(path)


def _stamp(path):
    """Size and modification time of a file that cannot be an input, or None."""
    if not (_braced(path) and Path(path).is_file()):
        return None
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


@functools.cache
def _batches():
    """{(panel, batch): [row, ...]}: each patient's samples of each panel
    (immuno.batch.batch_key), with the columns gating reads. A row is a param of its
    batch's gating: editing it (or a dose group, which gating does not read) reruns
    only that batch, or nothing."""
    from immuno.batch import batch_key

    out = {}
    for r in samples.to_dict("records"):
        row = {
            "sample_id": str(r["sample_id"]),
            "patient_id": str(r["patient_id"]),
            "panel": str(r["panel"]),
            "visit_month": float(r["visit_month"]),
            "fcs_path": str(r["fcs_path"]),
        }
        if _stamp(row["fcs_path"]):  # not an input: its size and date rerun the batch
            row["stamp"] = _stamp(row["fcs_path"])
        out.setdefault((row["panel"], batch_key(row["patient_id"])), []).append(row)
    return out


def _alternatives(names):
    import re

    return "|".join(sorted(re.escape(n) for n in names)) or "(?!)"


wildcard_constraints:
    sample=r"[^/]+",
    panel=_alternatives(config["panels"]),
    batch=_alternatives({b for _, b in _batches()}),


def get_batch_rows(wildcards):
    return _batches()[(wildcards.panel, wildcards.batch)]


def get_batch_template(wildcards):
    return config["panels"][wildcards.panel]


def get_batch_fcs(wildcards):
    return sorted(
        r["fcs_path"] for r in get_batch_rows(wildcards) if _is_input(r["fcs_path"])
    )


def get_panel_fits(wildcards):
    return [
        f"results/gating/fit/{panel}/{batch}"
        for panel, batch in _batches()
        if panel == wildcards.panel
    ]


def get_pool(wildcards):
    return ancient(checkpoints.pool_panel.get(panel=wildcards.panel).output[0])


@functools.cache
def _read_pool(path, mtime_ns):
    import json

    return json.loads(Path(path).read_text())


def _pool(path):
    return _read_pool(str(path), Path(path).stat().st_mtime_ns)


def get_pool_digest(wildcards):
    """The batch's digest file, written by the panel's pool (immuno.batch.pool_panel);
    the pool itself, by date, should the digest file have been removed."""
    pool = checkpoints.pool_panel.get(panel=wildcards.panel).output[0]
    digest = Path(pool).with_suffix("") / f"{wildcards.batch}.digest"
    return str(digest) if digest.exists() else pool


def get_gated_batches(wildcards):
    """Each batch's final folder: pass 2's where the pool names a sample of it to gate
    again, else pass 1's."""
    dirs = []
    for panel in config["panels"]:
        keys = [b for p, b in _batches() if p == panel]
        if not keys:
            continue
        pool = _pool(checkpoints.pool_panel.get(panel=panel).output[0])
        for b in keys:
            step = "final" if pool["batches"].get(b, {}).get("redo") else "fit"
            dirs.append(f"results/gating/{step}/{panel}/{b}")
    return dirs


def get_sample_sheet():
    return config["samples"]


def get_templates():
    return list(config["panels"].values())


def get_fcs_files():
    return sorted(p for p in samples["fcs_path"] if _is_input(p))


def get_fcs_stamp():
    """Path, size and modification time of the FCS files that cannot be inputs (braces
    in their path), hashed: a param, so a changed file still reruns what reads it."""
    import hashlib

    digest = hashlib.sha256()
    for p in sorted(samples["fcs_path"]):
        if _stamp(p):
            digest.update(f"{p}\0{_stamp(p)}\n".encode())
    return digest.hexdigest()


def get_final_outputs():
    return [
        "results/counts.tsv",
        "results/failed_samples.tsv",
        "results/corrections.html",
        "results/stats/paired_by_group.tsv",
        "results/stats/paired_pooled.tsv",
        "results/stats/between_groups.tsv",
        "results/figures/reconstitution.png",
        "results/figures/reconstitution.pdf",
        "results/figures/cohort_qc.png",
        "results/review",
        "results/provenance.json",
        "results/provenance.html",
        "results/methods.rst",
        "results/exports/cohort.wsp",
        *expand("results/exports/{panel}.h5ad", panel=list(config["panels"])),
        *(["results/exports/gated_fcs"] if config["export"]["population"] else []),
    ]


def _summary(ok):
    """The run in a few lines at its end (Snakefile: onsuccess, onerror). After a
    successful run, the outputs of an earlier configuration or sheet are removed, so that
    results/ holds this study's only (immuno.batch.stale_outputs)."""
    from immuno.batch import remove_stale, stale_outputs
    from immuno.cohort import run_summary

    head = (
        "immuno: finished"
        if ok
        else "immuno: stopped (a job failed; see its log above)"
    )
    if ok:
        removed = remove_stale(
            stale_outputs(
                "results",
                config["panels"],
                _batches(),
                gated_fcs=bool(config["export"]["population"]),
            )
        )
        if removed:
            shown = ", ".join(str(p) for p in removed[:5])
            more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
            head += (
                f"\nremoved {len(removed)} output(s) of an earlier configuration or sheet: "
                f"{shown}{more}"
            )
    logger.info(f"{head}\n{run_summary('results')}")
