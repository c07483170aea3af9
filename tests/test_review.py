"""Gate review figures a cytometrist reads at a glance, and the review page's files.

The page itself is driven in a real browser in ``tests/test_workflow.py`` (on a workflow
run); here: resolution and text size of every figure, sparse populations drawn as
markers, axes in the data's own units, and the thumbnails cut from the figure.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from immuno.autogate import gate_one, load_template
from immuno.plot import REVIEW_DPI, REVIEW_FONT_PT, GateReviewer, data_ticks
from immuno.read import read_fcs
from immuno.review import THUMB_H, THUMB_W, review_records, save_review_images, write_review_page
from immuno.transform import Linear, Logicle


def _gated(cohort, templates_dir, sample):
    panel = sample.rsplit("_", 1)[1]
    fcs = read_fcs(cohort / "fcs" / f"{sample}.fcs")
    res = gate_one(
        fcs, load_template(templates_dir / f"{panel.lower()}_cell.yaml"), sample_id=sample
    )
    return fcs, res, res.strategy.apply(fcs).masks


def _texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("sample", ["P01_m0_T", "P01_m1.5_B"])
def test_every_figure_has_the_dpi_and_text_size(demo_cohort, templates_dir, tmp_path, sample):
    from PIL import Image

    fcs, res, masks = _gated(demo_cohort, templates_dir, sample)
    flags = {"cd3": "default_gate"}
    fig = GateReviewer().figure(fcs, res.strategy, masks, title=sample, flags=flags)
    gates = save_review_images(fig, tmp_path / "fig.png", tmp_path / "thumbs.png")
    texts = _texts(fig)
    assert texts and min(t.get_fontsize() for t in texts) >= REVIEW_FONT_PT >= 8
    with Image.open(tmp_path / "fig.png") as im:
        assert im.info["dpi"][0] == pytest.approx(REVIEW_DPI, abs=0.5) and REVIEW_DPI >= 150
        w, h = fig.get_size_inches()
        assert im.size == (round(w * REVIEW_DPI), round(h * REVIEW_DPI))
    with Image.open(tmp_path / "thumbs.png") as strip:
        assert strip.size == (THUMB_W * len(gates), THUMB_H)
    drawn = [g.id for g in res.strategy.gates.values() if g.dims]
    assert gates == drawn
    # Flagged gates in their own colour, with the reason in the title.
    titles = {ax.get_gid(): ax.title for ax in fig.axes if ax.get_visible()}
    if "cd3" in titles:
        assert "default_gate" in titles["cd3"].get_text()
        assert titles["cd3"].get_color() != titles["lymphocytes"].get_color()


def test_a_50_event_population_is_drawn_as_visible_markers(demo_cohort, templates_dir):
    """A small parent is drawn event by event (a dense one: its sparse bins): the naive B
    panel of a nadir sample, whose CD19 parent has a few dozen events, shows each one."""
    from matplotlib.collections import PathCollection

    fcs, res, masks = _gated(demo_cohort, templates_dir, "P01_m1.5_B")
    fig = GateReviewer().figure(fcs, res.strategy, masks)
    panel = next(ax for ax in fig.axes if ax.get_gid() == "naive_b")
    n = int(masks["cd19"].sum())
    assert 10 <= n < 2000
    dots = [c for c in panel.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == n
    assert all(np.all(c.get_sizes() >= 3) for c in dots)
    # A 50-event population alone: 50 markers, inside the axes' limits.
    keep = np.flatnonzero(masks["lymphocytes"])[:50]
    only = {k: np.zeros_like(v) for k, v in masks.items()}
    for k in only:
        only[k][keep] = True
    fig = GateReviewer().figure(fcs, res.strategy, only)
    panel = next(ax for ax in fig.axes if ax.get_gid() == "naive_b")
    pts = np.vstack([c.get_offsets() for c in panel.collections if isinstance(c, PathCollection)])
    assert len(pts) == 50
    (x0, x1), (y0, y1) = panel.get_xlim(), panel.get_ylim()
    inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
    assert inside.mean() > 0.9


def test_axes_are_ticked_in_the_datas_own_units():
    logicle = Logicle(T=262144, W=0.5, M=4.5, A=0)
    lo, hi = float(logicle.apply(np.array([-300.0]))[0]), float(logicle.apply(np.array([2e5]))[0])
    pos, labels, minor = data_ticks(logicle, lo, hi)
    assert {"0", "10\u00b3", "10\u2074", "10\u2075"} <= set(labels)
    np.testing.assert_allclose(pos[labels.index("10\u00b3")], logicle.apply(np.array([1e3]))[0])
    assert len(minor) > 10 and all(lo <= m <= hi for m in minor)
    assert all(b - a >= 0.07 * (hi - lo) - 1e-12 for a, b in zip(pos, pos[1:], strict=False))
    # Scatter on a linear scale and raw channel values: round data values, in data units.
    linear = Linear(T=262144, A=0)
    pos, labels, minor = data_ticks(linear, 0.0, 0.8)
    assert "100k" in labels and minor == []
    assert pos[labels.index("100k")] == pytest.approx(100000 / 262144)
    _, raw_labels, _ = data_ticks(None, 0.0, 210000.0)
    assert "100k" in raw_labels


def test_review_page_holds_its_data_and_escapes_it(tmp_path):
    import pandas as pd

    counts = pd.DataFrame(
        {
            "sample_id": ["S1", "S1", "S</script>2", "S</script>2"],
            "patient_id": ["P1", "P1", "P2", "P2"],
            "visit_month": [0.0, 0.0, 4.5, 4.5],
            "panel": ["T"] * 4,
            "population": ["live", "cd3", "live", "cd3"],
            "count": [900, 500, 800, 400],
            "percent_of_parent": [90.0, 55.5, 80.0, 50.0],
            "qc_flag": ["", "default_gate", "", ""],
        }
    )
    order = {"S1": ["live", "cd3"], "S</script>2": ["live", "cd3"], "absent": ["live"]}
    records = review_records(counts, order)
    assert [r["id"] for r in records] == ["S1", "S</script>2"]
    assert records[0]["gates"][1] == ["cd3", 500, 55.5, "default_gate"]
    page = write_review_page(records, tmp_path / "index.html").read_text()
    blob = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', page, re.S)
    assert json.loads(blob.group(1))["samples"] == records
    assert page.count("</script>") == 2  # the data's own "</script>" is escaped


def test_the_editor_knows_where_each_gate_is_on_the_figure(demo_cohort, templates_dir, tmp_path):
    """The page maps the pointer to gate space through each panel's box and limits: the
    CD3 cut lands on the dark gate line drawn in the PNG, a polygon is thinned to what a
    person can drag, and every gate names what a correction of it needs."""
    from PIL import Image

    from immuno.review import EDIT_VERTICES, gate_edits

    template = load_template(templates_dir / "t_cell.yaml")
    fcs, res, masks = _gated(demo_cohort, templates_dir, "P01_m0_T")
    fig = GateReviewer().figure(fcs, res.strategy, masks)
    geometry: dict = {}
    save_review_images(fig, tmp_path / "fig.png", tmp_path / "t.png", geometry=geometry)
    specs = {
        p.name: {"dims": p.dims, "method": p.method, "select": p.params.get("select")}
        for p in template.populations
    }
    edits = gate_edits(res.strategy, specs, geometry)
    assert {k: e["kind"] for k, e in edits.items()} == {
        "clean": "rectangle", "cells": "threshold", "singlets": "polygon", "live": "threshold",
        "lymphocytes": "polygon", "cd3": "threshold", "cd4": "threshold", "cd8": "threshold",
        "treg": "polygon",
    }  # fmt: skip
    cd3 = edits["cd3"]
    assert cd3["value"] == {"CD3": pytest.approx(res.fits["cd3"].params["CD3"])}
    assert edits["cd4"]["sides"] == ["+", "-"] and set(edits["cd4"]["value"]) == {"CD4", "CD8"}
    assert 3 <= len(edits["lymphocytes"]["value"]) <= EDIT_VERTICES
    (left, top, right, bottom), (x0, x1) = cd3["box"], cd3["xlim"]
    px = left + (cd3["value"]["CD3"] - x0) / (x1 - x0) * (right - left)
    with Image.open(tmp_path / "fig.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    rows = rgb[int(top) + 5 : int(bottom) - 5]
    darkness = (rows.sum(axis=2) < 150).mean(axis=0)  # share of dark pixels per column
    line = int(np.argmax(darkness[int(left) + 3 : int(right) - 3])) + int(left) + 3
    assert abs(line - px) <= 1.5
