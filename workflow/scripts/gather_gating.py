"""The cohort's gating tables and results/gates from the batch folders."""

import logging

from immuno.batch import gather_gating
from immuno.cohort import load_sample_sheet
from immuno.corrections import load_corrections

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
gather_gating(
    snakemake.input.batches,
    sheet,
    corrections=load_corrections(snakemake.config.get("corrections")),
    counts_path=snakemake.output.counts,
    params_path=snakemake.output.params,
    failed_path=snakemake.output.failed,
    corrections_path=snakemake.output.corrections,
    checks_path=snakemake.output.checks,
    gates_dir=snakemake.output.gates,
    memberships_dir=snakemake.output.memberships,
)
