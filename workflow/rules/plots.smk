rule plot_reconstitution:
    input:
        counts="results/counts.tsv",
        pooled="results/stats/paired_pooled.tsv",
        by_group="results/stats/paired_by_group.tsv",
    output:
        png=report(
            "results/figures/reconstitution.png",
            caption="../report/reconstitution.rst",
            category="Reconstitution",
        ),
        pdf="results/figures/reconstitution.pdf",
    log:
        "logs/plot_reconstitution.log",
    benchmark:
        "results/benchmarks/plot_reconstitution.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        figure=config.get("figure", {}),
        statistics=config.get("statistics", {}),
    script:
        "../scripts/plot_reconstitution.py"


rule plot_gate_review:
    input:
        batches=get_gated_batches,
        sheet=get_sample_sheet(),
        counts="results/counts.tsv",
    output:
        # Linked from the report (workflow.rst), not embedded: one page for the cohort.
        directory("results/review"),
    log:
        "logs/plot_gate_review.log",
    benchmark:
        "results/benchmarks/plot_gate_review.tsv"
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/plot_gate_review.py"


rule plot_cohort_qc:
    input:
        "results/gating/gate_params.tsv",
    output:
        report(
            "results/figures/cohort_qc.png",
            caption="../report/cohort_qc.rst",
            category="Quality control",
        ),
    log:
        "logs/plot_cohort_qc.log",
    benchmark:
        "results/benchmarks/plot_cohort_qc.tsv"
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/plot_cohort_qc.py"
