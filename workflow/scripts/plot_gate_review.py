"""Gate review figures: every gate of every sample over its parent's density."""

import logging

from immuno.cohort import load_sample_sheet, load_templates, review_cohort
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panels = snakemake.config["panels"]
sheet = load_sample_sheet(snakemake.input.sheet, list(panels))
counts = read_tsv(snakemake.input.counts)
missing = review_cohort(
    sheet,
    counts,
    snakemake.input.gates,
    snakemake.output[0],
    workers=snakemake.threads,
    templates=load_templates(panels),
)
logging.info("%d samples without a review figure: %s", len(missing), ", ".join(missing))
