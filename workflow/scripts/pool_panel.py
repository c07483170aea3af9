"""Pool a panel's pass-1 fits: the outlier reference, what each sample to gate again
borrows, and each batch's digest of it."""

import logging

from immuno.batch import pool_panel

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
pool_panel(
    snakemake.input.fits,
    snakemake.wildcards.panel,
    snakemake.input.template,
    snakemake.config.get("corrections"),
    snakemake.output[0],
)
