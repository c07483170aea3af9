# Helpers shared by all rules: config and sample-sheet validation, and get_<thing> functions.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")


def _refuse_braces(sheet, df):
    """Snakemake reads '{x}' in an input path as a wildcard and stops the whole run at
    parse time; name the path instead (the sheet, a template or one sample's file)."""
    from immuno.errors import SampleSheetError

    hint = "Snakemake reads { } in a path as a wildcard: rename the folder or file"
    paths = [
        ("samples", str(sheet), None),
        *(("panels", p, None) for p in config["panels"].values()),
    ]
    paths += [("fcs_path", p, sid) for sid, p in zip(df["sample_id"], df["fcs_path"])]
    for field, path, sample in paths:
        if "{" in path or "}" in path:
            where = (
                "the sample's FCS path" if sample else f"the config's '{field}' path"
            )
            raise SampleSheetError(
                f"{where} {path!r} holds a brace",
                file=str(sheet) if sample else None,
                sample=sample,
                field=field,
                hint=hint,
            )


def _load_samples():
    """Read and validate the sample sheet; create the demo cohort if it is what is asked for."""
    from immuno.cohort import load_sample_sheet
    from immuno.errors import ImmunoError

    sheet = Path(config["samples"])
    demo = config.get("demo", {})
    demo_sheet = Path(demo.get("out", "data/demo")) / "samples.tsv"
    if not sheet.exists() and sheet.resolve() == demo_sheet.resolve():
        from immuno.simulate import simulate_cohort

        logger.info(f"Creating the demo cohort in {demo_sheet.parent} (once).")
        simulate_cohort(
            demo_sheet.parent,
            seed=demo.get("seed", 1),
            events=demo.get("events", 20000),
        )
    try:
        df = load_sample_sheet(sheet, list(config["panels"]))
        _refuse_braces(sheet, df)
    except ImmunoError as exc:
        raise WorkflowError(f"{type(exc).__name__}: {exc}") from None
    validate(df, "../schemas/samples.schema.yaml")
    return df


samples = _load_samples()


wildcard_constraints:
    sample=r"[^/]+",


def get_sample_sheet():
    return config["samples"]


def get_templates():
    return list(config["panels"].values())


def get_fcs_files():
    # Missing files are not inputs: check_inputs reports them per sample
    # (results/failed_samples.tsv) and the other samples go on.
    return sorted(p for p in samples["fcs_path"] if Path(p).is_file())


def get_final_outputs():
    return [
        "results/counts.tsv",
        "results/failed_samples.tsv",
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
