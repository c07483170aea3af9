# immuno: FCS files -> gated counts -> statistics -> reconstitution figure -> report.
# Run: snakemake --cores all   (study settings in config.yaml, compute settings in profiles/)
from snakemake.utils import min_version

min_version("9.0")


# The demo's config, unless the command line names the study's own (--configfile): a study's
# config replaces it, so none of the demo's panels or sheet leak into a study. --config k=v
# still overrides single keys of either.
if not workflow.overwrite_configfiles:

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


onsuccess:
    _summary(True)


onerror:
    _summary(False)
