# immuno: FCS files -> gated counts -> statistics -> reconstitution figure -> report.
# Run: snakemake --cores all   (study settings in config.yaml, compute settings in profiles/)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gating.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
