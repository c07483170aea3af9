"""Gating-ML 2.0 in and out.

Calling convention: ``load_gatingml(path) -> GatingStrategy`` (evaluated by the
project's own engine, :mod:`immuno.gate`) and ``write_gatingml(strategy, path)``.
Applying any gating file to one FCS file is :func:`immuno.gating.apply_gates_to_file`.

What is read (Gating-ML 2.0, ISAC 2013):

* transformations ``flin``, ``flog``, ``fasinh``, ``logicle``, ``hyperlog`` and
  ``fratio`` (a new dimension over two channels), with optional
  ``boundMin``/``boundMax``;
* ``spectrumMatrix`` (square or not, or ``matrix-inverted-already``);
  ``compensation-ref`` is a matrix id, ``FCS`` (the file's own spillover; a
  file without one is used uncompensated, as the standard says) or
  ``uncompensated``;
* ``RectangleGate`` (range and n-D box, ``min <= x < max``), ``PolygonGate``,
  ``EllipsoidGate`` (n-D), ``QuadrantGate`` (each ``Quadrant`` becomes a
  rectangle population of its own) and ``BooleanGate`` (``and``/``or``/``not``
  with ``use-as-complement``), each with an optional ``parent_id``.

Channel values are Gating-ML's: ``$PnE`` decoded and divided by ``$PnG``
(``GatingStrategy.scaling = "gain"``).

Files are parsed with :mod:`defusedxml`: a DTD entity declaration (billion
laughs) or an external entity makes the load fail at once with a
:class:`~immuno.errors.GatingFileError` naming the file.

Ids. A Gating-ML id is an XML ``NCName``; population names are not (``CD3+``).
:func:`write_gatingml` therefore writes a sanitised id (deterministic: ``+``
becomes ``_pos``, any other character outside ``[A-Za-z0-9._-]`` becomes
``_``, a leading digit or ``-``/``.`` gets a ``_`` prefix, clashes get
``_2``, ``_3``... in strategy order) and keeps the population name in the
gate's ``custom_info`` as ``<immuno:name>`` (namespace :data:`IMMUNO_NS`);
:func:`load_gatingml` restores that name, so a strategy round-trips with its
names.
"""

from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from bisect import bisect_right
from pathlib import Path

import numpy as np

from .compensate import Compensation
from .errors import ConfigError, GatingError, GatingFileError, PanelError
from .gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
    ellipse_problem,
)
from .transform import Asinh, Hyperlog, Linear, Log, Logicle, Ratio, Transform
from .util import atomic_path, special_file

__all__ = [
    "GATING_NS",
    "TRANSFORMS_NS",
    "DATATYPE_NS",
    "IMMUNO_NS",
    "load_gatingml",
    "write_gatingml",
    "parse_xml",
    "xml_ids",
]

log = logging.getLogger(__name__)

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
TRANSFORMS_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
DATATYPE_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
#: Namespace of the ``<immuno:name>`` element that keeps a population's name.
IMMUNO_NS = "urn:immuno:gating-ml:1"

_G, _T, _D = f"{{{GATING_NS}}}", f"{{{TRANSFORMS_NS}}}", f"{{{DATATYPE_NS}}}"


# --------------------------------------------------------------------------- parsing


def parse_xml(path: str | os.PathLike, *, kind: str = "Gating-ML") -> ET.Element:
    """Parse an XML file safely and return its root element.

    No DTD entities (billion laughs), no external entities or DTDs are
    expanded or fetched: such a file raises :class:`GatingFileError` at once.
    """
    import defusedxml
    import defusedxml.ElementTree as DET

    path = str(path)
    try:
        special = special_file(path)
        if special:
            raise GatingFileError(f"the {kind} file is {special}, not a regular file", file=path)
        root = DET.parse(
            path, forbid_dtd=False, forbid_entities=True, forbid_external=True
        ).getroot()
        _check_depth(root, path, kind)
        return root
    except LookupError as exc:  # <?xml encoding="..."?> names a codec Python does not know
        raise GatingFileError(f"not readable XML: {exc}", file=path) from None
    except defusedxml.DefusedXmlException as exc:
        raise GatingFileError(
            f"refused to read the {kind} file: it declares XML entities or external "
            f"references ({type(exc).__name__})",
            file=path,
            hint="gating files never need a DTD; export the file again from its program",
        ) from None
    except ET.ParseError as exc:
        raise GatingFileError(f"not well-formed XML: {exc}", file=path) from None
    except FileNotFoundError:
        raise GatingFileError(f"{kind} file does not exist", file=path) from None
    except OSError as exc:
        raise GatingFileError(f"cannot read the {kind} file: {exc.strerror}", file=path) from None


