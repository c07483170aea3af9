"""Gates and the gating engine.

Calling convention (the one every gate follows): a gate names its dimensions
(:class:`Dimension`: channel, compensation, transform) and its parent
population; ``gate.contains(values) -> bool mask`` takes an ``(n, n_dims)`` array
of the parent's events already expressed in those dimensions' spaces. Gate
coordinates (rectangle bounds, polygon vertices, ellipse centre...) live in the
space their dimension names: raw channel units when ``transform`` is ``None``,
the transform's scale (e.g. logicle 0..1) otherwise.

:class:`GatingStrategy` holds gates, compensations and transforms;
``strategy.apply(fcs) -> GatingResult`` evaluates the hierarchy, computing each
gate only on its parent's events and each dimension only once per event set.
Data-driven gates (:mod:`immuno.autogate`) are fitted to a sample and *realise*
into these static gates, so the Gating-ML path and the data-driven path share
this one engine.

Boundary conventions (those of Gating-ML 2.0): a rectangle/range contains
``min <= x < max``; a quadrant is a rectangle whose open sides are unbounded; a
polygon contains its interior by the even-odd rule and its boundary (see
:func:`points_in_polygon`); an ellipse contains its boundary
(``distance <= distance_square``). Every comparison is made in float64 in the
dimension's own space, after the transform's Gating-ML bounds are applied.

Channel values: :attr:`GatingStrategy.scaling` says what "channel value" means
(``"raw"``: as stored, the default; ``"linear"``: ``$PnE`` decoded;
``"gain"``: also divided by ``$PnG``, as Gating-ML 2.0 defines channel values;
``"flowjo"``: ``"gain"`` plus the time channel multiplied by ``$TIMESTEP``, as
FlowJo and FlowKit show it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .compensate import Compensation, compensate
from .errors import GatingError, GatingFileError
from .transform import Transform

__all__ = [
    "SCALINGS",
    "Dimension",
    "Gate",
    "RectangleGate",
    "PolygonGate",
    "EllipseGate",
    "BooleanGate",
    "GatingStrategy",
    "GatingResult",
    "EventSpace",
]

log = logging.getLogger(__name__)

#: Meanings of "channel value" a strategy can ask for (see :func:`channel_values`).
SCALINGS = ("raw", "linear", "gain", "flowjo")


@dataclass(frozen=True)
class Dimension:
    """One axis of a gate.

    Attributes
    ----------
    channel
        ``$PnN`` of the FCS channel.
    compensation
        ``None`` (uncompensated), ``"FCS"`` (the file's own ``$SPILLOVER``) or the id
        of a matrix in :attr:`GatingStrategy.compensations`.
    transform
        ``None`` (linear channel units) or the id of a transform in
        :attr:`GatingStrategy.transforms`; gate coordinates are in its scale.
    ratio
        ``None`` for a channel, or the id of a two-channel transform
        (:class:`~immuno.transform.Ratio`, Gating-ML ``fratio``) in
        :attr:`GatingStrategy.transforms`: the dimension is then that ratio of the
        two channels it names (each compensated per ``compensation``), and
        ``channel`` is only a label. ``transform`` may further rescale the ratio.
    """

    channel: str
    compensation: str | None = None
    transform: str | None = None
    ratio: str | None = None

    def label(self) -> str:
        parts = [self.channel]
        if self.ratio:
            parts.append(f"ratio={self.ratio}")
        if self.compensation:
            parts.append(f"comp={self.compensation}")
        if self.transform:
            parts.append(f"t={self.transform}")
        return " ".join(parts)


@dataclass
class Gate:
    """Base class. ``id`` is the population name; ``parent`` its parent's id (None: root).

    ``complement`` (keyword only) turns the gate inside out: the population is
    the parent's events *outside* the shape (FlowJo's ``eventsInside="0"``).
    """

    id: str
    parent: str | None
    dims: tuple[Dimension, ...]
    complement: bool = field(default=False, kw_only=True)

    def contains(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class RectangleGate(Gate):
    """Axis-aligned box (a range gate in 1-D): ``min <= x < max`` on every dimension.

    ``mins``/``maxs`` hold one bound per dimension in that dimension's space;
    ``None`` means unbounded on that side (Gating-ML semantics): ``-inf`` below
    and ``+inf`` above, with the same half-open rule, so ``x = +inf`` (e.g. a
    ratio over a zero denominator) and NaN are in no rectangle.
    """

    mins: tuple[float | None, ...] = ()
    maxs: tuple[float | None, ...] = ()

    def contains(self, values):
        values = np.asarray(values)
        mask = np.ones(values.shape[0], dtype=bool)
        for j in range(len(self.dims)):
            lo = self.mins[j] if j < len(self.mins) else None
            hi = self.maxs[j] if j < len(self.maxs) else None
            col = values[:, j]
            if lo is not None:
                mask &= col >= lo
            mask &= col < (np.inf if hi is None else hi)
        return mask

    def describe(self):
        return "rectangle" if len(self.dims) > 1 else "range"


@dataclass
class PolygonGate(Gate):
    """Polygon on two dimensions; ``vertices`` is ``(k, 2)`` in the dimensions' spaces.

    Inside by the even-odd (crossing number) rule, boundary included (Gating-ML
    2.0); the polygon closes itself. See :func:`points_in_polygon`.
    """

    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def contains(self, values):
        return points_in_polygon(np.asarray(values), np.asarray(self.vertices, dtype=np.float64))

    def describe(self):
        return "polygon"


@dataclass
class EllipseGate(Gate):
    """Ellipse(oid): ``(x - mean)^T inv(covariance) (x - mean) <= distance_square``."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(2))
    covariance: np.ndarray = field(default_factory=lambda: np.eye(2))
    distance_square: float = 1.0

    def contains(self, values):
        diff = np.asarray(values, dtype=np.float64) - np.asarray(self.mean, dtype=np.float64)
        try:
            prec = np.linalg.inv(np.asarray(self.covariance, dtype=np.float64))
        except np.linalg.LinAlgError:
            raise GatingError(
                f"ellipse gate {self.id!r} has a singular covariance matrix", field=self.id
            ) from None
        md = np.einsum("ij,jk,ik->i", diff, prec, diff)
        return md <= self.distance_square

    def describe(self):
        return "ellipse"


