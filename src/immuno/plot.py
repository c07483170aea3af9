"""Figures of the cohort table: reconstitution over time and paired entry/follow-up panels.

Calling convention: every single-panel function is ``plot(counts, population, *, ...,
ax=None) -> Axes`` and draws on ``ax`` (or on a new figure when ``ax`` is None);
multi-panel functions return the ``Figure``. Nothing here saves, shows or closes a
figure except :func:`save_figure`, which scripts call to write and close.

``counts`` is the cohort table ``results/counts.tsv`` (see
:func:`immuno.test.patient_table`): QC-failed rows are left out exactly as in the
statistics, and a patient with two rows for one population and visit is an error.
Values are in the units of the metric column: ``absolute_count`` in x10^9 cells/L,
``percent_*`` in percent. Summaries are medians and quartiles (linear interpolation,
as R's default), as in ALEVIATE Fig. 5.

matplotlib is imported lazily, and figures are built with
:class:`matplotlib.figure.Figure` rather than ``pyplot``, so no GUI backend or display
is needed (headless-safe) and the caller's pyplot backend is never changed.
Artists carry ``gid`` tags (``"median:<group>"``, ``"iqr:<group>"``,
``"n:<group>:<visit>"``, ``"patient:<id>"``, ``"pvalue"``) so that tests and scripts can
find them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import ConfigError
from .test import POOLED, patient_table
from .util import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "GROUP_COLORS",
    "population_label",
    "metric_unit",
    "reconstitution_axes",
    "paired_axes",
    "reconstitution_figure",
    "save_figure",
    "gate_review_figure",
    "GateReviewer",
    "data_ticks",
    "REVIEW_DPI",
    "REVIEW_FONT_PT",
    "cohort_qc_figure",
]

log = logging.getLogger(__name__)

#: Okabe-Ito colour-blind safe palette; group i (sorted) gets colour i.
GROUP_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

_NAMES = {
    "singlets": "Singlets",
    "live": "Live cells",
    "lymphocytes": "Lymphocytes",
    "treg": "Treg",
    "naive_b": "Naive B",
}

_TITLE_SIZE = 10
_LABEL_SIZE = 9
_TICK_SIZE = 8
_SMALL_SIZE = 7
_N_ROW_PT = 9.0  # height of one row of n labels under the x axis, points
_FIGURE_FORMATS = ("png", "pdf", "svg")


def population_label(population: str) -> str:
    """Display name of a population: ``"cd4"`` -> ``"CD4"``, ``"naive_b"`` -> ``"Naive B"``."""
    if population in _NAMES:
        return _NAMES[population]
    if re.fullmatch(r"cd\d+[a-z]*", population):
        return population.upper()
    return population.replace("_", " ").capitalize()


def metric_unit(counts: pd.DataFrame, population: str, metric: str) -> str:
    """Unit (as axis-label text) of ``metric`` for ``population``.

    ``absolute_count`` -> ``"×10⁹/L"``; ``percent_of_parent`` -> ``"% of <parent>"``
    (the population's ``parent`` in the table); ``percent_of_lymphocytes`` ->
    ``"% of lymphocytes"``; ``count`` -> ``"events"``.
    """
    if metric == "absolute_count":
        return r"$\times10^{9}$/L"
    if metric == "percent_of_parent":
        parents = set()
        if "parent" in counts.columns:
            rows = counts[counts["population"].astype(str) == population]
            parents = set(rows["parent"].dropna().astype(str))
        return f"% of {population_label(parents.pop())}" if len(parents) == 1 else "% of parent"
    if metric == "percent_of_lymphocytes":
        return "% of lymphocytes"
    if metric == "count":
        return "events"
    return metric.replace("_", " ")


def _color(index: int) -> str:
    return GROUP_COLORS[index % len(GROUP_COLORS)]


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _summaries(values: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Per column: (median, lower quartile, upper quartile, n non-NaN)."""
    med, q1, q3, n = [], [], [], []
    for column in values.columns:
        v = values[column].dropna().to_numpy(float)
        n.append(len(v))
        if len(v):
            lo, mid, hi = np.percentile(v, [25, 50, 75])
        else:
            lo = mid = hi = np.nan
        med.append(mid)
        q1.append(lo)
        q3.append(hi)
    return np.array(med), np.array(q1), np.array(q3), np.array(n)


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=_TICK_SIZE)


def _by_label(by: str) -> str:
    return by.replace("_", " ").capitalize()


