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
    """

    channel: str
    compensation: str | None = None
    transform: str | None = None

    def label(self) -> str:
        parts = [self.channel]
        if self.compensation:
            parts.append(f"comp={self.compensation}")
        if self.transform:
            parts.append(f"t={self.transform}")
        return " ".join(parts)


@dataclass
class Gate:
    """Base class. ``id`` is the population name; ``parent`` its parent's id (None: root)."""

    id: str
    parent: str | None
    dims: tuple[Dimension, ...]

    def contains(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class RectangleGate(Gate):
    """Axis-aligned box (a range gate in 1-D): ``min <= x < max`` on every dimension.

    ``mins``/``maxs`` hold one bound per dimension in that dimension's space;
    ``None`` means unbounded on that side (Gating-ML semantics).
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
            if hi is not None:
                mask &= col < hi
        return mask

    def describe(self):
        return "rectangle" if len(self.dims) > 1 else "range"


@dataclass
class PolygonGate(Gate):
    """Polygon on two dimensions; ``vertices`` is ``(k, 2)`` in the dimensions' spaces.

    Inside by the even-odd (crossing number) rule; the polygon closes itself.
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
        prec = np.linalg.inv(np.asarray(self.covariance, dtype=np.float64))
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
    """Even-odd rule membership of ``(n, 2)`` points in a closed polygon ``(k, 2)``.

    Vectorised over points (loop over the k edges only). An edge counts when it
    straddles the point's y (``y1 <= y < y2`` or ``y2 <= y < y1``) and the point
    lies left of the crossing.
    """
    x = points[:, 0].astype(np.float64, copy=False)
    y = points[:, 1].astype(np.float64, copy=False)
    inside = np.zeros(points.shape[0], dtype=bool)
    k = len(vertices)
    for i in range(k):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % k]
        if y1 == y2:
            continue
        straddle = (y1 <= y) != (y2 <= y)
        xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= straddle & (x < xc)
    return inside


class EventSpace:
    """The events of one sample, expressed on demand in any gate dimension.

    Compensated matrices are computed once per compensation; transformed columns
    once per (dimension, event set). ``values(dims, rows)`` returns an
    ``(len(rows), len(dims))`` float64 array.
    """

    def __init__(self, fcs, strategy: GatingStrategy, *, dtype=np.float64):
        self.fcs = fcs
        self.strategy = strategy
        self.dtype = dtype
        self._comp: dict[str, tuple[Compensation, np.ndarray]] = {}

    def _compensation(self, comp_id: str) -> tuple[Compensation, np.ndarray]:
        if comp_id not in self._comp:
            if comp_id == "FCS" and "FCS" not in self.strategy.compensations:
                spill = self.fcs.spillover()
                if spill is None:
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
                self.fcs.events, self.fcs.channels, comp, file=self.fcs.path, dtype=self.dtype
            )
            self._comp[comp_id] = (comp, values)
        return self._comp[comp_id]

    def linear(self, dim: Dimension, rows: np.ndarray | None = None) -> np.ndarray:
        """Channel values of ``dim`` (compensated if it says so), before its transform."""
        if dim.compensation in (None, "", "uncompensated"):
            col = self.fcs.channel_index(dim.channel)
            v = self.fcs.events[:, col] if rows is None else self.fcs.events[rows, col]
            return v.astype(self.dtype, copy=False)
        comp, values = self._compensation(dim.compensation)
        try:
            j = comp.fluorochromes.index(dim.channel)
        except ValueError:
            try:
                j = comp.detectors.index(dim.channel)
            except ValueError:
                # Not a compensated detector (e.g. scatter): raw values.
                col = self.fcs.channel_index(dim.channel)
                v = self.fcs.events[:, col] if rows is None else self.fcs.events[rows, col]
                return v.astype(self.dtype, copy=False)
        return values[:, j] if rows is None else values[rows, j]

    def values(self, dims: Iterable[Dimension], rows: np.ndarray | None = None) -> np.ndarray:
        cols = []
        for dim in dims:
            v = self.linear(dim, rows)
            if dim.transform:
                v = self.strategy.transform(dim.transform).apply(v)
            cols.append(np.asarray(v, dtype=np.float64))
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
    """A hierarchy of gates with the compensations and transforms they refer to."""

    def __init__(self):
        self.gates: dict[str, Gate] = {}
        self.compensations: dict[str, Compensation] = {}
        self.transforms: dict[str, Transform] = {}

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

    def apply(self, fcs, *, sample_id: str | None = None, dtype=np.float64) -> GatingResult:
        """Evaluate every gate on ``fcs`` (an :class:`~immuno.read.FCSData`)."""
        space = EventSpace(fcs, self, dtype=dtype)
        n = fcs.n_events
        masks: dict[str, np.ndarray] = {}
        for gate in self.gates.values():
            masks[gate.id] = self.evaluate(gate, space, masks)
        return GatingResult(
            sample_id or fcs.path, n, masks, {g.id: g.parent for g in self.gates.values()}
        )

    def evaluate(self, gate: Gate, space: EventSpace, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Membership of one gate, given the memberships computed so far."""
        n = space.fcs.n_events
        parent = None if gate.parent is None else masks[gate.parent]
        if isinstance(gate, BooleanGate):
            out = gate.combine(masks, n)
            return out if parent is None else out & parent
        rows = None if parent is None else np.flatnonzero(parent)
        vals = space.values(gate.dims, rows)
        inside = gate.contains(vals)
        if rows is None:
            return inside
        out = np.zeros(n, dtype=bool)
        out[rows[inside]] = True
        return out