@dataclass
class BooleanGate(Gate):
    """``and``/``or``/``not`` of other populations' memberships.

    ``operands`` is a list of ``(population_id, complement)`` pairs. ``not`` takes
    exactly one operand. The result is further restricted to the parent.
    """

    op: str = "and"
    operands: list[tuple[str, bool]] = field(default_factory=list)

    def combine(self, masks: dict[str, np.ndarray], n: int) -> np.ndarray:
        vals = []
        for ref, complement in self.operands:
            if ref not in masks:
                raise GatingError(
                    f"boolean gate {self.id!r} refers to unknown population {ref!r}", field=self.id
                )
            vals.append(~masks[ref] if complement else masks[ref])
        if self.op == "and":
            out = np.ones(n, dtype=bool)
            for v in vals:
                out &= v
        elif self.op == "or":
            out = np.zeros(n, dtype=bool)
            for v in vals:
                out |= v
        elif self.op == "not":
            if len(vals) != 1:
                raise GatingError("a 'not' gate takes exactly one operand", field=self.id)
            out = ~vals[0]
        else:
            raise GatingError(f"unknown boolean operator {self.op!r}", field=self.id)
        return out

    def describe(self):
        return f"boolean {self.op}"


def points_in_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Membership of ``(n, 2)`` points in a closed polygon ``(k, 2)``, boundary included.

    Interior by the even-odd (crossing number) rule: an edge counts when it
    straddles the point's y (``y1 <= y < y2`` or ``y2 <= y < y1``) and the point
    lies strictly left of the crossing. A point on an edge or a vertex is inside
    whatever the rule says (Gating-ML 2.0 polygons include their boundary); "on"
    means the cross product of the edge and the point, computed in float64, is
    exactly zero and the point lies within the edge's bounding box. That test is
    exact whenever the products are, e.g. for float32 events and vertices with
    short binary fractions (the compliance suite's ``Poly1u``); otherwise a point
    within rounding of an edge falls on either side. Self-intersecting polygons
    follow the even-odd rule.

    Vectorised over points (the loop is over the k edges only).
    """
    x = points[:, 0].astype(np.float64, copy=False)
    y = points[:, 1].astype(np.float64, copy=False)
    inside = np.zeros(points.shape[0], dtype=bool)
    on_edge = np.zeros(points.shape[0], dtype=bool)
    k = len(vertices)
    for i in range(k):
        x1, y1 = (float(c) for c in vertices[i])
        x2, y2 = (float(c) for c in vertices[(i + 1) % k])
        if y1 != y2:
            straddle = (y1 <= y) != (y2 <= y)
            xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            inside ^= straddle & (x < xc)
        box = (x >= min(x1, x2)) & (x <= max(x1, x2)) & (y >= min(y1, y2)) & (y <= max(y1, y2))
        cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
        on_edge |= box & (cross == 0)
    return inside | on_edge


def _needs_scaling(fcs, scaling: str) -> bool:
    text = fcs.text
    for j in range(len(fcs.channels)):
        n = j + 1
        pne = text.get(f"$P{n}E", "0,0").split(",")[0].strip()
        try:
            if float(pne or 0) > 0:
                return True
        except ValueError:
            return True  # let FCSData.scaled report the malformed keyword
        if scaling in ("gain", "flowjo"):
            g = text.get(f"$P{n}G", "").strip()
            try:
                if g and float(g) not in (0.0, 1.0):
                    return True
            except ValueError:
                return True
    return scaling == "flowjo" and _time_step(fcs) is not None


def _time_step(fcs) -> tuple[int, float] | None:
    """``(column, $TIMESTEP)`` of the time channel, or None when either is absent."""
    raw = fcs.text.get("$TIMESTEP", "").strip()
    if not raw:
        return None
    try:
        step = float(raw)
    except ValueError:
        return None
    for j, name in enumerate(fcs.channels):
        if name.strip().lower() == "time":
            return j, step
    return None


def channel_values(fcs, scaling: str = "raw") -> np.ndarray:
    """The event matrix of ``fcs`` in the channel units ``scaling`` names.

    ``"raw"``: ``fcs.events`` as stored. ``"linear"``: ``$PnE``-encoded log
    channels decoded (:meth:`~immuno.read.FCSData.scaled`). ``"gain"``: also
    divided by ``$PnG`` (Gating-ML 2.0 channel values). ``"flowjo"``: ``"gain"``
    and the ``Time`` channel multiplied by ``$TIMESTEP`` (what FlowJo and FlowKit
    gate on). Returns ``fcs.events`` itself (no copy) when nothing changes.
    """
    if scaling in (None, "raw"):
        return fcs.events
    if scaling not in SCALINGS:
        raise GatingError(
            f"unknown channel scaling {scaling!r}",
            field="scaling",
            hint=f"use one of {', '.join(SCALINGS)}",
        )
    if not _needs_scaling(fcs, scaling):
        return fcs.events
    out = fcs.scaled(gain=scaling in ("gain", "flowjo"))
    if scaling == "flowjo":
        ts = _time_step(fcs)
        if ts is not None:
            out[:, ts[0]] *= ts[1]
    return out


class EventSpace:
    """The events of one sample, expressed on demand in any gate dimension.

    Channel values are scaled once (per :attr:`GatingStrategy.scaling`);
    compensated matrices are computed once per compensation; transformed
    columns once per (dimension, event set) when the caller names the event set
    (``cache_key``, as :meth:`GatingStrategy.evaluate` does with the parent).
    ``values(dims, rows)`` returns an ``(len(rows), len(dims))`` float64 array.
    """

    def __init__(self, fcs, strategy: GatingStrategy, *, dtype=np.float64):
        self.fcs = fcs
        self.strategy = strategy
        self.dtype = dtype
        self.events = channel_values(fcs, getattr(strategy, "scaling", "raw"))
        self._comp: dict[str, tuple[Compensation, np.ndarray] | None] = {}
        self._cols: dict[tuple, tuple[object, np.ndarray]] = {}
        #: How many more times each ``(dimension, cache_key)`` column will be asked
        #: for (filled by :meth:`GatingStrategy.apply`); columns used once are not kept.
        self.uses: dict[tuple, int] = {}

    def _compensation(self, comp_id: str) -> tuple[Compensation, np.ndarray] | None:
        if comp_id not in self._comp:
            if comp_id == "FCS" and "FCS" not in self.strategy.compensations:
                spill = self.fcs.spillover()
                if spill is None:
                    if not getattr(self.strategy, "require_spillover", True):
                        # Gating-ML: a file without a spillover matrix is "compensated"
                        # by the identity.
                        self._comp[comp_id] = None
                        return None
                    raise GatingError(
                        "gate asks for the file's own compensation but the file has no "
                        "$SPILLOVER/$SPILL keyword",
                        file=self.fcs.path,
                        field="$SPILLOVER",
                        hint="name a spillover matrix file in the panel",
                    )
                comp = Compensation(spill[0], spill[1], id="FCS")
            else:
                try:
                    comp = self.strategy.compensations[comp_id]
                except KeyError:
                    raise GatingError(f"unknown compensation {comp_id!r}", field=comp_id) from None
            values = compensate(
                self.events, self.fcs.channels, comp, file=self.fcs.path, dtype=self.dtype
            )
            self._comp[comp_id] = (comp, values)
        return self._comp[comp_id]

    def _raw(self, channel: str, rows: np.ndarray | None) -> np.ndarray:
        col = self.fcs.channel_index(channel)
        v = self.events[:, col] if rows is None else self.events[rows, col]
        return v.astype(self.dtype, copy=False)

    def linear(self, dim: Dimension, rows: np.ndarray | None = None) -> np.ndarray:
        """Channel values of ``dim`` (compensated if it says so), before its transform.

        For a ratio dimension: the ratio of its two channels (with the ratio
        transform's own bounds applied).
        """
        if dim.ratio:
            r = self.strategy.transform(dim.ratio)
            names = (getattr(r, "numerator", None), getattr(r, "denominator", None))
            if getattr(r, "n_inputs", 1) != 2 or not all(names):
                raise GatingError(
                    f"dimension {dim.label()!r} names {dim.ratio!r} as a ratio, "
                    "but it is not a two-channel transform",
                    field=dim.ratio,
                )
            parts = [
                np.asarray(self.linear(Dimension(n, dim.compensation), rows), dtype=np.float64)
                for n in names
            ]
            return r.scale(np.column_stack(parts))
        if dim.compensation in (None, "", "uncompensated"):
            return self._raw(dim.channel, rows)
        comp_values = self._compensation(dim.compensation)
        if comp_values is None:
            return self._raw(dim.channel, rows)
        comp, values = comp_values
        try:
            j = comp.fluorochromes.index(dim.channel)
        except ValueError:
            try:
                j = comp.detectors.index(dim.channel)
            except ValueError:
                # Not a compensated detector (e.g. scatter): raw values.
                return self._raw(dim.channel, rows)
        return values[:, j] if rows is None else values[rows, j]

    def column(
        self, dim: Dimension, rows: np.ndarray | None = None, *, cache_key=None, token=None
    ) -> np.ndarray:
        """One dimension's values (transformed and bounded) as float64.

        ``cache_key`` (a hashable naming the event set ``rows``) lets a column be
        kept for the other gates that will ask for it: only when :attr:`uses`
        says more than one will, and only until the last has had it (so memory
        holds shared columns only). A kept column is served only while ``token``
        (e.g. the parent's mask array) is the very same object, so a re-evaluated
        parent never gets stale values.
        """
        key = None if cache_key is None else (dim, cache_key)
        if key is not None:
            hit = self._cols.get(key)
            if hit is not None and hit[0] is token:
                self._release(key)
                return hit[1]
        v = self.linear(dim, rows)
        if dim.transform:
            v = self.strategy.transform(dim.transform).scale(v)
        v = np.asarray(v, dtype=np.float64)
        if key is not None:
            if self.uses.get(key, 0) > 1:
                self._cols[key] = (token, v)
            self._release(key)
        return v

    def _release(self, key) -> None:
        left = self.uses.get(key, 0) - 1
        if left <= 0:
            self.uses.pop(key, None)
            self._cols.pop(key, None)
        else:
            self.uses[key] = left

    def values(
        self,
        dims: Iterable[Dimension],
        rows: np.ndarray | None = None,
        *,
        cache_key=None,
        token=None,
    ) -> np.ndarray:
        cols = [self.column(dim, rows, cache_key=cache_key, token=token) for dim in dims]
        n = self.fcs.n_events if rows is None else len(rows)
        return np.column_stack(cols) if cols else np.zeros((n, 0))


@dataclass
class GatingResult:
    """Membership of every population for one sample.

    ``masks[pop]`` is a boolean array over all events (FCS order); ``parents[pop]``
    the parent population (``None`` for a child of all events).
    """

    sample_id: str
    n_events: int
    masks: dict[str, np.ndarray]
    parents: dict[str, str | None]

    def count(self, pop: str) -> int:
        return int(self.masks[pop].sum())

    def parent_count(self, pop: str) -> int:
        p = self.parents[pop]
        return self.n_events if p is None else self.count(p)

    def table(self):
        """Tidy counts: ``population, parent, count, parent_count, percent_of_parent``."""
        import pandas as pd

        rows = []
        for pop in self.masks:
            c, pc = self.count(pop), self.parent_count(pop)
            rows.append(
                {
                    "population": pop,
                    "parent": self.parents[pop] or "root",
                    "count": c,
                    "parent_count": pc,
                    "percent_of_parent": 100.0 * c / pc if pc else float("nan"),
                }
            )
        return pd.DataFrame(rows)


class GatingStrategy:
    """A hierarchy of gates with the compensations and transforms they refer to.

    Attributes
    ----------
    gates
        Populations by id, parents before children.
    compensations, transforms
        By the ids the gates' dimensions use.
    scaling
        What a channel value is (:data:`SCALINGS`): ``"raw"`` (default),
        ``"linear"``, ``"gain"`` (Gating-ML 2.0) or ``"flowjo"``.
    require_spillover
        When True (default) a dimension compensated with ``"FCS"`` on a file
        without a spillover keyword is an error; when False (Gating-ML 2.0) the
        file's values are used uncompensated.
    source_paths
        Where a population came from in its source file when that is not its id
        (e.g. the FlowJo gating path ``/Time/Singlets``); may be empty.
    """

    def __init__(self):
        self.gates: dict[str, Gate] = {}
        self.compensations: dict[str, Compensation] = {}
        self.transforms: dict[str, Transform] = {}
        self.scaling: str = "raw"
        self.require_spillover: bool = True
        self.source_paths: dict[str, str] = {}

    def add_gate(self, gate: Gate) -> Gate:
        if gate.id in self.gates:
            raise GatingFileError(f"population {gate.id!r} is defined twice", field=gate.id)
        if gate.parent is not None and gate.parent not in self.gates:
            raise GatingFileError(
                f"population {gate.id!r} has parent {gate.parent!r}, not defined before it",
                field=gate.id,
            )
        self.gates[gate.id] = gate
        return gate

    def transform(self, tid: str) -> Transform:
        try:
            return self.transforms[tid]
        except KeyError:
            raise GatingError(f"unknown transform {tid!r}", field=tid) from None

    def children(self, pop: str | None) -> list[str]:
        return [g.id for g in self.gates.values() if g.parent == pop]

    def path(self, pop: str) -> list[str]:
        out = []
        cur: str | None = pop
        while cur is not None:
            out.append(cur)
            cur = self.gates[cur].parent
        return out[::-1]

    def dependencies(self, gate: Gate) -> list[str]:
        """Populations ``gate`` needs first: its parent and, for a boolean gate, operands."""
        deps = [] if gate.parent is None else [gate.parent]
        if isinstance(gate, BooleanGate):
            deps.extend(ref for ref, _ in gate.operands)
        return deps

    def evaluation_order(self) -> list[Gate]:
        """Gates ordered so that every gate follows its parent and its operands.

        Raises :class:`~immuno.errors.GatingError` on a reference to an unknown
        population or a cycle.
        """
        order: list[Gate] = []
        state: dict[str, int] = {}  # 1: in progress, 2: done
        for root in self.gates:
            if state.get(root) == 2:
                continue
            stack = [(root, iter(self.dependencies(self.gates[root])))]
            state[root] = 1
            while stack:
                gid, deps = stack[-1]
                for dep in deps:
                    if dep not in self.gates:
                        raise GatingError(
                            f"population {gid!r} refers to unknown population {dep!r}",
                            field=gid,
                        )
                    if state.get(dep) == 1:
                        raise GatingError(
                            f"populations {gid!r} and {dep!r} depend on each other", field=gid
                        )
                    if state.get(dep) is None:
                        state[dep] = 1
                        stack.append((dep, iter(self.dependencies(self.gates[dep]))))
                        break
                else:
                    stack.pop()
                    state[gid] = 2
                    order.append(self.gates[gid])
        return order

    def apply(self, fcs, *, sample_id: str | None = None, dtype=np.float64) -> GatingResult:
        """Evaluate every gate on ``fcs`` (an :class:`~immuno.read.FCSData`)."""
        space = EventSpace(fcs, self, dtype=dtype)
        n = fcs.n_events
        order = self.evaluation_order()
        for gate in order:
            if not isinstance(gate, BooleanGate):
                for dim in set(gate.dims):
                    key = (dim, ("parent", gate.parent))
                    space.uses[key] = space.uses.get(key, 0) + 1
        masks: dict[str, np.ndarray] = {}
        for gate in order:
            masks[gate.id] = self.evaluate(gate, space, masks)
        masks = {gid: masks[gid] for gid in self.gates}
        return GatingResult(
            sample_id or fcs.path, n, masks, {g.id: g.parent for g in self.gates.values()}
        )

    def evaluate(self, gate: Gate, space: EventSpace, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Membership of one gate, given the memberships computed so far."""
        n = space.fcs.n_events
        parent = None if gate.parent is None else masks[gate.parent]
        if isinstance(gate, BooleanGate):
            out = gate.combine(masks, n)
            if gate.complement:
                out = ~out
            return out if parent is None else out & parent
        rows = None if parent is None else np.flatnonzero(parent)
        vals = space.values(gate.dims, rows, cache_key=("parent", gate.parent), token=parent)
        inside = np.asarray(gate.contains(vals), dtype=bool)
        if gate.complement:
            inside = ~inside
        if rows is None:
            return inside
        out = np.zeros(n, dtype=bool)
        out[rows[inside]] = True
        return out
