"""FlowJo 10 workspaces (``.wsp``) as gating strategies for the project's engine.

Calling convention: ``load_flowjo(path, sample=None) -> GatingStrategy`` for one
sample of the workspace (its ``SampleNode`` name, e.g. the FCS file name, or
its ``sampleID``; a one-sample workspace needs neither), evaluated by
:mod:`immuno.gate` like any other strategy. ``workspace_samples(path)`` lists
the samples.

How FlowJo's conventions are mapped (see ``docs/gating-exactness.md``):

* Channel values are what FlowJo shows: ``$PnE`` decoded, divided by ``$PnG``,
  ``Time`` multiplied by ``$TIMESTEP`` (``GatingStrategy.scaling = "flowjo"``).
* Compensation is per sample: the sample's ``spilloverMatrix`` (its ``name``,
  e.g. ``Acquisition-defined``, is the compensation id). A gate dimension named
  ``<prefix><detector><suffix>`` (``Comp-CD3 APC-H7 FLR-A``) is that detector,
  compensated; any other name is an uncompensated channel.
* Transforms are per sample and per parameter: ``linear`` (``minRange`` ..
  ``maxRange`` mapped onto 0..1), ``log`` (:class:`~immuno.transform.FlowJoLog`),
  ``logicle`` (Gating-ML logicle), ``biex`` (FlowJo's lookup table,
  :class:`~immuno.transform.FlowJoBiex`) and ``fasinh`` (Gating-ML arcsinh).
* FlowJo stores rectangle, range and polygon coordinates in channel units and
  evaluates gates on its transformed display; rectangles/ranges keep their
  bounds mapped through the dimension's transform and polygons their vertices,
  so edges are straight on the display, as FlowJo draws them.
* Ellipses are stored as two foci and four edge points in the 256 x 256
  display; they become exact :class:`~immuno.gate.EllipseGate` s on the 0..1
  transformed scale (sum of distances to the foci = major axis).
* ``eventsInside="0"`` makes a complement gate; ``AndNode``/``OrNode``/``NotNode``
  become boolean gates restricted to their parent.

Population ids: a population's name when it is unique in the sample's tree,
else the shortest tail of its path that is (``CD4+/CD107a+``).
:func:`population_paths` gives the FlowJo path of every id.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET

import numpy as np

from .compensate import Compensation
from .errors import ConfigError, GatingFileError, PanelError
from .gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
)
from .gatingml import check_population_count, parse_xml
from .transform import Asinh, FlowJoBiex, FlowJoLog, Linear, Logicle, Transform

__all__ = ["load_flowjo", "workspace_samples", "population_paths"]

log = logging.getLogger(__name__)

#: FlowJo draws ellipses in a display of this many bins per axis.
DISPLAY_BINS = 256.0


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(el: ET.Element, name: str, default: str | None = None) -> str | None:
    v = el.get(name)
    if v is not None:
        return v
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return default


def _kids(el: ET.Element, name: str) -> list[ET.Element]:
    return [k for k in el if _local(k.tag) == name]


def _kid(el: ET.Element, name: str) -> ET.Element | None:
    for k in el:
        if _local(k.tag) == name:
            return k
    return None


class _Wsp:
    def __init__(self, path: str):
        self.path = path
        self.root = parse_xml(path, kind="FlowJo workspace")
        if _local(self.root.tag) != "Workspace":
            raise self.error(
                f"root element is <{_local(self.root.tag)}>, not <Workspace>",
                hint="expected a FlowJo 10 .wsp file",
            )
        self._check_version()

    def _check_version(self) -> None:
        """FlowJo 10 writes ``version="20.0"`` (and ``flowJoVersion="10..."``); the
        workspaces of FlowJo 9 and earlier (version 1.x-3.x) hold their gates in another
        layout, which this reader would find empty."""
        version = self.root.get("version")
        app = self.root.get("flowJoVersion") or ""
        try:
            major = float(version) if version is not None else None
        except ValueError:
            major = None
        app_major = app.split(".", 1)[0]
        old = (major is not None and major < 20) or (app_major.isdigit() and int(app_major) < 10)
        if major is None and not app_major.isdigit():
            old = True  # no version at all: not a FlowJo 10 workspace
        if old:
            raise self.error(
                f"a FlowJo workspace of version {version or '(none)'}"
                + (f" (FlowJo {app})" if app else "")
                + ": only FlowJo 10 workspaces (version 20) are read",
                field="Workspace.version",
                hint="open and save it in FlowJo 10, or export its gates as Gating-ML 2.0",
            )

    def error(self, msg: str, *, sample=None, field=None, hint=None) -> GatingFileError:
        return GatingFileError(msg, file=self.path, sample=sample, field=field, hint=hint)

    def samples(self) -> list[tuple[str, str, ET.Element]]:
        """``(name, sampleID, Sample element)`` for every sample."""
        box = _kid(self.root, "SampleList")
        out = []
        for s in [] if box is None else _kids(box, "Sample"):
            node = _kid(s, "SampleNode")
            if node is None:
                continue
            out.append((_attr(node, "name", ""), _attr(node, "sampleID", ""), s))
        return out

    def number(self, el: ET.Element, name: str, owner: str, sample: str) -> float:
        raw = _attr(el, name)
        try:
            v = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise self.error(
                f"{_local(el.tag)} of {owner!r} has {name}={raw!r}, not a number",
                sample=sample,
                field=owner,
            ) from None
        if not math.isfinite(v):
            raise self.error(f"{name}={raw!r} of {owner!r} is not finite", sample=sample)
        return v


def workspace_samples(path: str | os.PathLike) -> list[str]:
    """Names of the samples (``SampleNode`` names) in a FlowJo workspace."""
    return [name for name, _, _ in _Wsp(str(path)).samples()]


def _compensation(w: _Wsp, sample_el: ET.Element, sname: str):
    mats = _kids(sample_el, "spilloverMatrix")
    if not mats:
        return None
    if len(mats) > 1:
        raise w.error("the sample has more than one spillover matrix", sample=sname)
    m = mats[0]
    name = _attr(m, "name") or _attr(m, "id") or "FlowJo"
    if _attr(m, "spectral", "0") == "1":
        raise w.error(
            f"spectral matrix {name!r} is not supported",
            sample=sname,
            field=name,
            hint="export the unmixed (compensated) channels from FlowJo or use Gating-ML",
        )
    params = _kid(m, "parameters")
    dets = [] if params is None else [_attr(p, "name") for p in _kids(params, "parameter")]
    if not dets or not all(dets):
        raise w.error(f"spillover matrix {name!r} names no detectors", sample=sname, field=name)
    idx = {d: i for i, d in enumerate(dets)}
    mat = np.eye(len(dets))
    for row in _kids(m, "spillover"):
        src = _attr(row, "parameter")
        if src not in idx:
            raise w.error(f"spillover row {src!r} is not a matrix detector", sample=sname)
        for c in _kids(row, "coefficient"):
            det = _attr(c, "parameter")
            if det not in idx:
                raise w.error(f"coefficient for {det!r} is not a matrix detector", sample=sname)
            mat[idx[src], idx[det]] = w.number(c, "value", name, sname)
    try:
        comp = Compensation(dets, mat, id=name)
    except PanelError as exc:
        msg = f"spillover matrix {name!r}: {exc.message}"
        raise w.error(msg, sample=sname, field=name) from None
    return comp, _attr(m, "prefix", "") or "", _attr(m, "suffix", "") or ""


def _transforms(w: _Wsp, sample_el: ET.Element, sname: str) -> dict[str, Transform]:
    box = _kid(sample_el, "Transformations")
    out: dict[str, Transform] = {}
    if box is None:
        return out
    for t in box:
        kind = _local(t.tag)
        p = _kid(t, "parameter")
        pname = None if p is None else _attr(p, "name")
        if not pname:
            raise w.error(f"a {kind} transform names no parameter", sample=sname)

        def num(name, default=None, _t=t, _p=pname):
            if default is not None and _attr(_t, name) is None:
                return default
            return w.number(_t, name, _p, sname)

        try:
            if kind == "linear":
                lo, hi = num("minRange", 0.0), num("maxRange")
                tr: Transform = Linear(T=hi, A=-lo, id=pname)
            elif kind == "log":
                tr = FlowJoLog(offset=num("offset"), decades=num("decades"), id=pname)
            elif kind == "logicle":
                tr = Logicle(num("T"), num("W"), num("M"), num("A", 0.0), id=pname)
            elif kind == "biex":
                tr = FlowJoBiex(
                    num("neg", 0.0), num("width"), num("pos"), num("maxRange"), id=pname
                )
            elif kind == "fasinh":
                tr = Asinh(T=num("T"), M=num("M"), A=num("A", 0.0), id=pname)
            else:
                raise w.error(
                    f"FlowJo transform {kind!r} of {pname!r} is not supported",
                    sample=sname,
                    field=pname,
                    hint="in FlowJo, set the axis to linear, log, biex, logicle or arcsinh",
                )
        except (ConfigError, ValueError, ArithmeticError) as exc:
            raise w.error(f"transform of {pname!r}: {exc}", sample=sname, field=pname) from None
        out[pname] = tr
    return out


class _Node:
    __slots__ = ("path", "kind", "el")

    def __init__(self, path: tuple[str, ...], kind: str, el: ET.Element):
        self.path, self.kind, self.el = path, kind, el


def _walk(el: ET.Element, prefix: tuple[str, ...], out: list[_Node]) -> None:
    box = _kid(el, "Subpopulations")
    if box is None:
        return
    for k in box:
        kind = _local(k.tag)
        if kind not in ("Population", "AndNode", "OrNode", "NotNode"):
            continue
        name = _attr(k, "name", "")
        node = _Node((*prefix, name), kind, k)
        out.append(node)
        _walk(k, node.path, out)


def _ids(paths: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Shortest unique path tail for every population (its name when unique): one count
    of every tail, so the work grows with the populations times their depth."""
    from collections import Counter

    counts = Counter(p[-k:] for p in paths for k in range(1, len(p) + 1))
    out = {}
    for p in paths:
        for k in range(1, len(p) + 1):
            tail = p[-k:]
            if counts[tail] == 1 or k == len(p):
                out[p] = "/".join(tail)
                break
    return out