def reconstitution_axes(
    counts: pd.DataFrame,
    population: str,
    *,
    ax: Axes | None = None,
    by: str = "dose_group",
    metric: str = "absolute_count",
    legend: bool = True,
    title: str | None = None,
) -> Axes:
    """Median and interquartile band of ``population`` over visits, one line per group.

    ALEVIATE Fig. 5 style: for each group of ``by`` (sorted), the median at every visit
    (line with markers) and the lower-upper quartile band; under the x axis, one row per
    group gives the number of patients with a value at each visit.

    Parameters
    ----------
    counts
        The cohort table (``results/counts.tsv``).
    population
        Population to plot, e.g. ``"cd4"``.
    ax
        Axes to draw on; a new figure (6 x 4 in) when None.
    by
        Grouping column (dose group).
    metric
        Value column; ``absolute_count`` is x10^9 cells/L.
    legend
        Draw a legend naming the groups.
    title
        Axes title; the population's display name when None.

    Returns
    -------
    matplotlib.axes.Axes
        x is months from entry with every visit of the table as a tick; y in the
        metric's units, starting at 0 when all values are non-negative.
    """
    wide = patient_table(counts, population=population, metric=metric, by=by)
    visits = [c for c in wide.columns if c != by]
    groups = sorted(set(wide[by]))
    ax = _new_axes(ax, (6.0, 4.0))
    for i, group in enumerate(groups):
        color = _color(i)
        med, q1, q3, n = _summaries(wide.loc[wide[by] == group, visits])
        ax.fill_between(visits, q1, q3, color=color, alpha=0.18, linewidth=0, gid=f"iqr:{group}")
        ax.plot(
            visits,
            med,
            color=color,
            linewidth=1.8,
            marker="o",
            markersize=4,
            label=group,
            gid=f"median:{group}",
            zorder=3,
        )
        offset = -(_TICK_SIZE + 9.0 + _N_ROW_PT * i)
        ax.annotate(
            "n",
            xy=(0, 0),
            xycoords="axes fraction",
            xytext=(-6, offset),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=_SMALL_SIZE,
            color=color,
            fontstyle="italic",
            annotation_clip=False,
        )
        for visit, count in zip(visits, n, strict=True):
            ax.annotate(
                str(int(count)),
                xy=(visit, 0),
                xycoords=ax.get_xaxis_transform(),
                xytext=(0, offset),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=_SMALL_SIZE,
                color=color,
                gid=f"n:{group}:{visit:g}",
                annotation_clip=False,
            )
    ax.set_xticks(visits, [f"{v:g}" for v in visits])
    if visits:
        span = max(visits) - min(visits) or 1.0
        ax.set_xlim(min(visits) - 0.04 * span, max(visits) + 0.04 * span)
    values = wide[visits].to_numpy(float)
    if np.isfinite(values).any() and np.nanmin(values) >= 0:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("Months from entry", fontsize=_LABEL_SIZE, labelpad=4.0 + _N_ROW_PT * len(groups))
    label = population_label(population)
    ax.set_ylabel(f"{label} ({metric_unit(counts, population, metric)})", fontsize=_LABEL_SIZE)
    ax.set_title(label if title is None else title, fontsize=_TITLE_SIZE)
    _style(ax)
    if legend and groups:
        ax.legend(
            title=_by_label(by),
            fontsize=_SMALL_SIZE + 1,
            title_fontsize=_SMALL_SIZE + 1,
            frameon=False,
        )
    return ax


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "p = NA"
    if p < 1e-4:
        return "p < 0.0001"
    if p < 0.01:
        return f"p = {p:.1g}" if p < 0.001 else f"p = {p:.2g}"
    return f"p = {p:.2f}"


def _stats_row(
    stats: pd.DataFrame,
    population: str,
    metric: str,
    baseline: float,
    followup: float,
    group: str = POOLED,
) -> pd.Series | None:
    needed = [
        "group",
        "population",
        "metric",
        "baseline_month",
        "followup_month",
        "p_value",
        "n_pairs",
    ]
    missing = [c for c in needed if c not in stats.columns]
    if missing:
        raise ConfigError(
            f"the stats table lacks column(s) {', '.join(missing)}",
            field=missing[0],
            hint="pass the DataFrame returned by immuno.test.paired_change",
        )
    match = stats[
        (stats["group"].astype(str) == str(group))
        & (stats["population"].astype(str) == population)
        & (stats["metric"].astype(str) == metric)
        & np.isclose(stats["baseline_month"].astype(float), baseline)
        & np.isclose(stats["followup_month"].astype(float), followup)
    ]
    if match.empty:
        if group != POOLED:
            return None  # per-group rows are optional (the pooled table alone is enough)
        log.warning(
            "no pooled %s/%s test for months %g vs %g in stats; p not shown",
            population,
            metric,
            baseline,
            followup,
        )
        return None
    return match.iloc[0]


def _visit_name(month: float) -> str:
    return "Entry" if month == 0 else f"{month:g} months"


