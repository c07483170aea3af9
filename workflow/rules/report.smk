rule write_provenance:
    input:
        sheet=get_sample_sheet(),
        templates=get_templates(),
        fcs=get_fcs_files(),
        counts="results/counts.tsv",
    output:
        "results/provenance.json",
    log:
        "logs/write_provenance.log",
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/write_provenance.py"
