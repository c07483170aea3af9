rule check_inputs:
    input:
        sheet=get_sample_sheet(),
        templates=get_templates(),
    output:
        "results/qc/input_check.tsv",
    log:
        "logs/check_inputs.log",
    benchmark:
        "results/benchmarks/check_inputs.tsv"
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/check_inputs.py"


rule gate_samples:
    input:
        sheet=get_sample_sheet(),
        templates=get_templates(),
        checks="results/qc/input_check.tsv",
        fcs=get_fcs_files(),
        corrections=get_corrections(),
    output:
        counts="results/gating/gating_counts.tsv",
        params="results/gating/gate_params.tsv",
        corrections="results/gating/corrections.tsv",
        failed=report(
            "results/failed_samples.tsv",
            caption="../report/failed_samples.rst",
            category="Quality control",
        ),
        gates=directory("results/gates"),
    log:
        "logs/gate_samples.log",
    benchmark:
        "results/benchmarks/gate_samples.tsv"
    conda:
        "../../envs/immuno.yaml"
    threads: 64
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        fcs_stamp=get_fcs_stamp(),
    script:
        "../scripts/gate_samples.py"


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
