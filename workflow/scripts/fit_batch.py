"""Pass 1 of one patient's samples of one panel: input checks, automated gates (no
corrections), counts and review figures, into the batch folder."""

import logging

from immuno.batch import fit_batch

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
fit_batch(
    snakemake.params.rows,
    snakemake.wildcards.panel,
    snakemake.input.template,
    snakemake.output[0],
)
