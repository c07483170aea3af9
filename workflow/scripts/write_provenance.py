"""Write results/provenance.json: hashes of every input and gating file, settings, versions."""

import logging

from immuno.provenance import provenance, write_provenance

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
record = provenance(
    snakemake.config,
    snakemake.input.sheet,
    snakemake.config["panels"],
    [snakemake.input.counts],
    workflow_dir=snakemake.scriptdir,
    corrections=snakemake.config.get("corrections"),
)
write_provenance(record, snakemake.output[0])
logging.info("%d samples, %d gating files hashed", len(record["samples"]), len(record["gating"]))