def population_paths(strategy: GatingStrategy) -> dict[str, str]:
    """FlowJo path (``/Time/Singlets/...``) of every population of a loaded workspace."""
    return {gid: strategy.source_paths.get(gid, "/" + gid) for gid in strategy.gates}


def load_flowjo(path: str | os.PathLike, sample: str | None = None) -> GatingStrategy:
    """Read one sample's gating tree from a FlowJo 10 workspace.

    Parameters
    ----------
    path
        The ``.wsp`` file (parsed safely: no entities, no external references).
    sample
        ``SampleNode`` name (usually the FCS file name) or ``sampleID``; may be
        omitted when the workspace holds one sample.

    Raises
    ------
    GatingFileError
        Unsafe or malformed file, unknown sample, or a gate/transform type this
        module does not evaluate (spectral matrices, FlowJo's undocumented
        transforms, gates other than rectangle/polygon/ellipse/boolean).
    """
    w = _Wsp(str(path))
    samples = w.samples()
    if not samples:
        raise w.error("the workspace holds no sample")
    if sample is None:
        if len(samples) != 1:
            raise w.error(
                f"the workspace holds {len(samples)} samples; say which one",
                hint="samples: " + ", ".join(n for n, _, _ in samples),
            )
        sname, _, sel = samples[0]
    else:
        hit = [s for s in samples if sample in (s[0], s[1])]
        if not hit:
            raise w.error(
                f"no sample {sample!r} in the workspace",
                sample=sample,
                hint="samples: " + ", ".join(n for n, _, _ in samples),
            )
        if len(hit) > 1:
            raise w.error(
                f"{len(hit)} samples of the workspace are called {sample!r} (name or id)",
                sample=sample,
                hint="name one by its sampleID: " + ", ".join(f"{n} (id {i})" for n, i, _ in hit),
            )
        sname, _, sel = hit[0]

    strategy = GatingStrategy()
    strategy.scaling = "flowjo"
    comp = _compensation(w, sel, sname)
    prefix = suffix = ""
    if comp is not None:
        c, prefix, suffix = comp
        strategy.compensations[c.id] = c
    transforms = _transforms(w, sel, sname)
    strategy.transforms.update(transforms)

    nodes: list[_Node] = []
    _walk(_kid(sel, "SampleNode"), (), nodes)
    check_population_count(len(nodes), w.path, "FlowJo workspace", sname)
    ids = _ids([n.path for n in nodes])
    by_path = {n.path: n for n in nodes}
    for node in nodes:
        gid = ids[node.path]
        parent = ids[node.path[:-1]] if len(node.path) > 1 else None
        if node.kind == "Population":
            gate = _population_gate(w, sname, node, gid, parent, comp, prefix, suffix, transforms)
        else:
            refs = []
            deps = _kid(node.el, "Dependents")
            for d in [] if deps is None else _kids(deps, "Dependent"):
                dpath = tuple((_attr(d, "name") or "").split("/"))
                if dpath not in by_path:
                    raise w.error(
                        f"boolean population {gid!r} depends on unknown {'/'.join(dpath)!r}",
                        sample=sname,
                        field=gid,
                    )
                refs.append((ids[dpath], False))
            op = {"AndNode": "and", "OrNode": "or", "NotNode": "not"}[node.kind]
            if not refs or (op == "not" and len(refs) != 1):
                raise w.error(
                    f"boolean population {gid!r} has {len(refs)} dependents",
                    sample=sname,
                    field=gid,
                )
            gate = BooleanGate(gid, parent, (), op=op, operands=refs)
        strategy.add_gate(gate)
        strategy.source_paths[gid] = "/" + "/".join(node.path)
    return strategy


