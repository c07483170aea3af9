"""Paired and between-group tests of the change from entry to follow-up."""

import logging
from pathlib import Path

from immuno.test import write_stats
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
cfg = snakemake.params.statistics
counts = read_tsv(snakemake.input[0], na_values=[""])
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
