"""AnnData (.h5ad) of one panel: events x markers, study columns, population memberships."""

import logging

from immuno.autogate import load_gating
from immuno.cohort import load_sample_sheet
from immuno.export import export_anndata, gated_samples

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panel = snakemake.wildcards.panel
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
export_anndata(
    gated_samples(
        sheet[sheet["panel"] == panel], snakemake.input.gates, snakemake.input.memberships
    ),
    load_gating(snakemake.input.template, name=panel),
    snakemake.output[0],
    max_events_per_sample=snakemake.params.max_events,
)
