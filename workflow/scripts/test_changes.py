"""Paired and between-group tests of the change from entry to follow-up."""

import logging
from pathlib import Path

import pandas as pd

from immuno.test import write_stats

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
cfg = snakemake.params.statistics
counts = pd.read_csv(snakemake.input[0], sep="\t", keep_default_na=False, na_values=[""])
counts["qc_flag"] = counts["qc_flag"].fillna("")
write_stats(
    counts,
    Path(snakemake.output.pooled).parent,
    cfg["tests"],
    baseline=cfg["baseline_month"],
    followup=cfg["followup_month"],
    by=cfg["group_column"],
    include_review=cfg.get("include_review", False),
)
