rule write_provenance:
    input:
        sheet=get_sample_sheet(),
        templates=get_templates(),
        fcs=get_fcs_files(),
        counts="results/counts.tsv",
        corrections=get_corrections(),
    output:
        report(
            "results/provenance.json",
            caption="../report/provenance_json.rst",
            category="Provenance",
        ),
    log:
        "logs/write_provenance.log",
    benchmark:
        "results/benchmarks/write_provenance.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        fcs_stamp=get_fcs_stamp(),
    script:
        "../scripts/write_provenance.py"


rule list_corrections:
    input:
        "results/gating/corrections.tsv",
    output:
        report(
            "results/corrections.html",
            caption="../report/corrections.rst",
            category="Quality control",
        ),
    log:
        "logs/list_corrections.log",
    benchmark:
        "results/benchmarks/list_corrections.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        corrections_sha=get_corrections_sha(),
    script:
        "../scripts/list_corrections.py"


rule render_provenance:
    input:
        provenance="results/provenance.json",
        counts="results/counts.tsv",
    output:
        report(
            "results/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/render_provenance.log",
    benchmark:
        "results/benchmarks/render_provenance.tsv"
    conda:
        "../../envs/immuno.yaml"
    script:
        "../scripts/render_provenance.py"


rule write_methods:
    input:
        templates=get_templates(),
    output:
        report(
            "results/methods.rst",
            caption="../report/methods.rst",
            category="Methods",
        ),
    log:
        "logs/write_methods.log",
    benchmark:
        "results/benchmarks/write_methods.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        panels=config["panels"],
        statistics=config["statistics"],
        export=config["export"],
    script:
        "../scripts/write_methods.py"


rule export_flowjo:
    input:
        sheet=get_sample_sheet(),
        gates="results/gates",
        fcs=get_fcs_files(),
    output:
        "results/exports/cohort.wsp",
    log:
        "logs/export_flowjo.log",
    benchmark:
        "results/benchmarks/export_flowjo.tsv"
    conda:
        "../../envs/immuno.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
    params:
        fcs_stamp=get_fcs_stamp(),
    script:
        "../scripts/export_flowjo.py"


rule export_anndata:
    input:
        sheet=get_sample_sheet(),
        gates="results/gates",
        memberships="results/memberships",
        template=lambda wc: config["panels"][wc.panel],
        fcs=get_fcs_files(),
    output:
        "results/exports/{panel}.h5ad",
    log:
        "logs/export_anndata/{panel}.log",
    benchmark:
        "results/benchmarks/export_anndata/{panel}.tsv"
    conda:
        "../../envs/immuno.yaml"
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
    params:
        fcs_stamp=get_fcs_stamp(),
        max_events=config["export"]["max_events_per_sample"],
    script:
        "../scripts/export_anndata.py"


rule export_gated_fcs:
    input:
        sheet=get_sample_sheet(),
        gates="results/gates",
        memberships="results/memberships",
        fcs=get_fcs_files(),
    output:
        directory("results/exports/gated_fcs"),
    log:
        "logs/export_gated_fcs.log",
    benchmark:
        "results/benchmarks/export_gated_fcs.tsv"
    conda:
        "../../envs/immuno.yaml"
    params:
        fcs_stamp=get_fcs_stamp(),
        population=config["export"]["population"],
    script:
        "../scripts/export_gated_fcs.py"
