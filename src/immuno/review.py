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


def save_review_images(fig, figure_png: str | Path, thumbs_png: str | Path) -> list[str]:
    """Render ``fig`` (a :class:`~immuno.plot.GateReviewer` figure) once; write the full
    figure and the strip of per-gate thumbnails. Returns the gate ids, in strip order.

    Each visible panel is cut out with its title, tick labels and axis labels and fitted
    into a :data:`THUMB_W` x :data:`THUMB_H` cell (aspect kept, white margins).
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
    with atomic_path(thumbs_png) as tmp:
        palette_image(strip, 64).save(tmp, format="PNG")
    return gates


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

    head = [
        "sample",
        "population",
        "action",
        "events before",
        "events after",
        "% of parent before",
        "% of parent after",
        "qc_flag",
        "reviewer",
        "date",
        "reason",
    ]
    keys = [
        "sample_id",
        "population",
        "action",
        "count_before",
        "count_after",
        "percent_before",
        "percent_after",
        "qc_flag",
        "reviewer",
        "date",
        "reason",
    ]
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
