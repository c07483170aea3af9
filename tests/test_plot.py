"""Tests of ``immuno.plot``: properties of the artists and the files, not pixels."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from immuno.errors import ConfigError, ImmunoError
from immuno.plot import (
    GROUP_COLORS,
    _color,
    _format_p,
    metric_unit,
    paired_axes,
    population_label,
    reconstitution_axes,
    reconstitution_figure,
    save_figure,
)
from immuno.test import paired_change

VISITS = (0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 12.0)
PARENTS = {"cd4": "cd3", "cd8": "cd3", "cd19": "lymphocytes", "treg": "cd4", "naive_b": "cd19"}


@pytest.fixture(scope="session")
def make_cohort():
    """Factory: seeded cohort table with dropped visits, NaN counts and QC failures."""

    def build(n_patients=16, groups=("30mg", "60mg"), seed=7):
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n_patients):
            patient = f"P{i:02d}"
            group = groups[i % len(groups)]
            for visit in VISITS:
                if visit > 0 and rng.random() < 0.15:
                    continue  # missed visit
                for population, parent in PARENTS.items():
                    value = rng.lognormal(np.log(0.3), 0.4)
                    percent = 7.5 + (7.0 if visit >= 4.5 else 0.0) + rng.normal(0, 1.5)
                    rows.append(
                        {
                            "sample_id": f"{patient}_m{visit:g}",
                            "patient_id": patient,
                            "dose_group": group,
                            "visit_month": visit,
                            "panel": "TB",
                            "population": population,
                            "parent": parent,
                            "count": 500,
                            "parent_count": 5000,
                            "percent_of_parent": percent,
                            "percent_of_lymphocytes": 10.0,
                            "absolute_count": np.nan if rng.random() < 0.1 else value,
                            "qc_flag": "fail_clog;low_events" if rng.random() < 0.05 else "",
                        }
                    )
        return pd.DataFrame(rows)

    return build


@pytest.fixture(scope="session")
def cohort(make_cohort):
    counts = make_cohort()
    assert counts["qc_flag"].str.contains("fail").any()
    assert counts["absolute_count"].isna().any()
    return counts


def _kept(counts, population):
    """Rows used by the plots, computed independently of the library."""
    rows = counts[(counts["population"] == population) & ~counts["qc_flag"].str.contains("fail")]
    return rows


def _by_gid(artists, prefix):
    return {a.get_gid(): a for a in artists if (a.get_gid() or "").startswith(prefix)}


def test_median_lines_match_per_visit_medians(cohort):
    ax = reconstitution_axes(cohort, "cd4")
    lines = _by_gid(ax.get_lines(), "median:")
    assert set(lines) == {"median:30mg", "median:60mg"}
    rows = _kept(cohort, "cd4")
    for group in ("30mg", "60mg"):
        line = lines[f"median:{group}"]
        np.testing.assert_allclose(line.get_xdata(), VISITS)
        sub = rows[rows["dose_group"] == group]
        expected = [sub.loc[sub["visit_month"] == v, "absolute_count"].median() for v in VISITS]
        np.testing.assert_allclose(line.get_ydata(), expected)


def test_quartile_band(cohort):
    ax = reconstitution_axes(cohort, "cd8")
    band = _by_gid(ax.collections, "iqr:")["iqr:30mg"]
    rows = _kept(cohort, "cd8")
    sub = rows[rows["dose_group"] == "30mg"]
    first = sub.loc[sub["visit_month"] == 0.0, "absolute_count"].dropna()
    vertices = np.vstack([p.vertices for p in band.get_paths()])
    at_entry = vertices[np.isclose(vertices[:, 0], 0.0), 1]
    assert at_entry.min() == pytest.approx(first.quantile(0.25))
    assert at_entry.max() == pytest.approx(first.quantile(0.75))


def test_n_labels_count_non_nan_values(cohort):
    ax = reconstitution_axes(cohort, "cd19")
    labels = _by_gid(ax.texts, "n:")
    assert len(labels) == 2 * len(VISITS)
    rows = _kept(cohort, "cd19")
    for group in ("30mg", "60mg"):
        for visit in VISITS:
            sub = rows[(rows["dose_group"] == group) & (rows["visit_month"] == visit)]
            expected = int(sub["absolute_count"].notna().sum())
            assert labels[f"n:{group}:{visit:g}"].get_text() == str(expected)


def test_axes_labels_ticks_legend(cohort):
    ax = reconstitution_axes(cohort, "cd4")
    assert ax.get_xlabel() == "Months from entry"
    assert "CD4" in ax.get_ylabel() and "10^{9}" in ax.get_ylabel()
    np.testing.assert_allclose(ax.get_xticks(), VISITS)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{v:g}" for v in VISITS]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["30mg", "60mg"]
    colors = [line.get_color() for line in _by_gid(ax.get_lines(), "median:").values()]
    assert colors == list(GROUP_COLORS[:2])
    assert ax.get_ylim()[0] == 0


def test_given_axes_is_used_and_metric_label(cohort):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    out = reconstitution_axes(cohort, "treg", ax=ax, metric="percent_of_parent", legend=False)
    assert out is ax and ax.get_legend() is None
    assert ax.get_ylabel() == "Treg (% of CD4)"


def test_groups_not_hard_coded(make_cohort):
    counts = make_cohort(n_patients=9, groups=("high", "low", "mid"))
    ax = reconstitution_axes(counts, "cd4")
    assert set(_by_gid(ax.get_lines(), "median:")) == {"median:high", "median:low", "median:mid"}
    assert len(_by_gid(ax.texts, "n:")) == 3 * len(VISITS)


def test_duplicate_rows_raise(cohort):
    extra = cohort[(cohort["population"] == "cd4") & (cohort["patient_id"] == "P01")]
    with pytest.raises(ImmunoError, match="patient P01 has 2 rows"):
        reconstitution_axes(pd.concat([cohort, extra.iloc[:1]]), "cd4")


def test_labels():
    assert population_label("cd4") == "CD4"
    assert population_label("naive_b") == "Naive B"
    assert population_label("cd45ra") == "CD45RA"
    assert population_label("memory_b") == "Memory b"


def test_metric_unit(cohort):
    assert metric_unit(cohort, "naive_b", "percent_of_parent") == "% of CD19"
    assert metric_unit(cohort, "cd4", "percent_of_lymphocytes") == "% of lymphocytes"
    assert "10^{9}" in metric_unit(cohort, "cd4", "absolute_count")


def test_paired_axes(cohort):
    stats = paired_change(cohort, populations=["treg"], metric="percent_of_parent")
    ax = paired_axes(cohort, "treg", stats=stats)
    rows = _kept(cohort, "treg")
    wide = rows.pivot(index="patient_id", columns="visit_month", values="percent_of_parent")
    pairs = wide[[0.0, 4.5]].dropna()
    lines = _by_gid(ax.get_lines(), "patient:")
    assert len(lines) == len(pairs)
    patient = pairs.index[0]
    np.testing.assert_allclose(lines[f"patient:{patient}"].get_ydata(), pairs.loc[patient])
    pooled = stats[stats["group"] == "all"].iloc[0]
    assert pooled["n_pairs"] == len(pairs)
    text = _by_gid(ax.texts, "pvalue")["pvalue"].get_text()
    assert text.startswith("Wilcoxon p")
    assert f"n = {len(pairs)} pairs" in text
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Entry", "4.5 months"]


def test_paired_axes_without_stats(cohort):
    ax = paired_axes(cohort, "naive_b")
    assert not _by_gid(ax.texts, "pvalue")
    assert _by_gid(ax.texts, "npairs")
    with pytest.raises(ConfigError, match="stats table lacks"):
        paired_axes(cohort, "naive_b", stats=pd.DataFrame({"group": ["all"]}))


def test_reconstitution_figure(cohort):
    stats = paired_change(cohort, populations=["treg", "naive_b"], metric="percent_of_parent")
    fig = reconstitution_figure(cohort, stats=stats)
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 5
    assert [ax.get_title() for ax in panels] == [
        "CD4",
        "CD8",
        "CD19",
        "Treg % of CD4",
        "Naive B % of CD19",
    ]
    assert [ax.get_title(loc="left") for ax in panels] == list("abcde")
    for ax in panels[:3]:
        assert len(_by_gid(ax.get_lines(), "median:")) == 2
    for ax in panels[3:]:
        assert _by_gid(ax.texts, "pvalue")
        # each dose group's own test under the boxes, in its colour
        pop = "treg" if ax is panels[3] else "naive_b"
        for i, group in enumerate(("30mg", "60mg")):
            art = _by_gid(ax.texts, f"pvalue:{group}")[f"pvalue:{group}"]
            row = stats[(stats["group"] == group) & (stats["population"] == pop)].iloc[0]
            p, n = float(row["p_value"]), int(row["n_pairs"])
            assert art.get_text() == f"{group}: {_format_p(p)}, n = {n}"
            assert art.get_color() == _color(i)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()][:2] == ["30mg", "60mg"]


def test_figure_without_subsets(cohort):
    fig = reconstitution_figure(cohort, populations=["cd4"], subsets=())
    assert len([ax for ax in fig.axes if ax.axison]) == 1
    assert fig.legends


def test_save_figure(cohort, tmp_path):
    fig = reconstitution_figure(cohort)
    out = tmp_path / "figs"
    paths = save_figure(fig, [out / "fig5.png", out / "fig5.pdf"])
    assert paths == [out / "fig5.png", out / "fig5.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert all(p.stat().st_size > 10_000 for p in paths)
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths)
    assert sorted(os.listdir(out)) == ["fig5.pdf", "fig5.png"]


def test_save_figure_single_path_and_bad_suffix(cohort, tmp_path):
    ax = reconstitution_axes(cohort, "cd4")
    (path,) = save_figure(ax.figure, str(tmp_path / "cd4.png"))
    assert path.stat().st_size > 0
    with pytest.raises(ConfigError, match="cd4.jpeg"):
        save_figure(ax.figure, tmp_path / "cd4.jpeg")
    assert sorted(os.listdir(tmp_path)) == ["cd4.png"]


def test_save_figure_closes_pyplot_figures(cohort, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    reconstitution_axes(cohort, "cd8", ax=ax)
    save_figure(fig, tmp_path / "cd8.png")
    assert not plt.fignum_exists(fig.number)


def test_gate_reviewer_reuses_figures_without_leftovers(demo_cohort, templates_dir, tmp_path):
    """A reused review figure drawn for sample B after samples A and C (another panel)
    is pixel for pixel the figure drawn for B alone: nothing of A is left on it."""
    import matplotlib.image as mpimg

    from immuno.autogate import gate_one, load_template
    from immuno.plot import GateReviewer, gate_review_figure
    from immuno.read import read_fcs

    def gated(sample, panel):
        fcs = read_fcs(demo_cohort / "fcs" / f"{sample}.fcs")
        res = gate_one(
            fcs, load_template(templates_dir / f"{panel.lower()}_cell.yaml"), sample_id=sample
        )
        return fcs, res.strategy, res.strategy.apply(fcs).masks

    a, b, c = gated("P01_m0_T", "T"), gated("P02_m4.5_T", "T"), gated("P01_m0_B", "B")
    flags = {"cd4": "few_events;borrowed_patient"}
    reviewer = GateReviewer()
    first = reviewer.figure(*a, title="A", flags=flags)
    save_figure(first, tmp_path / "a.png", dpi=72, tight=False)
    other = reviewer.figure(*c, title="C")
    assert other is not first  # a B tube has fewer gates: its own layout
    again = reviewer.figure(*b, title="B")
    assert again is first
    save_figure(again, tmp_path / "reused.png", dpi=72, tight=False)
    save_figure(gate_review_figure(*b, title="B"), tmp_path / "fresh.png", dpi=72, tight=False)
    reused, fresh = mpimg.imread(tmp_path / "reused.png"), mpimg.imread(tmp_path / "fresh.png")
    assert reused.shape == fresh.shape
    np.testing.assert_array_equal(reused, fresh)
    assert not np.array_equal(mpimg.imread(tmp_path / "a.png"), fresh)
    # Every gate is one panel; titles carry count and percent of parent.
    titles = [ax.get_title() for ax in again.axes if ax.get_visible()]
    assert len(titles) == sum(1 for g in b[1].gates.values() if g.dims)
    assert all(" of " in t and "%" in t for t in titles)


def test_review_figure_of_a_file_with_nan_and_inf_events(demo_cohort, templates_dir, tmp_path):
    """One damaged acquisition (NaN and infinite events) still gets its review figure, with
    finite axes, instead of stopping every sample's figures."""
    import dataclasses

    from immuno.autogate import gate_one, load_template
    from immuno.plot import gate_review_figure
    from immuno.read import read_fcs

    fcs = read_fcs(demo_cohort / "fcs" / "P01_m0_T.fcs")
    events = np.array(fcs.events, dtype=np.float32)
    events[:50] = np.nan
    events[50:60, 1:4] = np.inf
    fcs = dataclasses.replace(fcs, events=events)
    res = gate_one(fcs, load_template(templates_dir / "t_cell.yaml"), sample_id="damaged")
    fig = gate_review_figure(fcs, res.strategy, res.strategy.apply(fcs).masks, title="damaged")
    save_figure(fig, tmp_path / "damaged.png", dpi=72)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == sum(1 for g in res.strategy.gates.values() if g.dims)
    assert all(np.isfinite([*ax.get_xlim(), *ax.get_ylim()]).all() for ax in shown)


