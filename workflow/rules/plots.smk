rule plot_reconstitution:
    input:
        counts="results/counts.tsv",
        pooled="results/stats/paired_pooled.tsv",
    output:
        png=report(
            "results/figures/reconstitution.png",
            caption="../report/reconstitution.rst",
            category="Reconstitution",
        ),
        pdf="results/figures/reconstitution.pdf",
    log:
        "logs/plot_reconstitution.log",
    conda:
        "../../envs/immuno.yaml"
    params:
        figure=config.get("figure", {}),
        statistics=config.get("statistics", {}),
    script:
        "../scripts/plot_reconstitution.py"
