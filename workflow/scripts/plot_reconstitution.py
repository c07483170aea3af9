"""Fig. 5 style reconstitution figure (PNG and PDF)."""

import logging

import pandas as pd

from immuno.plot import reconstitution_figure, save_figure
from immuno.test import keep_reviewed
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
fig_cfg, stats_cfg = snakemake.params.figure, snakemake.params.statistics
counts = read_tsv(snakemake.input.counts, na_values=[""])
counts["qc_flag"] = counts["qc_flag"].fillna("")
if stats_cfg.get("include_review", False):
    counts = keep_reviewed(counts)
# pooled p over the bracket, each dose group's under the boxes
stats = pd.concat(
    [read_tsv(p, na_values=[""]) for p in (snakemake.input.pooled, snakemake.input.by_group)],
    ignore_index=True,
)
fig = reconstitution_figure(
    counts,
    populations=fig_cfg["absolute"],
    subsets=[(s["population"], s["metric"], s["label"]) for s in fig_cfg["subsets"]],
    baseline=stats_cfg["baseline_month"],
    followup=stats_cfg["followup_month"],
    stats=stats,
    by=stats_cfg["group_column"],
)
# a 256-colour palette: the PNG at a third of the size, no visible loss (the PDF is vector)
save_figure(fig, [snakemake.output.png, snakemake.output.pdf], palette=256)
