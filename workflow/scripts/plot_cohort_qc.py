"""Cohort QC view: every fitted gate number across samples, outliers marked."""

import logging

from immuno.plot import cohort_qc_figure, save_figure
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
params = read_tsv(snakemake.input[0], na_values=[""])
save_figure(cohort_qc_figure(params), snakemake.output[0], dpi=150, palette=256)
