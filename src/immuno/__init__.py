"""immuno: flow-cytometry immunophenotyping, from FCS files to counts, statistics and figures.

The public API is the names below, each loaded on first use (``import immuno`` imports
nothing heavy, so a worker that needs only the reader stays cheap)::

    import immuno

    fcs = immuno.read_fcs("P01_m0_T.fcs")
    gating = immuno.gate_one(fcs, immuno.load_template("gates/t_cell.yaml"), sample_id="P01_m0_T")
    gating.table                     # counts, percent of parent, qc_flag, qc_note

Modules, one per step: ``read`` and ``write`` (FCS files), ``compensate``, ``transform``,
``gate`` (gate shapes and the gating engine), ``autogate`` (data-driven gates), ``gating``
(any gating file applied to a file), ``gatingml`` and ``flowjo`` (Gating-ML 2.0 and FlowJo
10 in and out), ``count`` (tidy counts), ``test`` (statistical tests), ``plot`` (figures),
``export`` (FlowJo, AnnData and gated-FCS exports), ``cohort`` and ``batch`` (the
workflow's steps), ``simulate`` (demo cohorts), ``errors``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API = {
    "read_fcs": "read",
    "read_text": "read",
    "FCSData": "read",
    "write_fcs": "write",
    "load_template": "autogate",
    "load_gating": "autogate",
    "gate_one": "autogate",
    "gate_template": "autogate",
    "Template": "autogate",
    "SampleGating": "autogate",
    "apply_gates_to_file": "gating",
    "GatingStrategy": "gate",
    "load_gatingml": "gatingml",
    "write_gatingml": "gatingml",
    "load_flowjo": "flowjo",
    "load_sample_sheet": "cohort",
    "cohort_table": "count",
    "export_flowjo": "export",
    "export_anndata": "export",
    "export_gated_fcs": "export",
    "load_corrections": "corrections",
    "simulate_cohort": "simulate",
    "ImmunoError": "errors",
    "FCSError": "errors",
    "PanelError": "errors",
    "GatingError": "errors",
    "GatingFileError": "errors",
    "ConfigError": "errors",
    "SampleSheetError": "errors",
    "OutputError": "errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'immuno' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
