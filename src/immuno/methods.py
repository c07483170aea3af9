"""A methods section written from the configuration and the gating files themselves.

Calling convention: ``methods_text(config, templates) -> str`` (reStructuredText).
``config`` is the workflow configuration (after schema defaults); ``templates`` maps
each panel to its gating: a :class:`~immuno.autogate.Template`, a
:class:`~immuno.autogate.StaticGating` (Gating-ML or FlowJo file) or the path of
either, as :func:`immuno.cohort.load_templates` returns them.

The text says what was done, with every number the analysis used: the panels with
their markers, channels and aliases; the compensation source; each transform with
its parameters; each population's gating method with its parameters, the units and
space of its thresholds, its guard rails and fallback chain; how counts and
absolute counts are derived; the statistical tests configured under
``statistics``; the exports; and the software versions. Nothing is paraphrased
from elsewhere, so the text cannot drift from the run it describes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["methods_text", "METHOD_NAMES"]

#: One-line name of each gating method, as the text uses it.
METHOD_NAMES = {
    "mindensity": "density valley (openCyto mindensity)",
    "tailcut": "tail cut beyond the negative peak",
    "projection": "diagonal projection cut",
    "mixture": "two-dimensional Gaussian mixture",
    "singlets": "singlet ratio (height/area)",
    "time": "flow-rate stability (time gate)",
    "range": "fixed range",
    "rectangle": "fixed rectangle",
    "polygon": "fixed polygon",
    "ellipse": "fixed ellipse",
    "boolean": "boolean combination",
}

_METRICS = {
    "percent_of_parent": "percent of the parent population",
    "percent_of_lymphocytes": "percent of lymphocytes",
    "absolute_count": "absolute count (x10^9 cells/L)",
}


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _fmt(v) -> str:
    """A number as the text shows it (shortest exact form); lists and dicts inline."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}" if float(f"{v:g}") == v else repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if v is None:
        return "open"
    return str(v)


def _transform_text(tid: str, t) -> str:
    spec = t.spec()
    kind = spec.pop("type")
    params = ", ".join(f"{k} = {_fmt(v)}" for k, v in spec.items())
    what = {
        "logicle": "logicle (biexponential; Parks, Roederer and Moore 2006), Gating-ML 2.0 "
        "parameterisation: T top of scale (channel units), W linear width (decades), M decades, "
        "A extra negative decades; scale 0..1 with 1 at T",
        "asinh": "arcsinh (Gating-ML 2.0 fasinh): T top of scale (channel units), M decades, "
        "A extra negative decades; scale 0..1 with 1 at T",
        "linear": "linear, y = (x + A) / (T + A): T top of scale (channel units)",
        "log": "logarithmic (Gating-ML 2.0 flog), y = log10(x / T) / M + 1",
        "hyperlog": "hyperlog (Bagwell 2005), Gating-ML 2.0 parameterisation",
    }.get(kind, kind)
    return f"``{tid}``: {what}; {params}."


def _units(template, spec, dim: str) -> str:
    """Units and space of a gate coordinate on ``dim``."""
    m = template.panel.marker(dim)
    if spec.space == "raw":
        return "raw channel units"
    comp = "compensated " if m.compensated else ""
    if spec.space == "compensated" or not m.transform:
        return f"{comp}channel units"
    kind = template.panel.transforms[m.transform].spec()["type"]
    of = " of compensated values" if m.compensated else ""
    return f"{kind} scale ``{m.transform}``{of}"


def _side(sel: str) -> str:
    return "positive (at or above the threshold)" if sel == "+" else "negative (below it)"


def _range_text(rng) -> str:
    if isinstance(rng, dict) and "quantile" in rng:
        a, b = rng["quantile"]
        return f"the parent's {_fmt(100 * float(a))}th to {_fmt(100 * float(b))}th percentiles"
    return _fmt(rng)


