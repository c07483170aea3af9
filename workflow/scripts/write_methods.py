"""Write results/methods.rst: the methods section, from the config and the gating files."""

import logging

from immuno.cohort import load_templates
from immuno.methods import methods_text
from immuno.util import atomic_path

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, filemode="w")
text = methods_text(snakemake.config, load_templates(snakemake.params.panels))
with atomic_path(snakemake.output[0]) as tmp:
    tmp.write_text(text, encoding="utf-8")