#: Deepest element nesting a gating file may have (FlowJo nests one level per gate).
MAX_XML_DEPTH = 400
#: Most populations one sample's gating file may define. Real gatings hold tens to a few
#: hundred; applied, each population is a mask of the sample's events (a million events:
#: 1 MB each), so a file of 100,000 would exhaust memory long before it finished.
MAX_POPULATIONS = 2000


def check_population_count(n: int, path: str, kind: str, sample: str | None = None) -> None:
    """Refuse a gating file of more than :data:`MAX_POPULATIONS` populations."""
    if n > MAX_POPULATIONS:
        raise GatingFileError(
            f"the {kind} file defines {n:,} populations, more than the {MAX_POPULATIONS:,} "
            "one sample's gating may have",
            file=path,
            sample=sample,
            hint="a real gating holds at most a few hundred populations; export it again",
        )


def _check_depth(root: ET.Element, path: str, kind: str) -> None:
    """Refuse nesting deeper than :data:`MAX_XML_DEPTH` (measured without recursion):
    the readers walk gate hierarchies recursively."""
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_XML_DEPTH:
            raise GatingFileError(
                f"the {kind} file nests elements deeper than {MAX_XML_DEPTH} levels",
                file=path,
                hint="a gate hierarchy that deep is not a real gating; export it again",
            )
        stack.extend((child, depth + 1) for child in el)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(el: ET.Element, name: str, default: str | None = None) -> str | None:
    """An attribute in any Gating-ML namespace (or none)."""
    for ns in (_G, _T, _D, ""):
        v = el.get(ns + name)
        if v is not None:
            return v
    return default


