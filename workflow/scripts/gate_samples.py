"""Gate every sample that passed the input check, panel by panel (samples in parallel)."""

import logging

import pandas as pd

from immuno.cohort import gate_cohort, load_sample_sheet, load_templates

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panels = snakemake.config["panels"]
gate_cohort(
    load_sample_sheet(snakemake.input.sheet, list(panels)),
    load_templates(panels),
    pd.read_csv(snakemake.input.checks, sep="\t", keep_default_na=False),
    counts_path=snakemake.output.counts,
    params_path=snakemake.output.params,
    failed_path=snakemake.output.failed,
    gates_dir=snakemake.output.gates,
    workers=snakemake.threads,
)
