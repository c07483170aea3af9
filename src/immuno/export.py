"""Exports: the realised gates and the gated events, in the formats other tools read.

Calling convention: every export reads the sample's FCS file (read-only) and its
realised gates (``results/gates/<sample_id>.xml``, Gating-ML 2.0, as the workflow
writes them) and writes one output atomically (temporary file + rename):

* :func:`export_flowjo` ``(samples, out_path)``: a FlowJo 10 workspace (``.wsp``)
  of the cohort, every sample with its own gates, compensation and transforms;
* :func:`export_anndata` ``(samples, panel, out_path)``: an AnnData ``.h5ad`` of
  one panel, events x markers, with the study columns and one boolean column per
  population in ``.obs``;
* :func:`export_gated_fcs` ``(fcs_path, gates_xml, population, out_path)``: the
  events of one population as an FCS 3.1 file (raw values, the original keywords);
  :func:`export_gated_cohort` does it for every sample of a cohort.

``samples`` is a table (a :class:`pandas.DataFrame` or a list of mappings) with one
row per sample and at least the columns ``sample_id``, ``fcs_path`` and ``gates``
(the sample's Gating-ML file); :func:`gated_samples` makes it from the sample
sheet and the gates folder. ``patient_id``, ``dose_group``, ``visit_month`` and
``panel`` are carried along where present.

FlowJo conventions (see ``docs/gating-exactness.md``, "Exporting to FlowJo"):
FlowJo stores rectangle and polygon coordinates in channel units (``$PnG``
applied, ``Time`` multiplied by ``$TIMESTEP``) and draws them on each
parameter's display transform; a compensated dimension is the parameter
``Comp-<detector>`` of the sample's spillover matrix (``Acquisition-defined``,
from the file's ``$SPILLOVER``); ellipses are stored as foci and edge points in
the 256-bin display. The writer needs no FlowKit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .compensate import Compensation
from .errors import ConfigError, FCSError, GatingError, GatingFileError
from .gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    EventSpace,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
)
from .gatingml import DATATYPE_NS, GATING_NS, TRANSFORMS_NS, load_gatingml
from .transform import Asinh, FlowJoLog, Linear, Log, Logicle, Transform
from .util import atomic_path, ensure_free_space

__all__ = [
    "FLOWJO_VERSION",
    "COMP_PREFIX",
    "MAX_EVENTS_PER_SAMPLE",
    "gated_samples",
    "export_flowjo",
    "export_anndata",
    "export_gated_fcs",
    "export_gated_cohort",
]

log = logging.getLogger(__name__)

#: FlowJo version the workspace declares (FlowKit and FlowJo need 10 or later).
FLOWJO_VERSION = "10.8.1"
#: Prefix of a compensated parameter in the workspace (FlowJo's default).
COMP_PREFIX = "Comp-"
#: Name FlowJo gives the matrix found in the file's own ``$SPILLOVER`` keyword.
ACQUISITION_MATRIX = "Acquisition-defined"
#: Default cap on the events one sample contributes to an AnnData export.
MAX_EVENTS_PER_SAMPLE = 20000
#: FlowJo draws gates in a display of this many bins per axis (ellipse coordinates).
DISPLAY_BINS = 256
#: Polygons are clipped to this many times ``$PnR`` (channel units), far beyond any event.
_CLIP_RANGES = 1024
#: Study columns carried from the sample sheet into exports.
STUDY_COLUMNS = ("sample_id", "patient_id", "visit_month", "dose_group", "panel")

_G, _T, _D = f"{{{GATING_NS}}}", f"{{{TRANSFORMS_NS}}}", f"{{{DATATYPE_NS}}}"
# Characters XML 1.0 cannot hold (FCS TEXT values sometimes have them).
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# --------------------------------------------------------------------------- samples


def gated_samples(
    sheet, gates_dir: str | os.PathLike, memberships_dir: str | os.PathLike | None = None
):
    """The samples of ``sheet`` that have realised gates, with their ``gates`` file.

    Parameters
    ----------
    sheet
        The sample sheet as :func:`immuno.cohort.load_sample_sheet` returns it
        (``fcs_path`` resolved).
    gates_dir
        The folder of ``<sample_id>.xml`` Gating-ML files (``results/gates``).
    memberships_dir
        The folder of ``<sample_id>.npz`` event memberships its gating job stored
        (``results/memberships``, :mod:`immuno.memberships`): the exports read them
        instead of applying the gates again. Without it, or for a sample without one,
        the gates are applied.

    Returns
    -------
    pandas.DataFrame
        The rows of ``sheet`` whose Gating-ML file exists (a sample that failed
        has none), in sheet order, with a ``gates`` column (the file's path) and a
        ``memberships`` column (the file's path, or empty).
    """
    gates_dir = Path(gates_dir)
    out = sheet.copy()
    out["gates"] = [str(gates_dir / f"{sid}.xml") for sid in out["sample_id"]]
    stored = [
        Path(memberships_dir) / f"{sid}.npz" if memberships_dir else None
        for sid in out["sample_id"]
    ]
    out["memberships"] = [str(p) if p is not None and p.is_file() else "" for p in stored]
    keep = [Path(p).is_file() for p in out["gates"]]
    missing = [sid for sid, k in zip(out["sample_id"], keep, strict=True) if not k]
    if missing:
        log.info("%d samples have no realised gates (failed) and are not exported", len(missing))
    return out[keep].reset_index(drop=True)


def _memberships(rec: Mapping, fcs) -> tuple[dict, dict]:
    """``(masks, parents)`` of one sample: its stored memberships when the row names a
    file (checked against the FCS file's events), else its gates applied to ``fcs``."""
    path = str(rec.get("memberships") or "")
    if not path:
        result = load_gatingml(rec["gates"]).apply(fcs, sample_id=str(rec["sample_id"]))
        return result.masks, result.parents
    from .memberships import read_memberships

    masks, parents = read_memberships(path)
    n = {len(m) for m in masks.values()}
    if n and n != {fcs.n_events}:
        raise GatingFileError(
            f"memberships hold {n.pop()} events, the FCS file {fcs.n_events}",
            file=path,
            sample=str(rec["sample_id"]),
            hint="the FCS file changed after gating: rerun the workflow",
        )
    return masks, parents


def _records(samples, required: Iterable[str]) -> list[dict]:
    import pandas as pd

    if isinstance(samples, pd.DataFrame):
        recs = samples.to_dict("records")
    else:
        recs = [dict(r) for r in samples]
    for col in required:
        for r in recs:
            if col not in r or r[col] is None or str(r[col]) == "":
                raise ConfigError(
                    f"the samples table has no {col!r} for a sample",
                    sample=str(r.get("sample_id") or "") or None,
                    field=col,
                    hint=f"one row per sample with {', '.join(required)} "
                    "(see immuno.export.gated_samples)",
                )
    return recs


# --------------------------------------------------------------------------- FlowJo


@dataclass
class _FJTransform:
    """A FlowJo display transform: its XML form and the equivalent engine transform."""

    kind: str
    attrs: tuple[tuple[str, float], ...]
    transform: Transform

    def key(self) -> tuple:
        return (self.kind, self.attrs)


def _num(x: float) -> str:
    """Shortest decimal that reads back as the same float64."""
    x = float(x)
    if not math.isfinite(x):
        raise GatingFileError(f"cannot write the non-finite number {x} to a FlowJo workspace")
    return repr(x)


def _flowjo_form(t: Transform | None, scale: float) -> _FJTransform | None:
    """FlowJo's form of ``t`` applied to channel values divided by ``scale``.

    FlowJo channel values are Gating-ML channel values times ``scale``
    (``$TIMESTEP`` on the time channel, else 1). Linear, logicle and arcsinh are
    scale-covariant in ``T`` (``f_sT(s x) = f_T(x)``), so the same display needs
    ``T`` (and a linear ``A``) times ``scale``. Gating-ML ``flog`` becomes FlowJo's
    ``log`` (``offset = T 10^-M``; FlowJo puts values below the offset at 0).
    ``None``: no FlowJo equivalent (hyperlog, ratios).
    """
    s = float(scale)
    if t is None:
        return None
    if isinstance(t, Linear):
        lo, hi = -s * t.A, s * t.T
        return _FJTransform(
            "linear", (("minRange", lo), ("maxRange", hi), ("gain", 1.0)), Linear(T=hi, A=-lo)
        )
    if isinstance(t, Logicle):
        T = s * t.T
        attrs = (("length", 256.0), ("T", T), ("W", t.W), ("M", t.M), ("A", t.A))
        return _FJTransform("logicle", attrs, Logicle(T, t.W, t.M, t.A))
    if isinstance(t, Asinh):
        T = s * t.T
        attrs = (("length", 256.0), ("maxRange", T), ("T", T), ("M", t.M), ("A", t.A))
        return _FJTransform("fasinh", attrs, Asinh(T=T, M=t.M, A=t.A))
    if isinstance(t, Log):
        offset = s * t.T * 10.0 ** (-t.M)
        attrs = (("offset", offset), ("decades", t.M))
        return _FJTransform("log", attrs, FlowJoLog(offset=offset, decades=t.M))
    return None


def _default_form(top: float) -> _FJTransform:
    """FlowJo's default linear display ``0..top`` (channel units)."""
    return _FJTransform(
        "linear", (("minRange", 0.0), ("maxRange", top), ("gain", 1.0)), Linear(T=top, A=0.0)
    )


def _time_step(text: Mapping[str, str], channel: str) -> float:
    """``$TIMESTEP`` for the time channel (FlowJo shows time in seconds), else 1."""
    if channel.strip().lower() != "time":
        return 1.0
    from .read import time_step

    return time_step(text) or 1.0


def _channel_range(text: Mapping[str, str], channel: str) -> float:
    """``$PnR`` of ``channel`` (262144 when absent or unreadable)."""
    n = 1
    while f"$P{n}N" in text:
        if text[f"$P{n}N"].strip() == channel:
            try:
                r = float(text.get(f"$P{n}R", "").strip())
            except ValueError:
                break
            return r if math.isfinite(r) and r > 0 else 262144.0
        n += 1
    return 262144.0


class _Sample:
    """One sample of the workspace: its channels, compensation and display transforms."""

    def __init__(self, sample_id: str, fcs_path: str, strategy: GatingStrategy, version, text):
        self.sample_id = sample_id
        self.fcs_path = fcs_path
        self.strategy = strategy
        self.version = version
        self.text = text
        self.comp, self.comp_name = self._compensation()
        self.scale: dict[str, float] = {}
        self.top: dict[str, float] = {}
        self.display: dict[str, _FJTransform] = {}
        self._choose_displays()

    def error(self, msg: str, *, field=None, hint=None) -> GatingFileError:
        return GatingFileError(
            msg, file=self.fcs_path, sample=self.sample_id, field=field, hint=hint
        )

    # -- compensation
    def _compensation(self) -> tuple[Compensation | None, str]:
        ids = {
            d.compensation
            for g in self.strategy.gates.values()
            for d in g.dims
            if d.compensation not in (None, "", "uncompensated")
        }
        if not ids:
            return None, ""
        if len(ids) > 1:
            raise self.error(
                f"the gates use {len(ids)} compensations ({', '.join(sorted(ids))}); a FlowJo "
                "sample has one spillover matrix",
                hint="compensate every gate of a sample with the same matrix",
            )
        (cid,) = ids
        if cid == "FCS" and "FCS" not in self.strategy.compensations:
            from .read import FCSData

            probe = FCSData(self.fcs_path, self.version, dict(self.text), [], [], np.empty((0, 0)))
            spill = probe.spillover()
            if spill is None:
                # Gating-ML: a file without a matrix is used uncompensated.
                return None, ""
            return Compensation(spill[0], spill[1], id="FCS"), ACQUISITION_MATRIX
        comp = self.strategy.compensations.get(cid)
        if comp is None:
            raise self.error(f"unknown compensation {cid!r}", field=cid)
        if comp.inverted or list(comp.fluorochromes) != list(comp.detectors):
            raise self.error(
                f"compensation {cid!r} is not a square spillover matrix over detectors",
                field=cid,
                hint="FlowJo spillover matrices map each detector onto itself",
            )
        return comp, cid

    def compensated(self, d: Dimension) -> bool:
        return (
            self.comp is not None
            and d.compensation not in (None, "", "uncompensated")
            and d.channel in self.comp.detectors
        )

    def parameter(self, d: Dimension) -> str:
        """The FlowJo parameter name of a gate dimension."""
        if d.ratio:
            raise self.error(
                f"dimension {d.label()} is a ratio of two channels, which FlowJo gates cannot use",
                field=d.channel,
            )
        return COMP_PREFIX + d.channel if self.compensated(d) else d.channel

    def gate_transform(self, d: Dimension) -> Transform | None:
        return None if not d.transform else self.strategy.transform(d.transform)

    # -- display transforms
    def _choose_displays(self) -> None:
        gates = [g for g in self.strategy.gates.values() if not isinstance(g, BooleanGate)]
        # Shapes first: their edges are straight only on their own display.
        gates.sort(key=lambda g: isinstance(g, RectangleGate))
        for g in gates:
            for d in g.dims:
                self.parameter(d)  # ratio dims fail here, naming the sample
                ch = d.channel
                if ch not in self.scale:
                    # A strategy read with scaling "flowjo" holds Time in seconds already.
                    seconds = self.strategy.scaling == "flowjo"
                    self.scale[ch] = 1.0 if seconds else _time_step(self.text, ch)
                    self.top[ch] = _channel_range(self.text, ch)
                t = self.gate_transform(d)
                if t is not None and (t.bound_min is not None or t.bound_max is not None):
                    log.warning(
                        "%s: transform %r of %s has Gating-ML bounds, which FlowJo does not "
                        "apply; events beyond them may be gated differently",
                        self.sample_id,
                        d.transform,
                        ch,
                    )
                form = _flowjo_form(t, self.scale[ch])
                if ch not in self.display and form is not None:
                    self.display[ch] = form
        for ch in self.scale:
            self.display.setdefault(ch, _default_form(self.scale[ch] * self.top[ch]))

    def affine(self, d: Dimension) -> bool:
        """Whether the display is an affine function of the gate's own space on ``d``.

        Then straight edges stay straight and ellipses stay ellipses, so shapes are
        written exactly.
        """
        if self.same_scale(d):
            return True
        t = self.gate_transform(d)
        return (t is None or isinstance(t, Linear)) and self.display[d.channel].kind == "linear"

    def same_scale(self, d: Dimension) -> bool:
        """Whether FlowJo's display of ``d`` is the gate's own scale (0..1 coordinates)."""
        form = _flowjo_form(self.gate_transform(d), self.scale[d.channel])
        return form is not None and form.key() == self.display[d.channel].key()

    def to_channel(self, d: Dimension, v: float) -> float:
        """A gate-space coordinate in FlowJo channel units."""
        t = self.gate_transform(d)
        x = float(v) if t is None else float(t.inverse(np.array([float(v)]))[0])
        return x * self.scale[d.channel]

    def to_display(self, d: Dimension, values: np.ndarray) -> np.ndarray:
        """Gate-space values on FlowJo's display scale (0..1 over the display range)."""
        t = self.gate_transform(d)
        x = np.asarray(values, dtype=np.float64)
        x = x if t is None else t.inverse(x)
        return self.display[d.channel].transform.apply(x * self.scale[d.channel])

    def clip_box(self, d: Dimension) -> tuple[float, float]:
        """Gate-space box that holds every event: +-1024 x ``$PnR`` channel units."""
        r = _CLIP_RANGES * self.top[d.channel]
        t = self.gate_transform(d)
        if t is None:
            return -r, r
        lo, hi = (float(v) for v in t.apply(np.array([-r, r])))
        if not math.isfinite(lo):  # log scales: nothing at or below zero
            lo = float(t.apply(np.array([r * 2.0**-60]))[0])
        return lo, hi


def _clip_polygon(vertices: np.ndarray, box: list[tuple[float, float]]) -> np.ndarray:
    """Clip a polygon to an axis-aligned box (Sutherland-Hodgman, exact rationals).

    New vertices are the exact intersections of the original edges with the box,
    rounded once to float64, so the kept edges are unmoved to the last bit.
    """
    pts = [(Fraction(float(x)), Fraction(float(y))) for x, y in vertices]
    for axis in (0, 1):
        for bound, keep_above in ((box[axis][0], True), (box[axis][1], False)):
            b = Fraction(bound)

            def inside(p, b=b, keep_above=keep_above, axis=axis):
                return p[axis] >= b if keep_above else p[axis] <= b

            out = []
            for i, cur in enumerate(pts):
                prev = pts[i - 1]
                if inside(cur):
                    if not inside(prev):
                        out.append(_cross(prev, cur, axis, b))
                    out.append(cur)
                elif inside(prev):
                    out.append(_cross(prev, cur, axis, b))
            pts = out
            if not pts:
                return np.zeros((0, 2))
    return np.array([[float(x), float(y)] for x, y in pts], dtype=np.float64)


def _cross(p, q, axis: int, b: Fraction):
    t = (b - p[axis]) / (q[axis] - p[axis])
    x = p[0] + t * (q[0] - p[0])
    y = p[1] + t * (q[1] - p[1])
    return (b, y) if axis == 0 else (x, b)


def _densify(vertices: np.ndarray, pieces: int = 32) -> np.ndarray:
    """Each edge cut into ``pieces`` (for a display on which edges are curved)."""
    out = []
    k = len(vertices)
    for i in range(k):
        a, b = vertices[i], vertices[(i + 1) % k]
        for j in range(pieces):
            out.append(a + (b - a) * (j / pieces))
    return np.array(out)


def _ellipse_polygon(gate: EllipseGate, n: int = 256) -> np.ndarray:
    """``n`` points on an ellipse (gate space), for a display on which it is not one."""
    vals, vecs = np.linalg.eigh(np.asarray(gate.covariance, dtype=np.float64))
    radii = np.sqrt(np.maximum(vals, 0) * gate.distance_square)
    ang = 2 * np.pi * np.arange(n) / n
    circle = np.stack([np.cos(ang) * radii[0], np.sin(ang) * radii[1]], axis=1)
    return circle @ vecs.T + np.asarray(gate.mean, dtype=np.float64)


class _WspWriter:
    """Builds the workspace XML (ElementTree; FlowKit is never used to write)."""

    def __init__(self):
        ET.register_namespace("gating", GATING_NS)
        ET.register_namespace("transforms", TRANSFORMS_NS)
        ET.register_namespace("data-type", DATATYPE_NS)
        self.root = ET.Element(
            "Workspace",
            {"version": "20.0", "flowJoVersion": FLOWJO_VERSION, "curGroup": "All Samples"},
        )
        self.next_id = 0

    def gate_id(self) -> str:
        self.next_id += 1
        return f"ID{self.next_id}"


def _clean(value: object) -> str:
    return _XML_BAD.sub("", str(value))


def _graph(parent: ET.Element, params: list[str]) -> None:
    """A plot of the gate's own axes, so FlowJo opens the gate where it was drawn."""
    kind = "Histogram" if len(params) == 1 else "Pseudocolor"
    graph = ET.SubElement(parent, "Graph", {"type": kind})
    for axis, name in zip(("x", "y"), [*params, ""][:2], strict=True):
        ET.SubElement(graph, "Axis", {"dimension": axis, "name": name, "label": "", "auto": "auto"})


def _matrix_element(parent: ET.Element, s: _Sample) -> None:
    comp = s.comp
    m = ET.SubElement(
        parent,
        _T + "spilloverMatrix",
        {
            "spectral": "0",
            "prefix": COMP_PREFIX,
            "suffix": "",
            "name": s.comp_name,
            "editable": "0",
            "version": f"FlowJo-{FLOWJO_VERSION}",
            "status": "FINALIZED",
            _T + "id": f"{s.comp_name}:{s.sample_id}",
        },
    )
    params = ET.SubElement(m, _D + "parameters")
    for det in comp.detectors:
        ET.SubElement(
            params, _D + "parameter", {_D + "name": det, "userProvidedCompInfix": COMP_PREFIX + det}
        )
    for i, src in enumerate(comp.detectors):
        row = ET.SubElement(
            m,
            _T + "spillover",
            {_D + "parameter": src, "userProvidedCompInfix": COMP_PREFIX + src},
        )
        for j, det in enumerate(comp.detectors):
            ET.SubElement(
                row,
                _T + "coefficient",
                {_D + "parameter": det, _T + "value": _num(comp.matrix[i, j])},
            )


def _transforms_element(parent: ET.Element, s: _Sample) -> None:
    box = ET.SubElement(parent, "Transformations")
    names: list[tuple[str, str]] = []
    for ch in s.display:
        names.append((ch, ch))
        if s.comp is not None and ch in s.comp.detectors:
            # FlowJo names the compensated parameter; FlowKit looks the transform up
            # by the detector: both are written.
            names.append((ch, COMP_PREFIX + ch))
    for ch, pname in names:
        form = s.display[ch]
        el = ET.SubElement(box, _T + form.kind, {_T + k: _num(v) for k, v in form.attrs})
        if form.kind == "linear":  # FlowJo's own attribute, not namespaced
            el.attrib.pop(_T + "gain")
            el.set("gain", "1")
        ET.SubElement(el, _D + "parameter", {_D + "name": pname})


def _keywords_element(parent: ET.Element, s: _Sample, rec: Mapping) -> None:
    box = ET.SubElement(parent, "Keywords")
    ET.SubElement(
        box, "Keyword", {"name": "FJ_FCS_VERSION", "value": s.version.removeprefix("FCS")}
    )
    for key, value in s.text.items():
        ET.SubElement(box, "Keyword", {"name": _clean(key), "value": _clean(value).strip()})
    for col in STUDY_COLUMNS:
        if col in rec and rec[col] is not None and str(rec[col]) != "nan":
            ET.SubElement(box, "Keyword", {"name": col, "value": _clean(rec[col])})


def _rectangle(el: ET.Element, s: _Sample, g: RectangleGate) -> None:
    shape = ET.SubElement(
        el,
        _G + "RectangleGate",
        {"eventsInside": "0" if g.complement else "1", "percentX": "0", "percentY": "0"},
    )
    bounds = []
    empty = False
    for j, d in enumerate(g.dims):
        lo = g.mins[j] if j < len(g.mins) else None
        hi = g.maxs[j] if j < len(g.maxs) else None
        lo = None if lo is None else s.to_channel(d, lo)
        hi = None if hi is None else s.to_channel(d, hi)
        if (lo is not None and math.isnan(lo)) or (hi is not None and math.isnan(hi)):
            raise s.error(f"gate {g.id!r} has a bound that maps to NaN", field=g.id)
        if lo is not None and lo == math.inf or hi is not None and hi == -math.inf:
            empty = True
        lo = None if lo is None or lo == -math.inf else lo
        hi = None if hi is None or hi == math.inf else hi
        bounds.append((lo, hi))
    if empty:
        # No event can be inside (a failed fit realises as min = +inf): 0 <= x < 0.
        bounds = [(0.0, 0.0)] + [(None, None)] * (len(bounds) - 1)
    for d, (lo, hi) in zip(g.dims, bounds, strict=True):
        attrs = {}
        if lo is not None:
            attrs[_G + "min"] = _num(lo)
        if hi is not None:
            attrs[_G + "max"] = _num(hi)
        de = ET.SubElement(shape, _G + "dimension", attrs)
        ET.SubElement(de, _D + "fcs-dimension", {_D + "name": s.parameter(d)})


def _polygon(el: ET.Element, s: _Sample, g, vertices: np.ndarray, complement: bool) -> None:
    shape = ET.SubElement(
        el,
        _G + "PolygonGate",
        {"eventsInside": "0" if complement else "1", "quadId": "-1", "gateResolution": "256"},
    )
    box = [s.clip_box(d) for d in g.dims]
    v = np.asarray(vertices, dtype=np.float64)
    lo = np.array([b[0] for b in box])
    hi = np.array([b[1] for b in box])
    if np.any(v < lo) or np.any(v > hi):
        v = _clip_polygon(v, box)
        if len(v) < 3:  # wholly beyond every event: an empty population
            v = np.array([hi, hi + [1.0, 0.0], hi + [0.0, 1.0]])
    if not all(s.affine(d) for d in g.dims):
        log.warning(
            "%s: population %r is drawn on a display that curves its edges; its polygon is "
            "written with 32 points per edge (close to, not exactly, the pipeline's gate)",
            s.sample_id,
            g.id,
        )
        v = _densify(v)
    for d in g.dims:
        de = ET.SubElement(shape, _G + "dimension")
        ET.SubElement(de, _D + "fcs-dimension", {_D + "name": s.parameter(d)})
    for x, y in v:
        ve = ET.SubElement(shape, _G + "vertex")
        for d, c in zip(g.dims, (x, y), strict=True):
            ET.SubElement(ve, _G + "coordinate", {_D + "value": _num(s.to_channel(d, c))})


def _ellipse(el: ET.Element, s: _Sample, g: EllipseGate) -> None:
    if len(g.dims) != 2:
        raise s.error(
            f"ellipsoid {g.id!r} has {len(g.dims)} dimensions; FlowJo draws 2", field=g.id
        )
    if not all(s.affine(d) for d in g.dims):
        log.warning(
            "%s: ellipse %r is gated on a scale that is not its display in FlowJo; it is "
            "written as a 256-point polygon",
            s.sample_id,
            g.id,
        )
        _polygon(el, s, g, _ellipse_polygon(g), g.complement)
        return
    mean = np.asarray(g.mean, dtype=np.float64)
    cov = np.asarray(g.covariance, dtype=np.float64)
    # The display is affine in each gate dimension: slope k and the centre's image
    # (the identity when the display is the gate's own transform).
    centre, k = mean.copy(), np.ones(2)
    for j, d in enumerate(g.dims):
        if s.same_scale(d):
            continue
        h = math.sqrt(max(cov[j, j] * g.distance_square, 1e-300))
        lo, mid, hi = s.to_display(d, np.array([mean[j] - h, mean[j], mean[j] + h]))
        centre[j], k[j] = mid, (hi - lo) / (2 * h)
    shown = np.diag(k) @ cov @ np.diag(k) * g.distance_square
    vals, vecs = np.linalg.eigh(shown)
    if not vals[0] > 0:
        raise s.error(f"ellipse {g.id!r} is degenerate", field=g.id)
    b, a = math.sqrt(vals[0]), math.sqrt(vals[1])
    major, minor = vecs[:, 1], vecs[:, 0]
    c = math.sqrt(max(a * a - b * b, 0.0))
    foci = [centre - c * major, centre + c * major]
    # FlowJo's order: the two ends of the major axis, then of the minor axis.
    edge = [centre + a * major, centre - a * major, centre + b * minor, centre - b * minor]
    shape = ET.SubElement(el, _G + "EllipsoidGate", {"eventsInside": "0" if g.complement else "1"})
    for d in g.dims:
        de = ET.SubElement(shape, _G + "dimension")
        ET.SubElement(de, _D + "fcs-dimension", {_D + "name": s.parameter(d)})
    for tag, pts in (("foci", foci), ("edge", edge)):
        box = ET.SubElement(shape, _G + tag)
        for p in pts:
            ve = ET.SubElement(box, _G + "vertex")
            for c_ in p:
                ET.SubElement(ve, _G + "coordinate", {_D + "value": _num(c_ * DISPLAY_BINS)})


def _population_name(gid: str) -> str:
    # A FlowJo path separates populations with "/": a name holds none.
    return gid.rsplit("/", 1)[-1]


def _subpopulations(
    w: _WspWriter, parent_el: ET.Element, s: _Sample, pop: str | None, parent_gid: str | None
) -> None:
    strategy = s.strategy
    kids = strategy.children(pop)
    if not kids:
        return
    box = ET.SubElement(parent_el, "Subpopulations")
    seen: dict[str, str] = {}
    for gid in kids:
        g = strategy.gates[gid]
        name = _population_name(gid)
        if name in seen:
            raise s.error(
                f"populations {seen[name]!r} and {gid!r} would both be {name!r} under the same "
                "parent in FlowJo",
                field=gid,
                hint="give sibling populations distinct names",
            )
        seen[name] = gid
        if isinstance(g, BooleanGate):
            node = _boolean(box, s, g, name)
            _subpopulations(w, node, s, gid, parent_gid)
            continue
        node = ET.SubElement(box, "Population", {"name": name, "annotation": "", "owningGroup": ""})
        _graph(node, [s.parameter(d) for d in g.dims])
        my_id = w.gate_id()
        attrs = {_G + "id": my_id}
        if parent_gid is not None:
            attrs[_G + "parent_id"] = parent_gid
        gate_el = ET.SubElement(node, "Gate", attrs)
        if isinstance(g, RectangleGate):
            _rectangle(gate_el, s, g)
        elif isinstance(g, PolygonGate):
            _polygon(gate_el, s, g, g.vertices, g.complement)
        elif isinstance(g, EllipseGate):
            _ellipse(gate_el, s, g)
        else:
            raise s.error(f"population {gid!r} is a {type(g).__name__}", field=gid)
        for shape in gate_el:
            shape.set(_G + "id", my_id)
            if parent_gid is not None:
                shape.set(_G + "parent_id", parent_gid)
        _subpopulations(w, node, s, gid, my_id)


def _boolean(box: ET.Element, s: _Sample, g: BooleanGate, name: str) -> ET.Element:
    tag = {"and": "AndNode", "or": "OrNode", "not": "NotNode"}.get(g.op)
    if tag is None or g.complement or any(c for _, c in g.operands):
        raise s.error(
            f"boolean population {g.id!r} complements an operand or itself, which a FlowJo "
            "boolean gate cannot",
            field=g.id,
            hint="define the complement as its own 'not' population and refer to it",
        )
    node = ET.SubElement(box, tag, {"name": name, "annotation": "", "owningGroup": ""})
    deps = ET.SubElement(node, "Dependents")
    for ref, _ in g.operands:
        path = "/".join(_population_name(p) for p in s.strategy.path(ref))
        ET.SubElement(deps, "Dependent", {"name": path})
    return node


def _sample_element(w: _WspWriter, rec: Mapping, number: int) -> tuple[ET.Element, str]:
    from .read import read_text

    sid = str(rec["sample_id"])
    fcs_path = str(rec["fcs_path"])
    strategy = load_gatingml(rec["gates"])
    version, text = read_text(fcs_path)
    s = _Sample(sid, fcs_path, strategy, version, text)
    el = ET.Element("Sample")
    ET.SubElement(
        el, "DataSet", {"uri": Path(fcs_path).resolve().as_uri(), "sampleID": str(number)}
    )
    if s.comp is not None:
        _matrix_element(el, s)
    _transforms_element(el, s)
    _keywords_element(el, s, rec)
    name = Path(fcs_path).name
    node = ET.SubElement(
        el,
        "SampleNode",
        {
            "name": name,
            "annotation": "",
            "owningGroup": "",
            "count": (text.get("$TOT") or "0").strip(),
            "sampleID": str(number),
        },
    )
    _subpopulations(w, node, s, None, None)
    return el, name


def _group(parent: ET.Element, name: str, ids: list[str]) -> None:
    node = ET.SubElement(parent, "GroupNode", {"name": name, "annotation": "", "owningGroup": name})
    group = ET.SubElement(node, "Group", {"name": name})
    ET.SubElement(group, "Criteria")
    refs = ET.SubElement(group, "SampleRefs")
    for i in ids:
        ET.SubElement(refs, "SampleRef", {"sampleID": i})


def _declare_namespaces(data: bytes) -> bytes:
    """Declare the three Gating-ML prefixes on ``<Workspace>``, as FlowJo does.

    ElementTree declares a namespace only where one is used; readers (FlowKit)
    look for the gating namespace on the root even in a workspace without gates.
    """
    start = data.index(b"<Workspace")
    end = data.index(b">", start)
    head = data[start:end]
    extra = b"".join(
        b' xmlns:%s="%s"' % (p.encode(), ns.encode())
        for p, ns in (
            ("gating", GATING_NS),
            ("transforms", TRANSFORMS_NS),
            ("data-type", DATATYPE_NS),
        )
        if b"xmlns:%s=" % p.encode() not in head
    )
    return data[:end] + extra + data[end:]


def export_flowjo(samples, out_path: str | os.PathLike) -> Path:
    """Write a FlowJo 10 workspace holding every sample with its realised gates.

    Each sample gets its own gating tree (the populations of its Gating-ML file,
    named as in ``counts.tsv``), its spillover matrix (``Acquisition-defined``,
    from the file's ``$SPILLOVER``; compensated dimensions are ``Comp-<detector>``),
    and one display transform per gated channel (the gate's own transform, e.g.
    logicle ``T, W, M, A``; a linear ``0..$PnR`` display for channels gated in
    channel units). Gate coordinates are FlowJo's: channel units (``Time`` in
    seconds, i.e. times ``$TIMESTEP``) for rectangles and polygons, the 256-bin
    display for ellipses. Groups: ``All Samples`` and one group per ``panel``.
    The FCS keywords and the study columns (``sample_id``, ``patient_id``,
    ``visit_month``, ``dose_group``, ``panel``) become sample keywords.

    Exactness: rectangles, ranges and quadrants (which are rectangles) are the
    pipeline's gates to the last bit of each bound; polygons are clipped to
    +-1024 x ``$PnR`` (channel units), which no event reaches; ellipses are
    exact in FlowJo's own form. FlowKit approximates a FlowJo ellipse by a
    128-gon, so FlowKit's count of an ellipse population (and its descendants)
    can be a few events lower (``docs/gating-exactness.md``).

    Parameters
    ----------
    samples
        One row per sample: ``sample_id``, ``fcs_path``, ``gates`` (its Gating-ML
        file); optionally the study columns (see :func:`gated_samples`).
    out_path
        The ``.wsp`` file to write (atomically).

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    GatingFileError
        A gate FlowJo cannot hold (a ratio dimension, a boolean gate on a
        complemented operand, two compensations in one sample), or two samples
        whose FCS files have the same name (FlowJo identifies a sample by it).
    """
    recs = _records(samples, ("sample_id", "fcs_path", "gates"))
    w = _WspWriter()
    root = w.root
    root.append(
        ET.Comment(
            " Written by immuno from the realised gates (Gating-ML 2.0) of each sample; "
            "gates are per sample (owningGroup empty). "
        )
    )
    ET.SubElement(root, "Matrices")
    groups = ET.SubElement(root, "Groups")
    sample_list = ET.SubElement(root, "SampleList")
    by_name: dict[str, str] = {}
    panels: dict[str, list[str]] = {}
    ids: list[str] = []
    for number, rec in enumerate(recs, start=1):
        el, name = _sample_element(w, rec, number)
        if name in by_name:
            raise GatingFileError(
                f"samples {by_name[name]!r} and {rec['sample_id']!r} both have an FCS file "
                f"called {name!r}; FlowJo (and FlowKit) identify a sample by its file name",
                file=str(rec["fcs_path"]),
                sample=str(rec["sample_id"]),
                field="fcs_path",
                hint="rename one of the files",
            )
        by_name[name] = str(rec["sample_id"])
        sample_list.append(el)
        ids.append(str(number))
        panel = rec.get("panel")
        if panel is not None and str(panel) not in ("", "nan", "All Samples"):
            panels.setdefault(str(panel), []).append(str(number))
    _group(groups, "All Samples", ids)
    for panel, members in panels.items():
        _group(groups, panel, members)
    ET.indent(root, space="  ")
    data = _declare_namespaces(ET.tostring(root, encoding="UTF-8", xml_declaration=True))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    log.info("wrote %s: %d samples", out_path, len(recs))
    return out_path


# --------------------------------------------------------------------------- AnnData


def _panel_of(panel, name: str | None = None):
    if isinstance(panel, str | os.PathLike):
        from .autogate import load_gating

        return load_gating(panel, name=name)
    return panel


def _sample_rng(sample_id: str, random_state: int) -> np.random.Generator:
    """A generator of its own per sample: the subsample does not depend on sample order."""
    return np.random.default_rng([int(random_state), zlib.crc32(str(sample_id).encode())])


def _subsample(n: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted event indices: all of them, or ``cap`` drawn without replacement."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def _values(space, dims: list, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), len(dims))`` float32 values; NaN for a dimension that is None."""
    out = np.full((len(rows), len(dims)), np.nan, dtype=np.float32)
    have = [j for j, d in enumerate(dims) if d is not None]
    if have:
        out[:, have] = space.values(tuple(dims[j] for j in have), rows)
    return out


def _anndata_vars(template, fcs) -> tuple[list[str], list[Dimension | None], dict[str, dict]]:
    """Variables of one sample: names, engine dimensions and per-variable facts."""
    from .autogate import Template

    if isinstance(template, Template):
        cmap = template.resolve(fcs, sample=Path(fcs.path).stem)
        names, dims, facts = [], [], {}
        for name, m in template.panel.markers.items():
            d = template.dimension(name, cmap.get(name, ""), "transformed")
            names.append(name)
            # None: an optional population's channel this file lacks (its column is NaN)
            dims.append(d if name in cmap else None)
            facts[name] = {
                "channel": cmap.get(name, ""),
                "transform": m.transform or "",
                "compensated": d.compensation not in (None, "", "uncompensated"),
                "kind": "channel" if m.channel else "marker",
            }
        return names, dims, facts
    # Fixed gates (Gating-ML or FlowJo panel): every channel, compensated where the
    # file's spillover matrix names it, untransformed.
    spill = fcs.spillover()
    dets = set(spill[0]) if spill else set()
    names, dims, facts = [], [], {}
    for ch, stain in zip(fcs.channels, fcs.markers, strict=True):
        name = stain.strip() or ch
        if name in facts:
            name = ch
        names.append(name)
        dims.append(Dimension(ch, "FCS" if ch in dets else None, None))
        facts[name] = {
            "channel": ch,
            "transform": "",
            "compensated": ch in dets,
            "kind": "marker" if stain.strip() else "channel",
        }
    return names, dims, facts


def _kept_events(recs, cap: int | None) -> list[int]:
    """Events each sample contributes: its ``$TOT`` (TEXT only), at most ``cap``."""
    from .read import read_text

    sizes = []
    for rec in recs:
        _, text = read_text(rec["fcs_path"])
        tot = int((text.get("$TOT") or "0").strip() or 0)
        sizes.append(tot if cap is None else min(tot, cap))
    return sizes


def export_anndata(
    samples,
    panel,
    out_path: str | os.PathLike,
    *,
    max_events_per_sample: int | None = MAX_EVENTS_PER_SAMPLE,
    random_state: int = 0,
) -> Path:
    """Write one panel's events as an AnnData ``.h5ad`` (events x markers).

    ``X`` (float32) holds every panel entry of the template: markers compensated
    with the file's spillover matrix and transformed as the template says (e.g.
    logicle, 0..1), scatter channels on their transform, ``Time`` in raw
    channel units; ``var_names`` are the template's marker names (``CD3``,
    ``viability``, ``FSC-A``...). ``.var`` has ``channel`` (the ``$PnN`` of the
    first sample; every sample's map is in ``.uns["channels"]``), ``transform``,
    ``compensated`` and ``kind``. ``.obs`` has ``sample_id``, ``patient_id``,
    ``visit_month``, ``dose_group`` (categorical, ``visit_month`` float),
    ``event`` (the row in the FCS file) and one boolean column per population
    (membership in the sample's realised gates); ``obs_names`` are
    ``<sample_id>:<event>``. ``.uns`` records the panel, the
    transforms' parameters, the populations with their parents and the
    subsampling. A panel gated with fixed gates (Gating-ML or FlowJo) has no
    template: its variables are the file's channels (named by ``$PnS``, else
    ``$PnN``), compensated where the spillover matrix names them, untransformed.

    Each sample keeps at most ``max_events_per_sample`` events, drawn without
    replacement by a generator seeded with ``random_state`` and the sample id
    (the same events whatever the sample order), kept in FCS order.

    Memory is bounded by the largest FCS file, not by the cohort: the file is
    written sample by sample (with h5py, in anndata's on-disk format, the file
    ``anndata.read_h5ad`` reads) into datasets sized up front from each file's
    ``$TOT`` and the cap. Held at once: one FCS file and its gating, at most one
    HDF5 chunk (16,384 rows, gzip) per column beyond the sample's rows, and the
    cohort's sample table. The T panel of the 300,000-event benchmark cohort
    (20,000 events x 10 variables per sample) peaks at 218-227 MiB RSS with 40,
    80 or 162 samples, about 20 MiB above exporting its largest file alone (the
    in-memory writer this replaced: 912 MiB with 162); 162 samples take about
    30 s (a 244 MB file; ``benchmarks/anndata_memory.py``).

    Parameters
    ----------
    samples
        The panel's samples: ``sample_id``, ``fcs_path``, ``gates`` and the study
        columns (see :func:`gated_samples`).
    panel
        The panel's gating: a :class:`~immuno.autogate.Template` (or
        :class:`~immuno.autogate.StaticGating`), or the path of its file.
    out_path
        The ``.h5ad`` file to write (atomically, gzip-compressed).
    max_events_per_sample
        Cap on events per sample; ``None`` keeps every event.
    random_state
        Seed of the subsampling.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    from .read import read_fcs

    if max_events_per_sample is not None and int(max_events_per_sample) < 1:
        raise ConfigError(
            f"max_events_per_sample is {max_events_per_sample}",
            field="max_events_per_sample",
            hint="a positive number of events, or None for all",
        )
    cap = None if max_events_per_sample is None else int(max_events_per_sample)
    template = _panel_of(panel)
    recs = _records(samples, ("sample_id", "fcs_path", "gates"))
    sizes = _kept_events(recs, cap)
    n_obs = int(sum(sizes))
    sids = [str(r["sample_id"]) for r in recs]
    study = {col: _study_codes(recs, col) for col in ("patient_id", "dose_group", "panel")}
    months = [_month(r.get("visit_month")) for r in recs]
    var_names: list[str] | None = None
    facts: dict[str, dict] = {}
    channels: dict[str, dict[str, str]] = {}
    parents: dict[str, str] = {}
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, _open_h5(tmp) as f:
        obs = f.create_group("obs")
        index = _Rows(obs, "_index", n_obs, h5py.string_dtype(), encoding="string-array")
        codes = {"sample_id": _categorical(obs, "sample_id", n_obs, sids)}
        codes["patient_id"] = _categorical(obs, "patient_id", n_obs, study["patient_id"][0])
        visit_month = _Rows(obs, "visit_month", n_obs, np.float64)
        codes["dose_group"] = _categorical(obs, "dose_group", n_obs, study["dose_group"][0])
        codes["panel"] = _categorical(obs, "panel", n_obs, study["panel"][0])
        event = _Rows(obs, "event", n_obs, np.int64)
        # Population -> its column (None: a name .obs cannot hold; refused below).
        members: dict[str, _Rows | None] = {}
        reserved = {*STUDY_COLUMNS, "event", "_index"}
        X = None
        at = 0
        for k, (rec, m) in enumerate(zip(recs, sizes, strict=True)):
            sid = sids[k]
            fcs = read_fcs(rec["fcs_path"])
            rows = _subsample(fcs.n_events, cap, _sample_rng(sid, random_state))
            if len(rows) != m:
                raise FCSError(
                    f"$TOT says {m} events, the data hold {fcs.n_events}",
                    file=fcs.path,
                    sample=sid,
                    field="$TOT",
                )
            names, dims, fa = _anndata_vars(template, fcs)
            if var_names is None:
                var_names, facts = names, fa
                X = _Rows(f, "X", n_obs, np.float32, width=len(names))
            elif names != var_names:
                raise ConfigError(
                    f"sample {sid} has variables {names}, the panel's first sample {var_names}",
                    sample=sid,
                    field="panel",
                    hint="export one panel (one staining tube) per file",
                )
            channels[sid] = {n: fa[n]["channel"] for n in names}
            space = EventSpace(fcs, template.base_strategy())
            X.write(_values(space, dims, rows))
            del space
            index.write(np.array([f"{sid}:{e}" for e in rows.tolist()], dtype=object))
            event.write(rows.astype(np.int64, copy=False))
            codes["sample_id"].write(np.full(m, k, dtype=codes["sample_id"].ds.dtype))
            for col in ("patient_id", "dose_group", "panel"):
                codes[col].write(np.full(m, study[col][1][k], dtype=codes[col].ds.dtype))
            visit_month.write(np.full(m, months[k]))
            masks, their_parents = _memberships(rec, fcs)
            for pop in masks:
                if pop not in members:
                    ok = pop not in reserved and "/" not in pop
                    members[pop] = _Rows(obs, pop, n_obs, bool, start=at) if ok else None
                    parents[pop] = their_parents[pop] or "root"
            for pop, column in members.items():
                if column is not None:
                    mask = masks.get(pop)
                    column.write(np.zeros(m, dtype=bool) if mask is None else mask[rows])
            del fcs, masks  # before the next file is read
            at += m
        if var_names is None:  # no sample: the panel's variables, no events
            var_names = list(getattr(getattr(template, "panel", None), "markers", {}) or [])
            write_elem(
                f, "X", np.zeros((0, len(var_names)), dtype=np.float32), dataset_kwargs=_GZIP
            )
            facts = {
                n: {"channel": "", "transform": "", "compensated": False, "kind": ""}
                for n in var_names
            }
        clash = sorted(set(members) & reserved)
        if clash:
            raise ConfigError(
                f"population(s) {', '.join(clash)} have the name of a study column",
                field=clash[0],
                hint="rename the population in the gating template",
            )
        bad = sorted(p for p in [*members, *var_names] if "/" in p)
        if bad:
            raise ConfigError(
                f"names with '/' cannot be stored in an .h5ad file: {', '.join(bad)}",
                field=bad[0],
                hint="rename the marker or population",
            )
        for column in [X, index, visit_month, event, *codes.values(), *members.values()]:
            if column is not None:
                column.close()
        obs.attrs["_index"] = "_index"
        study_cols = ["sample_id", "patient_id", "visit_month", "dose_group", "panel", "event"]
        obs.attrs["column-order"] = [*study_cols, *members]
        obs.attrs["encoding-type"] = "dataframe"
        obs.attrs["encoding-version"] = "0.2.0"
        var = pd.DataFrame.from_dict({n: facts[n] for n in var_names}, orient="index")
        var.index = pd.Index([str(n) for n in var_names])
        uns = {
            "immuno": {
                "panel": str(getattr(template, "name", "")),
                "gating_file": str(getattr(template, "source", "") or ""),
                "gating_sha256": str(getattr(template, "sha256", "") or ""),
                "compensation": str(
                    getattr(getattr(template, "panel", None), "compensation", "FCS")
                ),
                "transforms": {
                    tid: json.dumps(t.spec())
                    for tid, t in (
                        getattr(getattr(template, "panel", None), "transforms", {}) or {}
                    ).items()
                },
                "populations": list(members),
                "parents": dict(parents),
                "max_events_per_sample": -1 if cap is None else cap,
                "random_state": int(random_state),
                "X": "compensated and transformed as the panel's template says (gate space)",
            },
            "channels": channels,
        }
        # The small elements as AnnData.write_h5ad writes them (string columns of .var
        # with repeated values become categoricals).
        ensure_free_space(tmp, 0)  # the small elements and the closing flush: the reserve
        shell = ad.AnnData(var=var, uns=uns)
        shell.strings_to_categoricals()
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "var", shell.var, dataset_kwargs=_GZIP)
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, key, {}, dataset_kwargs=_GZIP)
        write_elem(f, "uns", dict(shell.uns), dataset_kwargs=_GZIP)
    log.info(
        "wrote %s: %d events x %d variables, %d samples", out_path, n_obs, len(var_names), len(recs)
    )
    return out_path


#: Rows per HDF5 chunk of the AnnData export's per-event datasets (``X``'s chunks
#: are also kept within :data:`_CHUNK_BYTES`, the chunk cache a reader has by default).
_CHUNK_ROWS = 16384
_CHUNK_BYTES = 1 << 20
_GZIP = {"compression": "gzip"}


def _open_h5(path):
    """An HDF5 file to write, with its caches bounded by constants, not by the cohort.

    No chunk cache (every chunk is written whole, so it goes to disk directly and
    compressed once) and a metadata cache of 1-2 MiB (HDF5's grows to 32 MiB as
    the file does).
    """
    import h5py

    f = h5py.File(path, "w", rdcc_nbytes=0)
    mdc = f.id.get_mdc_config()
    mdc.set_initial_size = True
    mdc.initial_size = mdc.min_size = 1 << 20
    mdc.max_size = 2 << 20
    f.id.set_mdc_config(mdc)
    return f


class _Rows:
    """One per-event dataset of an ``.h5ad`` file, sized up front, filled in row order.

    Rows wait until they fill whole chunks, so every chunk is written (and
    compressed) once and never read back; at most one chunk's rows plus the
    latest sample's are held. ``start`` is the first row the column receives (a
    population first seen in a later sample): the rows before it are ``False``
    (zero), HDF5's fill value.
    """

    def __init__(self, group, name, n_rows, dtype, *, width=None, encoding="array", start=0):
        tail = () if width is None else (width,)
        row_bytes = np.dtype(dtype).itemsize * max(1, width or 1)
        rows = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // row_bytes, n_rows))
        if n_rows == 0:  # an empty array, as anndata writes it
            ds = group.create_dataset(name, data=np.empty((0, *tail), dtype), dtype=dtype, **_GZIP)
        else:
            ds = group.create_dataset(
                name, shape=(n_rows, *tail), dtype=dtype, chunks=(rows, *tail), **_GZIP
            )
        ds.attrs["encoding-type"] = encoding
        ds.attrs["encoding-version"] = "0.2.0"
        self.ds, self.rows, self.at = ds, rows, start // rows * rows
        self.pending = [np.zeros((start - self.at, *tail), dtype=dtype)]
        self.n_pending = start - self.at

    def write(self, values: np.ndarray) -> None:
        self.pending.append(values)
        self.n_pending += len(values)
        if self.n_pending >= self.rows:
            self._flush(self.n_pending // self.rows * self.rows)

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)

    def _flush(self, n: int) -> None:
        buf = np.concatenate(self.pending)
        # HDF5 crashes the process on a full disk: stop first, while the file can close.
        ensure_free_space(self.ds.file.filename, buf[:n].nbytes)
        self.ds[self.at : self.at + n] = buf[:n]
        self.at += n
        self.pending = [buf[n:].copy()]
        self.n_pending -= n


def _categorical(group, name: str, n_rows: int, categories: list[str]) -> _Rows:
    """A categorical ``.obs`` column (anndata's encoding): its categories, and its codes."""
    import pandas as pd
    from anndata.io import write_elem

    # The codes' dtype pandas chooses (the smallest that holds them), as anndata writes it.
    cat = pd.Categorical.from_codes(np.zeros(0, dtype=np.int32), categories=categories)
    g = group.create_group(name)
    g.attrs["encoding-type"] = "categorical"
    g.attrs["encoding-version"] = "0.2.0"
    g.attrs["ordered"] = bool(cat.ordered)
    write_elem(g, "categories", cat.categories.to_numpy(), dataset_kwargs=_GZIP)
    return _Rows(g, "codes", n_rows, cat.codes.dtype)


def _study_codes(recs, col: str) -> tuple[list[str], list[int]]:
    """A study column's categories (in sample order; missing is ``""``) and each sample's code."""
    vals = ["" if r.get(col) is None else str(r.get(col)) for r in recs]
    cats = list(dict.fromkeys(vals))
    idx = {c: i for i, c in enumerate(cats)}
    return cats, [idx[v] for v in vals]


def _month(x) -> float:
    return float(x) if x not in (None, "") else np.nan


# --------------------------------------------------------------------------- gated FCS

# Keywords that describe the layout of the source file: write_fcs sets its own.
_LAYOUT = re.compile(
    r"^\$(BEGIN|END)(ANALYSIS|STEXT|DATA)$|^\$(BYTEORD|DATATYPE|MODE|NEXTDATA|PAR|TOT)$"
    r"|^\$P\d+(N|S|B|E|DATATYPE)$"
)


def export_gated_fcs(
    fcs_path: str | os.PathLike,
    gates_xml: str | os.PathLike,
    population: str,
    out_path: str | os.PathLike,
    memberships: str | os.PathLike | None = None,
) -> int:
    """Write the events of one population as an FCS 3.1 file.

    The events keep their raw values (as stored, in FCS order; 32-bit floats,
    which hold every value of a float or <= 24-bit integer file exactly) and the
    file its keywords: ``$PnS`` stains, ``$PnR``, ``$PnG``, ``$SPILLOVER``,
    ``$TIMESTEP``, dates and every custom keyword. ``$TOT`` is the population's
    count; ``$FIL`` is the new file's name and ``IMMUNO SOURCE``, ``IMMUNO
    POPULATION`` and ``IMMUNO GATES`` name the source file, the population and
    the gating file. A log-amplified integer channel (``$PnE`` not ``0,0``)
    cannot be stored as a float channel of FCS 3.1 and is written decoded to
    linear values (a warning says so).

    Parameters
    ----------
    fcs_path
        The sample's FCS file (read-only).
    gates_xml
        Its realised gates (Gating-ML 2.0).
    population
        The population to keep (its name in ``counts.tsv``).
    out_path
        The FCS file to write (atomically); its folder must exist.
    memberships
        The sample's stored memberships (:mod:`immuno.memberships`), read instead of
        applying ``gates_xml`` again.

    Returns
    -------
    int
        The number of events written (the population's count).

    Raises
    ------
    GatingError
        ``population`` is not in the gating file (the message lists those that are).
    """
    from .read import read_fcs
    from .write import write_fcs

    fcs = read_fcs(fcs_path)
    strategy = load_gatingml(gates_xml)
    if population not in strategy.gates:
        raise GatingError(
            f"population {population!r} is not in the gates",
            file=str(gates_xml),
            field=population,
            hint=f"populations: {', '.join(strategy.gates)}",
        )
    rec = {"sample_id": Path(fcs_path).stem, "gates": gates_xml, "memberships": memberships}
    mask = _memberships(rec, fcs)[0][population]
    events = fcs.events[mask]
    logged = []
    default_kind = fcs.text.get("$DATATYPE", "").strip().upper()
    for j in range(len(fcs.channels)):
        kind = fcs.text.get(f"$P{j + 1}DATATYPE", "").strip().upper() or default_kind
        pne = (fcs.text.get(f"$P{j + 1}E") or "0,0").split(",")[0].strip()
        try:
            f1 = float(pne or 0)
        except ValueError:
            f1 = 0.0
        if f1 > 0 and kind == "I":  # FCSData.scaled decodes exactly these
            logged.append(fcs.channels[j])
    if logged:
        log.warning(
            "%s: log-amplified channel(s) %s are written decoded to linear values",
            fcs.path,
            ", ".join(logged),
        )
        scaled = fcs.scaled()[mask]
        cols = [fcs.channels.index(c) for c in logged]
        events = events.astype(np.float64)
        events[:, cols] = scaled[:, cols]
    text = {}
    for key, value in fcs.text.items():
        if _LAYOUT.match(key.upper()):
            continue
        v = value.strip()
        if not v or v.startswith("/") or "/" in key:
            log.warning(
                "%s: keyword %s (value %r) cannot be written; dropped", fcs.path, key, value
            )
            continue
        text[key] = v
    out_path = Path(out_path)
    text["$FIL"] = out_path.name
    text["IMMUNO SOURCE"] = Path(fcs.path).name
    text["IMMUNO POPULATION"] = population
    text["IMMUNO GATES"] = Path(gates_xml).name
    write_fcs(out_path, events, fcs.channels, fcs.markers, text=text)
    return int(mask.sum())


def export_gated_cohort(samples, population: str, out_dir: str | os.PathLike) -> list[Path]:
    """Export one population of every sample that has it: ``out_dir/<sample_id>.<population>.fcs``.

    Samples whose gates have no such population (another panel) are skipped.
    ``out_dir/index.tsv`` lists ``sample_id, population, events, file, source``
    (``events``: the population's count, i.e. the file's ``$TOT``).

    Parameters
    ----------
    samples
        One row per sample: ``sample_id``, ``fcs_path``, ``gates`` (see
        :func:`gated_samples`).
    population
        The population to export (its name in ``counts.tsv``).
    out_dir
        The folder to write (created if needed).

    Returns
    -------
    list of pathlib.Path
        The files written, in sample order.
    """
    import pandas as pd

    from .util import write_tsv

    recs = _records(samples, ("sample_id", "fcs_path", "gates"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for rec in recs:
        if population not in load_gatingml(rec["gates"]).gates:
            continue
        sid = str(rec["sample_id"])
        path = out_dir / f"{sid}.{population}.fcs"
        n = export_gated_fcs(
            rec["fcs_path"], rec["gates"], population, path, rec.get("memberships") or None
        )
        written.append(path)
        rows.append(
            {
                "sample_id": sid,
                "population": population,
                "events": n,
                "file": path.name,
                "source": str(rec["fcs_path"]),
            }
        )
    cols = ["sample_id", "population", "events", "file", "source"]
    write_tsv(pd.DataFrame(rows, columns=cols), out_dir / "index.tsv")
    log.info("%d samples exported with population %s", len(written), population)
    return written