class _Parser:
    def __init__(self, path: str):
        self.path = path

    def error(self, msg: str, field: str | None = None, hint: str | None = None):
        return GatingFileError(msg, file=self.path, field=field, hint=hint)

    def number(
        self,
        el: ET.Element,
        name: str,
        owner: str,
        default: float | None = None,
        *,
        allow_inf: bool = False,
    ) -> float:
        raw = _attr(el, name)
        if raw is None:
            if default is not None:
                return default
            raise self.error(f"{_local(el.tag)} of {owner!r} has no {name}", field=owner)
        try:
            v = float(raw)
        except ValueError:
            raise self.error(f"{name}={raw!r} of {owner!r} is not a number", field=owner) from None
        if math.isnan(v) or (math.isinf(v) and not allow_inf):
            raise self.error(f"{name}={raw!r} of {owner!r} is not finite", field=owner)
        return v

    def opt_number(
        self, el: ET.Element, name: str, owner: str, *, allow_inf: bool = False
    ) -> float | None:
        if _attr(el, name) is None:
            return None
        return self.number(el, name, owner, allow_inf=allow_inf)

    def value(self, el: ET.Element, owner: str) -> float:
        return self.number(el, "value", owner)

    # -- transforms and matrices ------------------------------------------------

    def transform(self, el: ET.Element) -> Transform:
        tid = _attr(el, "id")
        if not tid:
            raise self.error("a transformation has no id")
        kids = [k for k in el if _local(k.tag) != "custom_info"]
        if len(kids) != 1:
            raise self.error(f"transformation {tid!r} must hold exactly one function", field=tid)
        k = kids[0]
        kind = _local(k.tag)
        num = self.number
        try:
            if kind == "flin":
                t: Transform = Linear(T=num(k, "T", tid), A=num(k, "A", tid, 0.0), id=tid)
            elif kind == "flog":
                t = Log(T=num(k, "T", tid), M=num(k, "M", tid), id=tid)
            elif kind == "fasinh":
                t = Asinh(T=num(k, "T", tid), M=num(k, "M", tid), A=num(k, "A", tid, 0.0), id=tid)
            elif kind in ("logicle", "hyperlog"):
                cls = Logicle if kind == "logicle" else Hyperlog
                t = cls(
                    num(k, "T", tid), num(k, "W", tid), num(k, "M", tid), num(k, "A", tid, 0.0), tid
                )
            elif kind == "fratio":
                chans = [_attr(d, "name") for d in k if _local(d.tag) == "fcs-dimension"]
                if len(chans) != 2 or not all(chans):
                    raise self.error(f"fratio {tid!r} needs exactly two fcs-dimensions", field=tid)
                t = Ratio(
                    chans[0],
                    chans[1],
                    A=num(k, "A", tid),
                    B=num(k, "B", tid),
                    C=num(k, "C", tid),
                    id=tid,
                )
            else:
                raise self.error(
                    f"transformation {tid!r} uses {kind!r}, not a Gating-ML 2.0 transform",
                    field=tid,
                    hint="use flin, flog, fasinh, logicle, hyperlog or fratio",
                )
        except (ConfigError, ValueError, ArithmeticError) as exc:  # invalid parameters
            raise self.error(f"transformation {tid!r}: {exc}", field=tid) from None
        bmin, bmax = self.opt_number(el, "boundMin", tid), self.opt_number(el, "boundMax", tid)
        if bmin is not None and bmax is not None and bmin > bmax:
            raise self.error(f"transformation {tid!r} has boundMin > boundMax", field=tid)
        return t.with_bounds(bmin, bmax)

    def matrix(self, el: ET.Element) -> Compensation:
        mid = _attr(el, "id")
        if not mid:
            raise self.error("a spectrumMatrix has no id")
        if mid in ("FCS", "uncompensated"):
            raise self.error(f"spectrumMatrix id {mid!r} is reserved", field=mid)

        def names(tag):
            box = [k for k in el if _local(k.tag) == tag]
            if len(box) != 1:
                raise self.error(f"spectrumMatrix {mid!r} needs one <{tag}>", field=mid)
            return [_attr(d, "name") or "" for d in box[0] if _local(d.tag) == "fcs-dimension"]

        fluor, det = names("fluorochromes"), names("detectors")
        rows = [
            [self.value(c, mid) for c in sp if _local(c.tag) == "coefficient"]
            for sp in el
            if _local(sp.tag) == "spectrum"
        ]
        if not rows or len({len(r) for r in rows}) != 1:
            raise self.error(f"spectrumMatrix {mid!r} has ragged or no spectra", field=mid)
        inverted = str(_attr(el, "matrix-inverted-already", "false")).strip().lower() in (
            "true",
            "1",
        )
        try:
            return Compensation(det, np.array(rows), fluorochromes=fluor, id=mid, inverted=inverted)
        except PanelError as exc:
            raise self.error(f"spectrumMatrix {mid!r}: {exc}", field=mid) from None

    # -- gates ------------------------------------------------------------------

    def dimension(self, el: ET.Element, owner: str) -> Dimension:
        comp = _attr(el, "compensation-ref", "uncompensated")
        comp = None if comp in ("uncompensated", "") else comp
        tr = _attr(el, "transformation-ref") or None
        for k in el:
            name = _local(k.tag)
            if name == "fcs-dimension":
                ch = _attr(k, "name")
                if not ch:
                    raise self.error(f"an fcs-dimension of {owner!r} has no name", field=owner)
                return Dimension(ch, comp, tr)
            if name == "new-dimension":
                rid = _attr(k, "transformation-ref")
                if not rid:
                    raise self.error(f"a new-dimension of {owner!r} names no ratio", field=owner)
                return Dimension(rid, comp, tr, ratio=rid)
        raise self.error(f"a dimension of {owner!r} names no channel", field=owner)

    def dims(self, el: ET.Element, owner: str) -> list[tuple[Dimension, ET.Element]]:
        out = [(self.dimension(d, owner), d) for d in el if _local(d.tag) == "dimension"]
        if not out:
            raise self.error(f"gate {owner!r} has no dimension", field=owner)
        return out

    def coords(self, el: ET.Element, owner: str) -> list[float]:
        return [self.value(c, owner) for c in el if _local(c.tag) == "coordinate"]


def _custom_name(el: ET.Element) -> str | None:
    for ci in el:
        if _local(ci.tag) != "custom_info":
            continue
        for k in ci.iter(f"{{{IMMUNO_NS}}}name"):
            if k.text and k.text.strip():
                return k.text.strip()
    return None


def population_ids(path: str | os.PathLike) -> dict[str, str]:
    """``{population name: gating:id}`` of a Gating-ML file written by :func:`write_gatingml`
    (the name kept in each gate's ``<immuno:name>`` custom info; ids are sanitised)."""
    out = {}
    for el in parse_xml(path):
        name = _custom_name(el)
        gid = _attr(el, "id")
        if name is not None and gid:
            out[name] = gid
    return out


def _time_in_seconds(root: ET.Element) -> bool:
    """Whether the file's top-level ``custom_info`` says Time is stored x ``$TIMESTEP``."""
    for ci in root:
        if _local(ci.tag) == "custom_info":
            for k in ci.iter(f"{{{IMMUNO_NS}}}time-scale"):
                if (k.text or "").strip() == "TIMESTEP":
                    return True
    return False


