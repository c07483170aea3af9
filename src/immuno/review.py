"""The gate review page: every gate of every sample, for a reviewer to read and sort.

Calling convention: :func:`save_review_images` writes one sample's review figure
(``figures/<sample_id>.png``, at :data:`~immuno.plot.REVIEW_DPI`) and its strip of
thumbnails (``thumbs/<sample_id>.png``: one :data:`THUMB_W` x :data:`THUMB_H` pixel
cell per gate, in the figure's order) from one rendering, and returns the gate ids in
that order; :func:`write_review_page` writes ``index.html``, a static page that opens
from a file (no server, no network): for each gate a grid across the cohort, one
thumbnail per sample, sortable by patient, visit, value and flag, a filter for flagged
samples, a sample view with every gate large, and keyboard navigation. The page holds
its data inline (a file:// page may not fetch files) and loads thumbnails lazily, so it
stays fast at thousands of samples. ``index.html#flagged`` opens on flagged samples only;
``index.html#sample=<id>`` opens that sample.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .util import atomic_path

__all__ = [
    "THUMB_W",
    "THUMB_H",
    "save_review_images",
    "write_review_page",
    "review_records",
    "write_corrections_html",
]

#: Size of one gate's thumbnail, pixels.
THUMB_W, THUMB_H = 220, 200


def save_review_images(
    fig, figure_png: str | Path, thumbs_png: str | Path, *, geometry: dict | None = None
) -> list[str]:
    """Render ``fig`` (a :class:`~immuno.plot.GateReviewer` figure) once; write the full
    figure and the strip of per-gate thumbnails. Returns the gate ids, in strip order.

    Each visible panel is cut out with its title, tick labels and axis labels and fitted
    into a :data:`THUMB_W` x :data:`THUMB_H` cell (aspect kept, white margins).
    ``geometry``, a dict, receives per gate where its data area is in the figure PNG
    (``box``: left, top, right, bottom in pixels) and the data limits it shows
    (``xlim``, ``ylim``: gate space; counts per bin on a 1-D panel's y), so that the
    review page can map a pointer on the figure to the gate's own coordinates.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from .plot import REVIEW_DPI, palette_image

    fig.set_dpi(REVIEW_DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    height = rgba.shape[0]
    image = Image.fromarray(rgba).convert("RGB")
    # A palette of 256 colours holds a review figure without visible loss at a third of
    # the size (117 against 370 kB for a T tube); a thumbnail needs 64.
    with atomic_path(figure_png) as tmp:
        palette_image(image, 256).save(tmp, format="PNG", dpi=(REVIEW_DPI, REVIEW_DPI))
    renderer = canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    strip = Image.new("RGB", (THUMB_W * max(len(axes), 1), THUMB_H), "white")
    gates = []
    for i, ax in enumerate(axes):
        box = ax.get_tightbbox(renderer)
        left, right = max(int(box.x0) - 2, 0), min(int(box.x1) + 2, image.width)
        top, bottom = max(int(height - box.y1) - 2, 0), min(int(height - box.y0) + 2, height)
        cell = image.crop((left, top, right, bottom))
        cell.thumbnail((THUMB_W, THUMB_H), Image.LANCZOS)
        strip.paste(cell, (i * THUMB_W + (THUMB_W - cell.width) // 2, (THUMB_H - cell.height) // 2))
        gates.append(ax.get_gid() or "")
        if geometry is not None:
            area = ax.get_window_extent(renderer)
            geometry[gates[-1]] = {
                "box": [
                    round(float(area.x0), 2),
                    round(float(height - area.y1), 2),
                    round(float(area.x1), 2),
                    round(float(height - area.y0), 2),
                ],
                "xlim": [float(v) for v in ax.get_xlim()],
                "ylim": [float(v) for v in ax.get_ylim()],
            }
    with atomic_path(thumbs_png) as tmp:
        palette_image(strip, 64).save(tmp, format="PNG")
    return gates


#: Most vertices the page offers to drag on a polygon (a fitted polygon of 128 is thinned).
EDIT_VERTICES = 24
_THRESHOLD_METHODS = ("mindensity", "tailcut")


def _thin(vertices: np.ndarray, n: int = EDIT_VERTICES) -> list[list[float]]:
    """At most ``n`` vertices of a polygon, evenly spaced along its vertex list."""
    v = np.asarray(vertices, dtype=float)
    if len(v) > n:
        v = v[np.linspace(0, len(v), n, endpoint=False).astype(int)]
    return [[float(x), float(y)] for x, y in v]


def _clip(v, lo: float, hi: float) -> float:
    return float(min(max(v, lo), hi)) if v is not None and np.isfinite(v) else None


def gate_edits(strategy, specs: Mapping[str, Mapping], geometry: Mapping[str, dict]) -> dict:
    """What the review page needs to correct each gate of one sample.

    ``specs`` is ``{population: {"dims": [...], "method": str, "select": [...]}}`` from
    the template (the dims' names are what a correction names); ``geometry`` comes from
    :func:`save_review_images`. Per gate: ``kind`` (``threshold`` for a threshold
    method, ``polygon`` for another 2-D gate, ``rectangle`` for another 1-D gate, or
    ``None``: accept or exclude only, e.g. a boolean gate), ``dims``, ``sides``, the
    current ``value`` in gate space (a polygon thinned to :data:`EDIT_VERTICES`, an
    ellipse as that many points on it, a 2-D rectangle as a polygon whose open sides
    are the panel's edges, a 1-D range's open side ``None``) and the panel's geometry.
    """
    from .gate import EllipseGate, PolygonGate, RectangleGate

    out = {}
    for pop, geo in geometry.items():
        gate = strategy.gates.get(pop)
        spec = specs.get(pop)
        if gate is None or spec is None:
            continue
        dims = list(spec["dims"])
        sel = spec.get("select") or ["+"] * len(dims)
        sel = [sel] if isinstance(sel, str) else list(sel)
        (x0, x1), (y0, y1) = geo["xlim"], geo["ylim"]
        kind, value = None, None
        if spec["method"] == "boolean" or len(dims) not in (1, 2):
            kind = None
        elif spec["method"] in _THRESHOLD_METHODS:
            kind = "threshold"
            mid = [(x0 + x1) / 2, (y0 + y1) / 2]
            value = {}
            for i, (d, side) in enumerate(zip(dims, sel, strict=False)):
                b = None
                if isinstance(gate, RectangleGate):
                    bounds = gate.mins if side == "+" else gate.maxs
                    b = bounds[i] if i < len(bounds) else None
                value[d] = float(b) if b is not None and np.isfinite(b) else mid[i]
        elif len(dims) == 2:
            kind = "polygon"
            if isinstance(gate, PolygonGate):
                # as they are: a vertex beyond the panel (a singlet gate's open end) stays
                value = _thin(gate.vertices)
            elif isinstance(gate, EllipseGate):
                from .autogate import ellipse_vertices

                value = _thin(
                    ellipse_vertices(
                        gate.mean, gate.covariance, gate.distance_square, EDIT_VERTICES
                    )
                )
            elif isinstance(gate, RectangleGate):
                lims = [(x0, x1), (y0, y1)]
                lo = [_clip(m, a, b) for m, (a, b) in zip(gate.mins, lims, strict=False)]
                hi = [_clip(m, a, b) for m, (a, b) in zip(gate.maxs, lims, strict=False)]
                lx, ly = lo[0] if lo[0] is not None else x0, lo[1] if lo[1] is not None else y0
                hx, hy = hi[0] if hi[0] is not None else x1, hi[1] if hi[1] is not None else y1
                value = [[lx, ly], [hx, ly], [hx, hy], [lx, hy]]
        else:
            kind = "rectangle"
            lo = gate.mins[0] if isinstance(gate, RectangleGate) and gate.mins else None
            hi = gate.maxs[0] if isinstance(gate, RectangleGate) and gate.maxs else None
            # an open side stays open (null), drawn at the panel's edge
            value = {
                "min": [float(lo) if lo is not None and np.isfinite(lo) else None],
                "max": [float(hi) if hi is not None and np.isfinite(hi) else None],
            }
        out[pop] = {"kind": kind, "dims": dims, "sides": sel, "value": value, **geo}
    return out


def write_edit_script(sample_id: str, edits: dict, path: str | Path) -> Path:
    """``edit/<sample_id>.js``: the sample's :func:`gate_edits` as a script the page
    loads when a reviewer opens the sample (a page opened from a file may load a script
    but not fetch JSON)."""
    data = json.dumps({"id": sample_id, "gates": edits}, separators=(",", ":"))
    text = "(window.EDIT=window.EDIT||{})[" + json.dumps(sample_id) + "]=" + data + ";\n"
    text = text.replace("</", "<\\/")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def review_records(counts: pd.DataFrame, gate_order: Mapping[str, Sequence[str]]) -> list[dict]:
    """One record per drawn sample for the page: ids, visit, flags, per-gate values.

    ``counts`` is ``results/counts.tsv``; ``gate_order`` is ``{sample_id: gate ids}``
    as :func:`save_review_images` returned them (samples without a figure are left
    out). Each gate is ``[gate, count, percent of parent, qc_flag]``.
    """
    out = []
    counts = counts.astype({"sample_id": str})
    for sid, rows in counts.groupby("sample_id", sort=False):
        if sid not in gate_order:
            continue
        by_pop = rows.set_index("population")
        first = rows.iloc[0]
        gates = []
        for gate in gate_order[sid]:
            if gate in by_pop.index:
                r = by_pop.loc[gate]
                pct = r.get("percent_of_parent")
                gates.append(
                    [
                        gate,
                        int(r["count"]) if pd.notna(r["count"]) else None,
                        round(float(pct), 2) if pd.notna(pct) else None,
                        str(r["qc_flag"]) if pd.notna(r["qc_flag"]) else "",
                    ]
                )
            else:
                gates.append([gate, None, None, ""])
        visit = first.get("visit_month")
        out.append(
            {
                "id": sid,
                "patient": str(first.get("patient_id", "")),
                "visit": float(visit) if pd.notna(visit) else None,
                "panel": str(first.get("panel", "")),
                "gates": gates,
            }
        )
    return out


def _page_template() -> str:
    """``data/review.html``: the page's markup, style and script, with ``__TITLE__`` and
    ``__DATA__`` (the records as JSON) to fill."""
    from importlib.resources import files

    return files("immuno").joinpath("data/review.html").read_text(encoding="utf-8")


def write_review_page(records: list[dict], path: str | Path, *, title: str = "Gate review") -> Path:
    """Write the static review page (``index.html`` beside ``figures/`` and ``thumbs/``)."""
    path = Path(path)
    data = json.dumps(
        {"samples": records, "thumb": [THUMB_W, THUMB_H]}, separators=(",", ":")
    ).replace("</", "<\\/")  # no "</script>" can end the data early
    page = _page_template().replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


_CORRECTIONS_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;"
    "font-variant-numeric:tabular-nums}.hash{font-family:monospace;font-size:12px}"
)


def write_corrections_html(
    table: pd.DataFrame,
    path: str | Path,
    *,
    source: str | None = None,
    sha256: str | None = None,
    superseded: int = 0,
) -> Path:
    """The applied corrections as a page for the report: per correction the sample,
    population, action, count and percent of parent before (automated gate) and after,
    who, when and why; ``source`` and ``sha256`` name the corrections file."""

    def cell(v, cls=""):
        text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else v
        if isinstance(text, float):
            text = f"{text:.2f}"
        elif isinstance(text, int | np.integer):
            text = f"{int(text):,}"
        return f"<td{f' class={cls!r}' if cls else ''}>{html.escape(str(text))}</td>"

    from .corrections import CORRECTION_HEADERS

    keys = [k for k in CORRECTION_HEADERS if k != "line"]
    head = [CORRECTION_HEADERS[k] for k in keys]
    numeric = {"count_before", "count_after", "percent_before", "percent_after"}
    rows = "".join(
        "<tr>" + "".join(cell(r[k], "n" if k in numeric else "") for k in keys) + "</tr>"
        for r in table.to_dict("records")
    )
    if source is None:
        about = "<p>No corrections file: every gate is the automated one.</p>"
    else:
        about = (
            f"<p>{len(table)} corrections applied from <code>{html.escape(source)}</code>"
            + (
                f" (SHA-256 <span class='hash'>{html.escape(sha256)}</span>)"
                if sha256
                else " (the file does not exist yet)"
            )
            + (f"; {superseded} earlier entries superseded by later ones" if superseded else "")
            + ". Before: the automated gate; after: the reviewer's. Populations below a "
            "corrected gate were fitted again on it.</p>"
        )
    table_html = (
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{rows}</table>"
        if len(table)
        else ""
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Gate corrections"
        f"</title><style>{_CORRECTIONS_STYLE}</style></head><body><h1>Gate corrections</h1>"
        f"{about}{table_html}</body></html>"
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Path(path)
