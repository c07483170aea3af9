"""Write results/provenance.html: provenance.json made readable for the report."""

import logging

from immuno.provenance import counts_per_sample, read_provenance, write_provenance_html

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
record = read_provenance(snakemake.input.provenance)
counts = counts_per_sample(snakemake.input.counts)
write_provenance_html(record, snakemake.output[0], counts=counts, source=snakemake.input.provenance)
logging.info("%d samples, %d with rows in counts.tsv", len(record["samples"]), len(counts))