def _method_text(template, spec) -> str:
    """What a population's method does, with its parameters and units."""
    p = dict(spec.params)
    dims = spec.dims
    units = "; ".join(f"{d}: {_units(template, spec, d)}" for d in dims)
    sel = p.get("select", ["+"] * len(dims))
    sel = [sel] if isinstance(sel, str) else list(sel)
    sides = ", ".join(f"{d} {_side(s)}" for d, s in zip(dims, sel, strict=False))
    m = spec.method
    if m == "mindensity":
        where = f", searched within {_range_text(p.get('range'))}" if p.get("range") else ""
        which = "lowest" if p.get("valley") == "first" else "deepest"
        shoulder = (
            "; a dimension with one peak and a shoulder is cut where the two components of a "
            "two-Gaussian fit (scikit-learn) are equally dense, when two components beat one "
            "by 10 BIC, lie at least 2 SDs apart and the lighter one is on the side the "
            "gate rejects"
            if p.get("shoulder", True)
            else ""
        )
        within = "".join(
            f"; {d} fitted on the events on the kept side of the {o} cut"
            for d, o in (p.get("within") or {}).items()
        )
        return (
            f"the {which} valley between two neighbouring peaks of the parent's density "
            "(Gaussian-smoothed 512-bin histogram, Silverman bandwidth x "
            f"{_fmt(float(p.get('adjust') or 1.0))}; peaks under 2% of the highest ignored, and "
            f"valleys whose floor is above {_fmt(float(p.get('max_valley', 0.8)))} of the "
            "lower flanking peak, ripples rather than separations)"
            f"{where}, per dimension{shoulder}{within}; keeps {sides}. Coordinates: {units}."
        )
    if m == "tailcut":
        return (
            f"a cut k = {_fmt(float(p.get('k') or 3.0))} robust SDs above the main (negative) "
            "peak (the mode of the density), the SD being the root-mean-square distance to the "
            "mode of the events below it, so a bright tail does not widen it; keeps "
            f"{sides}. Coordinates: {units}."
        )
    if m == "projection":
        w = p.get("weights", [1, -1])
        return (
            f"the density valley of z = w . (x, y) with w = {_fmt(w)} (normalised to unit "
            f"length) over ({', '.join(dims)}), searched within {_range_text(p.get('range'))}, "
            f"bandwidth x {_fmt(float(p.get('adjust', 1.0)))}; keeps z "
            f"{'>=' if p.get('select', '+') == '+' else '<'} the threshold, realised as a "
            f"half-plane polygon. Coordinates: {units}."
        )
    if m == "mixture":
        pick = p.get("pick")
        chosen = (
            f"the component nearest {_fmt(p['target'])}"
            if "target" in p
            else "the component chosen by "
            + ", then ".join(f"{k} {v}" for r in (pick or []) for k, v in r.items())
            + " of the component means"
        )
        comp = p.get("components", [2, 5])
        comp = [comp] if isinstance(comp, int) else list(comp)
        number = (
            f"{comp[0]} components"
            if comp[0] == comp[-1]
            else f"{comp[0]} to {comp[-1]} components, the number chosen by BIC"
        )
        return (
            f"a Gaussian mixture of {number} (scikit-learn, full covariances, fitted on "
            f"robustly standardised values from {int(p.get('n_init', 2))} k-means++ starts; "
            f"random_state {int(p.get('random_state', 0))}) to at most "
            f"{int(p.get('max_events', 4000))} events of the parent; {chosen}, among components "
            f"weighing at least {_fmt(float(p.get('min_weight', 0.02)))}, merged with the "
            "components that form one mode with it (no density valley between the means); "
            "realised as "
            + (
                "the ellipse"
                if p.get("shape", "polygon") == "ellipse"
                else f"a {int(p.get('vertices', 128))}-vertex polygon on the ellipse"
            )
            + f" holding {_fmt(float(p.get('coverage', 0.99)))} of that Gaussian "
            "(chi-square quantile, 2 degrees of freedom), each vertex pulled in to where the "
            "cluster stops being the likelier source of an event (posterior 0.5), so the gate "
            f"never reaches another cluster's centre. Coordinates: {units}."
        )
    if m == "singlets":
        return (
            f"the ratio {dims[1]}/{dims[0]} of each event with {dims[0]} above "
            + (
                _fmt(float(p["min_area"]))
                if p.get("min_area") is not None
                else "a tenth of the median"
            )
            + ": the cut is median - k MAD (k = "
            f"{_fmt(float(p.get('k', 4.0)))}, MAD x 1.4826), raised to the density valley "
            "between the singlet and doublet ratio peaks when there is one between median - 10 "
            f"MAD and median - 2 MAD; realised as the polygon {dims[1]} >= ratio x {dims[0]}. "
            f"Coordinates: {units}."
        )
    if m == "time":
        bins = f"{int(p['bins'])} bins" if p.get("bins") else "about 150 events per bin"
        return (
            f"the acquisition binned in time ({bins}); per bin the event rate and the median "
            "of every scatter and fluorescence channel; bins departing from the file's "
            f"robust centre by more than k = {_fmt(float(p.get('k', 5.0)))} robust SDs, or "
            "following a gap in time, are removed as segments, their edges refined to the "
            "event, and the steady events before and after are kept (a range, or a polygon "
            "on time and a scatter channel holding every kept time interval). Removing more "
            f"than {_fmt(100 * float(p.get('review_above', 0.10)))}% of the events flags the "
            f"file for review. Coordinates: {units}. Not borrowed across samples."
        )
    if m == "boolean":
        ops = [
            o.lstrip("!") + (" (complement)" if o.startswith("!") else "")
            for o in p.get("operands", [])
        ]
        return f"the boolean {p.get('op', 'and')} of {', '.join(ops)}."
    shape = ", ".join(f"{k} = {_fmt(v)}" for k, v in p.items())
    return f"a fixed {m} ({shape}). Coordinates: {units}."