def _population_gate(w, sname, node, gid, parent, comp, prefix, suffix, transforms) -> Gate:
    gate_el = _kid(node.el, "Gate")
    shapes = [] if gate_el is None else list(gate_el)
    if len(shapes) != 1:
        raise w.error(f"population {gid!r} has no single gate", sample=sname, field=gid)
    g = shapes[0]
    kind = _local(g.tag)
    complement = _attr(g, "eventsInside", "1") == "0"
    dims: list[Dimension] = []
    dim_els = _kids(g, "dimension")
    for d in dim_els:
        fd = _kid(d, "fcs-dimension")
        name = None if fd is None else _attr(fd, "name")
        if not name:
            raise w.error(f"a dimension of {gid!r} names no channel", sample=sname, field=gid)
        channel, cid = name, None
        if comp is not None:
            c = comp[0]
            core = name
            if prefix and core.startswith(prefix):
                core = core[len(prefix) :]
            if suffix and core.endswith(suffix):
                core = core[: -len(suffix)]
            if (prefix or suffix) and core != name and core in c.detectors:
                channel, cid = core, c.id
            elif not (prefix or suffix) and name in c.detectors:
                channel, cid = name, c.id
        tid = name if name in transforms else None
        dims.append(Dimension(channel, cid, tid))

    def forward(j: int, v: float | None) -> float | None:
        if v is None or dims[j].transform is None:
            return v
        return float(transforms[dims[j].transform].apply(np.array([v]))[0])

    if kind == "RectangleGate":
        mins, maxs = [], []
        for j, d in enumerate(dim_els):
            lo = _attr(d, "min")
            hi = _attr(d, "max")
            mins.append(forward(j, None if lo is None else w.number(d, "min", gid, sname)))
            maxs.append(forward(j, None if hi is None else w.number(d, "max", gid, sname)))
        return RectangleGate(
            gid, parent, tuple(dims), tuple(mins), tuple(maxs), complement=complement
        )
    if kind == "PolygonGate":
        verts = []
        for v in _kids(g, "vertex"):
            cs = [w.number(c, "value", gid, sname) for c in _kids(v, "coordinate")]
            if len(cs) != 2:
                raise w.error(
                    f"polygon {gid!r} has a vertex of {len(cs)} coordinates", sample=sname
                )
            verts.append([forward(0, cs[0]), forward(1, cs[1])])
        if len(dims) != 2 or len(verts) < 3:
            raise w.error(f"polygon {gid!r} needs 2 dimensions and 3 vertices", sample=sname)
        return PolygonGate(
            gid,
            parent,
            tuple(dims),
            vertices=np.array(verts, dtype=np.float64),
            complement=complement,
        )
    if kind == "EllipsoidGate":
        return _ellipse(w, sname, g, gid, parent, dims, transforms, complement)
    raise w.error(
        f"population {gid!r} uses a FlowJo {kind}, which is not supported",
        sample=sname,
        field=gid,
        hint="supported: rectangle, range, quadrant (as rectangles), polygon, ellipse, boolean",
    )