def load_gatingml(path: str | os.PathLike) -> GatingStrategy:
    """Read a Gating-ML 2.0 file into a :class:`~immuno.gate.GatingStrategy`.

    Raises
    ------
    GatingFileError
        The file is unsafe, not well-formed, not Gating-ML 2.0, or inconsistent
        (unknown references, duplicate ids, a parent cycle), naming the file and
        the element at fault.
    """
    path = str(path)
    root = parse_xml(path)
    p = _Parser(path)
    if _local(root.tag) != "Gating-ML":
        raise p.error(
            f"root element is <{_local(root.tag)}>, not <Gating-ML>",
            hint="expected a Gating-ML 2.0 file",
        )
    strategy = GatingStrategy()
    # Gating-ML 2.0 channel values; files written by immuno with Time in seconds
    # say so (``<immuno:time-scale>``), as FlowKit reads every file.
    strategy.scaling = "flowjo" if _time_in_seconds(root) else "gain"
    strategy.require_spillover = False
    pending: list[tuple[str, str | None, Gate]] = []  # (xml id, parent xml id, gate)
    names: dict[str, str] = {}  # xml id -> population name
    gates = ("RectangleGate", "PolygonGate", "EllipsoidGate", "BooleanGate", "QuadrantGate")
    check_population_count(sum(_local(el.tag) in gates for el in root), path, "Gating-ML")
    for el in root:
        kind = _local(el.tag)
        if kind == "transformation":
            t = p.transform(el)
            if t.id in strategy.transforms:
                raise p.error(f"transformation {t.id!r} is defined twice", field=t.id)
            strategy.transforms[t.id] = t
        elif kind == "spectrumMatrix":
            m = p.matrix(el)
            if m.id in strategy.compensations:
                raise p.error(f"spectrumMatrix {m.id!r} is defined twice", field=m.id)
            strategy.compensations[m.id] = m
        elif kind in ("RectangleGate", "PolygonGate", "EllipsoidGate", "BooleanGate"):
            gid = _attr(el, "id")
            if not gid:
                raise p.error(f"a {kind} has no id")
            parent = _attr(el, "parent_id") or None
            names[gid] = _custom_name(el) or gid
            pending.append((gid, parent, _parse_gate(p, kind, el, gid)))
        elif kind == "QuadrantGate":
            parent = _attr(el, "parent_id") or None
            for qid, gate in _parse_quadrants(p, el):
                names[qid] = gate.id
                pending.append((qid, parent, gate))
    check_population_count(len(pending), path, "Gating-ML")  # with every quadrant
    _check_references(p, strategy, pending)
    _assemble(p, strategy, pending, names)
    return strategy


def _parse_gate(p: _Parser, kind: str, el: ET.Element, gid: str) -> Gate:
    if kind == "BooleanGate":
        ops = [k for k in el if _local(k.tag) in ("and", "or", "not")]
        if len(ops) != 1:
            raise p.error(f"BooleanGate {gid!r} needs one and/or/not", field=gid)
        op = _local(ops[0].tag)
        refs = []
        for r in ops[0]:
            if _local(r.tag) != "gateReference":
                continue
            ref = _attr(r, "ref")
            if not ref:
                raise p.error(f"a gateReference of {gid!r} has no ref", field=gid)
            comp = str(_attr(r, "use-as-complement", "false")).strip().lower() in ("true", "1")
            refs.append((ref, comp))
        if not refs or (op == "not" and len(refs) != 1) or (op != "not" and len(refs) < 2):
            raise p.error(
                f"BooleanGate {gid!r}: '{op}' has {len(refs)} operand(s)",
                field=gid,
                hint="'not' takes one gateReference, 'and'/'or' two or more",
            )
        return BooleanGate(gid, None, (), op=op, operands=refs)
    dims = p.dims(el, gid)
    dd = tuple(d for d, _ in dims)
    if kind == "RectangleGate":
        # xs:double allows INF/-INF: an empty gate (e.g. a failed data-driven fit).
        mins = tuple(p.opt_number(e, "min", gid, allow_inf=True) for _, e in dims)
        maxs = tuple(p.opt_number(e, "max", gid, allow_inf=True) for _, e in dims)
        if all(lo is None and hi is None for lo, hi in zip(mins, maxs, strict=True)):
            raise p.error(f"RectangleGate {gid!r} bounds no dimension", field=gid)
        return RectangleGate(gid, None, dd, mins, maxs)
    if kind == "PolygonGate":
        if len(dd) != 2:
            raise p.error(f"PolygonGate {gid!r} must have 2 dimensions", field=gid)
        verts = [p.coords(v, gid) for v in el if _local(v.tag) == "vertex"]
        if len(verts) < 3 or any(len(v) != 2 for v in verts):
            raise p.error(f"PolygonGate {gid!r} needs 3 or more 2-D vertices", field=gid)
        return PolygonGate(gid, None, dd, vertices=np.array(verts, dtype=np.float64))
    # EllipsoidGate
    k = len(dd)
    means = [p.coords(m, gid) for m in el if _local(m.tag) == "mean"]
    covs = [m for m in el if _local(m.tag) == "covarianceMatrix"]
    dsq = [m for m in el if _local(m.tag) == "distanceSquare"]
    if len(means) != 1 or len(means[0]) != k or len(covs) != 1 or len(dsq) != 1:
        raise p.error(f"EllipsoidGate {gid!r} needs a mean, covarianceMatrix, distanceSquare")
    cov = [
        [p.value(e, gid) for e in row if _local(e.tag) == "entry"]
        for row in covs[0]
        if _local(row.tag) == "row"
    ]
    if len(cov) != k or any(len(r) != k for r in cov):
        raise p.error(f"EllipsoidGate {gid!r}: covariance matrix is not {k}x{k}", field=gid)
    distance_square = p.value(dsq[0], gid)
    problem = ellipse_problem(means[0], cov, distance_square)
    if problem:
        raise p.error(f"EllipsoidGate {gid!r}: {problem}", field=gid)
    return EllipseGate(
        gid,
        None,
        dd,
        mean=np.array(means[0], dtype=np.float64),
        covariance=np.array(cov, dtype=np.float64),
        distance_square=distance_square,
    )