def paired_axes(
    counts: pd.DataFrame,
    population: str,
    *,
    metric: str = "percent_of_parent",
    baseline: float = 0.0,
    followup: float = 4.5,
    by: str = "dose_group",
    stats: pd.DataFrame | None = None,
    ax: Axes | None = None,
    legend: bool = True,
    title: str | None = None,
) -> Axes:
    """Per-patient values at two visits, joined by lines, with box plots.

    Only patients with a value at both visits are drawn (the pairs the Wilcoxon test
    uses). Each line is one patient, coloured by group; boxes show the median (black
    bar) and quartiles of all pairs pooled; whiskers reach 1.5 IQR.

    Parameters
    ----------
    counts
        The cohort table (``results/counts.tsv``).
    population
        Population to plot, e.g. ``"treg"``.
    metric
        Value column, e.g. ``"percent_of_parent"`` (percent).
    baseline, followup
        Visit months (months from entry) compared.
    by
        Grouping column (dose group).
    stats
        Optional output of :func:`immuno.test.paired_change`; the pooled (``group ==
        "all"``) p-value of this population, metric and visits is shown over a bracket,
        and each group's (when ``stats`` holds its row) below the boxes in its colour.
    ax
        Axes to draw on; a new figure (3.5 x 4 in) when None.
    legend
        Draw a legend naming the groups.
    title
        Axes title; the population's display name when None.

    Returns
    -------
    matplotlib.axes.Axes
    """
    wide = patient_table(counts, population=population, metric=metric, by=by)
    groups = sorted(set(wide[by]))
    b_key, f_key = round(float(baseline), 6), round(float(followup), 6)
    for key, month in ((b_key, baseline), (f_key, followup)):
        if key not in wide.columns:
            raise ConfigError(
                f"visit month {month:g} is not in the cohort table",
                field="visit_month",
                hint="choose visit months that occur in visit_month",
            )
    pairs = wide[[by, b_key, f_key]].dropna()
    ax = _new_axes(ax, (3.5, 4.0))
    for i, group in enumerate(groups):
        sub = pairs[pairs[by] == group]
        for patient, row in sub.iterrows():
            ax.plot(
                [0, 1],
                [row[b_key], row[f_key]],
                color=_color(i),
                alpha=0.6,
                linewidth=1.0,
                marker="o",
                markersize=3.5,
                zorder=2,
                gid=f"patient:{patient}",
                label=group if patient == sub.index[0] else None,
            )
    if len(pairs):
        ax.boxplot(
            [pairs[b_key].to_numpy(float), pairs[f_key].to_numpy(float)],
            positions=[0, 1],
            widths=0.34,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": "0.9", "edgecolor": "0.35", "linewidth": 1.0},
            whiskerprops={"color": "0.35"},
            capprops={"color": "0.35"},
            medianprops={"color": "black", "linewidth": 2.2, "zorder": 4},
            zorder=1,
        )
    ax.set_xticks([0, 1], [_visit_name(baseline), _visit_name(followup)])
    ax.set_xlim(-0.55, 1.55)
    label = population_label(population)
    ax.set_ylabel(f"{label} ({metric_unit(counts, population, metric)})", fontsize=_LABEL_SIZE)
    ax.set_title(label if title is None else title, fontsize=_TITLE_SIZE)
    values = pairs[[b_key, f_key]].to_numpy(float)
    per_group = []
    if stats is not None:
        for i, group in enumerate(groups):
            grow = _stats_row(stats, population, metric, baseline, followup, group=group)
            if grow is not None:
                per_group.append((i, group, grow))
    if values.size:
        low, high = float(values.min()), float(values.max())
        span = (high - low) or abs(high) or 1.0
        foot = 0.2 if per_group else 0.06  # room for the groups' p-values under the boxes
        ax.set_ylim(low - foot * span, high + 0.22 * span)
        if metric.startswith("percent") and high <= 100 < high + 0.22 * span:
            # Head room for the bracket, but no tick beyond 100 %.
            ax.set_yticks([t for t in ax.get_yticks() if low - 0.06 * span <= t <= 100])
        text = f"n = {len(pairs)} pairs"
        row = None if stats is None else _stats_row(stats, population, metric, baseline, followup)
        if row is not None:
            if int(row["n_pairs"]) != len(pairs):
                log.warning(
                    "stats n_pairs %d != %d pairs plotted for %s: stats from another table?",
                    int(row["n_pairs"]),
                    len(pairs),
                    population,
                )
            text = f"Wilcoxon {_format_p(float(row['p_value']))}, {text}"
            y = high + 0.07 * span
            ax.plot(
                [0, 0, 1, 1],
                [y - 0.025 * span, y, y, y - 0.025 * span],
                color="black",
                linewidth=0.9,
                gid="bracket",
            )
        ax.text(
            0.5,
            high + 0.09 * span,
            text,
            ha="center",
            va="bottom",
            fontsize=_SMALL_SIZE + 1,
            gid="pvalue" if row is not None else "npairs",
        )
        for k, (i, group, grow) in enumerate(per_group):
            p = float(grow["p_value"])
            ax.text(
                (k + 0.5) / len(per_group),
                0.015,
                f"{group}: {_format_p(p) if np.isfinite(p) else 'no test'}, "
                f"n = {int(grow['n_pairs'])}",
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                color=_color(i),
                fontsize=_SMALL_SIZE,
                gid=f"pvalue:{group}",
            )
    _style(ax)
    if legend and groups:
        ax.legend(
            title=_by_label(by),
            fontsize=_SMALL_SIZE + 1,
            title_fontsize=_SMALL_SIZE + 1,
            frameon=False,
            loc="upper left",
        )
    return ax


