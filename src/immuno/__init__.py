"""immuno: flow-cytometry immunophenotyping, from FCS files to counts, statistics and figures.

Modules, one per verb: ``read`` (FCS files), ``compensate``, ``transform``,
``gate`` (gate shapes and the gating engine), ``autogate`` (data-driven gates),
``count`` (tidy counts), ``test`` (statistical tests), ``plot`` (figures);
plus ``panel`` (marker to channel resolution), ``gatingml`` (Gating-ML 2.0 in
and out), ``simulate`` (demo cohort) and ``write`` (FCS writing).
Heavy modules are imported lazily: ``import immuno`` stays cheap.
"""

__version__ = "0.1.0"