def _parse_quadrants(p: _Parser, el: ET.Element) -> list[tuple[str, RectangleGate]]:
    qgid = _attr(el, "id") or "QuadrantGate"
    dividers: dict[str, tuple[Dimension, list[float]]] = {}
    for d in el:
        if _local(d.tag) != "divider":
            continue
        did = _attr(d, "id")
        if not did or did in dividers:
            raise p.error(f"a divider of {qgid!r} has no or a duplicate id", field=qgid)
        vals = []
        for v in d:
            if _local(v.tag) == "value":
                try:
                    vals.append(float((v.text or "").strip()))
                except ValueError:
                    raise p.error(f"divider {did!r} has a non-numeric value", field=qgid) from None
                if math.isnan(vals[-1]):
                    raise p.error(f"divider {did!r} has a NaN value", field=qgid)
        if not vals:
            raise p.error(f"divider {did!r} of {qgid!r} has no value", field=qgid)
        dividers[did] = (p.dimension(d, qgid), sorted(vals))
    out = []
    for q in el:
        if _local(q.tag) != "Quadrant":
            continue
        qid = _attr(q, "id")
        if not qid:
            raise p.error(f"a Quadrant of {qgid!r} has no id", field=qgid)
        dims, mins, maxs = [], [], []
        for pos in q:
            if _local(pos.tag) != "position":
                continue
            ref = _attr(pos, "divider_ref")
            if ref not in dividers:
                raise p.error(f"Quadrant {qid!r} refers to unknown divider {ref!r}", field=qid)
            dim, vals = dividers[ref]
            loc = p.number(pos, "location", qid)
            i = bisect_right(vals, loc)
            dims.append(dim)
            mins.append(vals[i - 1] if i > 0 else None)
            maxs.append(vals[i] if i < len(vals) else None)
        if not dims:
            raise p.error(f"Quadrant {qid!r} has no position", field=qid)
        name = _custom_name(q) or qid
        out.append((qid, RectangleGate(name, None, tuple(dims), tuple(mins), tuple(maxs))))
    if not out:
        raise p.error(f"QuadrantGate {qgid!r} defines no Quadrant", field=qgid)
    return out


def _check_references(p: _Parser, strategy: GatingStrategy, pending) -> None:
    for gid, _, gate in pending:
        for dim in gate.dims:
            if dim.ratio:
                t = strategy.transforms.get(dim.ratio)
                if not isinstance(t, Ratio):
                    raise p.error(
                        f"gate {gid!r}: new-dimension {dim.ratio!r} is not an fratio transform",
                        field=gid,
                    )
            if dim.transform:
                t = strategy.transforms.get(dim.transform)
                if t is None:
                    raise p.error(
                        f"gate {gid!r} refers to unknown transformation {dim.transform!r}",
                        field=gid,
                    )
                if isinstance(t, Ratio):
                    raise p.error(
                        f"gate {gid!r} uses ratio {dim.transform!r} as a scale; a ratio "
                        "belongs in a new-dimension",
                        field=gid,
                    )
            c = dim.compensation
            if c is not None and c != "FCS" and c not in strategy.compensations:
                raise p.error(f"gate {gid!r} refers to unknown matrix {c!r}", field=gid)