def _no_values(ax, name: str) -> None:
    """An empty panel for a population the cohort table does not hold."""
    ax.set_title(name, fontsize=_TITLE_SIZE)
    ax.text(
        0.5,
        0.5,
        f"no values for {name}\n(not in the cohort table: did every\nsample of its panel fail?)",
        ha="center",
        va="center",
        fontsize=_LABEL_SIZE,
        color="0.35",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def reconstitution_figure(
    counts: pd.DataFrame,
    *,
    populations: Sequence[str] = ("cd4", "cd8", "cd19"),
    subsets: Sequence[tuple[str, str, str]] = (
        ("treg", "percent_of_parent", "Treg % of CD4"),
        ("naive_b", "percent_of_parent", "Naive B % of CD19"),
    ),
    baseline: float = 0.0,
    followup: float = 4.5,
    stats: pd.DataFrame | None = None,
    by: str = "dose_group",
) -> Figure:
    """Fig. 5 of ALEVIATE plus the paired subset panels, as one figure.

    Top row: :func:`reconstitution_axes` of the absolute counts (x10^9 cells/L) of
    ``populations``. Bottom row: :func:`paired_axes` of each ``(population, metric,
    title)`` in ``subsets`` at ``baseline`` vs ``followup`` (months from entry), with the
    pooled Wilcoxon p-value from ``stats`` (:func:`immuno.test.paired_change` output) if
    given. One shared legend names the groups; panels are lettered a, b, ... A
    population with no row in ``counts`` (every sample of its panel failed) gets an empty
    panel that says so, and the other panels are drawn.

    Returns
    -------
    matplotlib.figure.Figure
        About 3.6 in wide per column, 7.6 in high, constrained layout.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    populations = [populations] if isinstance(populations, str) else list(populations)
    subsets = [tuple(s) for s in subsets]
    if not populations and not subsets:
        raise ConfigError(
            "nothing to plot", field="populations", hint="give at least one population or subset"
        )
    ncols = max(len(populations), len(subsets), 1)
    nrows = int(bool(populations)) + int(bool(subsets))
    fig = Figure(figsize=(3.6 * ncols, 3.9 * nrows), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    axes, row = [], 0
    present = set(counts["population"].astype(str)) if "population" in counts else set()
    if populations:
        for col, population in enumerate(populations):
            ax = fig.add_subplot(grid[row, col])
            if population in present:
                reconstitution_axes(
                    counts, population, ax=ax, by=by, metric="absolute_count", legend=False
                )
            else:
                _no_values(ax, population_label(population))
            axes.append(ax)
        row += 1
    for col, subset in enumerate(subsets):
        if len(subset) != 3:
            raise ConfigError(
                f"subset {subset!r} is not (population, metric, title)",
                field="subsets",
                hint='e.g. ("treg", "percent_of_parent", "Treg % of CD4")',
            )
        population, metric, title = subset
        ax = fig.add_subplot(grid[row, col])
        axes.append(ax)
        if population not in present:
            _no_values(ax, title)
            continue
        paired_axes(
            counts,
            population,
            metric=metric,
            baseline=baseline,
            followup=followup,
            by=by,
            stats=stats,
            ax=ax,
            legend=False,
            title=title,
        )
    for letter, ax in zip("abcdefghijklmnopqrstuvwxyz", axes, strict=False):
        ax.set_title(letter, loc="left", fontsize=_TITLE_SIZE + 1, fontweight="bold")

    drawn = [(p, "absolute_count") for p in populations] + [(s[0], s[1]) for s in subsets]
    drawn = [(p, m) for p, m in drawn if p in present]
    groups = (
        sorted(set(patient_table(counts, population=drawn[0][0], metric=drawn[0][1], by=by)[by]))
        if drawn
        else []
    )
    handles = [
        Line2D([], [], color=_color(i), marker="o", markersize=4, linewidth=1.8, label=g)
        for i, g in enumerate(groups)
    ]
    handles += [
        Line2D([], [], color="0.3", linewidth=1.8, label="Median"),
        Patch(facecolor="0.3", alpha=0.18, label="Interquartile range"),
    ]
    spare = ncols - len(subsets) if populations and subsets else 0
    if spare > 0:
        holder = fig.add_subplot(grid[nrows - 1, ncols - spare :])
        holder.axis("off")
        holder.legend(
            handles=handles,
            title=_by_label(by),
            loc="center",
            frameon=False,
            fontsize=_LABEL_SIZE,
            title_fontsize=_LABEL_SIZE,
        )
    else:
        fig.legend(
            handles=handles,
            title=_by_label(by),
            loc="outside upper center",
            ncols=len(handles),
            frameon=False,
            fontsize=_LABEL_SIZE,
            title_fontsize=_LABEL_SIZE,
        )
    return fig


def palette_image(image, colors: int):
    """A Pillow RGB image reduced to a palette of ``colors`` colours (fast octree)."""
    from PIL import Image

    return image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)


def save_figure(
    fig: Figure,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    dpi: int = 300,
    tight: bool = True,
    palette: int | None = None,
) -> list[Path]:
    """Write ``fig`` to each path atomically (temp file + ``os.replace``), then close it.

    Parameters
    ----------
    fig
        The figure to write.
    paths
        One path or a list; the suffix picks the format (``.png`` at ``dpi``, 300 by
        default, ``.pdf``, ``.svg``). Parent directories are created.
    tight
        Crop to the drawn content (``bbox_inches="tight"``, 0.05 in padding). Costs a
        second layout pass; a figure whose margins are set (review figures) skips it.
    palette
        Write a PNG with a palette of this many colours (e.g. 256: a QC figure of
        scatter points at a third of the size, without visible loss); PDF and SVG stay
        vector.

    Returns
    -------
    list of pathlib.Path
        The paths written.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    targets = [Path(p) for p in paths]
    for path in targets:
        if path.suffix.lower().lstrip(".") not in _FIGURE_FORMATS:
            raise ConfigError(
                f"cannot write a figure as {path.name!r}",
                file=str(path),
                hint=f"use one of the suffixes .{', .'.join(_FIGURE_FORMATS)}",
            )
    try:
        for path in targets:
            fmt = path.suffix.lower().lstrip(".")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                fig.savefig(
                    tmp,
                    format=fmt,
                    dpi=dpi if fmt == "png" else "figure",
                    bbox_inches="tight" if tight else None,
                    pad_inches=0.05,
                )
                if palette and fmt == "png":
                    from PIL import Image

                    with Image.open(tmp) as im:
                        rgb = im.convert("RGB")
                    palette_image(rgb, palette).save(tmp, format="PNG", dpi=(dpi, dpi))
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
    return targets


# ---------------------------------------------------------------------------- gate review


#: Review figures: resolution (dots per inch) and the smallest text (points).
REVIEW_DPI = 150
REVIEW_FONT_PT = 8.0
_GATE_COLOR = "#1A1A1A"  # an accepted gate: black, as FlowJo draws them
_FLAG_COLOR = "#D00000"  # a gate whose population carries a review flag
_CORRECTED_COLOR = "#1F5FBF"  # a gate a reviewer set (qc_flag "corrected" only)
_SPARSE_BIN = 2  # 2-D bins with at most this many events show their events as dots
_DOTS_BELOW = 2000  # parents with fewer events are drawn as dots only


def _dim_label(dim, names: dict[str, str]) -> str:
    """``marker (channel)``, or the channel alone when it has no marker name."""
    base = names.get(dim.channel, dim.channel)
    if dim.ratio:
        return f"{base} (ratio)"
    return base if base == dim.channel else f"{base} ({dim.channel})"


def _limits(v: np.ndarray) -> tuple[float, float]:
    """Axis limits (units of ``v``) over the finite values: NaN or infinite events of one
    file (a damaged acquisition) are left off its figure, not allowed to break it."""
    v = v[np.isfinite(v)]
    lo, hi = np.percentile(v, [0.2, 99.8]) if len(v) else (0.0, 1.0)
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    return float(lo - pad), float(hi + pad)


_SUPERSCRIPT = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)


