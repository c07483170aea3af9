"""Gate every sample that passed the input check, panel by panel (samples in parallel),
with the reviewers' corrections as the final word."""

import logging

from immuno.cohort import gate_cohort, load_sample_sheet, load_templates
from immuno.corrections import load_corrections
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panels = snakemake.config["panels"]
sheet = load_sample_sheet(snakemake.input.sheet, list(panels))
templates = load_templates(panels)
corrections = load_corrections(snakemake.config.get("corrections"))
corrections.check(sheet, templates)
gate_cohort(
    sheet,
    templates,
    read_tsv(snakemake.input.checks),
    counts_path=snakemake.output.counts,
    params_path=snakemake.output.params,
    failed_path=snakemake.output.failed,
    gates_dir=snakemake.output.gates,
    workers=snakemake.threads,
    corrections=corrections,
    corrections_path=snakemake.output.corrections,
)
