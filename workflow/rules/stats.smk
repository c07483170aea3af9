rule test_changes:
    input:
        "results/counts.tsv",
    output:
        by_group=report(
            "results/stats/paired_by_group.tsv",
            caption="../report/stats.rst",
            category="Statistical tests",
        ),
        pooled=report(
            "results/stats/paired_pooled.tsv",
            caption="../report/stats.rst",
            category="Statistical tests",
        ),
        between=report(
            "results/stats/between_groups.tsv",
            caption="../report/stats.rst",
            category="Statistical tests",
        ),
    log:
        "logs/test_changes.log",
    benchmark:
        "results/benchmarks/test_changes.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        statistics=config.get("statistics", {}),
    script:
        "../scripts/test_changes.py"