def _guard_text(spec) -> str:
    parts = []
    if spec.min_events:
        parts.append(f"at least {spec.min_events} parent events")
    for dim, (lo, hi) in spec.threshold_range.items():
        parts.append(f"fitted {dim} within [{_fmt(lo)}, {_fmt(hi)}]")
    if spec.frequency:
        lo, hi = spec.frequency
        parts.append(f"{_fmt(lo)}-{_fmt(hi)}% of the parent")
    guard = "Guard rails: " + "; ".join(parts) + "." if parts else "No guard rails."
    if spec.fallback:
        names = {
            "patient": "the median gate of the same patient's other accepted samples",
            "cohort": "the median gate of the cohort",
            "default": f"the template default {_fmt(spec.default)}",
        }
        chain = ", then ".join(names[f] for f in spec.fallback)
        guard += f" Fallback when the fit is unusable: {chain}."
    elif spec.method not in ("range", "rectangle", "polygon", "ellipse", "boolean"):
        guard += " No fallback: an unusable fit leaves the population empty, flagged fail."
    if spec.optional:
        guard += (
            " Optional: in a file that lacks one of its dimensions it is skipped and its "
            "children are gated on its parent (noted optional_skipped)."
        )
    return guard


def _template_section(panel: str, template) -> list[str]:
    out = [_heading(f"Panel {panel}", "~")]
    src = Path(template.source).name if template.source else "(in memory)"
    desc = f" {template.description.strip()}." if template.description else ""
    out.append(
        f"Data-driven template ``{src}`` (name {template.name}, SHA-256 "
        f"``{template.sha256[:16]}...``).{desc}\n"
    )
    pnl = template.panel
    markers = [m for m in pnl.markers.values() if not m.channel]
    channels = [m for m in pnl.markers.values() if m.channel]
    out.append(
        "Markers, found in each file through its ``$PnS`` stain names (case, spaces and "
        "punctuation ignored; a channel may be pinned):\n"
    )
    for m in markers:
        alias = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        tr = f"transform ``{m.transform}``" if m.transform else "no transform"
        comp = "compensated" if m.compensated else "not compensated"
        out.append(f"- {m.name}{alias}: {comp}, {tr}.")
    out.append("")
    if channels:
        out.append("Channels, found by ``$PnN`` and never compensated:\n")
        for m in channels:
            tr = f"transform ``{m.transform}``" if m.transform else "raw channel units"
            pin = f" (channel {m.channel})" if m.channel != m.name else ""
            out.append(f"- {m.name}{pin}: {tr}.")
        out.append("")
    comp = (
        "each file's own acquisition-defined spillover matrix (``$SPILLOVER``/``$SPILL`` "
        "keyword), inverted and applied in float64 to the detectors it names"
        if pnl.compensation == "FCS"
        else "none (the template's ``compensation: none``: data already compensated, or "
        "no spillover)"
        if pnl.compensation in ("uncompensated", "", None)
        else f"the spillover matrix ``{pnl.compensation}``"
    )
    out.append(f"Compensation: {comp}.\n")
    out.append("Transforms (every threshold on a transformed marker is on this scale):\n")
    for tid, t in pnl.transforms.items():
        out.append(f"- {_transform_text(tid, t)}")
    out.append("")
    out.append("Gating hierarchy, in order (each gate is fitted to its parent's events):\n")
    for i, spec in enumerate(template.populations, start=1):
        parent = "all events" if spec.parent in (None, "root") else f"``{spec.parent}``"
        desc = f", {' '.join(spec.description.split())}" if spec.description else ""
        out.append(
            f"{i}. ``{spec.name}``{desc}. Parent: {parent}; dimensions: "
            f"{', '.join(spec.dims) or '(none)'}. Method ``{spec.method}``, "
            f"{METHOD_NAMES.get(spec.method, spec.method)}: {_method_text(template, spec)} "
            f"{_guard_text(spec)}"
        )
        out.append("")
    out.append(
        "Gating runs in two passes: every sample is first fitted on its own; samples whose "
        "fit was unusable are gated again with the borrowed gate, so their child populations "
        "are fitted on the corrected parent. Every fitted number further than 4 robust SDs "
        "(MAD x 1.4826) from the cohort median is flagged ``cohort_outlier`` (at least 8 "
        "samples). Sibling gates with the same parent, dimension and parameters share one "
        "threshold.\n"
    )
    return out


