"""Write results/corrections.html: every applied gate correction, for the report."""

import logging

from immuno.corrections import load_corrections
from immuno.review import write_corrections_html
from immuno.util import read_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
corrections = load_corrections(snakemake.config.get("corrections"))
table = read_tsv(snakemake.input[0], na_values={"percent_before": [""], "percent_after": [""]})
write_corrections_html(
    table,
    snakemake.output[0],
    source=corrections.path,
    sha256=corrections.sha256,
    superseded=corrections.superseded(),
)
logging.info("%d corrections listed", len(table))
