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

Two evaluators give the same memberships, event for event. :class:`EventSpace`
is the exact reference: float64 throughout. :class:`FastEventSpace` (what
``apply`` uses on samples of :data:`FAST_MIN_EVENTS` events or more) works in
blocks of events, in the events' own float32 where that is exact enough, with
rectangle bounds mapped back to channel units through the transform's inverse,
a table for logicle/hyperlog/asinh and a grid for polygons, each with a rigorous
error bound; any event those bounds cannot decide is re-evaluated by the exact
path. :func:`write_membership` writes the per-event table as gzip directly.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compensate import Compensation, compensate
from .errors import GatingError, GatingFileError
from .transform import Asinh, Hyperlog, Linear, Logicle, Transform

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
    "FastEventSpace",
    "event_space",
    "write_membership",
    "PolygonGrid",
    "max_abs",
    "resolve_compensation",
    "source_index",
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


def ellipse_problem(mean, covariance, distance_square) -> str | None:
    """Why ``(mean, covariance, distance_square)`` is no ellipse (gate space), or None.

    The mean and matrix must be finite, the matrix invertible and not negative definite
    (the symmetric part of its inverse has a positive eigenvalue; a negative-definite one
    puts every event inside), and the squared distance finite and positive.
    """
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(covariance, dtype=np.float64)
    k = mean.shape[0] if mean.ndim == 1 else -1
    if cov.shape != (k, k):
        return f"the covariance matrix is not {k}x{k}"
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        return "the mean or covariance matrix is not finite"
    try:
        prec = np.linalg.inv(cov)
    except np.linalg.LinAlgError:
        return "the covariance matrix is singular"
    # The quadratic form x' inv(cov) x only sees inv(cov)'s symmetric part. The Gating-ML
    # compliance suite itself holds an asymmetric, indefinite matrix (a 3-D ellipsoid whose
    # expected counts FlowKit reproduces), so only a form that is nowhere positive, which
    # puts every event inside, is refused.
    if np.linalg.eigvalsh(0.5 * (prec + prec.T)).max() <= 0:
        return "the covariance matrix is negative definite (every event would be inside)"
    d2 = float(distance_square)
    if not (math.isfinite(d2) and d2 > 0):
        return f"distanceSquare {d2} is not a positive number"
    return None


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
    """``(column, $TIMESTEP)`` of the time channel, or None when either is absent (or
    the step is no finite positive number: :func:`immuno.read.time_step`)."""
    from .read import time_step

    step = time_step(fcs.text)
    if step is None:
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


def resolve_compensation(fcs, strategy: GatingStrategy, comp_id: str) -> Compensation | None:
    """The matrix a dimension's ``compensation`` names for ``fcs`` (None: use raw values).

    ``"FCS"`` (unless the strategy defines a matrix of that id) is the file's own
    spillover keyword; a file without one is used uncompensated when the
    strategy does not :attr:`~GatingStrategy.require_spillover`, else it is an
    error. Any other id must be in :attr:`GatingStrategy.compensations`.
    """
    if comp_id == "FCS" and "FCS" not in strategy.compensations:
        spill = fcs.spillover()
        if spill is None:
            if not getattr(strategy, "require_spillover", True):
                # Gating-ML: a file without a spillover matrix is "compensated" by the
                # identity.
                return None
            raise GatingError(
                "gate asks for the file's own compensation but the file has no "
                "$SPILLOVER/$SPILL keyword",
                file=fcs.path,
                field="$SPILLOVER",
                hint="if the data are already compensated or need none, set "
                "`compensation: none` in the template's panel",
            )
        return Compensation(spill[0], spill[1], id="FCS")
    try:
        return strategy.compensations[comp_id]
    except KeyError:
        raise GatingError(f"unknown compensation {comp_id!r}", field=comp_id) from None


def source_index(comp: Compensation, channel: str) -> int | None:
    """Column of ``channel`` in ``comp``'s compensated values (None: not compensated)."""
    try:
        return comp.fluorochromes.index(channel)
    except ValueError:
        try:
            return comp.detectors.index(channel)
        except ValueError:
            return None


class EventSpace:
    """The events of one sample, expressed on demand in any gate dimension.

    Channel values are scaled once (per :attr:`GatingStrategy.scaling`);
    compensated matrices are computed once per compensation; transformed
    columns once per (dimension, event set) when the caller names the event set
    (``cache_key``, as :meth:`GatingStrategy.evaluate` does with the parent).
    ``values(dims, rows)`` returns an ``(len(rows), len(dims))`` float64 array.

    ``events`` (keyword) passes the channel values when the caller already has
    them; ``rowwise=True`` compensates only the rows each call asks for instead
    of the whole matrix once (the same arithmetic; for a caller that needs a
    few rows, e.g. :class:`FastEventSpace`'s exact re-checks).
    """

    def __init__(
        self,
        fcs,
        strategy: GatingStrategy,
        *,
        dtype=np.float64,
        events: np.ndarray | None = None,
        rowwise: bool = False,
    ):
        self.fcs = fcs
        self.strategy = strategy
        self.dtype = dtype
        self.rowwise = rowwise
        if events is None:
            events = channel_values(fcs, getattr(strategy, "scaling", "raw"))
        self.events = events
        self._comp: dict[str, tuple[Compensation, np.ndarray] | None] = {}
        self._cols: dict[tuple, tuple[object, np.ndarray]] = {}
        #: How many more times each ``(dimension, cache_key)`` column will be asked
        #: for (filled by :meth:`GatingStrategy.apply`); columns used once are not kept.
        self.uses: dict[tuple, int] = {}

    def _compensation(self, comp_id: str) -> tuple[Compensation, np.ndarray | None] | None:
        """``(matrix, compensated values of all events)``; values None when row-wise."""
        if comp_id not in self._comp:
            comp = resolve_compensation(self.fcs, self.strategy, comp_id)
            if comp is None:
                self._comp[comp_id] = None
                return None
            if self.rowwise:
                comp.columns(self.fcs.channels, file=self.fcs.path)  # every detector present
                values = None
            else:
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
        j = source_index(comp, dim.channel)
        if j is None:
            # Not a compensated detector (e.g. scatter): raw values.
            return self._raw(dim.channel, rows)
        if values is None:  # row-wise
            return compensate(
                self.events,
                self.fcs.channels,
                comp,
                rows=rows,
                file=self.fcs.path,
                dtype=self.dtype,
            )[:, j]
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

    def estimates(self, dims: Iterable[Dimension], rows: np.ndarray | None = None) -> np.ndarray:
        """Values to fit a data-driven gate on (here: the exact :meth:`values`)."""
        return self.values(dims, rows)