def test_a_population_the_table_lacks_gets_an_empty_panel(cohort):
    """Every T-tube sample failed: the B panels are drawn, the T panels say why not."""
    b_only = cohort[~cohort["population"].isin(["cd4", "cd8", "treg"])]
    fig = reconstitution_figure(b_only)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title(loc="left")]
    assert titles == ["CD4", "CD8", "CD19", "Treg % of CD4", "Naive B % of CD19"]
    empty = [ax for ax in fig.axes if any("no values" in t.get_text() for t in ax.texts)]
    assert [ax.get_title() for ax in empty] == ["CD4", "CD8", "Treg % of CD4"]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legends[0].get_texts()][:2] == ["30mg", "60mg"]


def test_cohort_qc_names_the_tube_and_orders_samples_by_visit():
    from immuno.plot import cohort_qc_figure

    rng = np.random.default_rng(0)
    rows = []
    for tube in ("T", "B"):
        for visit in (4.5, 0.0, 1.5):  # not in visit order: the figure sorts them
            for p in range(10):
                rows.append(
                    {
                        "panel": tube,
                        "sample_id": f"P{p:02d}_m{visit:g}_{tube}",
                        "patient_id": f"P{p:02d}",
                        "visit_month": visit,
                        "population": "live",
                        "source": "fit",
                        "key": "viability",
                        "value": 0.5 + 0.1 * (visit == 0) + rng.normal(0, 0.01),
                        "qc_flag": "",
                    }
                )
    fig = cohort_qc_figure(pd.DataFrame(rows))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["T tube, live: viability", "B tube, live: viability"]
    ax = axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1.5", "4.5"]
    np.testing.assert_allclose(ax.get_xticks(), [4.5, 14.5, 24.5])
    assert "visit" in ax.get_xlabel()
    y = ax.collections[0].get_offsets()[:, 1]
    assert (y[:10] > 0.55).all() and (y[10:] < 0.55).all()  # entry's samples first