def _static_section(panel: str, gating) -> list[str]:
    out = [_heading(f"Panel {panel}", "~")]
    kind = "Gating-ML 2.0 file" if gating.kind == "gatingml" else "FlowJo 10 workspace"
    out.append(
        f"Fixed gates from the {kind} ``{Path(gating.source).name}`` (SHA-256 "
        f"``{gating.sha256[:16]}...``), applied unchanged to every sample (no fitting, no "
        "borrowing); compensation and transforms as the file defines them.\n"
    )
    try:
        if gating.kind == "gatingml":
            from .gatingml import load_gatingml

            strategy = load_gatingml(gating.source)
        else:
            from .flowjo import load_flowjo, workspace_samples

            strategy = load_flowjo(gating.source, sample=workspace_samples(gating.source)[0])
    except Exception as exc:  # the text must not fail the run: say what is missing
        out.append(f"(The gates could not be listed: {exc}.)\n")
        return out
    for i, g in enumerate(strategy.gates.values(), start=1):
        parent = "all events" if g.parent is None else f"``{g.parent}``"
        dims = ", ".join(d.label() for d in g.dims) or "(none)"
        out.append(f"{i}. ``{g.id}``: {g.describe()} on {dims}; parent {parent}.")
    out.append("")
    return out


def _statistics_section(config: Mapping) -> list[str]:
    st = dict(config.get("statistics") or {})
    group = st.get("group_column", "dose_group")
    base = _fmt(float(st.get("baseline_month", 0)))
    follow = _fmt(float(st.get("followup_month", 4.5)))
    tests = list(st.get("tests") or [])
    out = [_heading("Statistical analysis", "-")]
    out.append(
        f"Values at month {base} (entry) and month {follow} were compared within patients "
        f"with the two-sided Wilcoxon signed-rank test, within each {group} and pooled; the "
        f"per-patient change (month {follow} minus month {base}) was compared between "
        f"{group} groups with the two-sided Mann-Whitney U test (every pair of groups when "
        "there are more than two). Patients missing either visit are excluded and counted; "
        + (
            "values flagged for review (a ``qc_flag`` other than ``corrected``, a gate a "
            "reviewer set: the population's gate or one above it needed review) were kept, "
            "as the configuration asks (``statistics.include_review``); values flagged "
            "``fail`` or excluded by a reviewer were excluded. "
            if st.get("include_review")
            else "values flagged for review (a ``qc_flag`` other than ``corrected``, a gate a "
            "reviewer set: the population's gate or one above it needed review, could not "
            "be placed, or a reviewer excluded it) were excluded before testing and counted "
            "(``n_qc_excluded``). "
        )
        + "The p-value "
        "is exact when there are no ties (or zero differences) and n <= 50, an exhaustive "
        "permutation p-value when there are ties and at most 2^16 arrangements, and otherwise "
        "asymptotic (normal, tie- and continuity-corrected); each result names its method. "
        "p-values are adjusted across the populations tested (Benjamini-Hochberg). Medians "
        "and quartiles describe each visit.\n"
    )
    if tests:
        out.append("Populations and metrics tested:\n")
        for t in tests:
            metric = t.get("metric", "")
            out.append(f"- ``{t.get('population')}``: {_METRICS.get(metric, metric)}.")
        out.append("")
    else:
        out.append("No tests are configured (``statistics.tests`` is empty).\n")
    return out


