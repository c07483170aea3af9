"""FCS 3.1 files of one population's events, one per sample that has it."""

import logging

from immuno.cohort import load_sample_sheet
from immuno.export import export_gated_cohort, gated_samples

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
export_gated_cohort(
    gated_samples(sheet, snakemake.input.gates, snakemake.input.memberships),
    snakemake.params.population,
    snakemake.output[0],
)