def _assemble(p: _Parser, strategy: GatingStrategy, pending, names: dict[str, str]) -> None:
    by_id: dict[str, tuple[str | None, Gate]] = {}
    for gid, parent, gate in pending:
        if gid in by_id:
            raise p.error(f"gate id {gid!r} is used twice", field=gid)
        by_id[gid] = (parent, gate)
    seen_names: dict[str, str] = {}
    for gid, name in names.items():
        if name in seen_names:
            raise p.error(
                f"gates {seen_names[name]!r} and {gid!r} have the same population name {name!r}",
                field=gid,
            )
        seen_names[name] = gid

    def deps(gid):
        parent, gate = by_id[gid]
        out = [] if parent is None else [parent]
        if isinstance(gate, BooleanGate):
            out += [r for r, _ in gate.operands]
        for d in out:
            if d not in by_id:
                raise p.error(f"gate {gid!r} refers to unknown gate {d!r}", field=gid)
        return out

    order: list[str] = []
    state: dict[str, int] = {}
    for start in by_id:
        if state.get(start):
            continue
        stack = [(start, iter(deps(start)))]
        state[start] = 1
        while stack:
            gid, it = stack[-1]
            for d in it:
                if state.get(d) == 1:
                    raise p.error(f"gates {gid!r} and {d!r} depend on each other", field=gid)
                if not state.get(d):
                    state[d] = 1
                    stack.append((d, iter(deps(d))))
                    break
            else:
                stack.pop()
                state[gid] = 2
                order.append(gid)
    for gid in order:
        parent, gate = by_id[gid]
        gate.id = names[gid]
        gate.parent = None if parent is None else names[parent]
        if isinstance(gate, BooleanGate):
            gate.operands = [(names[r], c) for r, c in gate.operands]
        strategy.add_gate(gate)


# --------------------------------------------------------------------------- writing

_NCNAME_START = re.compile(r"[A-Za-z_]")


def _sanitise(name: str) -> str:
    s = name.replace("+", "_pos")
    s = re.sub(r"[^A-Za-z0-9._-]", "_", s)
    if not s or not _NCNAME_START.match(s[0]):
        s = "_" + s
    return s


def xml_ids(names, taken: set[str] | None = None) -> dict[str, str]:
    """Deterministic, unique XML ``NCName`` ids for ``names`` (in their order).

    ``+`` becomes ``_pos``, other characters outside ``[A-Za-z0-9._-]`` become
    ``_``, an id that would not start with a letter or ``_`` gets a ``_``
    prefix, and a clash gets ``_2``, ``_3``... ``taken`` (updated) holds ids
    already in use.
    """
    taken = set() if taken is None else taken
    out: dict[str, str] = {}
    for name in names:
        if name in out:
            continue
        base = _sanitise(name)
        cand, k = base, 1
        while cand in taken:
            k += 1
            cand = f"{base}_{k}"
        taken.add(cand)
        out[name] = cand
    return out


def _num(x: float, *, allow_inf: bool = False) -> str:
    """Shortest exact decimal of ``x``; ``INF``/``-INF`` (xs:double) where allowed."""
    x = float(x)
    if math.isinf(x) and allow_inf:
        return "INF" if x > 0 else "-INF"
    if not math.isfinite(x):
        raise GatingFileError(f"cannot write the non-finite number {x} to Gating-ML")
    return repr(x)


def _transform_element(t: Transform, tid: str) -> ET.Element:
    el = ET.Element(_T + "transformation", {_T + "id": tid})
    if t.bound_min is not None:
        el.set(_T + "boundMin", _num(t.bound_min))
    if t.bound_max is not None:
        el.set(_T + "boundMax", _num(t.bound_max))
    if isinstance(t, Logicle | Hyperlog):
        kind = "logicle" if isinstance(t, Logicle) else "hyperlog"
        attrs = {"T": t.T, "W": t.W, "M": t.M, "A": t.A}
    elif isinstance(t, Asinh):
        kind, attrs = "fasinh", {"T": t.T, "M": t.M, "A": t.A}
    elif isinstance(t, Linear):
        kind, attrs = "flin", {"T": t.T, "A": t.A}
    elif isinstance(t, Log):
        kind, attrs = "flog", {"T": t.T, "M": t.M}
    elif isinstance(t, Ratio):
        kind, attrs = "fratio", {"A": t.A, "B": t.B, "C": t.C}
    else:
        raise GatingFileError(
            f"transform {t.id!r} ({type(t).__name__}) has no Gating-ML 2.0 equivalent",
            field=t.id,
            hint="Gating-ML 2.0 has flin, flog, fasinh, logicle, hyperlog and fratio",
        )
    f = ET.SubElement(el, _T + kind, {_T + k: _num(v) for k, v in attrs.items()})
    if isinstance(t, Ratio):
        for ch in (t.numerator, t.denominator):
            ET.SubElement(f, _D + "fcs-dimension", {_D + "name": ch})
    return el


