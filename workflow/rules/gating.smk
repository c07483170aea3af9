# Gating in jobs per patient and panel (immuno.batch): pass 1 of each batch -> the panel's
# pool (a checkpoint: which samples borrow or carry corrections) -> pass 2 of the batches
# that have such a sample -> the cohort's tables. Adding patients adds batches; the other
# batches rerun only when what their pass 2 borrows changes (the pool's digest of it).


rule fit_batch:
    input:
        template=get_batch_template,
        fcs=get_batch_fcs,
    output:
        directory("results/gating/fit/{panel}/{batch}"),
    log:
        "logs/fit_batch/{panel}/{batch}.log",
    benchmark:
        "results/benchmarks/fit_batch/{panel}/{batch}.tsv"
    conda:
        "../../envs/immuno.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        rows=get_batch_rows,
    script:
        "../scripts/fit_batch.py"


checkpoint pool_panel:
    input:
        fits=get_panel_fits,
        template=get_batch_template,
        corrections=get_corrections(),
    output:
        "results/gating/pool/{panel}.json",
    log:
        "logs/pool_panel/{panel}.log",
    benchmark:
        "results/benchmarks/pool_panel/{panel}.tsv"
    # quick and single-process: on a cluster it runs where snakemake runs, not queued
    localrule: True
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/pool_panel.py"


rule finish_batch:
    input:
        fit="results/gating/fit/{panel}/{batch}",
        # the pool and the corrections file (config) are read, not inputs by date: the
        # batch's digest of them, rewritten only when it changes, is what reruns this job
        pool=get_pool,
        digest=get_pool_digest,
        template=get_batch_template,
    output:
        directory("results/gating/final/{panel}/{batch}"),
    log:
        "logs/finish_batch/{panel}/{batch}.log",
    benchmark:
        "results/benchmarks/finish_batch/{panel}/{batch}.tsv"
    conda:
        "../../envs/immuno.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    script:
        "../scripts/finish_batch.py"


rule gather_gating:
    input:
        batches=get_gated_batches,
        sheet=get_sample_sheet(),
        corrections=get_corrections(),
    output:
        counts="results/gating/gating_counts.tsv",
        params="results/gating/gate_params.tsv",
        corrections="results/gating/corrections.tsv",
        checks="results/qc/input_check.tsv",
        failed=report(
            "results/failed_samples.tsv",
            caption="../report/failed_samples.rst",
            category="Quality control",
        ),
        gates=directory("results/gates"),
        memberships=directory("results/memberships"),
    log:
        "logs/gather_gating.log",
    benchmark:
        "results/benchmarks/gather_gating.tsv"
    localrule: True
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/gather_gating.py"


rule count_cohort:
    input:
        gating="results/gating/gating_counts.tsv",
        sheet=get_sample_sheet(),
    output:
        report(
            "results/counts.tsv",
            caption="../report/counts.rst",
            category="Counts",
        ),
    log:
        "logs/count_cohort.log",
    benchmark:
        "results/benchmarks/count_cohort.tsv"
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/count_cohort.py"