def _linear_label(v: float) -> str:
    """A data value for a linear axis: ``0``, ``500``, ``50k``, ``1.2M``."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def data_ticks(transform, lo: float, hi: float) -> tuple[list, list, list]:
    """Ticks of an axis drawn in a transform's scale, labelled in the data's own units.

    ``lo``/``hi`` are the axis limits in gate space (the transform's scale; raw channel
    units when ``transform`` is None). A linear scale gets 4-6 round data values; a
    logarithmic-like one (logicle, arcsinh, log, biexponential) gets its decades
    (``0``, ``10^k`` and, below zero, ``-10^k``), as FlowJo labels such axes, with minor
    ticks at 2-9 x each decade. Returns ``(major positions, labels, minor positions)``,
    positions in gate space; labels that would overlap are dropped.
    """
    from matplotlib.ticker import MaxNLocator

    from .transform import Linear

    def to_data(y):
        return np.asarray(y, dtype=float) if transform is None else transform.inverse(y)

    def to_gate(x):
        x = np.asarray(x, dtype=float)
        return x if transform is None else transform.apply(x)

    dlo, dhi = (float(v) for v in to_data([lo, hi]))
    if not (np.isfinite(dlo) and np.isfinite(dhi)) or dhi <= dlo:
        return [], [], []
    if transform is None or isinstance(transform, Linear) or getattr(transform, "n_inputs", 1) > 1:
        values = [v for v in MaxNLocator(nbins=5).tick_values(dlo, dhi) if dlo <= v <= dhi]
        pos = [float(to_gate(v)) for v in values]
        return pos, [_linear_label(v) for v in values], []
    majors: list[tuple[float, str]] = []
    minors: list[float] = []
    if dlo <= 0.0 <= dhi:
        majors.append((0.0, "0"))
    for k in range(0, 10):
        for sign in (1.0, -1.0):
            v = sign * 10.0**k
            if k >= 1 and dlo <= v <= dhi:
                label = ("-" if sign < 0 else "") + "10" + str(k).translate(_SUPERSCRIPT)
                majors.append((v, label))
            for m in range(2, 10):
                w = sign * m * 10.0**k
                if dlo <= w <= dhi:
                    minors.append(w)
    majors.sort()
    pos = [float(to_gate(v)) for v, _ in majors]
    labels = [lab for _, lab in majors]
    # Decades crowd near zero on a logicle axis: keep labels at least 7% of the axis apart,
    # zero and the positive decades first.
    keep: list[int] = []
    order = sorted(range(len(pos)), key=lambda i: (majors[i][0] < 0, abs(majors[i][0])))
    for i in order:
        if all(abs(pos[i] - pos[j]) >= 0.07 * (hi - lo) for j in keep):
            keep.append(i)
    keep.sort()
    return (
        [pos[i] for i in keep],
        [labels[i] for i in keep],
        [float(v) for v in to_gate(minors)] if minors else [],
    )


def _set_ticks(ax, axis: str, transform, lim: tuple[float, float]) -> None:
    major, labels, minor = data_ticks(transform, *lim)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_ticks(major, labels)
    target.set_ticks(minor, minor=True)


def _kept_box(gate, xlim, ylim) -> tuple[float, float, float, float] | None:
    """A rectangle gate's kept region clipped to the axes: ``(x0, x1, y0, y1)``."""
    mins, maxs = list(gate.mins), list(gate.maxs)

    def side(j, lim):
        lo = mins[j] if j < len(mins) and mins[j] is not None else -np.inf
        hi = maxs[j] if j < len(maxs) and maxs[j] is not None else np.inf
        return max(lo, lim[0]), min(hi, lim[1])

    x0, x1 = side(0, xlim)
    y0, y1 = side(1, ylim) if len(gate.dims) > 1 else ylim
    if not (x1 > x0 and y1 > y0):
        return None
    return float(x0), float(x1), float(y0), float(y1)


