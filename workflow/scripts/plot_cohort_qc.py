"""Cohort QC view: every fitted gate number across samples, outliers marked."""

import logging

import pandas as pd

from immuno.plot import cohort_qc_figure, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
params = pd.read_csv(snakemake.input[0], sep="\t", dtype={"sample_id": str})
save_figure(cohort_qc_figure(params), snakemake.output[0], dpi=150)
