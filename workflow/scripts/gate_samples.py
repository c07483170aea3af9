"""Gate every sample that passed the input check, panel by panel (samples in parallel)."""

import logging

from immuno.cohort import gate_cohort, load_sample_sheet, load_templates
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panels = snakemake.config["panels"]
gate_cohort(
    load_sample_sheet(snakemake.input.sheet, list(panels)),
    load_templates(panels),
    read_tsv(snakemake.input.checks),
    counts_path=snakemake.output.counts,
    params_path=snakemake.output.params,
    failed_path=snakemake.output.failed,
    gates_dir=snakemake.output.gates,
    workers=snakemake.threads,
)
