"""The gate review page: every sample's review figure (drawn by its gating job) linked
into results/review, and the page over them."""

import logging

from immuno.batch import gather_review
from immuno.cohort import load_sample_sheet
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
gather_review(snakemake.input.batches, sheet, read_tsv(snakemake.input.counts), snakemake.output[0])