def _draw_gate(ax, gate, xlim, ylim, color: str = _GATE_COLOR) -> tuple[list, tuple]:
    """Draw ``gate`` on ``ax`` in its own space, its kept region shaded.

    ``xlim``/``ylim`` are the axes' limits (data units): a rectangle's sides are
    drawn across them. Returns the artists added and a point inside the kept region
    (axes data units) for its label. Artists are added without updating the axes'
    data limits (the caller sets the limits), which keeps a reused figure cheap.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse, Polygon, Rectangle

    from .gate import EllipseGate, PolygonGate, RectangleGate

    line = {"color": color, "lw": 1.4}
    shade = {"facecolor": to_rgba(color, 0.10), "edgecolor": "none"}
    outlined = {"facecolor": to_rgba(color, 0.10), "edgecolor": color, "lw": 1.4}
    shapes: list = []
    anchor = (float(np.mean(xlim)), float(np.mean(ylim)))
    if isinstance(gate, RectangleGate):
        for j, (lo, hi) in enumerate(zip(gate.mins, gate.maxs, strict=False)):
            for v in (lo, hi):
                if v is None or not np.isfinite(v):
                    continue
                xy = ([v, v], list(ylim)) if j == 0 else (list(xlim), [v, v])
                shapes.append(Line2D(*xy, **line))
        box = _kept_box(gate, xlim, ylim)
        if box is not None:
            x0, x1, y0, y1 = box
            shapes.insert(0, Rectangle((x0, y0), x1 - x0, y1 - y0, **shade))
            anchor = (0.5 * (x0 + x1), y0 + 0.85 * (y1 - y0))
    elif isinstance(gate, PolygonGate):
        verts = np.asarray(gate.vertices, dtype=float)
        shapes.append(Polygon(verts, closed=True, **outlined))
        inside = verts[
            (verts[:, 0] >= xlim[0])
            & (verts[:, 0] <= xlim[1])
            & (verts[:, 1] >= ylim[0])
            & (verts[:, 1] <= ylim[1])
        ]
        if len(inside):
            anchor = (float(inside[:, 0].mean()), float(inside[:, 1].max()))
    elif isinstance(gate, EllipseGate):
        vals, vecs = np.linalg.eigh(np.asarray(gate.covariance, dtype=float))
        width, height = 2 * np.sqrt(vals * gate.distance_square)
        angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
        geom = {"width": height, "height": width, "angle": angle}
        shapes.append(Ellipse(gate.mean, **geom, **outlined))
        top = float(gate.mean[1]) + 0.5 * float(np.max([width, height]))
        anchor = (float(gate.mean[0]), min(top, ylim[1]))
    return [ax.add_artist(a) for a in shapes], anchor


def gate_review_figure(
    fcs,
    strategy,
    masks: dict[str, np.ndarray],
    *,
    title: str = "",
    flags=None,
    max_events: int = 30000,
    names: dict[str, str] | None = None,
):
    """One figure with every gate of one sample drawn over its parent's events.

    Parameters
    ----------
    fcs
        The sample (:class:`~immuno.read.FCSData`).
    strategy
        Its realised :class:`~immuno.gate.GatingStrategy` (e.g. from its Gating-ML file).
    masks
        Memberships from ``strategy.apply(fcs)``.
    flags
        Optional ``{population: qc_flag}``; a gate a reviewer set (``corrected``) is drawn
        in blue; a flagged gate and its title are drawn in
        red, with the reason.
    names
        ``{channel ($PnN): marker}`` for axis labels (default: ``$PnS`` where set).

    Each panel shows the parent's events (at most ``max_events``, a fixed
    subsample) in the gate's own space, with axes labelled ``marker (channel)`` and
    ticked in the data's own units (decades on logarithmic-like scales,
    :func:`data_ticks`): a 2-D density (log colour) whose sparse bins show their
    events as dots (a parent of fewer than 2,000 events is drawn as dots only), or a
    histogram with a rug of sparse events for 1-D gates; the gate in black with its
    kept region shaded, labelled with the population, its count and percent of
    parent. Meant to be saved at :data:`REVIEW_DPI`; no text is smaller than
    :data:`REVIEW_FONT_PT`. A new figure each call; to draw many samples,
    :class:`GateReviewer` reuses one figure (several times faster).
    """
    return GateReviewer(max_events=max_events).figure(
        fcs, strategy, masks, title=title, flags=flags, names=names, reuse=False
    )


class GateReviewer:
    """Draws gate review figures (see :func:`gate_review_figure`), reusing figures.

    Building a figure of a dozen panels and laying out its text for the first
    time costs more than drawing the data. A reviewer keeps one figure per panel
    layout and, for each sample, replaces only what depends on the sample (the
    density image or histogram, the gate, the limits, ticks, titles and labels), so
    that fonts and layout are cached between samples. The figure returned by
    :meth:`figure` is valid until the next call; save it before drawing the next
    sample. Values are the gate-space values of the fast path's estimates
    (within about 1e-5 of the exact ones on a logicle scale: invisible on a plot).
    """

    def __init__(self, *, max_events: int = 30000):
        self.max_events = max_events
        self._figures: dict[tuple[int, int], tuple] = {}

    def _layout(self, n_gates: int, reuse: bool):
        from matplotlib.figure import Figure

        ncol = min(4, max(n_gates, 1))
        nrow = int(np.ceil(n_gates / ncol)) or 1
        key = (nrow, ncol)
        if reuse and key in self._figures:
            return self._figures[key]
        fig = Figure(figsize=(3.1 * ncol, 3.0 * nrow + 0.35))
        fig.subplots_adjust(
            left=0.09 / ncol**0.5,
            right=0.985,
            bottom=0.6 / (3.0 * nrow + 0.35),
            top=1 - 0.75 / (3.0 * nrow + 0.35),
            wspace=0.38,
            hspace=0.62,
        )
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax in axes:
            ax.tick_params(labelsize=REVIEW_FONT_PT)
            ax.tick_params(which="minor", length=2)
        entry = (fig, axes, [[] for _ in axes])
        if reuse:
            self._figures[key] = entry
        return entry

    def figure(
        self,
        fcs,
        strategy,
        masks: dict[str, np.ndarray],
        *,
        title: str = "",
        flags=None,
        names: dict[str, str] | None = None,
        reuse: bool = True,
    ):
        """The review figure of one sample (arguments as :func:`gate_review_figure`)."""
        from .gate import BooleanGate, event_space

        names = names or {c: (m or c) for c, m in zip(fcs.channels, fcs.markers, strict=True)}
        flags = flags or {}
        gates = [g for g in strategy.gates.values() if not isinstance(g, BooleanGate) and g.dims]
        fig, axes, drawn = self._layout(len(gates), reuse)
        for artists in drawn:
            for artist in artists:
                artist.remove()
            artists.clear()
        space = event_space(fcs, strategy)
        rng = np.random.default_rng(0)
        for ax, artists, gate in zip(axes, drawn, gates, strict=False):
            ax.set_visible(True)
            ax.set_gid(gate.id)
            parent = masks[gate.parent] if gate.parent else np.ones(fcs.n_events, dtype=bool)
            rows = np.flatnonzero(parent)
            if len(rows) > self.max_events:
                rows = np.sort(rng.choice(rows, self.max_events, replace=False))
            vals = space.estimates(gate.dims, rows) if len(rows) else np.zeros((0, len(gate.dims)))
            vals = vals[np.isfinite(vals).all(axis=1)]
            n, n_par = int(masks[gate.id].sum()), int(parent.sum())
            pct = 100.0 * n / n_par if n_par else float("nan")
            flag = flags.get(gate.id, "")
            color = (
                _CORRECTED_COLOR if flag == "corrected" else _FLAG_COLOR if flag else _GATE_COLOR
            )
            xl, yl = self._draw_events(ax, artists, vals)
            shapes, anchor = _draw_gate(ax, gate, xl, yl, color=color)
            artists.extend(shapes)
            artists.append(
                ax.text(
                    *anchor,
                    f"{population_label(gate.id)}\n{n:,} ({pct:.1f}%)",
                    ha="center",
                    va="top",
                    fontsize=REVIEW_FONT_PT,
                    color=color,
                    clip_on=True,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                )
            )
            ax.set_xlim(xl)
            ax.set_ylim(yl)
            tx = strategy.transforms.get(gate.dims[0].transform) if gate.dims[0].transform else None
            _set_ticks(ax, "x", tx, xl)
            ax.set_xlabel(_dim_label(gate.dims[0], names), fontsize=REVIEW_FONT_PT)
            if len(gate.dims) >= 2:
                d1 = gate.dims[1]
                ty = strategy.transforms.get(d1.transform) if d1.transform else None
                _set_ticks(ax, "y", ty, yl)
                ax.set_ylabel(_dim_label(d1, names), fontsize=REVIEW_FONT_PT)
            else:
                ax.yaxis.set_ticks(
                    np.linspace(0.0, yl[1], 3), [f"{v:.0f}" for v in np.linspace(0.0, yl[1], 3)]
                )
                ax.yaxis.set_ticks([], minor=True)
                ax.set_ylabel("events per bin", fontsize=REVIEW_FONT_PT)
            ax.set_title(
                f"{gate.id} of {gate.parent or 'all'}: {n:,} ({pct:.1f}%)" + _flag_lines(flag),
                fontsize=REVIEW_FONT_PT + 1,
                color=color,
                fontweight="bold" if flag else "normal",
                y=1.02,  # a fixed position: no tick-label bounding boxes at every draw
            )
        for ax in axes[len(gates) :]:
            ax.set_visible(False)
            ax.set_gid(None)
        fig.suptitle(title, fontsize=REVIEW_FONT_PT + 2)
        return fig

    @staticmethod
    def _draw_events(ax, artists: list, vals: np.ndarray) -> tuple[tuple, tuple]:
        """The parent's events on ``ax``: density and dots (2-D) or histogram and rug."""
        from matplotlib.patches import StepPatch

        dot = {"s": 3.0, "c": "#08306B", "linewidths": 0, "rasterized": True}
        if vals.shape[1] >= 2 and len(vals):
            xl, yl = _limits(vals[:, 0]), _limits(vals[:, 1])
            if len(vals) < _DOTS_BELOW:
                artists.append(ax.scatter(vals[:, 0], vals[:, 1], **{**dot, "s": 5.0}))
                return xl, yl
            bins = 100
            h, xe, ye = np.histogram2d(vals[:, 0], vals[:, 1], bins=bins, range=[xl, yl])
            img = np.ma.masked_less_equal(np.log1p(h.T), np.log1p(_SPARSE_BIN))
            artists.append(
                ax.imshow(
                    img,
                    origin="lower",
                    extent=(*xl, *yl),
                    aspect="auto",
                    cmap=_density_cmap(),
                    interpolation="nearest",
                    vmin=np.log1p(_SPARSE_BIN),
                )
            )
            ix = np.clip(np.searchsorted(xe, vals[:, 0], side="right") - 1, 0, bins - 1)
            iy = np.clip(np.searchsorted(ye, vals[:, 1], side="right") - 1, 0, bins - 1)
            sparse = h[ix, iy] <= _SPARSE_BIN
            if sparse.any():
                artists.append(ax.scatter(vals[sparse, 0], vals[sparse, 1], **dot))
            return xl, yl
        if not len(vals):
            return (0.0, 1.0), (0.0, 1.0)
        xl = _limits(vals[:, 0])
        h, edges = np.histogram(vals[:, 0], bins=128, range=xl)
        top = float(h.max()) if h.max() > 0 else 1.0
        yl = (0.0, 1.12 * top)
        # A StepPatch added as an artist: the limits are set by the caller, so the axes
        # need not scan the patch's path for data limits (as stairs() does).
        artists.append(
            ax.add_artist(StepPatch(h, edges, fill=True, facecolor="#4C72B0", edgecolor="none"))
        )
        if len(vals) < _DOTS_BELOW:  # a rug: each event a tick under the histogram
            artists.append(
                ax.scatter(
                    vals[:, 0],
                    np.full(len(vals), 0.03 * top),
                    marker="|",
                    s=12,
                    c="#08306B",
                    linewidths=0.6,
                )
            )
        return xl, yl


