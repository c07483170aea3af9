"""Pass 2 of a batch's samples that borrow gates or carry corrections; the others'
files are linked from pass 1."""

import logging

from immuno.batch import finish_batch

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
finish_batch(
    snakemake.input.fit,
    snakemake.wildcards.panel,
    snakemake.input.template,
    snakemake.input.pool,
    snakemake.config.get("corrections"),
    snakemake.output[0],
)
