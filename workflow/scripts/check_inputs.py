"""Check every FCS file against its panel (HEADER and TEXT only) before gating."""

import logging

from immuno.cohort import check_inputs, load_sample_sheet, load_templates
from immuno.util import write_tsv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
panels = snakemake.config["panels"]
sheet = load_sample_sheet(snakemake.input.sheet, list(panels))
checks = check_inputs(sheet, load_templates(panels))
write_tsv(checks, snakemake.output[0])
logging.info("%d of %d files passed", int((checks["status"] == "ok").sum()), len(checks))