def _flag_lines(flag: str, width: int = 34) -> str:
    """A qc_flag as at most two short lines under a panel title (long ones overlapped)."""
    if not flag:
        return ""
    import textwrap

    lines = textwrap.wrap(flag.replace(";", "; "), width)
    return "\n" + "\n".join(lines[:2]) + (" ..." if len(lines) > 2 else "")


def _density_cmap():
    """A pseudocolour map that starts dark enough to show a bin of a few events."""
    from matplotlib import colormaps

    return colormaps["viridis"]


def cohort_qc_figure(params: pd.DataFrame, *, k: float = 4.0):
    """Cohort view of every fitted gate number, with outlying and borrowed samples marked.

    ``params`` is ``results/gating/gate_params.tsv`` (``panel, sample_id, patient_id,
    visit_month, population, source, key, value, qc_flag``). One panel per (tube,
    population, key): the value of each sample, the samples ordered by visit and then
    patient (x: the visit, months from entry, ticked at each visit's samples), the
    cohort median and the ``median +- k * MAD`` band; samples flagged
    ``cohort_outlier`` in red, gates borrowed from the patient or cohort or defaulted
    as open symbols.
    """
    from matplotlib.figure import Figure

    params = params.copy()
    params["qc_flag"] = params["qc_flag"].fillna("").astype(str)
    for col, default in (("panel", ""), ("visit_month", np.nan), ("patient_id", "")):
        if col not in params:
            params[col] = default
    keys = ["panel", "population", "key"]
    order = list(dict.fromkeys(params[keys].itertuples(index=False, name=None)))  # as gated
    params = params.sort_values(["visit_month", "patient_id", "sample_id"], kind="stable")
    groups = dict(list(params.groupby(keys, sort=False)))
    panels = [(k, groups[k]) for k in order]
    ncol = 4
    nrow = max(1, int(np.ceil(len(panels) / ncol)))
    fig = Figure(figsize=(3.2 * ncol, 2.4 * nrow + 0.5), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, ((tube, pop, key), d) in zip(axes, panels, strict=False):
        x = np.arange(len(d))
        v = d["value"].to_numpy(dtype=float)
        fitted = d["source"].eq("fit").to_numpy()
        med = np.nanmedian(v[fitted]) if fitted.any() else np.nanmedian(v)
        mad = 1.4826 * np.nanmedian(np.abs(v[fitted] - med)) if fitted.any() else 0.0
        ax.axhspan(med - k * mad, med + k * mad, color="#DDDDDD", zorder=0)
        ax.axhline(med, color="#555555", lw=0.8)
        out = d["qc_flag"].str.contains("cohort_outlier").to_numpy()
        if "qc_note" in d:  # outliers replaced by a borrowed gate are noted, not flagged
            out |= d["qc_note"].fillna("").astype(str).str.contains("cohort_outlier").to_numpy()
        ax.scatter(x[fitted & ~out], v[fitted & ~out], s=6, color="#0072B2", label="fitted")
        ax.scatter(
            x[~fitted],
            v[~fitted],
            s=14,
            facecolors="none",
            edgecolors="#009E73",
            label="borrowed/default",
        )
        ax.scatter(x[out], v[out], s=14, color="#C00000", label="outlier")
        ax.set_title(
            f"{tube} tube, {pop}: {key}" if tube else f"{pop}: {key}", fontsize=_SMALL_SIZE + 1
        )
        visits = d["visit_month"].to_numpy(dtype=float)
        if np.isfinite(visits).any():
            # one tick per visit, at the middle of its samples; a line between visits
            starts = [0, *(i for i in range(1, len(visits)) if visits[i] != visits[i - 1])]
            ends = [*starts[1:], len(visits)]
            ax.set_xticks(
                [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)],
                [f"{visits[a]:g}" for a in starts],
            )
            for a in starts[1:]:
                ax.axvline(a - 0.5, color="#BBBBBB", lw=0.5, zorder=0)
            ax.set_xlabel("samples by visit (months from entry)", fontsize=_SMALL_SIZE)
        else:
            ax.set_xticks([])
            ax.set_xlabel("samples", fontsize=_SMALL_SIZE)
        ax.tick_params(labelsize=_SMALL_SIZE)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if panels:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=_SMALL_SIZE)
    fig.suptitle(
        "Fitted gates across the cohort (band: median +- 4 robust SD)", fontsize=_TITLE_SIZE
    )
    return fig
