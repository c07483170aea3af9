"""Gate review figures: every gate of every sample over its parent's density."""

import logging

from immuno.cohort import load_sample_sheet, review_cohort
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
sheet = load_sample_sheet(snakemake.input.sheet, list(snakemake.config["panels"]))
counts = read_tsv(snakemake.input.counts)
missing = review_cohort(
    sheet, counts, snakemake.input.gates, snakemake.output[0], workers=snakemake.threads
)
logging.info("%d samples without a review figure: %s", len(missing), ", ".join(missing))