def _matrix_element(c: Compensation, mid: str) -> ET.Element:
    el = ET.Element(_T + "spectrumMatrix", {_T + "id": mid})
    if c.inverted:
        el.set(_T + "matrix-inverted-already", "true")
    for tag, names in (("fluorochromes", c.fluorochromes), ("detectors", c.detectors)):
        box = ET.SubElement(el, _T + tag)
        for n in names:
            ET.SubElement(box, _D + "fcs-dimension", {_D + "name": n})
    for row in np.asarray(c.matrix, dtype=np.float64):
        sp = ET.SubElement(el, _T + "spectrum")
        for v in row:
            ET.SubElement(sp, _T + "coefficient", {_T + "value": _num(v)})
    return el


def _name_info(el: ET.Element, name: str) -> None:
    ci = ET.SubElement(el, _D + "custom_info")
    ET.SubElement(ci, f"{{{IMMUNO_NS}}}name").text = name


def time_gates(strategy: GatingStrategy) -> list[str]:
    """Ids of the gates on the ``Time`` channel that FlowKit reads on another scale
    (sorted): Gating-ML gives time as stored / ``$PnG``, FlowKit also multiplies it by
    ``$TIMESTEP``. Empty for a strategy whose scaling is ``"flowjo"`` (its Time is
    in seconds already, and its Gating-ML file says so)."""
    if strategy.scaling == "flowjo":
        return []
    return sorted(
        {
            g.id
            for g in strategy.gates.values()
            for d in g.dims
            if d.channel.strip().lower() == "time"
        }
    )


