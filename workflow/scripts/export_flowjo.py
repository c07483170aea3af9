"""FlowJo 10 workspace of the cohort: every gated sample with its realised gates."""

import logging

from immuno.cohort import load_sample_sheet
from immuno.export import export_flowjo, gated_samples

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
export_flowjo(gated_samples(sheet, snakemake.input.gates), snakemake.output[0])