def _versions_section() -> list[str]:
    from .provenance import PACKAGES, package_versions

    versions = package_versions([*PACKAGES, "anndata"])
    out = [_heading("Software", "-")]
    items = [f"{name} {v}" for name, v in versions.items() if v]
    out.append(
        "Analysed with " + ", ".join(items) + ". The exact inputs, settings and versions of a "
        "run are in ``results/provenance.json``.\n"
    )
    return out


def methods_text(config: Mapping, templates: Mapping) -> str:
    """The methods section of a run, as reStructuredText.

    Parameters
    ----------
    config
        The workflow configuration (``samples``, ``panels``, ``lymphocyte_population``,
        ``statistics``, ``export``...), as validated with its schema defaults.
    templates
        ``{panel: gating}`` for every panel: a loaded
        :class:`~immuno.autogate.Template` or
        :class:`~immuno.autogate.StaticGating`, or the path of its file.

    Returns
    -------
    str
        reStructuredText: samples and panels (markers, channels, compensation,
        transforms with parameters, every population's method with parameters,
        units, guard rails and fallback), counts, statistical tests, exports and
        software versions.
    """
    from .autogate import StaticGating, load_gating

    loaded = {}
    for panel, g in templates.items():
        loaded[panel] = load_gating(g, name=panel) if isinstance(g, str | os.PathLike) else g
    lymph = config.get("lymphocyte_population", "lymphocytes")
    out = [_heading("Methods", "=")]
    out.append(_heading("Samples and panels", "-"))
    names = ", ".join(loaded)
    out.append(
        f"The FCS files listed in the sample sheet ``{Path(str(config.get('samples', ''))).name}`` "
        f"were analysed with immuno, panel by panel ({len(loaded)} panel(s): {names}). Each "
        "file was read with immuno's own FCS reader (every size checked against the file) and "
        "checked against its panel (HEADER and TEXT) before gating; a file that could not be "
        "read or did not match is listed in ``results/failed_samples.tsv`` and the others "
        "went on. Data-driven gates work on the channel values as stored.\n"
    )
    for panel, g in loaded.items():
        if isinstance(g, StaticGating):
            out.extend(_static_section(panel, g))
        else:
            out.extend(_template_section(panel, g))
    out.append(_heading("Counts", "-"))
    out.append(
        "For every sample and population: the event count, the parent's count and the percent "
        f"of the parent; the percent of ``{lymph}`` for it and the populations below it; and "
        f"the dual-platform absolute count (x10^9 cells/L) = percent of ``{lymph}`` / 100 x "
        "the full-blood-count lymphocyte count of the sample sheet. The realised gates of "
        "every sample are exported as Gating-ML 2.0 (``results/gates/<sample_id>.xml``) and "
        "drawn over the data in the gate review figures.\n"
    )
    out.extend(_statistics_section(config))
    out.append(_heading("Exports", "-"))
    exp = dict(config.get("export") or {})
    cap = exp.get("max_events_per_sample", 20000)
    pop = exp.get("population") or ""
    text = (
        "A FlowJo 10 workspace of the cohort (``results/exports/cohort.wsp``: every sample "
        "with its realised gates, spillover matrix and display transforms) and one AnnData "
        "file per panel (``results/exports/<panel>.h5ad``: compensated, transformed events x "
        f"markers, at most {_fmt(cap)} events per sample drawn at random with a fixed seed, "
        "with the study columns and one membership column per population)"
    )
    if pop:
        text += f"; the events of ``{pop}`` of every sample as FCS 3.1 files (raw values)"
    out.append(text + ".\n")
    out.extend(_versions_section())
    return "\n".join(out).rstrip() + "\n"