def write_gatingml(
    strategy: GatingStrategy, path: str | os.PathLike, *, warn_time: bool = True
) -> None:
    """Write ``strategy`` as a Gating-ML 2.0 file (atomically: temp file + rename).

    Rectangles (and ranges/quadrants), polygons, ellipses and boolean gates are
    written with their parent; transforms as Gating-ML transformations (with
    their bounds); compensations other than ``"FCS"`` as spectrum matrices. Ids
    are sanitised (:func:`xml_ids`) and each population's name kept in
    ``custom_info`` (``<immuno:name>``).

    The file says "channel values as Gating-ML 2.0 defines them" (``$PnE``
    decoded, divided by ``$PnG``): a strategy whose :attr:`scaling` is ``"raw"``
    means the same only on files with linear channels and ``$PnG = 1``. FlowKit
    reads such a file and gates it identically, except on a ``Time`` channel,
    which FlowKit also multiplies by ``$TIMESTEP`` (a warning is logged unless
    ``warn_time`` is False; the FlowJo export corrects for it).

    Raises
    ------
    GatingFileError
        A gate or transform has no Gating-ML 2.0 form (a complemented shape, a
        FlowJo-only transform).
    """
    path = Path(path)
    ET.register_namespace("gating", GATING_NS)
    ET.register_namespace("transforms", TRANSFORMS_NS)
    ET.register_namespace("data-type", DATATYPE_NS)
    ET.register_namespace("immuno", IMMUNO_NS)
    order = strategy.evaluation_order()
    taken: set[str] = {"FCS", "uncompensated"}
    gate_ids = xml_ids([g.id for g in order], taken)
    used_t: list[str] = []
    used_c: list[str] = []
    for g in order:
        for d in g.dims:
            for tid in (d.ratio, d.transform):
                if tid and tid not in used_t:
                    strategy.transform(tid)  # unknown id -> GatingError
                    used_t.append(tid)
            c = d.compensation
            if c not in (None, "", "uncompensated") and c not in used_c:
                if c != "FCS" and c not in strategy.compensations:
                    raise GatingError(f"unknown compensation {c!r}", field=c)
                used_c.append(c)
    timed = time_gates(strategy)
    if timed and warn_time:
        log.warning(
            "%s: %s gate(s) on the Time channel (%s). Gating-ML time values are the stored "
            "ones divided by $PnG; FlowKit also multiplies them by $TIMESTEP, so FlowKit "
            "will gate these populations on another scale",
            path.name,
            len(timed),
            ", ".join(timed),
        )
    t_ids = xml_ids(used_t, taken)
    c_ids = {"FCS": "FCS"} if "FCS" not in strategy.compensations else {}
    c_ids.update(xml_ids([c for c in used_c if c not in c_ids], taken))

    root = ET.Element(_G + "Gating-ML")
    info = ET.SubElement(root, _D + "custom_info")
    seconds = strategy.scaling == "flowjo"
    info.text = (
        "Written by immuno. Channel values as Gating-ML 2.0 defines them "
        "($PnE decoded, divided by $PnG)"
        + (
            "; Time in seconds (stored value x $TIMESTEP, as FlowKit and FlowJo read it)"
            if seconds
            else ""
        )
        + f"; strategy scaling: {strategy.scaling}."
    )
    if seconds:
        ET.SubElement(info, f"{{{IMMUNO_NS}}}time-scale").text = "TIMESTEP"
    for tid in used_t:
        root.append(_transform_element(strategy.transforms[tid], t_ids[tid]))
    for cid in used_c:
        if cid in strategy.compensations:
            root.append(_matrix_element(strategy.compensations[cid], c_ids[cid]))

    def dim_el(parent_el: ET.Element, d: Dimension, lo=None, hi=None) -> None:
        comp = d.compensation
        ref = "uncompensated" if comp in (None, "", "uncompensated") else c_ids[comp]
        attrs = {_G + "compensation-ref": ref}
        if d.transform:
            attrs[_G + "transformation-ref"] = t_ids[d.transform]
        if lo is not None:
            attrs[_G + "min"] = _num(lo, allow_inf=True)
        if hi is not None:
            attrs[_G + "max"] = _num(hi, allow_inf=True)
        de = ET.SubElement(parent_el, _G + "dimension", attrs)
        if d.ratio:
            ET.SubElement(de, _D + "new-dimension", {_D + "transformation-ref": t_ids[d.ratio]})
        else:
            ET.SubElement(de, _D + "fcs-dimension", {_D + "name": d.channel})

    for g in order:
        gid = gate_ids[g.id]
        if g.complement:
            raise GatingFileError(
                f"population {g.id!r} is the complement of its shape, which Gating-ML 2.0 "
                "cannot express on a shape gate",
                field=g.id,
                hint="define the shape as its own population and a boolean 'not' gate",
            )
        kind = {
            RectangleGate: "RectangleGate",
            PolygonGate: "PolygonGate",
            EllipseGate: "EllipsoidGate",
            BooleanGate: "BooleanGate",
        }.get(type(g))
        if kind is None:
            raise GatingFileError(
                f"population {g.id!r} is a {type(g).__name__}, which has no Gating-ML 2.0 form",
                field=g.id,
            )
        el = ET.SubElement(root, _G + kind, {_G + "id": gid})
        if g.parent is not None:
            el.set(_G + "parent_id", gate_ids[g.parent])
        _name_info(el, g.id)
        if isinstance(g, BooleanGate):
            op = ET.SubElement(el, _G + g.op)
            for ref, comp in g.operands:
                r = ET.SubElement(op, _G + "gateReference", {_G + "ref": gate_ids[ref]})
                if comp:
                    r.set(_G + "use-as-complement", "true")
        elif isinstance(g, RectangleGate):
            for j, d in enumerate(g.dims):
                lo = g.mins[j] if j < len(g.mins) else None
                hi = g.maxs[j] if j < len(g.maxs) else None
                dim_el(el, d, lo, hi)
        elif isinstance(g, PolygonGate):
            for d in g.dims:
                dim_el(el, d)
            for v in np.asarray(g.vertices, dtype=np.float64):
                ve = ET.SubElement(el, _G + "vertex")
                for c in v:
                    ET.SubElement(ve, _G + "coordinate", {_D + "value": _num(c)})
        else:
            for d in g.dims:
                dim_el(el, d)
            me = ET.SubElement(el, _G + "mean")
            for c in np.atleast_1d(np.asarray(g.mean, dtype=np.float64)):
                ET.SubElement(me, _G + "coordinate", {_D + "value": _num(c)})
            ce = ET.SubElement(el, _G + "covarianceMatrix")
            for row in np.atleast_2d(np.asarray(g.covariance, dtype=np.float64)):
                re_ = ET.SubElement(ce, _G + "row")
                for c in row:
                    ET.SubElement(re_, _G + "entry", {_D + "value": _num(c)})
            ET.SubElement(el, _G + "distanceSquare", {_D + "value": _num(g.distance_square)})
    ET.indent(root, space="  ")
    data = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    _atomic_write_bytes(path, data)


# --------------------------------------------------------------------------- results


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
