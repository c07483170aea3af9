"""Join gating counts with the sample sheet: the tidy cohort table results/counts.tsv."""

import logging

from immuno.cohort import load_sample_sheet
from immuno.count import cohort_table
from immuno.util import read_tsv, write_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
gating = read_tsv(snakemake.input.gating, na_values={"percent_of_parent": [""]})
sheet = load_sample_sheet(
    snakemake.input.sheet, list(snakemake.config["panels"]), check_files=False
)
table = cohort_table(gating, sheet, lymphocytes=snakemake.config["lymphocyte_population"])
write_tsv(table, snakemake.output[0])