# --------------------------------------------------------------------------- fast path

#: :meth:`GatingStrategy.apply` uses :class:`FastEventSpace` for samples of at least
#: this many events (smaller ones cost more to set up than they save).
FAST_MIN_EVENTS = 20_000
#: :class:`FastEventSpace` gates a parent with fewer events than this exactly.
FAST_MIN_ROWS = 4_096
#: A parent holding at least this share of the events is gated on all of them, then
#: restricted to the parent (no gathering of its rows).
FAST_DENSE = 0.6
#: Cells per axis of a polygon's classification grid (:class:`PolygonGrid`).
POLYGON_GRID = 512
#: :meth:`GatingStrategy.apply` gates this many events at a time on the fast path.
FAST_CHUNK = 1 << 18
#: Rows per matrix product when compensating (BLAS stays on one thread for these).
_GEMM_ROWS = 4096

#: Transforms whose ``approx``/``lipschitz``/``inverse`` the fast path relies on
#: (strictly increasing, defined and finite on every finite value).
_MONOTONE_APPROX = (Linear, Asinh, Logicle, Hyperlog)


def max_abs(events: np.ndarray) -> float:
    """Largest ``|value|`` of an array (inf or NaN when a value is not finite)."""
    if events.size == 0:
        return 0.0
    return max(abs(float(events.max())), abs(float(events.min())))


def _round_up(x: float, dtype) -> float:
    """The smallest value of ``dtype`` that is ``>= x`` (as that dtype's scalar)."""
    v = dtype.type(x)
    if float(v) < x:
        v = np.nextafter(v, dtype.type(np.inf))
    return v


def _round_down(x: float, dtype) -> float:
    """The largest value of ``dtype`` that is ``<= x``."""
    v = dtype.type(x)
    if float(v) > x:
        v = np.nextafter(v, dtype.type(-np.inf))
    return v