def _ellipse(w, sname, g, gid, parent, dims, transforms, complement) -> EllipseGate:
    """A FlowJo ellipse (foci and edge points in the 256-bin display) as an exact ellipse.

    The display maps each axis' transformed scale 0..1 onto 0..256, so
    coordinates are divided by 256. The major semi-axis ``a`` is half the sum
    of the distances to the foci of the first two edge points (the ends of the
    major axis; averaged), the focal half-distance ``c`` gives the minor semi-axis
    ``b = sqrt(a^2 - c^2)``; the ellipse is ``(p - m)^T C^-1 (p - m) <= 1`` with
    ``C = R diag(a^2, b^2) R^T``, ``R`` rotating x onto the focal axis.
    """
    if len(dims) != 2:
        raise w.error(f"ellipse {gid!r} needs 2 dimensions", sample=sname, field=gid)
    for d in dims:
        if d.transform is None:
            raise w.error(
                f"ellipse {gid!r} is drawn on {d.channel!r}, which has no display transform",
                sample=sname,
                field=gid,
            )

    def points(tag):
        box = _kid(g, tag)
        pts = []
        for v in [] if box is None else _kids(box, "vertex"):
            pts.append([w.number(c, "value", gid, sname) for c in _kids(v, "coordinate")])
        return np.array(pts, dtype=np.float64) / DISPLAY_BINS

    foci, edge = points("foci"), points("edge")
    if foci.shape != (2, 2) or edge.shape[0] < 4 or edge.shape[1] != 2:
        raise w.error(f"ellipse {gid!r} needs 2 foci and 4 edge points", sample=sname, field=gid)
    centre = foci.mean(axis=0)
    axis = foci[1] - foci[0]
    c = 0.5 * float(np.hypot(*axis))
    # Each edge point lies on the ellipse: its distances to the foci sum to 2a.
    sums = np.hypot(*(edge - foci[0]).T) + np.hypot(*(edge - foci[1]).T)
    a = 0.5 * float(sums[:2].mean())
    if not a > c:
        raise w.error(f"ellipse {gid!r} is degenerate", sample=sname, field=gid)
    b2 = a * a - c * c
    theta = math.atan2(axis[1], axis[0]) if c > 0 else 0.0
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = rot @ np.diag([a * a, b2]) @ rot.T
    return EllipseGate(
        gid,
        parent,
        tuple(dims),
        mean=centre,
        covariance=cov,
        distance_square=1.0,
        complement=complement,
    )