class PolygonGrid:
    """A polygon's bounding box cut into cells classified in / out / near the boundary.

    Cells the polygon's boundary passes through, dilated by enough cells to cover
    a point error of ``eps_x``/``eps_y`` (plus one for rounding in the cell index
    and one for the boundary sampling), are "near" (2); every other cell lies
    wholly on one side and takes the even-odd class of its centre (1 inside, 0
    outside); cells beyond the dilated box are outside. :meth:`classify` gives
    each point its cell's class: a point of class 0 or 1 is decided exactly (its
    true position, within ``eps`` of the given one, is on the same side), a
    point of class 2 needs :func:`points_in_polygon` on exact values.
    """

    def __init__(self, vertices: np.ndarray, eps_x: float, eps_y: float, cells: int = 0):
        cells = cells or POLYGON_GRID
        self.vertices = vertices
        v = np.asarray(vertices, dtype=np.float64)
        lo, hi = v.min(axis=0), v.max(axis=0)
        self.ok = bool(np.isfinite(v).all() and (hi > lo).all())
        if not self.ok:
            return
        h = (hi - lo) / cells
        r = np.ceil(np.array([eps_x, eps_y]) / h).astype(np.int64) + 2
        if not (np.isfinite([eps_x, eps_y]).all() and (r <= cells // 4).all()):
            self.ok = False
            return
        pad = r + 1
        self.v = v
        self.scale = float(np.abs(v).max() + (hi - lo).max() * 2)
        self.origin = lo - pad * h
        self.inv_h = 1.0 / h
        self.nx, self.ny = (cells + 2 * pad).tolist()
        nx, ny = self.nx, self.ny
        x0, y0 = self.origin
        hx, hy = h
        # Even-odd class of every cell centre, by scan lines: an edge straddling the
        # centre line flips every cell whose centre lies left of its crossing.
        yc = y0 + (np.arange(ny) + 0.5) * hy
        x1, y1 = v[:, 0], v[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        flat = y1 == y2
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(flat, 0.0, (x2 - x1) / np.where(flat, 1.0, y2 - y1))
        straddle = (y1[None, :] <= yc[:, None]) != (y2[None, :] <= yc[:, None])
        straddle &= ~flat[None, :]
        xcross = x1[None, :] + (yc[:, None] - y1[None, :]) * slope[None, :]
        left = np.clip(np.ceil((xcross - x0) / hx - 0.5), 0, nx).astype(np.int64)
        rows = np.broadcast_to(np.arange(ny)[:, None], left.shape)
        flips = np.zeros(ny * (nx + 1), dtype=np.uint8)
        np.bitwise_xor.at(flips, (rows * (nx + 1) + left)[straddle], 1)
        flips = flips.reshape(ny, nx + 1)
        # Cell j is flipped by every crossing whose first unflipped cell is beyond j.
        table = np.bitwise_xor.accumulate(flips[:, ::-1], axis=1)[:, ::-1][:, 1:]
        table = np.ascontiguousarray(table)
        # Cells touched by an edge: samples at most half a cell apart along every edge.
        # All edges at once: edge i gets k_i samples t = j / (k_i - 1), as linspace.
        near = np.zeros((ny, nx), dtype=bool)
        dx, dy = x2 - x1, y2 - y1
        k = np.ceil(2 * np.maximum(np.abs(dx) / hx, np.abs(dy) / hy)).astype(np.int64) + 2
        edge = np.repeat(np.arange(len(v)), k)
        j = np.arange(len(edge)) - np.repeat(np.cumsum(k) - k, k)
        t = j * (1.0 / (k - 1))[edge]
        t[np.cumsum(k) - 1] = 1.0
        ix = np.floor((x1[edge] + t * dx[edge] - x0) / hx).astype(np.int64)
        iy = np.floor((y1[edge] + t * dy[edge] - y0) / hy).astype(np.int64)
        near[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)] = True
        near = _dilate(near, int(r[1]), int(r[0]))
        table[near] = 2
        self.table = table.ravel()

    def far_from_edges(self, x: np.ndarray, y: np.ndarray, eps_x: float, eps_y: float):
        """Whether each point (float64) is farther than ``hypot(eps_x, eps_y)`` from
        every edge (with a margin for the rounding of this test), boolean array.

        With ``eps = 0`` (the values are the exact ones) every point is "far":
        :func:`points_in_polygon` on them is the exact result, edges included.
        """
        v = self.v
        d2 = np.full(len(x), np.inf)
        for i in range(len(v)):
            x1, y1 = v[i]
            x2, y2 = v[(i + 1) % len(v)]
            dx, dy = x2 - x1, y2 - y1
            ux, uy = x - x1, y - y1
            length2 = dx * dx + dy * dy
            if length2 > 0:
                t = ux * dx
                t += uy * dy
                t /= length2
                np.clip(t, 0.0, 1.0, out=t)
                ux -= t * dx
                uy -= t * dy
            ux *= ux
            uy *= uy
            ux += uy
            np.minimum(d2, ux, out=d2)
        margin = math.hypot(eps_x, eps_y) + 1e-9 * self.scale
        return d2 > margin * margin if margin > 1e-9 * self.scale else np.ones(len(x), bool)

    def classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Class (0 out, 1 in, 2 near the boundary) of points ``(x, y)``, uint8."""
        # Cell index as a float (exact integers below 2^24; floating-point arithmetic
        # is several times faster than 64-bit integer arithmetic here): row * nx +
        # column. Its rounding moves a point by less than one cell, which the extra
        # cell of dilation covers.
        idx = None
        for vals, o, inv, size in (
            (y, self.origin[1], self.inv_h[1], self.ny),
            (x, self.origin[0], self.inv_h[0], self.nx),
        ):
            # In float32 when that is within a quarter cell for every value near the
            # grid; float64 otherwise.
            dt = np.dtype(vals.dtype if vals.dtype == np.float32 else np.float64)
            if dt == np.float32:
                reach = abs(float(o)) * float(inv) + size
                if reach * 2.0**-21 > 0.25 or self.nx * self.ny >= 2**24:
                    dt = np.dtype(np.float64)
            f = np.multiply(vals, dt.type(inv), dtype=dt)
            f += dt.type(-float(o) * float(inv))
            np.clip(f, 0, size - 1, out=f)
            if idx is None:
                np.floor(f, out=f)
                f *= self.nx
                idx = f
            else:
                idx = np.add(idx, f, dtype=np.result_type(idx, f))
        return self.table.take(idx.astype(np.intp))


def _and(a, b):
    """``a & b`` where either may be a bool meaning "every event" / "no event"."""
    if a is True or b is False:
        return b
    if b is True or a is False:
        return a
    return a & b


def _or(a, b):
    if a is False or b is True:
        return b
    if b is False or a is True:
        return a
    return a | b


def _dilate(mask: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Box dilation of a 2-D boolean array by ``ry`` rows and ``rx`` columns."""
    out = mask.copy()
    for s in range(1, rx + 1):
        out[:, s:] |= mask[:, :-s]
        out[:, :-s] |= mask[:, s:]
    mask = out.copy()
    for s in range(1, ry + 1):
        out[s:, :] |= mask[:-s, :]
        out[:-s, :] |= mask[s:, :]
    return out


class FastEventSpace:
    """Gate evaluation that decides most events cheaply and the rest exactly.

    The result of every gate is the one :class:`EventSpace` (float64 throughout)
    gives, event for event; only the work differs:

    * compensation is computed in the events' own dtype (float32 for most
      files), every source of a matrix at once (a matrix product over small
      blocks of rows), with a rigorous bound on the difference from the float64
      value;
    * a rectangle (range, quadrant) on a monotonic transform compares the
      channel values with ``transform.inverse(bound)`` instead of transforming
      every event (Gating-ML ``boundMin``/``boundMax`` taken into account);
    * polygons and ellipses use :meth:`~immuno.transform.Transform.approx`
      (a table) with its error bound; polygons classify points on a grid
      (:class:`PolygonGrid`) instead of testing every edge;
    * an event whose value could lie on either side of a boundary, given those
      bounds, is re-evaluated by the exact float64 path (:attr:`exact`,
      compensating only those rows); so is every event of a gate the fast path
      does not handle (ratio dimensions, FlowJo and log transforms, a file
      holding non-finite values, a parent of fewer than :data:`FAST_MIN_ROWS`
      events).

    ``events`` may be any block of rows of the sample (:meth:`GatingStrategy.apply`
    gates :data:`FAST_CHUNK` events at a time, so that every column stays in
    cache and memory does not grow with the file); ``max_abs`` is then the
    largest ``|value|`` of the whole sample and ``shared`` a dict the blocks
    share (polygon grids). ``strategy.evaluate(gate, space, masks)`` accepts a
    FastEventSpace in place of an :class:`EventSpace`, and
    :meth:`values`/:meth:`column`/:meth:`linear` give the exact float64 values.
    """

    def __init__(
        self,
        fcs,
        strategy: GatingStrategy,
        *,
        events: np.ndarray | None = None,
        max_abs: float | None = None,
        shared: dict | None = None,
    ):
        self.fcs = fcs
        self.strategy = strategy
        if events is None:
            events = channel_values(fcs, getattr(strategy, "scaling", "raw"))
        self.events = events
        self.n = int(events.shape[0])
        #: The exact path (float64, row-wise compensation) for re-checks and fallbacks.
        self.exact = EventSpace(fcs, strategy, events=events, rowwise=True)
        self._max_abs = max_abs
        self._shared = {} if shared is None else shared
        self._raw: dict[int, np.ndarray] = {}
        self._comp: dict[str, tuple | None] = {}
        self._takes: tuple[object, dict] = (None, {})  # values on the latest parent's rows
        self._within: np.ndarray | None = None
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        #: Events decided fast, re-checked exactly, and gated exactly (whole gates).
        self.stats = {"fast": 0, "rechecked": 0, "exact": 0}

    # -- the exact values, for callers that use an EventSpace ----------------------

    def values(self, dims, rows=None, *, cache_key=None, token=None) -> np.ndarray:
        return self.exact.values(dims, rows)

    def column(self, dim: Dimension, rows=None, *, cache_key=None, token=None) -> np.ndarray:
        return self.exact.column(dim, rows)

    def linear(self, dim: Dimension, rows=None) -> np.ndarray:
        return self.exact.linear(dim, rows)

    def estimates(self, dims, rows=None) -> np.ndarray:
        """Values to fit a data-driven gate on: ``(len(rows), len(dims))`` float64.

        The fast path's own values (compensation in the events' dtype, the
        transform's lookup table), each within the error bound the fast path
        works with (for logicle about 1e-5 on its 0-1 scale; exact where the fast
        path does not apply). A density valley or a mixture fitted on them moves
        by far less than one event's spacing, at a fraction of the cost of exact
        logicle on every parent event; gates are then *evaluated* exactly.
        """
        if not self.usable():
            return self.exact.values(dims, rows)
        cols = [np.asarray(self._transformed(d, rows)[0], dtype=np.float64) for d in dims]
        n = self.n if rows is None else len(rows)
        return np.column_stack(cols) if cols else np.zeros((n, 0))

    # -- evaluation --------------------------------------------------------------

    def usable(self) -> bool:
        """True when the fast path can be used at all: float events, all finite (and far
        from overflowing float32 when compensated)."""
        ev = self.events
        if ev.ndim != 2 or ev.dtype not in (np.float32, np.float64) or self.n == 0:
            return False
        top = self.max_abs()
        return math.isfinite(top) and top < 1e30

    def max_abs(self) -> float:
        """Largest ``|value|`` of the events (inf or NaN if any is not finite)."""
        if self._max_abs is None:
            self._max_abs = max_abs(self.events)
        return self._max_abs

    def evaluate(
        self, gate: Gate, masks: dict[str, np.ndarray], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Membership of ``gate`` over :attr:`events` (as :meth:`GatingStrategy.evaluate`).

        ``out`` (optional): a boolean array of :attr:`n` to write it into.
        """
        n = self.n
        parent = None if gate.parent is None else masks[gate.parent]
        if isinstance(gate, BooleanGate):
            res = gate.combine(masks, n)
            if gate.complement:
                res = ~res
            if parent is not None:
                res &= parent
            if out is None:
                return res
            out[...] = res
            return out
        m = n if parent is None else self._count(gate.parent, parent)
        # A gate on most of the events is evaluated on all of them (contiguous values,
        # no gathering) and then restricted to its parent; otherwise on its parent's rows.
        dense = parent is not None and m >= FAST_DENSE * n
        rows = None if parent is None or dense else self._parent_rows(gate.parent, parent)
        within = parent if dense else None
        inside = None
        if m >= FAST_MIN_ROWS and self.usable():
            inside = self._fast(gate, rows, within)
        if inside is None:
            self.stats["exact"] += m
            if dense:
                rows, within = self._parent_rows(gate.parent, parent), None
            inside = np.asarray(gate.contains(self.exact.values(gate.dims, rows)), dtype=bool)
        if gate.complement:
            inside = ~inside
        if out is None:
            out = np.empty(n, dtype=bool)
        if rows is None:
            if within is None:
                out[...] = inside
            else:
                np.logical_and(inside, within, out=out)
            count = int(np.count_nonzero(out))
        else:
            out[...] = False
            out[rows] = inside
            count = int(np.count_nonzero(inside))
        # What the children need (their rows are made only if one asks).
        self._rows[gate.id] = (out, None, count, rows, inside)
        return out

    def _count(self, pid: str, mask: np.ndarray) -> int:
        hit = self._rows.get(pid)
        if hit is not None and hit[0] is mask:
            return hit[2]
        return int(np.count_nonzero(mask))

    def _parent_rows(self, pid: str, mask: np.ndarray) -> np.ndarray:
        """Indices of ``mask``'s events (from the parent's own rows when known)."""
        hit = self._rows.get(pid)
        if hit is None or hit[0] is not mask:
            return self._nonzero(mask)
        if hit[1] is None:
            out, _, count, rows, inside = hit
            mine = self._nonzero(out) if rows is None else rows[inside]
            self._rows[pid] = (out, mine, count, None, None)
            return mine
        return hit[1]

    def _nonzero(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    def _fast(self, gate: Gate, rows, within) -> np.ndarray | None:
        self._within = within
        kind = type(gate)
        if kind is RectangleGate:
            return self._rectangle(gate, rows)
        if kind is PolygonGate:
            return self._polygon(gate, rows)
        if kind is EllipseGate:
            return self._ellipse(gate, rows)
        return None

    def _recheck(self, gate: Gate, rows, inside: np.ndarray, unsure: np.ndarray) -> np.ndarray:
        """Set ``inside[unsure]`` from the exact path; return ``inside``.

        With all events evaluated for a parent (``self._within``), only the
        parent's events are re-checked (the others are discarded anyway).
        """
        if rows is None and self._within is not None:
            unsure &= self._within
        idx = np.flatnonzero(unsure)
        m = len(inside)
        self.stats["rechecked"] += len(idx)
        self.stats["fast"] += m - len(idx)
        if len(idx):
            sub = idx if rows is None else rows[idx]
            vals = self.exact.values(gate.dims, sub)
            inside[idx] = np.asarray(gate.contains(vals), dtype=bool)
        return inside

    # -- dimension values ---------------------------------------------------------

    def _compensated(self, comp_id: str):
        """``(compensation, sources x events matrix in the events' dtype, err per source)``.

        None when ``comp_id`` means raw values for this file. Every source at once:
        ``events @ unmixing`` over blocks of :data:`_GEMM_ROWS` rows (small enough
        for the BLAS to stay on one thread), stored source-major so that each
        source is a contiguous column.
        """
        if comp_id not in self._comp:
            comp = resolve_compensation(self.fcs, self.strategy, comp_id)
            if comp is None:
                self._comp[comp_id] = None
                return None
            cols = comp.columns(self.fcs.channels, file=self.fcs.path)
            unmix = comp.unmixing
            # Only the span of columns holding the detectors (a strided view, no copy).
            lo, hi = min(cols), max(cols) + 1
            ev = self.events[:, lo:hi]
            w = np.zeros((hi - lo, unmix.shape[1]), dtype=np.float64)
            np.add.at(w, [c - lo for c in cols], unmix)
            w = w.astype(ev.dtype)
            out = np.empty((unmix.shape[1], self.n), dtype=ev.dtype)
            by_event = out.T  # the same memory, (events, sources)
            step = _GEMM_ROWS
            for a in range(0, self.n, step):
                np.matmul(ev[a : a + step], w, out=by_event[a : a + step])
            # Error of a dot product of ncol terms (any order, FMA or not), of rounding
            # the weights to the events' dtype, and of the float64 reference itself.
            unit = np.finfo(ev.dtype).eps / 2
            l1 = np.abs(unmix).sum(axis=0) * self.max_abs()
            err = (hi - lo + 4) * unit * l1
            self._comp[comp_id] = (comp, out, err, l1)
        return self._comp[comp_id]

    def _linear(self, dim: Dimension, rows) -> tuple[np.ndarray, float, float] | None:
        """``(values, err, max |value|)``: channel values of ``dim`` before its transform.

        ``values`` (the events' dtype) differ from the exact float64 ones by at
        most ``err``. None for a ratio dimension.
        """
        if dim.ratio:
            return None
        comp = None
        if dim.compensation not in (None, "", "uncompensated"):
            comp = self._compensated(dim.compensation)
        j = None if comp is None else source_index(comp[0], dim.channel)
        if j is None:
            col = self.fcs.channel_index(dim.channel)
            key: tuple = ("raw", col)
            err, top = 0.0, self.max_abs()
        else:
            _, matrix, errs, l1 = comp
            key = ("comp", dim.compensation, j)
            err, top = float(errs[j]), float(l1[j]) + float(errs[j])
        if rows is None:
            vals = self.events[:, col] if j is None else matrix[j]
            return vals, err, top
        # Sibling gates (evaluated one after the other) share their parent's values.
        if self._takes[0] is not rows:
            self._takes = (rows, {})
        taken = self._takes[1]
        if key not in taken:
            if j is None:
                vals = self._raw.get(col)
                if vals is None:
                    vals = self._raw[col] = np.ascontiguousarray(self.events[:, col])
            else:
                vals = matrix[j]
            taken[key] = vals.take(rows)
        return taken[key], err, top

    def _transformed(self, dim: Dimension, rows) -> tuple[np.ndarray, float]:
        """``(y, err)``: ``dim``'s gate-space values and a bound on their error."""
        lin = self._linear(dim, rows)
        if lin is not None and dim.transform:
            vals, err, top = lin
            t = self.strategy.transform(dim.transform)
            lip = t.lipschitz() if type(t) in _MONOTONE_APPROX else None
            approx = None if lip is None else t.approx(vals, top)
            if approx is None:
                lin = None
            else:
                y, t_err = approx
                err = t_err + lip * err
                if t.bound_min is not None or t.bound_max is not None:
                    # Clamping moves no value further from the exact one; the bounds
                    # rounded to y's dtype move it by at most their ulp.
                    lo = -np.inf if t.bound_min is None else t.bound_min
                    hi = np.inf if t.bound_max is None else t.bound_max
                    y = np.clip(y, y.dtype.type(lo), y.dtype.type(hi))
                    big = (
                        max(abs(v) for v in (lo, hi) if math.isfinite(v))
                        if (math.isfinite(lo) or math.isfinite(hi))
                        else 0.0
                    )
                    err += float(np.finfo(y.dtype).eps) * big
                return y, err
        if lin is None:
            return self.exact.column(dim, rows), 0.0
        return lin[0], lin[1]

    # -- gates --------------------------------------------------------------------

    def _side(self, dim: Dimension, vals, err, bound: float, upper: bool):
        """Decided-inside and decided-outside masks of ``y >= bound`` (``y < bound``
        when ``upper``) for one rectangle side; True/False for "every event"."""
        if math.isnan(bound):
            return None
        t = self.strategy.transform(dim.transform) if dim.transform else None
        if math.isinf(bound):
            # y >= -inf and y < inf hold for every finite y; y >= inf and y < -inf never.
            ok = (bound < 0) != upper
            return ok, not ok
        if t is not None:
            if type(t) not in _MONOTONE_APPROX:
                return None
            bmin, bmax = t.bound_min, t.bound_max
            if not upper:
                if bmin is not None and bound <= bmin:
                    return True, False
                if bmax is not None and bound > bmax:
                    return False, True
            else:
                if bmax is not None and bound > bmax:
                    return True, False
                if bmin is not None and bound <= bmin:
                    return False, True
            key = ("inverse", id(t), bound)
            if key not in self._shared:
                with np.errstate(over="ignore", invalid="ignore"):
                    r, r_hi, r_lo = (
                        float(v) for v in t.inverse(np.array([bound, bound + 1e-9, bound - 1e-9]))
                    )
                # Channel-value width of 1e-9 on the scale: far more than the few-ulp
                # error of apply and inverse, so c beyond r +- band is decided.
                self._shared[key] = (t, r, max(r_hi - r, r - r_lo))
            _, r, band = self._shared[key]
            if not (math.isfinite(r) and math.isfinite(band)):
                return None
            err = err + band + 1e-12 * abs(r)
        else:
            r = float(bound)
        dt = vals.dtype
        if err == 0:  # uncompensated channel values, no transform: compare exactly
            thr = _round_up(r, dt)
            inside = vals < thr if upper else vals >= thr
            return inside, ~inside
        above = vals >= _round_up(r + err * (1 + 1e-9), dt)
        below = vals < _round_down(r - err * (1 + 1e-9), dt)
        return (below, above) if upper else (above, below)

    def _rectangle(self, gate: RectangleGate, rows):
        m = self.n if rows is None else len(rows)
        inside, outside = True, False
        for j, dim in enumerate(gate.dims):
            lo = gate.mins[j] if j < len(gate.mins) else None
            hi = gate.maxs[j] if j < len(gate.maxs) else None
            if lo is None and hi is None:
                continue
            lin = self._linear(dim, rows)
            if lin is None:
                return None
            vals, err, _ = lin
            for bound, upper in ((lo, False), (hi, True)):
                if bound is None:
                    continue
                side = self._side(dim, vals, err, float(bound), upper)
                if side is None:
                    return None
                inside, outside = _and(inside, side[0]), _or(outside, side[1])
        inside = np.broadcast_to(np.asarray(inside), (m,)).copy()
        outside = np.broadcast_to(np.asarray(outside), (m,))
        unsure = ~(inside | outside)
        return self._recheck(gate, rows, inside, unsure)

    def _polygon(self, gate: PolygonGate, rows):
        if len(gate.dims) != 2:
            return None
        vx = self._transformed(gate.dims[0], rows)
        vy = self._transformed(gate.dims[1], rows)
        key = ("grid", gate.id, id(gate.vertices), vx[1], vy[1])
        grid = self._shared.get(key)
        if grid is None or grid.vertices is not gate.vertices:
            grid = self._shared[key] = PolygonGrid(gate.vertices, vx[1], vy[1])
        if not grid.ok:
            return None
        cls = grid.classify(vx[0], vy[0])
        inside = cls == 1
        near = np.flatnonzero(cls == 2)
        if self._within is not None and len(near):
            near = near[self._within[near]]
        if len(near):
            # Second stage on the points near the boundary: a point farther from every
            # edge than its value's error is on the same side as its exact value.
            px = vx[0][near].astype(np.float64)
            py = vy[0][near].astype(np.float64)
            far = grid.far_from_edges(px, py, vx[1], vy[1])
            pts = np.column_stack([px[far], py[far]])
            inside[near[far]] = points_in_polygon(pts, grid.v)
            near = near[~far]
        unsure = np.zeros(len(inside), dtype=bool)
        unsure[near] = True
        return self._recheck(gate, rows, inside, unsure)

    def _ellipse(self, gate: EllipseGate, rows):
        k = len(gate.dims)
        mean = np.asarray(gate.mean, dtype=np.float64).ravel()
        cov = np.asarray(gate.covariance, dtype=np.float64)
        if mean.shape != (k,) or cov.shape != (k, k):
            return None
        try:
            prec = np.linalg.inv(cov)
        except np.linalg.LinAlgError:
            return None  # the exact path raises the error
        sym = 0.5 * (prec + prec.T)
        if not np.isfinite(prec).all():
            return None
        lam = np.linalg.eigvalsh(sym)
        if not lam[0] > 0:
            return None  # not positive definite: the exact path decides
        cols = [self._transformed(d, rows) for d in gate.dims]
        single = all(v.dtype == np.float32 for v, _ in cols)
        dt = np.dtype(np.float32 if single else np.float64)
        unit = float(np.finfo(dt).eps) / 2
        # The mean rounded to dt moves every difference by at most its half ulp.
        eps = np.array([e for _, e in cols]) + unit * np.abs(mean)
        d = [np.subtract(v, dt.type(mean[i]), dtype=dt) for i, (v, _) in enumerate(cols)]
        prec_dt = prec.astype(dt)
        md = None
        for i in range(k):
            g = prec_dt[i, 0] * d[0]
            for j in range(1, k):
                g += prec_dt[i, j] * d[j]
            g *= d[i]
            md = g if md is None else md.__iadd__(g)
        # How far md can move: with |y_i - true y_i| <= eps_i, md changes by at most
        # 2 sqrt(md) s1 + q (|g_i| = |e_i' P d| <= sqrt(P_ii md) for positive definite P),
        # plus the rounding of either program (relative to d'|P|d <= cond * md).
        s1 = float(np.sqrt(np.abs(np.diag(sym))) @ eps) + float(np.abs(prec - sym).max()) * (
            float(eps.sum()) + 1.0
        )
        q = float(eps @ np.abs(prec) @ eps)
        # Rounding of the differences, of P in dt, of the k^2 products and their sums
        # (ours) and of the float64 reference: relative to d'|P|d <= sum|P| / lam_min md.
        rel = (2 * k * k + 8) * max(unit, 1e-12) * float(np.abs(prec).sum()) / float(lam[0])
        dsq = float(gate.distance_square)
        # Largest md surely inside: md + 2 sqrt(md) s1 + q + rel md <= dsq.
        a = 1.0 + rel
        c = dsq - q
        t_in = ((-s1 + math.sqrt(s1 * s1 + a * c)) / a) ** 2 if c > 0 else -1.0
        # Smallest md surely outside: md - 2 sqrt(md) s1 - q - rel md > dsq.
        b = 1.0 - rel
        t_out = ((s1 + math.sqrt(s1 * s1 + b * (dsq + q))) / b) ** 2 if dsq + q >= 0 else 0.0
        inside = md <= _round_down(t_in, dt)
        unsure = ~inside & (md <= _round_up(t_out, dt))
        return self._recheck(gate, rows, inside, unsure)


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

    def counts_tsv(self, sample_id: str, flags: dict[str, str] | None = None) -> str:
        """:meth:`table` with a leading ``sample_id`` column, as TSV text; with
        ``flags`` (``{population: qc_flag}``), a last ``qc_flag`` column.

        The text pandas' ``to_csv(sep="\\t", index=False)`` writes (percent as the
        shortest repr, empty when the parent is empty), made without pandas.
        """
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(
            ["sample_id", "population", "parent", "count", "parent_count", "percent_of_parent"]
            + (["qc_flag"] if flags is not None else [])
        )
        counts = {pop: int(np.count_nonzero(m)) for pop, m in self.masks.items()}
        for pop in self.masks:
            parent = self.parents[pop]
            c = counts[pop]
            pc = self.n_events if parent is None else counts[parent]
            pct = repr(100.0 * c / pc) if pc else ""
            row = [sample_id, pop, parent or "root", c, pc, pct]
            w.writerow(row + ([flags.get(pop, "")] if flags is not None else []))
        return buf.getvalue()

    def write_membership(self, path) -> None:
        """Write the memberships as ``membership.csv.gz`` (see :func:`write_membership`)."""
        pops = list(self.masks)
        write_membership(path, [self.masks[p] for p in pops], pops, self.n_events)

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


def uses_fast_path(n_events: int) -> bool:
    """Whether a sample of ``n_events`` is gated (and fitted) in :class:`FastEventSpace`:
    the one place the fast-or-exact choice is made (the memberships are the same)."""
    return n_events >= FAST_MIN_EVENTS


def event_space(fcs, strategy) -> EventSpace | FastEventSpace:
    """The space ``fcs`` is fitted, gated and drawn in: :class:`FastEventSpace` (exact
    memberships, table-transformed estimates within its error bound) for samples of
    :data:`FAST_MIN_EVENTS` events or more, else the exact float64 :class:`EventSpace`."""
    if uses_fast_path(fcs.n_events):
        return FastEventSpace(fcs, strategy)
    return EventSpace(fcs, strategy, dtype=np.float64)


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

    def apply(
        self,
        fcs,
        *,
        sample_id: str | None = None,
        dtype=np.float64,
        fast: bool = True,
        threads: int = 1,
    ) -> GatingResult:
        """Evaluate every gate on ``fcs`` (an :class:`~immuno.read.FCSData`).

        With ``fast`` (the default) and float64 arithmetic, samples of at least
        :data:`FAST_MIN_EVENTS` events are gated by :class:`FastEventSpace`,
        :data:`FAST_CHUNK` events at a time, which gives the same memberships as
        the exact path, event for event. ``threads`` > 1 gates that many blocks
        at once (numpy releases the GIL in the work of a block); leave it at 1
        where samples already run in parallel processes.
        """
        n = fcs.n_events
        order = self.evaluation_order()
        parents = {g.id: g.parent for g in self.gates.values()}
        if fast and np.dtype(dtype) == np.float64 and uses_fast_path(n):
            full = self._apply_fast(fcs, order, threads=threads)
            full = {gid: full[gid] for gid in self.gates}
            return GatingResult(sample_id or fcs.path, n, full, parents)
        space = EventSpace(fcs, self, dtype=dtype)
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

    def _apply_fast(self, fcs, order: list[Gate], threads: int = 1) -> dict[str, np.ndarray]:
        """Full-length masks from :class:`FastEventSpace`, block by block.

        Blocks are independent (each writes its own rows of the masks; polygon
        grids and transform tables are shared, built by whichever block asks
        first), so ``threads`` blocks may be gated at once.
        """
        events = channel_values(fcs, self.scaling)
        n = fcs.n_events
        shared: dict = {}
        stats = dict.fromkeys(("fast", "rechecked", "exact"), 0)
        full = {g.id: np.empty(n, dtype=bool) for g in order}

        def block(a: int) -> dict[str, int]:
            b = min(a + FAST_CHUNK, n)
            events_ab = events[a:b]
            # Error bounds scale with the block's largest |value|, rounded up to a
            # power of two so that blocks share their polygon grids.
            top = max_abs(events_ab)
            if math.isfinite(top) and top > 0:
                top = 2.0 ** math.frexp(top)[1]
            fspace = FastEventSpace(fcs, self, events=events_ab, max_abs=top, shared=shared)
            part: dict[str, np.ndarray] = {}
            for gate in order:
                part[gate.id] = fspace.evaluate(gate, part, out=full[gate.id][a:b])
            return fspace.stats

        starts = range(0, n, FAST_CHUNK)
        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as ex:
                done = list(ex.map(block, starts))
        else:
            done = [block(a) for a in starts]
        for st in done:
            for k, v in st.items():
                stats[k] += v
        log.debug("fast gating of %s: %s", getattr(fcs, "path", "?"), stats)
        return full

    def evaluate(self, gate: Gate, space: EventSpace, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Membership of one gate, given the memberships computed so far.

        ``space`` is an :class:`EventSpace` or a :class:`FastEventSpace` (same result).
        """
        if isinstance(space, FastEventSpace):
            return space.evaluate(gate, masks)
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


# --------------------------------------------------------------------------- membership

#: Rows per block of the membership encoder.
_MEMBERSHIP_ROWS = 1 << 16


def _reverse_bits(v: np.ndarray, nbits: np.ndarray | int) -> np.ndarray:
    """Reverse the low ``nbits`` bits of each value (Huffman codes go MSB first)."""
    v = np.asarray(v, dtype=np.uint64)
    nb = np.broadcast_to(np.asarray(nbits, dtype=np.uint64), v.shape)
    out = np.zeros(v.shape, dtype=np.uint64)
    for b in range(int(nb.max(initial=0))):
        bit = (v >> np.uint64(b)) & np.uint64(1)
        out |= np.where(nb > b, bit << (nb - np.uint64(1) - np.uint64(b)), np.uint64(0))
    return out


def _fixed_literal(byte_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-Huffman literal codes of bytes: (LSB-first value, bit count)."""
    b = np.asarray(byte_values, dtype=np.uint64)
    small = b < 144
    code = np.where(small, b + 0x30, b - 144 + 0x190)
    nbits = np.where(small, 8, 9).astype(np.uint64)
    return _reverse_bits(code, nbits), nbits


def _fixed_length(length: int) -> tuple[int, int]:
    """Fixed-Huffman code of a match length (3..258) with its extra bits."""
    if length == 258:
        sym, extra, ebits = 285, 0, 0
    else:
        bases = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59]
        bases += [67, 83, 99, 115, 131, 163, 195, 227]
        ebits_of = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4
        i = max(j for j, base in enumerate(bases) if base <= length)
        sym, extra, ebits = 257 + i, length - bases[i], ebits_of[i]
    if sym < 280:
        code, nb = sym - 256, 7
    else:
        code, nb = sym - 280 + 0xC0, 8
    value = int(_reverse_bits(np.array([code]), nb)[0]) | (extra << nb)
    return value, nb + ebits


def _fixed_distances(max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-Huffman code (5 bits) plus extra bits of every distance 0..max (0 unused)."""
    bases = np.array(
        [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769]
        + [1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    )
    ebits = np.array([0, 0] + [i // 2 for i in range(28)])
    d = np.arange(max_distance + 1)
    code = np.clip(np.searchsorted(bases, d, side="right") - 1, 0, 29)
    value = _reverse_bits(code, 5) | ((d - bases[code]).astype(np.uint64) << np.uint64(5))
    return value, (5 + ebits[code]).astype(np.uint64)


class _BitWriter:
    """Packs (value, nbits) pieces, LSB first, into bytes (the deflate bit order)."""

    def __init__(self):
        self.carry = 0  # bits not yet a whole byte
        self.carry_bits = 0

    def pack(self, values: np.ndarray, nbits: np.ndarray) -> bytes:
        """Bytes completed by appending the pieces (each at most 32 bits)."""
        if len(values) > 1:
            # Two pieces to one (at most 64 bits): half the elements below.
            if len(values) % 2:
                values = np.append(values, np.uint64(0))
                nbits = np.append(nbits, np.uint64(0))
            first_bits = nbits[0::2]
            values = values[0::2] | (values[1::2] << first_bits)
            nbits = first_bits + nbits[1::2]
        end = np.cumsum(nbits)
        end += np.uint64(self.carry_bits)
        total = int(end[-1])
        pos = end - nbits
        word = pos >> np.uint64(6)
        off = pos & np.uint64(63)
        lo = values << off
        # Bits that spill into the next word (none when off is 0; a piece of at most
        # 64 bits never reaches the word after).
        hi = values >> np.uint64(1)
        hi >>= np.uint64(63) - off
        words = np.zeros(total // 64 + 2, dtype=np.uint64)
        first = np.flatnonzero(np.diff(word))
        first += 1
        first = np.concatenate([[0], first])
        # Pieces never share a bit, so the sum of a word's pieces is their OR.
        words[word[first]] = np.add.reduceat(lo, first)
        words[0] |= np.uint64(self.carry)
        spill = np.flatnonzero(hi)
        words[word[spill] + np.uint64(1)] += hi[spill]
        data = words.astype("<u8", copy=False).view(np.uint8)
        whole = total // 8
        self.carry_bits = total - 8 * whole
        self.carry = int(data[whole]) & ((1 << self.carry_bits) - 1)
        return data[:whole].tobytes()


def _write_gzip_fallback(path: Path, header: bytes, masks: list[np.ndarray], n: int) -> None:
    """Plain zlib (level 1) for the tables the encoder below does not take."""
    import gzip

    with (
        open(path, "wb") as raw,
        gzip.GzipFile(
            filename="membership.csv", mode="wb", fileobj=raw, compresslevel=1, mtime=0
        ) as gz,
    ):
        gz.write(header)
        if not masks:
            return
        for a in range(0, n, _MEMBERSHIP_ROWS):
            b = min(a + _MEMBERSHIP_ROWS, n)
            gz.write(_csv_rows([m[a:b] for m in masks]).tobytes())


def _csv_rows(cols: list[np.ndarray]) -> np.ndarray:
    """``(m, 2k)`` uint8: the CSV rows (``0,1,...`` and a newline) of boolean columns."""
    k, m = len(cols), len(cols[0])
    out = np.empty((m, 2 * k), dtype=np.uint8)
    out[:, 1::2] = ord(",")
    out[:, -1] = ord("\n")
    for i, c in enumerate(cols):
        np.add(np.asarray(c, dtype=bool).view(np.uint8), ord("0"), out=out[:, 2 * i])
    return out


def write_membership(path, masks: list[np.ndarray], names: list[str], n: int) -> None:
    """Write ``membership.csv.gz``: a header of ``names``, one ``0,1,...`` row per event.

    A standard gzip file (one deflate stream, CRC-32 and length checked by any
    reader) whose deflate data are made directly: a row that repeats one of the
    last 32 KiB of rows is coded as a back-reference to it (fixed Huffman codes,
    about 20 bits a row when a sample has a few dozen distinct rows), any other
    row as literals. That takes a few passes over the events instead of zlib's
    string matching (level 6 spends ~1 µs an event). Tables of 1 or more than 64
    columns go through zlib at level 1 instead. ``path`` is written as it is
    (the caller makes it atomic).
    """
    import csv
    import io
    import threading
    import zlib
    from queue import SimpleQueue

    path = Path(path)
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(names)
    header = head.getvalue().encode("utf-8")
    k = len(masks)
    if not 2 <= k <= 64:
        _write_gzip_fallback(path, header, masks, n)
        return
    width = 2 * k  # bytes per row
    window = 32768 // width  # rows a back-reference can reach
    len_value, len_bits = _fixed_length(width)
    dist_value, dist_bits = _fixed_distances(window * width)
    lit_value, lit_bits = _fixed_literal(np.arange(256))
    size = len(header)
    bw = _BitWriter()
    hbytes = np.frombuffer(header, dtype=np.uint8)
    hv, hb = lit_value[hbytes], lit_bits[hbytes]
    # Block header: BFINAL = 1, BTYPE = 01 (fixed Huffman codes).
    head_v = np.concatenate([np.array([0b011], dtype=np.uint64), hv])
    head_b = np.concatenate([np.array([3], dtype=np.uint64), hb])
    if k <= 16:
        code_dtype = np.uint16
        table = _csv_rows([(np.arange(1 << k) >> i) & 1 for i in range(k)])
    else:
        code_dtype, table = np.uint64, None
    # Literal codes of a row, four bytes to a 32-bit piece.
    per_piece = 4
    npieces = -(-width // per_piece)
    lit_row_v = lit_value[[ord("0"), ord("1"), ord(","), ord("\n")]]
    # Code of a match q rows back (1..window): its length, then its distance.
    q_dist = np.arange(window + 1) * width
    q_value = np.uint64(len_value) | (dist_value[q_dist] << np.uint64(len_bits))
    q_bits = np.uint64(len_bits) + dist_bits[q_dist]
    recent = [np.zeros(0, dtype=code_dtype)]  # the codes of the last window rows

    def pieces(codes, a, b):
        """(values, bit counts) of one block of rows."""
        # Rows back to the latest earlier row with the same code (0: none): a stable
        # sort by code puts each row right after its latest earlier twin.
        ext = np.concatenate([recent[0], codes])
        if k <= 16:
            order = np.argsort(ext, kind="stable")
            srt = ext[order]
            same = srt[1:] == srt[:-1]
        else:  # sort by a 16-bit hash, then check the codes
            key = ((ext * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(48)).astype(np.uint16)
            order = np.argsort(key, kind="stable")
            same = ext[order[1:]] == ext[order[:-1]]
        gap = np.empty(len(ext), dtype=np.int64)
        gap[order[1:]] = np.where(same, order[1:] - order[:-1], 0)
        gap[order[0]] = 0
        gap = gap[len(recent[0]) :]
        recent[0] = ext[-window:]
        if gap.min() > 0 and gap.max() <= window:  # every row repeats a recent one
            return q_value[gap], q_bits[gap]
        match = (gap > 0) & (gap <= window)
        # One piece per matched row, npieces per literal row.
        count = np.where(match, 1, npieces)
        start = np.cumsum(count) - count
        pv = np.zeros(int(count.sum()), dtype=np.uint64)
        pb = np.zeros(len(pv), dtype=np.uint64)
        pv[start[match]] = q_value[gap[match]]
        pb[start[match]] = q_bits[gap[match]]
        lit = np.flatnonzero(~match)
        chars = csv_bytes(codes, a, b)[lit]  # (L, width) bytes
        sym = np.select([chars == ord("0"), chars == ord("1"), chars == ord(",")], [0, 1, 2], 3)
        v = np.zeros((len(lit), npieces * per_piece), dtype=np.uint64)
        v[:, :width] = lit_row_v[sym]  # 8-bit codes
        nb = np.zeros(v.shape, dtype=np.uint64)
        nb[:, :width] = 8
        shift = np.arange(per_piece, dtype=np.uint64) * np.uint64(8)
        at = (start[lit][:, None] + np.arange(npieces)).ravel()
        pv[at] = (v.reshape(len(lit), npieces, per_piece) << shift).sum(axis=2).ravel()
        pb[at] = nb.reshape(len(lit), npieces, per_piece).sum(axis=2).ravel()
        return pv, pb

    gzip_head = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + b"membership.csv\x00"

    def csv_bytes(codes, a, b):
        if table is not None:
            return table.take(codes, axis=0)
        return _csv_rows([mask[a:b] for mask in masks])

    # The CRC runs beside the encoder on a second thread (zlib and numpy release the
    # GIL), block after block.
    blocks: SimpleQueue = SimpleQueue()
    crc_result: list = []

    def crc_worker():
        try:
            crc = zlib.crc32(header)
            while (item := blocks.get()) is not None:
                crc = zlib.crc32(csv_bytes(*item), crc)
            crc_result.append(crc)
        except BaseException as exc:  # handed to the writer below
            crc_result.append(exc)

    crc_thread = threading.Thread(target=crc_worker, name="membership-crc", daemon=True)
    crc_thread.start()
    try:
        with open(path, "wb") as out:
            out.write(gzip_head)
            out.write(bw.pack(head_v, head_b))
            for a in range(0, n, _MEMBERSHIP_ROWS):
                b = min(a + _MEMBERSHIP_ROWS, n)
                codes = np.zeros(b - a, dtype=code_dtype)
                for i, mask in enumerate(masks):
                    codes |= np.left_shift(mask[a:b].view(np.uint8), i, dtype=code_dtype)
                blocks.put((codes, a, b))
                size += (b - a) * width
                out.write(bw.pack(*pieces(codes, a, b)))
            # End of block (code 256: seven zero bits), then the last partial byte.
            out.write(bw.pack(np.zeros(1, dtype=np.uint64), np.array([14], dtype=np.uint64)))
            blocks.put(None)
            crc_thread.join()
            (crc,) = crc_result
            if isinstance(crc, BaseException):
                raise crc
            out.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
    finally:
        blocks.put(None)
        crc_thread.join()
