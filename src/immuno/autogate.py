"""Data-driven gating: templates whose gates adapt to every sample.

A *template* (``gates/<panel>.yaml``, format in ``gates/README.md``) declares a
panel (markers, compensation, transforms) and a population hierarchy. Each
population names its parent, its dimensions (panel markers or channels), the
space it works in, a *method* with parameters, and guard rails.

Every method is an estimator in the scikit-learn sense: ``fit(X)`` on the
parent's events (``X`` is ``(n, n_dims)`` in the gate's space) learns attributes
ending in ``_``; ``params_`` holds what was learned as plain numbers (thresholds
in the gate space, ellipse centre and covariance...), and ``realise(params)``
turns params into a static gate of :mod:`immuno.gate`. Params are what is
borrowed across samples: a sample whose parent has too few events, whose fit
fails, or whose fit breaks a guard rail takes the median params of the same
patient's other visits, then of the cohort, then the template's default, in the
order the template declares (openCyto's ``groupBy``/collapse idea), and its
``qc_flag`` says so.

Entry points: :func:`load_template`, :func:`gate_samples` (a whole cohort, two
passes, samples in parallel) and :func:`strategy_for_file` (one file).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from pathlib import Path

import numpy as np

from .corrections import FLAG_CORRECTED, FLAG_EXCLUDED, GATE_ACTIONS
from .errors import GatingError, GatingFileError, ImmunoError
from .gate import (
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    GatingResult,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
    ellipse_problem,
    event_space,
)
from .panel import Panel
from .util import file_problem, special_file

__all__ = [
    "Template",
    "PopulationSpec",
    "load_template",
    "SampleInput",
    "SampleGating",
    "gate_samples",
    "gate_one",
    "strategy_for_file",
    "gate_template",
    "load_gating",
    "StaticGating",
    "METHODS",
]

log = logging.getLogger(__name__)

#: Order in which flags are reported; ``fail`` excludes a value from statistics.
FLAG_FAIL = "fail"
#: A fit further than this many robust SDs from its cohort group is an outlier.
OUTLIER_K = 4.0


class FitFailure(Exception):
    """A method could not find its gate in this sample (internal; triggers fallback)."""


# --------------------------------------------------------------------------- methods


def _density(x: np.ndarray, lo: float, hi: float, bins: int = 512, adjust: float = 1.0):
    """Gaussian-smoothed histogram density on ``[lo, hi]``: ``(grid, density)``.

    Bandwidth follows Silverman's rule times ``adjust`` (in the units of ``x``).
    """
    from scipy.ndimage import gaussian_filter1d

    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    grid = 0.5 * (edges[:-1] + edges[1:])
    sd = np.std(x)
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    spread = min(sd, iqr / 1.349) if iqr > 0 else sd
    bw = 0.9 * max(spread, 1e-9) * len(x) ** -0.2 * adjust
    step = (hi - lo) / bins
    dens = gaussian_filter1d(hist.astype(np.float64), max(bw / step, 0.5), mode="constant")
    total = dens.sum() * step
    return grid, dens / total if total > 0 else dens


def _parent_density(x: np.ndarray, adjust: float = 1.0):
    """:func:`_density` over the 0.1-99.9th percentiles of finite ``x``, padded by 10%."""
    lo, hi = np.percentile(x, [0.1, 99.9])
    pad = 0.1 * (hi - lo + 1e-9)
    return _density(x, lo - pad, hi + pad, adjust=adjust)


def _peaks(dens: np.ndarray, min_height: float) -> list[int]:
    """Indices of local maxima at least ``min_height`` times the highest."""
    top = dens.max()
    if top <= 0:
        return []
    d = dens
    idx = np.flatnonzero((d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])) + 1
    return [int(i) for i in idx if d[i] >= min_height * top]


def mindensity_threshold(
    x: np.ndarray,
    search: tuple[float, float] | None = None,
    *,
    adjust: float = 1.0,
    min_peak: float = 0.02,
    valley: str = "deepest",
    max_valley: float | None = None,
) -> float:
    """Threshold at the deepest density valley between two neighbouring peaks.

    openCyto's ``mindensity``: the density is estimated on the parent's events;
    every valley between two adjacent peaks whose minimum lies in ``search``
    (gate-space units) is a candidate, and the one whose lower flanking peak
    stands highest above the valley floor wins (``valley="deepest"``), or the
    lowest candidate (``valley="first"``: e.g. the first valley above the debris).
    Peaks lower than ``min_peak`` times the highest are ignored; with
    ``max_valley``, a valley whose floor is above that fraction of its lower flanking
    peak is a ripple, not a separation, and is no candidate. Raises
    :class:`FitFailure` when there is no such valley.
    """
    x = x[np.isfinite(x)]
    if len(x) < 20:
        raise FitFailure("fewer than 20 events")
    grid, dens = _parent_density(x, adjust)
    peaks = _peaks(dens, min_peak)
    if len(peaks) < 2:
        raise FitFailure("one peak only")
    s_lo, s_hi = search if search is not None else (-np.inf, np.inf)
    best = None
    ripples = 0
    for a, b in zip(peaks[:-1], peaks[1:], strict=True):
        v = a + int(np.argmin(dens[a : b + 1]))
        if not (s_lo <= grid[v] <= s_hi):
            continue
        depth = min(dens[a], dens[b]) - dens[v]
        if max_valley is not None and dens[v] > max_valley * min(dens[a], dens[b]):
            ripples += 1
            continue
        if best is None or depth > best[0]:
            best = (depth, v)
        if valley == "first":
            break
    if best is None:
        if ripples:
            raise FitFailure("one peak only, shallow valleys only")
        raise FitFailure("no valley in the search range")
    return float(grid[best[1]])


def shoulder_threshold(
    x: np.ndarray,
    search: tuple[float, float] | None = None,
    *,
    min_weight: float = 0.03,
    min_separation: float = 2.0,
    min_bic_gain: float = 10.0,
    random_state: int = 0,
    max_events: int = 5000,
    keep: str | None = None,
) -> float:
    """Threshold between a peak and its shoulder: a marker with one peak and a shoulder.

    A two-component 1-D Gaussian mixture (:func:`fit_mixture`) is fitted to ``x``;
    the cut is where the two weighted components are equally dense (the posterior
    0.5 point between their means), in the units of ``x`` (gate space). It is a
    shoulder, not one skewed population, only when two components explain the data
    better than one by ``min_bic_gain`` (BIC), the lighter holds at least
    ``min_weight`` of the events and the means are at least ``min_separation``
    pooled SDs apart (Ashman's D); with ``keep`` (``"above"``: the gate keeps
    ``x >= t``; ``"below"``) the peak must be on the kept side and the shoulder on
    the other, so the cut trims a shoulder off the population and never keeps a
    shoulder alone. Otherwise, or when the cut leaves ``search``,
    :class:`FitFailure` is raised.
    """
    x = x[np.isfinite(x)]
    if len(x) < 50:
        raise FitFailure("fewer than 50 events")
    if len(x) > max_events:
        x = x[np.random.default_rng(random_state).choice(len(x), max_events, replace=False)]
    X = x[:, None]
    w, m, c, bic2 = fit_mixture(X, 2, random_state=random_state)
    bic1 = fit_mixture(X, 1, random_state=random_state)[3]
    if bic1 - bic2 < min_bic_gain:
        raise FitFailure("one peak only, no shoulder")
    order = np.argsort(m[:, 0])
    w, mu, sd = w[order], m[order, 0], np.sqrt(c[order, 0, 0])
    if w.min() < min_weight:
        raise FitFailure("one peak only, the shoulder is too light")
    major = int(np.argmax(w))
    if (keep == "above" and major != 1) or (keep == "below" and major != 0):
        raise FitFailure("one peak only, its shoulder is on the kept side")
    if (mu[1] - mu[0]) / math.sqrt((sd[0] ** 2 + sd[1] ** 2) / 2) < min_separation:
        raise FitFailure("one peak only, no separable shoulder")
    grid = np.linspace(mu[0], mu[1], 1001)
    logp = (
        np.log(w)[:, None] - np.log(sd)[:, None] - 0.5 * ((grid - mu[:, None]) / sd[:, None]) ** 2
    )
    t = float(grid[np.argmin(np.abs(logp[0] - logp[1]))])
    if search is not None and not (search[0] <= t <= search[1]):
        raise FitFailure("the shoulder cut is outside the search range")
    return t


def _density_share(x: np.ndarray, t: float) -> float:
    """The parent's density at ``t`` as a share of its highest (0..1; gate space)."""
    x = x[np.isfinite(x)]
    if len(x) < 20:
        return 0.0
    lo, hi = np.percentile(x, [0.1, 99.9])
    if not lo <= t <= hi:
        return 0.0
    grid, dens = _parent_density(x)
    top = float(dens.max())
    return float(np.interp(t, grid, dens) / top) if top > 0 else 0.0


def search_range(x: np.ndarray, spec) -> tuple[float, float] | None:
    """A template's search range for a threshold, in the units of ``x`` (gate space).

    ``None`` (search everywhere), ``[lo, hi]`` (gate-space values, as written) or
    ``{quantile: [a, b]}`` (the parent's own ``a`` and ``b`` quantiles, so the
    same template searches the same part of every instrument's distribution).
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        a, b = spec["quantile"]
        x = x[np.isfinite(x)]
        if len(x) == 0:
            raise FitFailure("no finite events")
        lo, hi = np.quantile(x, [float(a), float(b)])
        return float(lo), float(hi)
    return float(spec[0]), float(spec[1])


def tail_threshold(x: np.ndarray, *, k: float = 3.0, side: str = "right") -> float:
    """Threshold ``k`` robust SDs beyond the main (negative) peak.

    The peak's spread is measured on its uncontaminated side (left of the mode
    for a bright-only marker), so a positive tail does not widen it.
    """
    x = x[np.isfinite(x)]
    if len(x) < 20:
        raise FitFailure("fewer than 20 events")
    lo, hi = np.percentile(x, [0.5, 99.5])
    grid, dens = _density(x, lo, hi)
    mode = float(grid[np.argmax(dens)])
    if side == "right":
        inner = x[x <= mode] - mode
    else:
        inner = mode - x[x >= mode]
    if len(inner) < 10:
        raise FitFailure("too few events on the clean side of the peak")
    sd = math.sqrt(np.mean(inner**2))
    return mode + k * sd if side == "right" else mode - k * sd


def _robust_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column centre (median) and scale (IQR / 1.349, else SD, else 1) of ``X``."""
    centre = np.median(X, axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    sd = X.std(axis=0)
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))
    return centre, scale


def fit_mixture(
    X: np.ndarray,
    k: int,
    *,
    random_state: int = 0,
    n_init: int = 2,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Gaussian mixture with full covariances: ``(weights, means, covs, bic)``.

    scikit-learn's :class:`~sklearn.mixture.GaussianMixture` (EM, ``n_init``
    k-means++ starts from ``random_state``, the best log-likelihood wins), fitted on
    ``X`` ``(n, d)`` standardised per column by its robust scale, so that the
    regularisation ``reg`` (added to covariance diagonals, in units of that scale)
    and the convergence ``tol`` mean the same on every instrument's scale. Means
    and covariances are returned in the units of ``X``; ``bic`` is the Bayesian
    information criterion of the fit (lower is better), comparable between fits
    of different ``k`` on the same ``X``.
    """
    from sklearn.mixture import GaussianMixture

    X = np.asarray(X, dtype=np.float64)
    centre, scale = _robust_scale(X)
    Z = (X - centre) / scale
    gm = GaussianMixture(
        n_components=k,
        covariance_type="full",
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg,
        init_params="k-means++",
        random_state=random_state,
    )
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the 2x2 algebra gains nothing from threads, and samples run
    # in parallel processes (several BLAS threads each made fits 8x slower here).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(Z)
    means = gm.means_ * scale + centre
    covs = gm.covariances_ * np.outer(scale, scale)[None]
    return gm.weights_.copy(), means, covs, float(gm.bic(Z))


def select_mixture(
    X: np.ndarray, components: Sequence[int], *, random_state: int = 0, n_init: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
    """The mixture of ``components`` (e.g. 2..5) with the lowest BIC.

    Returns ``(weights, means, covs, bic_by_k)`` (units of ``X``). Each ``k`` is
    fitted by :func:`fit_mixture` with the same ``random_state``, so the choice is
    deterministic.
    """
    best, bics = None, {}
    for k in components:
        if len(X) < 20 * k:
            continue
        w, m, c, bic = fit_mixture(X, k, random_state=random_state, n_init=n_init)
        bics[k] = bic
        if best is None or bic < best[3]:
            best = (w, m, c, bic)
    if best is None:
        raise FitFailure(f"{len(X)} events are too few for {min(components)} components")
    return best[0], best[1], best[2], bics


def _posterior_radii(weights, means, covs, members, mean, cov, d2: float, n: int) -> np.ndarray:
    """Per-angle Mahalanobis radius of a cluster's gate: its coverage ellipse, cut back
    to where the cluster stops being the most probable source of an event.

    Along each of ``n`` rays from ``mean`` (angles as in :func:`ellipse_vertices`,
    radius in Mahalanobis units of ``cov``), the radius is ``sqrt(d2)`` or the first
    radius where the mixture components of ``members`` are less dense than all the
    others together (posterior below 0.5), whichever is smaller. So the gate never
    reaches another cluster's centre, and a minority cluster next to a large one
    (lymphocytes among monocytes) does not take the large one's tail. Returned as
    fractions of ``sqrt(d2)`` (1: the ellipse itself).
    """
    axes = _principal_axes(cov)
    steps = np.linspace(0.0, math.sqrt(d2), 161)[1:]
    unit = _unit_circle(n)
    pts = mean + (unit[:, None, :] * steps[None, :, None]) @ axes.T  # (n, steps, 2)
    flat = pts.reshape(-1, 2)
    inside = np.zeros(len(flat))
    outside = np.zeros(len(flat))
    for j, (w, m, c) in enumerate(zip(weights, means, covs, strict=True)):
        dens = w * np.exp(-0.5 * _mahalanobis2(flat, m, c)) / math.sqrt(np.linalg.det(c))
        if j in members:
            inside += dens
        else:
            outside += dens
    lose = (outside >= inside).reshape(n, len(steps))
    first = np.where(lose.any(axis=1), lose.argmax(axis=1), len(steps))
    radii = np.where(first == len(steps), math.sqrt(d2), np.r_[0.0, steps][first])
    return np.maximum(radii, steps[0]) / math.sqrt(d2)


def _mixture_density(points: np.ndarray, weights, means, covs) -> np.ndarray:
    """Density of a 2-D Gaussian mixture at ``points`` ``(n, 2)`` (units of the means)."""
    out = np.zeros(len(points))
    for w, m, c in zip(weights, means, covs, strict=True):
        d2 = _mahalanobis2(points, m, c)
        out += w * np.exp(-0.5 * d2) / (2 * np.pi * math.sqrt(max(np.linalg.det(c), 1e-300)))
    return out


def _mahalanobis2(points: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = np.atleast_2d(points) - mean
    return np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)


class Method:
    """Base estimator: ``fit(X) -> self`` sets ``params_``; ``realise(params) -> Gate``."""

    n_dims: tuple[int, ...] = (1, 2)
    borrowable = True

    def __init__(self, spec: PopulationSpec):
        self.spec = spec
        self.notes_: list[str] = []  # info: what the fit did (e.g. a shoulder cut)
        self.review_: list[str] = []  # review: why a person should look at the fit

    def fit(self, X: np.ndarray, cache: dict | None = None) -> Method:
        raise NotImplementedError

    def realise(self, params: dict, dims: tuple[Dimension, ...]) -> Gate:
        raise NotImplementedError

    def thresholds(self, params: dict) -> dict[str, float]:
        """Scalar summaries of params for the cohort QC view and guard rails."""
        return {k: float(v) for k, v in params.items() if isinstance(v, int | float)}

    @classmethod
    def check_params(cls, params: dict) -> tuple[str, str] | None:
        """``(param, problem)`` if the template's params cannot work, else None."""
        return None


def _sides(spec: PopulationSpec) -> list[str]:
    sel = spec.params.get("select", ["+"] * len(spec.dims))
    if isinstance(sel, str):
        sel = [sel]
    if (
        not isinstance(sel, list | tuple)
        or len(sel) != len(spec.dims)
        or any(s not in ("+", "-") for s in sel)
    ):
        raise GatingFileError(
            f"population {spec.name!r}: 'select' needs one of '+'/'-' per dimension",
            file=spec.source,
            field=f"{spec.name}.params.select",
        )
    return list(sel)


class ThresholdMethod(Method):
    """Base of 1-D-threshold methods; several dims give a quadrant-like rectangle.

    ``params_`` is ``{dim_name: threshold}`` in gate space; ``select`` picks the
    side per dimension: ``+`` keeps ``x >= threshold``, ``-`` keeps ``x < threshold``.
    ``within: {dim: other}`` fits ``dim``'s threshold only on the events on the kept
    side of ``other``'s (as a cytometrist gates IgD on CD27- B cells: the IgD cut that
    matters for IgD+ CD27- lies between naive and double-negative B cells, not between
    naive and IgD+ memory B cells).
    """

    def threshold_1d(self, x: np.ndarray, dim: str) -> float:
        raise NotImplementedError

    def _within(self) -> dict[str, str]:
        w = self.spec.params.get("within") or {}
        return {str(k): str(v) for k, v in w.items()}

    def _kept(self, X: np.ndarray, dim: str, params: dict) -> np.ndarray:
        """Rows of ``X`` on which ``dim``'s threshold is fitted (all, or ``within``)."""
        other = self._within().get(dim)
        if other is None or other not in params:
            return X[:, self.spec.dims.index(dim)]
        k = self.spec.dims.index(other)
        side = _sides(self.spec)[k]
        rows = X[:, k] >= params[other] if side == "+" else X[:, k] < params[other]
        return X[rows, self.spec.dims.index(dim)]

    def fit(self, X, cache=None):
        self.params_ = {}
        self.notes_, self.review_ = [], []
        within = self._within()
        order = sorted(self.spec.dims, key=lambda d: d in within)
        for dim in order:
            key = (self.spec.parent, dim, self.spec.method, json.dumps(self._dim_params(dim)))
            if cache is not None and key in cache:
                self.params_[dim], notes = cache[key]
                self.notes_.extend(notes)
                continue
            before = len(self.notes_)
            t = self.threshold_1d(self._kept(X, dim, self.params_), dim)
            self.params_[dim] = t
            if cache is not None:
                cache[key] = (t, self.notes_[before:])
        return self

    def check_borrowed(self, params: dict, X: np.ndarray) -> list[str]:
        """Review reasons for a borrowed cut on this sample's parent events ``X``.

        A cut borrowed from other samples is plausible here when it falls where this
        sample's events are sparse: a cut where the density is above half its peak
        runs through a population (``borrowed_cut_in_a_peak(dim)``).
        """
        out = []
        for dim in self.spec.dims:
            x = self._kept(X, dim, params)
            if dim in params and _density_share(x, float(params[dim])) > 0.5:
                out.append(f"borrowed_cut_in_a_peak({dim})")
        return out

    def _dim_params(self, dim: str) -> dict:
        p = self.spec.params
        out = {
            k: (v.get(dim) if isinstance(v, dict) and k != "range" else v)
            for k, v in p.items()
            if k != "select"
        }
        rng = p.get("range")
        if isinstance(rng, dict) and "quantile" not in rng:  # per dimension; absent: anywhere
            out["range"] = rng.get(dim)
        return out

    def realise(self, params, dims):
        sides = _sides(self.spec)
        mins = tuple(
            params[d] if s == "+" else None for d, s in zip(self.spec.dims, sides, strict=True)
        )
        maxs = tuple(
            params[d] if s == "-" else None for d, s in zip(self.spec.dims, sides, strict=True)
        )
        return RectangleGate(self.spec.name, _parent(self.spec), dims, mins, maxs)


class MinDensity(ThresholdMethod):
    """Density valley between two peaks (openCyto ``mindensity``), else a shoulder.

    Params: ``range`` (search range per dimension: ``[lo, hi]`` in gate space or
    ``{quantile: [a, b]}`` of the parent's events, see :func:`search_range`;
    default everywhere), ``max_valley`` (0.8: shallower valleys are ripples, see
    :func:`mindensity_threshold`), ``adjust`` (bandwidth multiplier), ``shoulder`` (default
    true: a dimension with one peak and a shoulder is cut by
    :func:`shoulder_threshold`, noted ``shoulder_cut``), ``select``.
    """

    def threshold_1d(self, x, dim):
        p = self._dim_params(dim)
        rng = search_range(x, p.get("range"))
        try:
            return mindensity_threshold(
                x,
                rng,
                adjust=float(p.get("adjust") or 1.0),
                valley=p.get("valley", "deepest"),
                max_valley=float(p.get("max_valley", 0.8)),
            )
        except FitFailure as exc:
            if "one peak" not in str(exc) or not p.get("shoulder", True):
                raise
        side = _sides(self.spec)[self.spec.dims.index(dim)]
        t = shoulder_threshold(x, rng, keep="above" if side == "+" else "below")
        self.notes_.append(f"shoulder_cut({dim})")
        return t


class TailCut(ThresholdMethod):
    """Cut ``k`` robust SDs above the negative peak: for bright-only markers.

    Params: ``k`` (default 3), ``select``.
    """

    def threshold_1d(self, x, dim):
        p = self._dim_params(dim)
        return tail_threshold(x, k=float(p.get("k") or 3.0))


def _principal_axes(cov) -> np.ndarray:
    """Columns: the principal semi-axes of ``cov`` (1 SD each), the major one first."""
    vals, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    if not np.all(vals > 0):
        raise GatingError(
            f"the ellipse covariance {np.asarray(cov).tolist()} is not positive definite",
            hint="check the population's default or borrowed cov_xx, cov_xy, cov_yy",
        )
    order = np.argsort(vals)[::-1]
    return vecs[:, order] * np.sqrt(vals[order])


def _unit_circle(n: int) -> np.ndarray:
    """``n`` points equally spaced in angle on the unit circle, from angle 0: ``(n, 2)``."""
    t = 2.0 * np.pi * np.arange(n) / n
    return np.column_stack([np.cos(t), np.sin(t)])


def ellipse_vertices(
    mean, cov, distance_square: float, n: int = 128, *, radii: np.ndarray | None = None
) -> np.ndarray:
    """``n`` points on the ellipse ``(x - mean)' cov^-1 (x - mean) = distance_square``.

    Equally spaced in angle on the ellipse's principal axes, starting at the end
    of the major axis: the vertices of the inscribed polygon, in the units of
    ``mean`` (gate space). ``cov`` must be positive definite. With ``radii``
    (``n`` fractions, one per angle), vertex ``i`` lies at Mahalanobis distance
    ``radii[i] * sqrt(distance_square)`` instead: a star-shaped polygon.
    """
    axes = _principal_axes(cov) * math.sqrt(float(distance_square))
    unit = _unit_circle(n)
    if radii is not None:
        unit = unit * np.asarray(radii, dtype=np.float64)[:, None]
    return np.asarray(mean, dtype=np.float64) + unit @ axes.T


class MixtureCluster(Method):
    """2-D Gaussian mixture; keep the cluster chosen by its position among the others.

    Params (every number is relative to the data, none is in an instrument's units):

    - ``components``: the number of Gaussian components, or ``[lo, hi]`` (default
      ``[2, 5]``): every number in the range is fitted and the lowest BIC wins, so a
      cohort whose lymphocytes are a minority among monocytes, granulocytes and
      debris gets as many clusters as it has.
    - ``pick``: rules applied in order to the components heavier than
      ``min_weight`` (default 0.02). ``{dim: min}`` / ``{dim: max}`` keep the
      components whose mean on ``dim`` is the lowest / highest (ties within 5% of
      the range of the means are kept for the next rule); ``{dim:
      {min_fraction_of_max: r}}`` drops the components whose mean on ``dim`` is
      below ``r`` times the highest mean of the components holding at least 10% of
      the events (for a linear scatter dimension: debris has less than half a
      monocyte's forward scatter). Or ``target: [x,
      y]``: the component whose mean is nearest.
    - ``merge`` (default 0.8): components with no density valley between them and
      the chosen one (the mixture density along the line joining their means stays
      above ``merge`` times its value at the lower end), and no more than 4 times
      its area, are one population split by the mixture; they are merged
      (moment-matched) before the gate is drawn.
    - ``coverage`` (default 0.99): the realised gate lies on the ellipse holding this
      fraction of the chosen cluster's Gaussian, each vertex pulled in to where the
      cluster stops being the likelier source of an event (:func:`_posterior_radii`).
      When that leaves less than ``min_coverage`` (0.9) of the cluster, the fit is
      kept and flagged ``crowded_cluster`` for review.
    - ``max_events`` (subsample for fitting, default 4000), ``random_state``,
      ``n_init`` (starts per fit, default 2), ``shape`` (``polygon``, the default,
      or ``ellipse``) and ``vertices`` (128).

    The realised gate is, by default, the polygon inscribed in that ellipse
    (gate space) through ``vertices`` points equally spaced in angle on it (area
    0.04% smaller at 128 vertices). A polygon is what every consumer of the
    exports evaluates identically: FlowKit replaces a FlowJo ellipse by its own
    128-gon and FlowJo decides ellipses on its binned display, so a realised
    ellipse would be counted a few rim events differently outside the pipeline.
    ``shape: ellipse`` keeps the exact ellipse. ``params_`` holds the cluster's
    ``mean_x, mean_y, cov_xx, cov_xy, cov_yy`` (gate space), its ``weight`` and
    the squared radius ``distance_square`` of the realised ellipse.
    """

    n_dims = (2,)

    def _components(self) -> list[int]:
        c = self.spec.params.get("components", [2, 5])
        if isinstance(c, int | float) and not isinstance(c, bool):
            return [int(c)]
        lo, hi = (int(v) for v in c)
        return list(range(lo, hi + 1))

    def fit(self, X, cache=None):
        p = self.spec.params
        self.notes_, self.review_ = [], []
        X = X[np.all(np.isfinite(X), axis=1)]
        ks = self._components()
        if len(X) < 20 * min(ks):
            raise FitFailure(f"{len(X)} events are too few for {min(ks)} components")
        rs = int(p.get("random_state", 0))
        cap = int(p.get("max_events", 4000))
        if len(X) > cap:
            X = X[np.random.default_rng(rs).choice(len(X), cap, replace=False)]
        weights, means, covs, bics = select_mixture(
            X, ks, random_state=rs, n_init=int(p.get("n_init", 2))
        )
        ok = np.flatnonzero(weights >= float(p.get("min_weight", 0.02)))
        if len(ok) == 0:
            raise FitFailure("no component heavy enough")
        chosen, eligible = self._pick(means, ok, weights)
        mean, cov, weight, members = self._merge(weights, means, covs, chosen, eligible)
        d2 = -2.0 * math.log1p(-float(p.get("coverage", 0.99)))
        n_vert = int(p.get("vertices", 128))
        radii = _posterior_radii(weights, means, covs, members, mean, cov, d2, n_vert)
        # Share of the cluster's Gaussian inside the star (radial integral per angle).
        covered = float(np.mean(-np.expm1(-(radii**2) * d2 / 2.0)))
        if covered < 0.98:
            self.notes_.append(f"neighbour_bounded({100 * covered:.0f}%)")
            if covered < float(p.get("min_coverage", 0.9)):
                self.review_.append(f"crowded_cluster({100 * covered:.0f}%)")
        self.weights_, self.means_, self.covariances_, self.bic_ = weights, means, covs, bics
        self.members_ = members
        self.params_ = {
            "mean_x": float(mean[0]),
            "mean_y": float(mean[1]),
            "cov_xx": float(cov[0, 0]),
            "cov_xy": float(cov[0, 1]),
            "cov_yy": float(cov[1, 1]),
            "weight": float(weight),
            "distance_square": float(d2),
            "radii": [float(r) for r in radii],
        }
        return self

    def _merge(self, weights, means, covs, chosen: int, eligible) -> tuple:
        """Moment-matched Gaussian of ``chosen`` and the components it forms one mode with.

        A component joins when the mixture density along the straight line from its
        mean to the chosen component's mean never falls below ``merge`` (default 0.8)
        times the lower of the two end densities (no chaining through a third): no
        valley between them, one population the mixture split in parts (a skewed
        cluster, or lymphocyte subsets of slightly different scatter). A component
        more than 4 times the chosen one's area (sqrt of the covariance determinant)
        is background spread over the plot, not part of a cluster, and does not join;
        nor do components the pick rules excluded (e.g. as debris). The gate's posterior bound
        (:func:`_posterior_radii`) keeps whatever is merged off the other clusters.
        """
        ratio = float(self.spec.params.get("merge", 0.8))
        area = math.sqrt(np.linalg.det(covs[chosen]))
        members = [chosen]
        rest = [
            int(j)
            for j in eligible
            if j != chosen and math.sqrt(np.linalg.det(covs[j])) <= 4.0 * area
        ]
        t = np.linspace(0.0, 1.0, 41)[:, None]
        for j in rest:
            line = means[chosen] + t * (means[j] - means[chosen])
            dens = _mixture_density(line, weights, means, covs)
            if dens.min() >= ratio * min(dens[0], dens[-1]):
                members.append(j)
        w = weights[members]
        total = float(w.sum())
        mean = (w[:, None] * means[members]).sum(axis=0) / total
        cov = np.zeros((2, 2))
        for wj, j in zip(w, members, strict=True):
            diff = means[j] - mean
            cov += wj * (covs[j] + np.outer(diff, diff))
        return mean, cov / total, total, members

    def _pick(self, means, ok, weights):
        p = self.spec.params
        if "target" in p:
            t = np.asarray(p["target"], dtype=float)
            return int(ok[np.argmin(((means[ok] - t) ** 2).sum(axis=1))]), list(ok)
        cand = list(ok)
        eligible = list(ok)
        for rule in p.get("pick", []):
            ((dim, how),) = rule.items()
            j = self.spec.dims.index(dim)
            vals = means[cand, j]
            if isinstance(how, dict):
                # The reference is the largest mean among substantial clusters (>= 10%
                # of events): a light, broad component of stragglers sets no scale.
                r = float(how["min_fraction_of_max"])
                major = [c for c in cand if weights[c] >= 0.10] or cand
                top = float(means[major, j].max())
                keep = [c for c, v in zip(cand, vals, strict=True) if v >= r * top]
                cand = keep or cand
                eligible = [c for c in eligible if c in cand]
                continue
            best = vals.max() if how == "max" else vals.min()
            # Keep ties within 5% of the range of the means, then the next rule decides.
            tol = 0.05 * (np.ptp(means[ok, j]) + 1e-12)
            cand = [c for c, v in zip(cand, vals, strict=True) if abs(v - best) <= tol]
        return int(cand[0]), eligible

    def realise(self, params, dims):
        p = self.spec.params
        mean = np.array([params["mean_x"], params["mean_y"]])
        cov = np.array([[params["cov_xx"], params["cov_xy"]], [params["cov_xy"], params["cov_yy"]]])
        # The chi-square quantile with 2 degrees of freedom in closed form:
        # P(d2 <= q) = 1 - exp(-q / 2)  =>  q = -2 ln(1 - coverage).
        d2 = params.get("distance_square")
        if d2 is None:
            d2 = -2.0 * math.log1p(-float(p.get("coverage", 0.99)))
        if p.get("shape", "polygon") == "ellipse":
            return EllipseGate(
                self.spec.name,
                _parent(self.spec),
                dims,
                mean=mean,
                covariance=cov,
                distance_square=float(d2),
            )
        n = int(p.get("vertices", 128))
        radii = params.get("radii")
        if isinstance(radii, list) and len(radii) == n:
            verts = ellipse_vertices(mean, cov, float(d2), n, radii=np.asarray(radii, dtype=float))
        else:
            verts = ellipse_vertices(mean, cov, float(d2), n)
        return PolygonGate(self.spec.name, _parent(self.spec), dims, vertices=verts)

    @classmethod
    def check_params(cls, params):
        if params.get("shape", "polygon") not in ("polygon", "ellipse"):
            return "shape", f"{params['shape']!r} is not polygon or ellipse"
        v = params.get("vertices", 128)
        if not isinstance(v, int) or isinstance(v, bool) or v < 8:
            return "vertices", f"{v!r} is not a whole number of at least 8"
        for key, default in (("coverage", 0.99), ("merge", 0.8), ("min_coverage", 0.9)):
            c = params.get(key, default)
            if not isinstance(c, int | float) or not 0 < c < 1:
                return key, f"{c!r} is not a fraction between 0 and 1"
        c = params.get("components", [2, 5])
        ints = [c] if isinstance(c, int) and not isinstance(c, bool) else c
        if (
            not isinstance(ints, list)
            or not 1 <= len(ints) <= 2
            or not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= 8 for i in ints)
            or ints[0] > ints[-1]
        ):
            return "components", f"{c!r} is not a number of components 1-8 or a range [lo, hi]"
        return None

    def thresholds(self, params):
        return {"mean_x": params["mean_x"], "mean_y": params["mean_y"]}


class Projection(Method):
    """Threshold on a linear combination of two dimensions: a slanted 2-D cut.

    ``z = w0 * x + w1 * y`` with ``weights`` (default ``[1, -1]``: e.g. CD25 minus
    CD127 for Tregs, which separates a CD25hi CD127lo population along the
    diagonal of a continuum better than two 1-D cuts); the threshold is the
    density valley of ``z`` (``range`` limits the search, in units of ``z``).
    ``select: "+"`` keeps ``z >= threshold``. Realised as a half-plane polygon
    in gate space. Params: ``{"z": threshold}``.
    """

    n_dims = (2,)

    def _weights(self) -> np.ndarray:
        w = np.asarray(self.spec.params.get("weights", [1.0, -1.0]), dtype=float)
        return w / np.linalg.norm(w)

    def fit(self, X, cache=None):
        p = self.spec.params
        z = X @ self._weights()
        self.params_ = {
            "z": mindensity_threshold(
                z, search_range(z, p.get("range")), adjust=float(p.get("adjust", 1.0))
            )
        }
        return self

    def check_borrowed(self, params: dict, X: np.ndarray) -> list[str]:
        """Review reasons for a borrowed cut (see :meth:`ThresholdMethod.check_borrowed`)."""
        if "z" in params and _density_share(X @ self._weights(), float(params["z"])) > 0.5:
            return ["borrowed_cut_in_a_peak(z)"]
        return []

    def realise(self, params, dims):
        w = self._weights()
        keep_above = self.spec.params.get("select", "+") == "+"
        # Half-plane {w.x >= z} (or <=) clipped to a box far outside any data.
        big = 1e6
        u = np.array([-w[1], w[0]])  # along the boundary line
        base = w * params["z"]
        n = w if keep_above else -w
        verts = np.array(
            [base - big * u, base + big * u, base + big * u + big * n, base - big * u + big * n]
        )
        return PolygonGate(self.spec.name, _parent(self.spec), dims, vertices=verts)

    def thresholds(self, params):
        return {"z": params["z"]}


class Singlets(Method):
    """Singlets from the FSC-A/FSC-H relation.

    Doublets have a larger area for their height. The ratio ``h/a`` of each
    event (dims ``[area, height]``, linear units) is computed; the cut is the
    density valley between the singlet and doublet ratio peaks when there is
    one, else ``median - k * MAD``. Params: ``k`` (default 4), ``min_area``
    (events below it do not inform the fit). The realised gate is the polygon
    ``h >= ratio * a`` (in the dims' space).
    """

    n_dims = (2,)

    def fit(self, X, cache=None):
        p = self.spec.params
        a, h = X[:, 0], X[:, 1]
        # Events too small to have a meaningful ratio: below min_area (raw units) if
        # the template sets it, else below a tenth of the median area.
        min_area = p.get("min_area")
        finite_a = a[np.isfinite(a)]
        if min_area is None:
            min_area = 0.1 * float(np.median(finite_a)) if len(finite_a) else 0.0
        keep = a > max(float(min_area), 0.0)
        if keep.sum() < 50:
            raise FitFailure("too few events with a measurable area")
        r = h[keep] / a[keep]
        r = r[np.isfinite(r)]
        med = float(np.median(r))
        mad = float(np.median(np.abs(r - med))) * 1.4826
        k = float(p.get("k", 4.0))
        cut = med - k * mad
        try:
            valley = mindensity_threshold(r, (med - 10 * mad, med - 2 * mad))
            cut = max(cut, valley) if valley < med else cut
        except FitFailure:
            pass
        self.params_ = {"ratio": cut, "median_ratio": med}
        return self

    def realise(self, params, dims):
        top = 1e9
        r = params["ratio"]
        verts = np.array([[-top, -top * r], [top, top * r], [top, 4 * top], [-top, 4 * top]])
        return PolygonGate(self.spec.name, _parent(self.spec), dims, vertices=verts)

    def thresholds(self, params):
        return {"ratio": params["ratio"]}


class TimeGate(Method):
    """Remove only the anomalous stretches of an acquisition (PeacoQC / flowAI idea).

    The acquisition is binned in time; a bin is anomalous when its event rate or
    the median of any scatter or fluorescence channel (gate space) departs from
    the file's robust centre, or when it follows a gap in time
    (:func:`immuno.timeqc.anomalous_segments`). Only those segments are removed:
    the steady events before and after a clog are kept. Params: ``bins`` (default:
    chosen from the number of events), ``k`` (robust SDs, default 5) and
    ``review_above`` (the share of events removed above which the file needs
    review, default 0.10). Time is in seconds when the file has ``$TIMESTEP``
    (the strategy's scaling ``"flowjo"``), else in stored units.

    Realised as a range on ``Time`` when one steady stretch is kept (an end that
    needs no cut stays open), or, when a clog is cut out of the middle, as one
    Gating-ML polygon on ``Time`` and a second channel (``partner``, default the
    first scatter channel) that holds every kept time interval over the whole
    range of the partner and joins them by bridges far outside any data: an OR of
    time ranges in one gate, so FlowKit and FlowJo count it as we do. Not
    borrowable: each acquisition has its own. ``params_``: ``min``/``max`` (the
    outer bounds), ``intervals`` (``[[lo, hi], ...]``), ``removed`` (fraction).
    """

    n_dims = (1,)
    borrowable = False
    #: Partner dimension of the realised polygon (set by :func:`gate_one`).
    partner: Dimension | None = None
    #: Per-event signals of the parent, ``(n, c)`` in gate space (set by :func:`gate_one`).
    signals: np.ndarray | None = None

    def fit(self, X, cache=None):
        from .timeqc import anomalous_segments

        p = self.spec.params
        self.notes_, self.review_ = [], []
        t = X[:, 0]
        sig = self.signals if self.signals is not None else np.empty((len(t), 0))
        try:
            qc = anomalous_segments(t, sig, bins=p.get("bins"), k=float(p.get("k", 5.0)))
        except ValueError as exc:
            raise FitFailure(str(exc)) from None
        keep = [[float(lo), float(hi)] for lo, hi in qc.keep]
        if not keep:
            raise FitFailure("no steady stretch of acquisition")
        removed = float(qc.removed_fraction)
        if len(keep) > 1 and self.partner is None:
            # No second channel to draw the OR of time ranges on: keep the fullest stretch.
            n_in = [int(((t >= lo) & (t < hi)).sum()) for lo, hi in keep]
            keep = [keep[int(np.argmax(n_in))]]
            removed = 1.0 - max(n_in) / len(t)
            self.notes_.append("time_single_range(no_scatter_channel)")
        if removed > 0:
            msg = f"time_removed({100 * removed:.1f}%)"
            if removed > float(p.get("review_above", 0.10)):
                self.review_.append(msg)
            else:
                self.notes_.append(msg)
        lo, hi = keep[0][0], keep[-1][1]
        self.params_ = {
            "min": lo if math.isfinite(lo) else None,
            "max": hi if math.isfinite(hi) else None,
            "intervals": keep,
            "removed": removed,
            "bad_bins": int(qc.bad_bins),
        }
        return self

    def realise(self, params, dims):
        keep = params.get("intervals") or [
            [
                -math.inf if params.get("min") is None else params["min"],
                math.inf if params.get("max") is None else params["max"],
            ]
        ]
        if len(keep) == 1 or self.partner is None:
            lo, hi = params.get("min"), params.get("max")
            if lo is None and hi is None:
                lo = -math.inf  # Gating-ML needs one bound per dimension; this one keeps all
            return RectangleGate(self.spec.name, _parent(self.spec), dims, (lo,), (hi,))
        return PolygonGate(
            self.spec.name,
            _parent(self.spec),
            (dims[0], self.partner),
            vertices=comb_vertices(keep),
        )

    def thresholds(self, params):
        return {k: params[k] for k in ("min", "max") if params.get(k) is not None}


#: Height of the time comb (partner-channel units): far beyond any event's value.
_COMB_TOP = 1e30


def comb_vertices(intervals: Sequence[Sequence[float]], top: float = _COMB_TOP) -> np.ndarray:
    """A polygon on (time, any channel) holding the time intervals ``[lo, hi)``.

    Each interval is a column from ``-top / 2`` to ``top`` on the second axis; the
    columns are joined by a bridge between ``-top`` and ``-top / 2``, where no event
    lies. Every edge is horizontal or vertical, so its inside test is exact in any
    evaluator; an open end (``-inf``/``inf``) becomes ``-+top``. Intervals must be
    sorted and disjoint, with edges between event times.
    """
    pts: list[tuple[float, float]] = []
    lo0 = max(float(intervals[0][0]), -top)
    pts.append((lo0, -top))
    for i, (lo, hi) in enumerate(intervals):
        lo, hi = max(float(lo), -top), min(float(hi), top)
        if i > 0:
            pts.append((lo, -top / 2))
        pts.append((lo, top))
        pts.append((hi, top))
        if i < len(intervals) - 1:
            pts.append((hi, -top / 2))
    pts.append((min(float(intervals[-1][1]), top), -top))
    return np.array(pts, dtype=np.float64)


class StaticShape(Method):
    """A fixed gate from the template: ``range``/``rectangle`` (``min``, ``max`` per
    dimension, ``null`` for open), ``polygon`` (``vertices``), ``ellipse`` (``mean``,
    ``covariance``, ``distance_square``). Coordinates are in gate space."""

    borrowable = False

    @classmethod
    def check_params(cls, params):
        if "mean" in params or "covariance" in params:
            problem = ellipse_problem(
                params.get("mean", []),
                params.get("covariance", []),
                params.get("distance_square", 1.0),
            )
            if problem:
                return "covariance", problem
        return None

    def fit(self, X, cache=None):
        self.params_ = {}
        return self

    def realise(self, params, dims):
        p, m, name, parent = self.spec.params, self.spec.method, self.spec.name, _parent(self.spec)
        if m in ("range", "rectangle"):
            mins = p.get("min", [None] * len(dims))
            maxs = p.get("max", [None] * len(dims))
            mins = mins if isinstance(mins, list) else [mins]
            maxs = maxs if isinstance(maxs, list) else [maxs]
            return RectangleGate(name, parent, dims, tuple(mins), tuple(maxs))
        if m == "polygon":
            return PolygonGate(name, parent, dims, vertices=np.asarray(p["vertices"], dtype=float))
        if m == "ellipse":
            return EllipseGate(
                name,
                parent,
                dims,
                mean=np.asarray(p["mean"], dtype=float),
                covariance=np.asarray(p["covariance"], dtype=float),
                distance_square=float(p.get("distance_square", 1.0)),
            )
        raise GatingFileError(f"unknown static shape {m!r}", field=name)


METHODS: dict[str, type[Method]] = {
    "mindensity": MinDensity,
    "tailcut": TailCut,
    "mixture": MixtureCluster,
    "projection": Projection,
    "singlets": Singlets,
    "time": TimeGate,
    "range": StaticShape,
    "rectangle": StaticShape,
    "polygon": StaticShape,
    "ellipse": StaticShape,
    "boolean": StaticShape,
}

FALLBACKS = ("patient", "cohort", "default")


def _parent(spec: PopulationSpec) -> str | None:
    return None if spec.parent in (None, "root") else spec.parent


# --------------------------------------------------------------------------- template


@dataclass
class PopulationSpec:
    """One population of a template (see ``gates/README.md`` for every key).

    Thresholds in ``params``, ``guard.threshold`` and ``default`` are in the gate
    space: the transform scale of each dimension (logicle 0..1, asinh...) when
    ``space`` is ``transformed``, compensated channel units when ``compensated``,
    raw channel units when ``raw``.
    """

    name: str
    parent: str | None
    dims: list[str]
    method: str
    space: str = "transformed"
    params: dict = field(default_factory=dict)
    min_events: int = 0
    frequency: tuple[float, float] | None = None
    threshold_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    default: dict | None = None
    description: str = ""
    source: str | None = None
    #: Skipped, with a note, in a file that lacks one of its dimensions (its children
    #: then hang from its parent); a required population's missing channel is an error.
    optional: bool = False

    def estimator(self) -> Method:
        return METHODS[self.method](self)


@dataclass
class Template:
    """A panel plus its population hierarchy, loaded from ``gates/<panel>.yaml``."""

    name: str
    panel: Panel
    populations: list[PopulationSpec]
    source: str | None = None
    sha256: str = ""
    description: str = ""

    def population(self, name: str) -> PopulationSpec:
        for p in self.populations:
            if p.name == name:
                return p
        raise GatingFileError(f"no population {name!r}", file=self.source, field=name)

    def optional_names(self) -> frozenset[str]:
        """Markers and channels only optional populations use: a file may lack them."""
        needed = {d for p in self.populations if not p.optional for d in p.dims}
        return frozenset(d for p in self.populations if p.optional for d in p.dims) - needed

    def resolve(self, fcs, *, sample: str | None = None) -> dict[str, str]:
        """The panel's names mapped to ``fcs``'s channels (:meth:`Panel.resolve`); the
        names of :meth:`optional_names` the file lacks are left out."""
        return self.panel.resolve(fcs, sample=sample, optional=self.optional_names())

    def dimension(self, marker: str, channel: str, space: str) -> Dimension:
        m = self.panel.marker(marker)
        comp = self.panel.compensation if (m.compensated and space != "raw") else None
        tr = m.transform if space == "transformed" else None
        return Dimension(channel, comp, tr)

    def base_strategy(self) -> GatingStrategy:
        """An empty strategy with the panel's transforms.

        Channel values are what FlowKit and FlowJo read (scaling ``"flowjo"``):
        ``$PnE`` log channels decoded, divided by ``$PnG``, and ``Time`` in seconds
        (stored x ``$TIMESTEP``), so that every exported gate means the same to them.
        """
        s = GatingStrategy()
        s.scaling = "flowjo"
        s.transforms.update(self.panel.transforms)
        return s


#: Limits of a template file: its size (bytes), its nesting depth (mappings and lists) and
#: the number of YAML nodes once every alias is expanded (a small file of nested aliases can
#: stand for billions).
TEMPLATE_MAX_BYTES = 2_000_000
TEMPLATE_MAX_DEPTH = 40
TEMPLATE_MAX_NODES = 200_000


def _template_yaml(raw: bytes, src: str):
    """The YAML document of a template, within :data:`TEMPLATE_MAX_BYTES`,
    :data:`TEMPLATE_MAX_DEPTH` and :data:`TEMPLATE_MAX_NODES`: parsed once into a node
    graph, which is checked before any object is built from it."""
    import yaml

    if len(raw) > TEMPLATE_MAX_BYTES:
        raise GatingFileError(
            f"template is {len(raw):,} bytes, more than {TEMPLATE_MAX_BYTES:,}",
            file=src,
            hint="see gates/README.md",
        )
    try:
        loader = yaml.SafeLoader(raw)  # reads the stream's start: control characters fail here
    except yaml.YAMLError as exc:
        raise GatingFileError(f"not valid YAML: {exc}", file=src) from None
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # the composer recurses once per level of nesting
            raise _too_deep(src) from None
        if root is None:
            return None
        _check_node_graph(root, src)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise GatingFileError(f"not valid YAML: {exc}", file=src) from None
    finally:
        loader.dispose()


def _too_deep(src: str) -> GatingFileError:
    return GatingFileError(
        f"template nests deeper than {TEMPLATE_MAX_DEPTH} levels",
        file=src,
        hint="see gates/README.md",
    )


def _check_node_graph(root, src: str) -> None:
    """Refuse a composed YAML graph nested deeper than :data:`TEMPLATE_MAX_DEPTH` (as
    written) or holding more than :data:`TEMPLATE_MAX_NODES` nodes once every alias is
    expanded. Counted without expanding (a shared node is sized once and counted per
    reference); an alias inside its own anchor is an error."""
    import yaml

    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise GatingFileError("template has an alias inside its own anchor", file=src)
        if depth > TEMPLATE_MAX_DEPTH:
            raise _too_deep(src)
        open_.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        open_.discard(key)
        sizes[key] = n
        if n > TEMPLATE_MAX_NODES:
            raise GatingFileError(
                f"template expands to more than {TEMPLATE_MAX_NODES:,} YAML nodes"
                " (aliases of aliases?)",
                file=src,
                hint="write the template out without nested YAML aliases",
            )
        return n

    size(root, 0)


@functools.lru_cache(maxsize=1)
def _template_validator():
    """The compiled validator of ``data/template.schema.json`` (read once per process)."""
    import json
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("immuno").joinpath("data/template.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _validate_template(doc, src: str) -> None:
    """Structure and size limits of ``data/template.schema.json`` (jsonschema), before any
    semantic check: the first violation as a :class:`GatingFileError` naming its field."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_template_validator().iter_errors(doc))
    if error is None:
        return
    parts: list[str] = []
    node = doc
    for step in error.absolute_path:
        if isinstance(step, int) and isinstance(node, list):
            item = node[step] if step < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            parts[-1:] = [f"{parts[-1]}.{name}" if name else f"{parts[-1]}[{step}]"]
        else:
            parts.append(str(step))
        node = node[step] if isinstance(node, dict | list) else None
    shown = repr(error.instance)
    if len(shown) > 60:  # jsonschema's messages start with the whole offending value
        size = f" of {len(error.instance)} items" if hasattr(error.instance, "__len__") else ""
        shown = f"a {type(error.instance).__name__}{size}"
    message = error.message.replace(repr(error.instance), shown, 1)
    hint = "see gates/README.md for the template format"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # a misspelt key (optinal: true) was silently ignored: name it and its likely intent
        import difflib

        known = list(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in known]
        if unknown:
            parts.append(str(unknown[0]))
            message = f"unknown key {unknown[0]!r}"
            near = difflib.get_close_matches(str(unknown[0]), known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys here: {', '.join(known)}"
    raise GatingFileError(
        message if len(message) < 300 else message[:300] + "...",
        file=src,
        field=".".join(parts) or None,
        hint=hint,
    )


def load_template(path: str | Path) -> Template:
    """Read and validate a gating template (YAML).

    The file is checked for size, depth and alias expansion, then against the template
    schema (``data/template.schema.json``), then semantically. Raises
    :class:`~immuno.errors.GatingFileError` naming the file and the key at fault.
    """
    path = Path(path)
    src = str(path)
    try:
        special = special_file(path)
        if special:
            raise GatingFileError(f"template is {special}, not a regular file", file=src)
        raw = path.read_bytes()
    except OSError as exc:
        raise GatingFileError(f"cannot read template: {exc.strerror}", file=src) from None
    doc = _template_yaml(raw, src)
    if not isinstance(doc, dict) or "panel" not in doc or "populations" not in doc:
        raise GatingFileError(
            "a template needs 'panel' and 'populations' sections",
            file=src,
            hint="see gates/README.md",
        )
    _validate_template(doc, src)
    name = str(doc.get("name", path.stem))
    panel = Panel.from_dict(doc["panel"], name=name, source=src)
    pops: list[PopulationSpec] = []
    seen = {"root"}
    for i, p in enumerate(doc["populations"]):
        where = f"populations[{i}]"
        if not isinstance(p, dict) or "name" not in p:
            raise GatingFileError("each population needs a 'name'", file=src, field=where)
        pname = str(p["name"])
        where = f"populations.{pname}"
        parent = p.get("parent", "root")
        if parent not in seen:
            raise GatingFileError(
                f"parent {parent!r} is not defined above {pname!r}", file=src, field=where
            )
        if pname in seen:
            raise GatingFileError(f"population {pname!r} is defined twice", file=src, field=where)
        method = str(p.get("method", ""))
        if method not in METHODS:
            raise GatingFileError(
                f"unknown method {method!r}",
                file=src,
                field=f"{where}.method",
                hint=f"methods: {', '.join(METHODS)}",
            )
        dims = [str(d) for d in p.get("dims", [])]
        for d in dims:
            panel.marker(d)
        if method != "boolean" and len(dims) not in METHODS[method].n_dims:
            raise GatingFileError(
                f"method {method!r} takes {METHODS[method].n_dims} dimensions, got {len(dims)}",
                file=src,
                field=f"{where}.dims",
            )
        space = str(p.get("space", "transformed"))
        if space not in ("raw", "compensated", "transformed"):
            raise GatingFileError(
                f"space {space!r} is not raw, compensated or transformed",
                file=src,
                field=f"{where}.space",
            )
        guard = p.get("guard") or {}
        freq = guard.get("frequency")
        fallback = [str(f) for f in p.get("fallback", [])]
        for f in fallback:
            if f not in FALLBACKS:
                raise GatingFileError(
                    f"unknown fallback {f!r}",
                    file=src,
                    field=f"{where}.fallback",
                    hint=f"use {', '.join(FALLBACKS)}",
                )
        if "default" in fallback and not p.get("default"):
            raise GatingFileError(
                "fallback 'default' needs a 'default' params mapping",
                file=src,
                field=f"{where}.default",
            )
        spec = PopulationSpec(
            name=pname,
            parent=parent,
            dims=dims,
            method=method,
            space=space,
            params=dict(p.get("params") or {}),
            min_events=int(guard.get("min_events", 0)),
            frequency=tuple(freq) if freq else None,
            threshold_range={k: tuple(v) for k, v in (guard.get("threshold") or {}).items()},
            fallback=fallback,
            default=p.get("default"),
            description=str(p.get("description", "")),
            source=src,
            optional=bool(p.get("optional", False)),
        )
        if method == "boolean":
            ops = spec.params.get("operands", [])
            for o in ops:
                ref = o.lstrip("!")
                if ref not in seen:
                    raise GatingFileError(
                        f"boolean operand {ref!r} is not defined above", file=src, field=where
                    )
        else:
            _sides(spec) if issubclass(METHODS[method], ThresholdMethod) else None
            bad = METHODS[method].check_params(spec.params)
            if bad:
                raise GatingFileError(
                    f"{method} param {bad[0]}: {bad[1]}",
                    file=src,
                    field=f"{where}.params.{bad[0]}",
                    hint="see gates/README.md",
                )
        pops.append(spec)
        seen.add(pname)
    return Template(
        name=name,
        panel=panel,
        populations=pops,
        source=src,
        sha256=hashlib.sha256(raw).hexdigest(),
        description=str(doc.get("description", "")),
    )


class StaticPanel:
    """Panel check for fixed gates: every channel the gates use must be in the file."""

    def __init__(self, owner: StaticGating):
        self.owner = owner
        self.name = owner.name

    def resolve(self, fcs, *, sample: str | None = None) -> dict[str, str]:
        from .errors import PanelError

        strategy = self.owner.strategy_for(fcs)
        needed = sorted(
            {
                d.channel
                for g in strategy.gates.values()
                for d in g.dims
                if d.channel and getattr(d, "ratio", None) is None
            }
        )
        for ch in needed:
            if ch not in fcs.channels:
                raise PanelError(
                    f"channel {ch!r} used by the gates of panel {self.name!r} is not in the file",
                    file=fcs.path,
                    sample=sample,
                    field=ch,
                    hint=f"{self.owner.source} gates by $PnN; channels here: "
                    + ", ".join(fcs.channels),
                )
        return {ch: ch for ch in needed}


@dataclass
class StaticGating:
    """A panel gated with fixed gates: a Gating-ML 2.0 file or a FlowJo workspace.

    The gates are applied as they are (no fitting, no borrowing); FlowJo gates
    are looked up per sample by the FCS file name (``SampleNode`` name).
    """

    name: str
    source: str
    kind: str  # "gatingml" or "flowjo"
    sha256: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        self.panel = StaticPanel(self)
        self.populations: list[PopulationSpec] = []
        self._cached = None

    def resolve(self, fcs, *, sample: str | None = None) -> dict[str, str]:
        """The channels the gates use, checked in ``fcs`` (as :meth:`Template.resolve`)."""
        return self.panel.resolve(fcs, sample=sample)

    def base_strategy(self) -> GatingStrategy:
        """An empty strategy (as :meth:`Template.base_strategy`): no transforms, and a
        file without a spillover matrix is read uncompensated."""
        s = GatingStrategy()
        s.require_spillover = False
        return s

    def strategy_for(self, fcs) -> GatingStrategy:
        if self.kind == "gatingml":
            if self._cached is None:
                from .gatingml import load_gatingml

                self._cached = load_gatingml(self.source)
            return self._cached
        from .flowjo import load_flowjo

        return load_flowjo(self.source, sample=Path(fcs.path).name)


def load_gating(path: str | Path, *, name: str | None = None) -> Template | StaticGating:
    """Load a panel's gating: a template (``.yaml``), Gating-ML (``.xml``) or FlowJo (``.wsp``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_template(path)
    if suffix in (".xml", ".wsp"):
        problem = file_problem(path)
        if problem:
            raise GatingFileError(f"gating file {problem}", file=str(path), hint="check the path")
        return StaticGating(
            name=name or path.stem,
            source=str(path),
            kind="gatingml" if suffix == ".xml" else "flowjo",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    raise GatingFileError(
        f"unknown gating file type {suffix!r}",
        file=str(path),
        hint="use a template (.yaml), Gating-ML 2.0 (.xml) or a FlowJo workspace (.wsp)",
    )


# --------------------------------------------------------------------------- gating


@dataclass
class SampleInput:
    """What gating needs to know about one sample."""

    sample_id: str
    patient_id: str
    fcs_path: str
    visit_month: float = float("nan")
    #: ``{population: Correction}``: the reviewer's word on this sample's gates.
    corrections: dict = field(default_factory=dict)


@dataclass
class PopulationFit:
    """How one population was gated in one sample.

    ``flags`` are the reasons a person must look (the ``review`` level: they make
    the population's ``qc_flag``); ``notes`` are recorded for the audit and need
    no action (the ``info`` level: ``qc_note``).
    """

    params: dict | None
    source: str  # "fit", "patient", "cohort", "default", "static", "none"
    flags: list[str] = field(default_factory=list)
    message: str = ""
    notes: list[str] = field(default_factory=list)
    #: Events the automated gate held when a reviewer's gate replaced it.
    before: int | None = None


#: Internal markers, never written to a table.
_INTERNAL = ("needs_borrowing",)


@dataclass
class SampleGating:
    """The outcome of gating one sample: counts table, realised gates, flags."""

    sample_id: str
    patient_id: str
    fits: dict[str, PopulationFit]
    table: object  # pandas DataFrame from GatingResult.table() plus qc_flag, qc_note
    strategy: GatingStrategy
    channel_map: dict[str, str]
    n_events: int
    error: dict | None = None
    parents: dict[str, str | None] = field(default_factory=dict)
    visit_month: float = float("nan")
    #: ``{population: Correction}`` applied (see :mod:`immuno.corrections`).
    corrections: dict = field(default_factory=dict)
    #: ``{population: bool array over events}``: set by :func:`gate_one`, dropped by
    #: :func:`gate_input` (a cohort's results must not hold every event of every file).
    masks: dict | None = field(default=None, repr=False)

    def record(self) -> dict:
        """What pooling needs of this sample, JSON-ready: ids, visit, error and every
        fit (params, source, flags, notes; no events)."""
        return {
            "sample_id": self.sample_id,
            "patient_id": self.patient_id,
            "visit_month": self.visit_month,
            "error": self.error,
            "fits": {
                pop: {"params": f.params, "source": f.source, "flags": f.flags, "notes": f.notes}
                for pop, f in self.fits.items()
            },
        }

    @classmethod
    def from_record(cls, rec: dict) -> SampleGating:
        """The pooling view of a sample written by :meth:`record` (no table, no gates)."""
        fits = {
            pop: PopulationFit(f["params"], f["source"], list(f["flags"]), notes=list(f["notes"]))
            for pop, f in rec["fits"].items()
        }
        return cls(
            str(rec["sample_id"]),
            str(rec["patient_id"]),
            fits,
            None,
            None,
            {},
            0,
            error=rec.get("error"),
            visit_month=float(rec["visit_month"]),
        )

    def review(self, pop: str) -> list[str]:
        """The review reasons of ``pop`` itself (not inherited), as the gating found them."""
        fit = self.fits.get(pop)
        return [f for f in fit.flags if f not in _INTERNAL] if fit else []

    def _own(self, pop: str) -> list[str]:
        """``pop``'s own flags after the reviewer's word: none when accepted,
        ``excluded`` when excluded, ``corrected`` when its gate was replaced."""
        action = getattr(self.corrections.get(pop), "action", None)
        if action == "accept":  # a gate that could not be placed cannot be accepted
            return [f for f in self.review(pop) if f == FLAG_FAIL]
        if action == "exclude":
            return [FLAG_EXCLUDED]
        return self.review(pop)

    def flag(self, pop: str) -> str:
        """``qc_flag`` of ``pop``: its own flags, ``upstream_review(<gate>)`` when a gate
        above it needs review and ``upstream_excluded(<gate>)`` when a reviewer excluded
        one (its value depends on that gate). A corrected gate above is no reason."""
        own = self._own(pop)
        tags: dict[str, str] = {}
        up = self.parents.get(pop)
        while up not in (None, "root"):
            above = [f for f in self._own(up) if f != FLAG_CORRECTED]
            if above == [FLAG_EXCLUDED]:
                tags.setdefault("upstream_excluded", up)
            elif above:
                tags.setdefault("upstream_review", up)
            up = self.parents.get(up)
        return ";".join([*own, *(f"{tag}({gate})" for tag, gate in sorted(tags.items()))])

    def note(self, pop: str) -> str:
        """``qc_note`` of ``pop``: what was done that needs no action, and what a
        reviewer's accept or exclusion cleared (``accepted(...)``, ``reviewed(...)``)."""
        fit = self.fits.get(pop)
        notes = list(fit.notes) if fit else []
        action = getattr(self.corrections.get(pop), "action", None)
        reasons = ",".join(self.review(pop))
        if action == "accept":
            notes.append(f"accepted({reasons})" if reasons else "accepted")
        elif action == "exclude" and reasons:
            notes.append(f"reviewed({reasons})")
        return ";".join(notes)

    def refresh_table(self) -> None:
        if self.table is not None:
            self.table["qc_flag"] = [self.flag(p) for p in self.table["population"]]
            self.table["qc_note"] = [self.note(p) for p in self.table["population"]]


def _median_params(items: Sequence[dict]) -> dict | None:
    items = [i for i in items if i]
    if not items:
        return None
    keys = set.intersection(*(set(i) for i in items))
    # Numeric params are pooled (an open end of a range is None), and lists of numbers
    # of one length element by element (a mixture gate's radii).
    out: dict = {}
    for k in sorted(keys):
        vals = [i[k] for i in items]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[k] = float(np.median(vals))
        elif all(isinstance(v, list) and len(v) == len(vals[0]) for v in vals) and all(
            isinstance(x, int | float) for v in vals for x in v
        ):
            out[k] = [float(x) for x in np.median(np.asarray(vals, dtype=float), axis=0)]
    return out


def _share(mask: np.ndarray, parent_n: int) -> float:
    """Percent of the parent's ``parent_n`` events in ``mask`` (NaN for an empty parent)."""
    return 100.0 * mask.sum() / parent_n if parent_n else math.nan


def _check_guard(spec: PopulationSpec, method: Method, params: dict, freq: float | None):
    flags = []
    th = method.thresholds(params)
    for dim, (lo, hi) in spec.threshold_range.items():
        v = params.get(dim, th.get(dim))
        if v is not None and not (lo <= v <= hi):
            flags.append("threshold_out_of_range")
    if spec.frequency and freq is not None and not math.isnan(freq):
        lo, hi = spec.frequency
        if not (lo <= freq <= hi):
            flags.append(f"frequency_out_of_band({freq:.1f}%)")
    return flags


#: A channel range this much below a transform's top cannot hold that transform's input.
_SCALE_GAP = 16.0


@dataclass
class SampleScale:
    """How one file's channels are read: the template's spaces, unless the file's
    own scale says the data are already transformed (see :func:`check_scale`)."""

    template: Template
    linear: dict[str, str] = field(default_factory=dict)  # marker -> transform id
    compensate: bool = True

    def dimension(self, marker: str, channel: str, space: str) -> Dimension:
        dim = self.template.dimension(marker, channel, space)
        if marker in self.linear:
            return Dimension(channel, None, self.linear[marker] if space == "transformed" else None)
        if not self.compensate and dim.compensation is not None:
            return Dimension(channel, None, dim.transform)
        return dim


def _skip_parents(spec: PopulationSpec, skipped: dict[str, str | None]) -> PopulationSpec:
    """``spec`` hung from the nearest population above it that was not skipped."""
    parent = spec.parent
    while parent in skipped:
        parent = skipped[parent]
    return spec if parent == spec.parent else _replace(spec, parent=parent)


def _skipped_here(spec: PopulationSpec, channel_map, skipped: dict[str, str | None]) -> bool:
    """Whether an optional ``spec`` is skipped in this file (recorded in ``skipped``): a
    dimension the file lacks, or a boolean operand that was skipped."""
    if not spec.optional and spec.method != "boolean":
        return False
    lacking = [d for d in spec.dims if d not in channel_map]
    operands = [o.lstrip("!") for o in spec.params.get("operands", [])]
    if lacking or (spec.method == "boolean" and any(o in skipped for o in operands)):
        skipped[spec.name] = spec.parent
        return True
    return False


def _skip_note(spec: PopulationSpec, channel_map) -> str:
    lacking = [d for d in spec.dims if d not in channel_map]
    why = f"no {'/'.join(lacking)}" if lacking else "an operand was skipped"
    return f"optional_skipped({spec.name}:{why})"


def check_scale(fcs, template: Template, channel_map: dict[str, str], *, sample_id: str):
    """The scale the template's transforms expect, checked against the file's own.

    A marker whose transform is logarithmic-like (logicle, arcsinh, hyperlog, log)
    expects linear values reaching towards the transform's top ``T`` (e.g. 262144).
    A linear channel (``$PnE`` 0,0) whose range ``$PnR`` is at least 16 times below
    ``T`` (e.g. 0-1023 or 0-4096, as a FlowJo/GatingSet export of transformed data
    or a low-resolution instrument writes) cannot be that: gating it on the
    template's transform would crush its populations together. Such a marker is
    gated on a linear ``0..$PnR`` scale instead, with a warning naming the file and
    channel, and, when it is a compensated marker (already transformed
    fluorescence, hence already compensated), no marker of the file is compensated
    again. Returns ``(SampleScale, notes)``.
    """
    from .transform import Linear

    out = SampleScale(template)
    notes = []
    for name, m in template.panel.markers.items():
        if not m.transform:
            continue
        t = template.panel.transforms[m.transform]
        top = getattr(t, "T", None)
        if isinstance(t, Linear) or top is None:
            continue
        ch = channel_map.get(name)
        if ch is None:  # an optional population's channel the file lacks
            continue
        n = fcs.channels.index(ch) + 1
        try:
            decades = float((fcs.text.get(f"$P{n}E") or "0,0").split(",")[0])
            pnr = float(fcs.text.get(f"$P{n}R") or "nan")
        except ValueError:
            continue
        if decades > 0 or not math.isfinite(pnr) or pnr <= 0 or pnr * _SCALE_GAP > float(top):
            continue
        tid = f"linear_{pnr:g}"
        template.panel.transforms.setdefault(tid, Linear(T=pnr, A=0.0, id=tid))
        out.linear[name] = tid
        if m.compensated:
            out.compensate = False
        log.info(
            "%s (%s): channel %s (%s) has $PnR %g, far below the top of its %s transform "
            "(T %g): the values look already transformed or rescaled; gating it on a "
            "linear 0-%g scale instead%s",
            sample_id,
            fcs.path,
            ch,
            name,
            pnr,
            type(t).__name__,
            float(top),
            pnr,
            " and not compensating it again" if m.compensated else "",
        )
        notes.append(f"linear_scale({ch})")
    if not out.compensate:
        notes.append("not_compensated(already_transformed)")
    return out, notes


def gate_one(
    fcs,
    template: Template,
    *,
    sample_id: str,
    patient_id: str = "",
    borrowed: dict[str, dict[str, dict]] | None = None,
    replace: Sequence[str] = (),
    corrections: dict | None = None,
) -> SampleGating:
    """Gate one sample with a template.

    Parameters
    ----------
    fcs
        :class:`~immuno.read.FCSData` of the sample.
    template
        The panel's template.
    borrowed
        For pass 2: ``{population: {"patient": params, "cohort": params}}``, the
        median params of the same patient's other samples and of the cohort.
        Without it, a population that fails uses its ``default`` (if declared)
        and is marked for borrowing.
    replace
        Populations whose own fit was a cohort outlier in pass 1: they take the
        fallback chain (``borrowed``) instead of fitting, noted ``cohort_outlier``.
    corrections
        ``{population: Correction}`` (:mod:`immuno.corrections`): a reviewer's gate
        replaces the automated one (whose count is kept as ``before``) and the
        populations below are fitted on it; accept and exclude change the flags only
        (an accepted gate that could not be placed keeps ``fail``).
    """
    corrections = dict(corrections or {})
    if isinstance(template, StaticGating):
        return _apply_static(fcs, template, sample_id=sample_id, patient_id=patient_id)
    channel_map = template.resolve(fcs, sample=sample_id)
    scale, scale_notes = check_scale(fcs, template, channel_map, sample_id=sample_id)
    strategy = template.base_strategy()
    n = fcs.n_events
    # Gates are evaluated exactly either way; the fast space also gives cheap
    # (table-transformed) values to fit on.
    space = event_space(fcs, strategy)
    masks: dict[str, np.ndarray] = {}
    fits: dict[str, PopulationFit] = {}
    cache: dict = {}
    skipped: dict[str, str | None] = {}  # optional population -> the parent it hands on
    for spec in template.populations:
        spec = _skip_parents(spec, skipped)
        if _skipped_here(spec, channel_map, skipped):
            scale_notes.append(_skip_note(spec, channel_map))
            log.info("%s: %s", sample_id, scale_notes[-1])
            continue
        dims = tuple(scale.dimension(d, channel_map[d], spec.space) for d in spec.dims)
        parent_mask = masks.get(spec.parent) if spec.parent not in (None, "root") else None
        parent_n = n if parent_mask is None else int(parent_mask.sum())
        if spec.method == "boolean":
            ops = [(o.lstrip("!"), o.startswith("!")) for o in spec.params.get("operands", [])]
            gate = BooleanGate(
                spec.name, _parent(spec), (), op=spec.params.get("op", "and"), operands=ops
            )
            strategy.add_gate(gate)
            masks[spec.name] = strategy.evaluate(gate, space, masks)
            fits[spec.name] = PopulationFit({}, "static")
            continue
        method = spec.estimator()
        if isinstance(method, TimeGate):
            method.partner, method.signals = _time_partner(
                template, scale, channel_map, space, spec, parent_mask
            )
        if spec.name in replace and method.borrowable and borrowed is not None:
            fit = _fallback(spec, method, borrowed, "cohort_outlier")
        else:
            fit = _fit_population(spec, method, space, dims, parent_mask, parent_n, cache, borrowed)
        if fit.source in ("patient", "cohort") and fit.params and parent_n >= 20:
            rows = None if parent_mask is None else np.flatnonzero(parent_mask)
            X = space.estimates(dims, rows)
            if hasattr(method, "check_borrowed"):
                fit.flags.extend(method.check_borrowed(fit.params, X))
        if fit.params is None:
            # No gate at all: the population is empty and flagged as a failure.
            gate = RectangleGate(
                spec.name, _parent(spec), dims, (math.inf,) * len(dims), (None,) * len(dims)
            )
        else:
            gate = method.realise(fit.params, dims)
        strategy.add_gate(gate)
        masks[spec.name] = strategy.evaluate(gate, space, masks)
        if fit.params is not None:
            freq = _share(masks[spec.name], parent_n)
            guard_flags = _check_guard(spec, method, fit.params, freq)
            if guard_flags and fit.source == "fit" and spec.fallback and method.borrowable:
                # An implausible frequency: replace the fit by the fallback chain.
                alt = _fallback(spec, method, borrowed, guard_flags[0])
                if alt.params is not None:
                    del strategy.gates[spec.name]
                    gate = strategy.add_gate(method.realise(alt.params, dims))
                    masks[spec.name] = strategy.evaluate(gate, space, masks)
                    alt.flags.extend(
                        _check_guard(spec, method, alt.params, _share(masks[spec.name], parent_n))
                    )
                    fit = alt
                else:
                    fit.flags.extend(
                        [*guard_flags, *(f for f in alt.flags if f == "needs_borrowing")]
                    )
            elif fit.source in ("patient", "cohort"):
                # A borrowed gate is trusted only while its frequency is plausible here.
                fit.flags.extend(f for f in guard_flags if f.startswith("frequency"))
            else:
                fit.flags.extend(guard_flags)
        correction = corrections.get(spec.name)
        if correction is not None and correction.action in GATE_ACTIONS:
            fit = _corrected_fit(fit, int(masks[spec.name].sum()), correction)
            del strategy.gates[spec.name]
            gate = strategy.add_gate(_corrected_gate(spec, correction, dims))
            masks[spec.name] = strategy.evaluate(gate, space, masks)
        fits[spec.name] = fit
    if scale_notes and fits:
        fits[next(iter(fits))].notes.extend(scale_notes)
    result = GatingResult(sample_id, n, masks, {g.id: g.parent for g in strategy.gates.values()})
    out = SampleGating(
        sample_id,
        patient_id,
        fits,
        result.table(),
        strategy,
        channel_map,
        n,
        parents={
            p.name: _skip_parents(p, skipped).parent
            for p in template.populations
            if p.name not in skipped
        },
        corrections=corrections,
        masks=masks,
    )
    out.refresh_table()
    return out


def _corrected_fit(auto: PopulationFit, before: int, correction) -> PopulationFit:
    """The fit record of a reviewer's gate: flagged ``corrected``; the automated gate's
    own review reasons noted as ``reviewed(...)``, its count kept as ``before``. An
    automated gate that waits for a borrowed one keeps ``needs_borrowing`` (internal),
    so that ``before`` is the count the automated gating reports."""
    reasons = [f for f in auto.flags if f not in _INTERNAL]
    notes = [f"corrected({correction.action})"]
    if reasons:
        notes.append(f"reviewed({','.join(reasons)})")
    params = dict(correction.value) if correction.action == "threshold" else {}
    flags = [FLAG_CORRECTED, *(f for f in auto.flags if f in _INTERNAL)]
    return PopulationFit(params, "corrected", flags, notes=notes, before=before)


def _corrected_gate(spec: PopulationSpec, correction, dims: tuple[Dimension, ...]) -> Gate:
    """The static gate a correction gives, in the population's own dims (gate space):
    a threshold keeps the template's ``select`` side of each cut."""
    name, parent, value = spec.name, _parent(spec), correction.value
    if correction.action == "threshold":
        sides = _sides(spec)
        cuts = [value[d] for d in spec.dims]
        mins = tuple(t if s == "+" else None for t, s in zip(cuts, sides, strict=True))
        maxs = tuple(t if s == "-" else None for t, s in zip(cuts, sides, strict=True))
        return RectangleGate(name, parent, dims, mins, maxs)
    if correction.action == "rectangle":
        return RectangleGate(name, parent, dims, tuple(value["min"]), tuple(value["max"]))
    return PolygonGate(name, parent, dims, vertices=np.asarray(value, dtype=float))


def _time_partner(template, scale, channel_map, space, spec, parent_mask):
    """The partner dimension of a time gate's polygon and the signals of its QC.

    Partner: ``params.partner`` or the panel's first non-time channel (raw). Signals:
    every other marker and channel of the panel in gate space (transformed), for
    the parent's events, as ``(n, c)``.
    """
    time_channels = {channel_map[d] for d in spec.dims}
    present = [m for m in template.panel.markers if m in channel_map]
    names = [m for m in present if channel_map[m] not in time_channels]
    partner_name = spec.params.get("partner") or next(
        (m for m in names if not template.panel.marker(m).compensated), None
    )
    partner = None
    if partner_name is not None:
        partner = scale.dimension(partner_name, channel_map[partner_name], "raw")
    dims = [scale.dimension(m, channel_map[m], "transformed") for m in names]
    rows = None if parent_mask is None else np.flatnonzero(parent_mask)
    signals = space.estimates(tuple(dims), rows) if dims else None
    return partner, signals


def _apply_static(fcs, gating: StaticGating, *, sample_id: str, patient_id: str) -> SampleGating:
    """Fixed gates: check the channels, apply, count; every population is ``static``."""
    channel_map = gating.resolve(fcs, sample=sample_id)
    strategy = gating.strategy_for(fcs)
    result = strategy.apply(fcs, sample_id=sample_id)
    fits = {pop: PopulationFit({}, "static") for pop in result.masks}
    table = result.table()
    table["qc_flag"] = ""
    table["qc_note"] = ""
    return SampleGating(
        sample_id,
        patient_id,
        fits,
        table,
        strategy,
        channel_map,
        fcs.n_events,
        masks=result.masks,
    )


def _fit_population(spec, method, space, dims, parent_mask, parent_n, cache, borrowed):
    """Fit, or borrow, the params of one population (see :func:`gate_one`)."""
    if isinstance(method, StaticShape):
        return PopulationFit({}, "static")
    if parent_n < max(spec.min_events, 1):
        return _fallback(spec, method, borrowed, f"few_events({parent_n})")
    rows = None if parent_mask is None else np.flatnonzero(parent_mask)
    X = space.estimates(dims, rows)
    try:
        method.fit(X, cache)
    except FitFailure as exc:
        return _fallback(spec, method, borrowed, f"fit_failed({exc})".replace(" ", "_"))
    params = method.params_
    if "threshold_out_of_range" in _check_guard(spec, method, params, None):
        if not spec.fallback:
            return PopulationFit(params, "fit", ["threshold_out_of_range"])
        return _fallback(spec, method, borrowed, "threshold_out_of_range")
    return PopulationFit(params, "fit", list(method.review_), notes=list(method.notes_))


def _fallback(spec, method, borrowed, reason: str) -> PopulationFit:
    """Walk the template's fallback chain for a population whose own fit is unusable.

    A gate borrowed from the same patient's other samples or from the cohort is
    recorded as a note (``info``: the reason and ``borrowed_patient`` /
    ``borrowed_cohort``); the template's ``default`` (a fixed gate, not fitted to
    this cohort) and no gate at all (``fail``) need review. In pass 1 (``borrowed
    is None``) patient/cohort params are not known yet: the population takes its
    ``default`` meanwhile (or nothing) and is marked ``needs_borrowing`` so that
    pass 2 re-gates the sample.
    """
    if not method.borrowable:
        return PopulationFit(None, "none", [reason, FLAG_FAIL], reason)
    for fb in spec.fallback:
        if fb == "default" and spec.default:
            return PopulationFit(dict(spec.default), "default", [reason, "default_gate"])
        if borrowed is None:
            if spec.default:
                return PopulationFit(
                    dict(spec.default), "default", [reason, "needs_borrowing", "default_gate"]
                )
            return PopulationFit(None, "none", [reason, "needs_borrowing", FLAG_FAIL], reason)
        params = (borrowed.get(spec.name) or {}).get(fb)
        if params:
            return PopulationFit(dict(params), fb, notes=[reason, f"borrowed_{fb}"])
    return PopulationFit(None, "none", [reason, FLAG_FAIL], reason)


def gate_input(
    inp: SampleInput,
    template: Template | StaticGating,
    *,
    borrowed: dict | None = None,
    replace: Sequence[str] = (),
    reference: dict | None = None,
    on_gated=None,
) -> SampleGating:
    """Read and gate one sample (:func:`gate_one`); an error is recorded in the result
    (:attr:`SampleGating.error`), never raised, so that it costs no other sample.

    ``reference`` (a part of :attr:`Pool.reference`, :meth:`Pool.instruction`): the
    sample's own fits of the populations it holds are then judged against the cohort's
    pass-1 medians and spreads (:func:`flag_outliers`).
    ``on_gated(fcs, result)`` is called with the events while the result still holds
    its masks (e.g. to draw the review figure); the masks are dropped after it.
    """
    from .read import read_fcs

    try:
        fcs = read_fcs(inp.fcs_path)
        res = gate_one(
            fcs,
            template,
            sample_id=inp.sample_id,
            patient_id=inp.patient_id,
            borrowed=borrowed,
            replace=replace,
            corrections=inp.corrections,
        )
        res.visit_month = float(inp.visit_month)
        if reference is not None:
            flag_outliers(res, template, reference)
        if on_gated is not None:
            on_gated(fcs, res)
        res.masks = None
        return res
    except ImmunoError as exc:
        if exc.sample is None:
            exc.sample = inp.sample_id
        if exc.file is None:
            exc.file = inp.fcs_path
        return SampleGating(
            inp.sample_id, inp.patient_id, {}, None, None, {}, 0, error=exc.as_record()
        )
    except Exception as exc:  # a bug, or a file no check foresaw: lose this sample only
        log.exception("unexpected error gating %s (%s)", inp.sample_id, inp.fcs_path)
        record = {
            "error": type(exc).__name__,
            "file": inp.fcs_path,
            "sample": inp.sample_id,
            "field": "",
            "message": f"unexpected error: {exc}",
            "hint": "not a known input problem: please report it with this file",
        }
        return SampleGating(inp.sample_id, inp.patient_id, {}, None, None, {}, 0, error=record)


def _gate_path(args) -> SampleGating:
    """:func:`gate_input` of ``(input, template, borrowed, replace, reference)`` (picklable)."""
    inp, template, borrowed, replace, reference = args
    return gate_input(inp, template, borrowed=borrowed, replace=replace, reference=reference)


def _map(fn, items, workers, label: str | None = None):
    """``[fn(i) for i in items]`` in ``workers`` processes; with ``label``, progress
    lines on the console and in the log (:class:`~immuno.util.Progress`)."""
    from .util import Progress

    def track(results):
        return Progress(label, len(items), logger=log).wrap(results) if label else results

    if workers <= 1 or len(items) <= 1:
        return list(track(fn(i) for i in items))
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(track(ex.map(fn, items, chunksize=max(1, len(items) // (4 * workers)))))


def gate_samples(
    samples: Sequence[SampleInput],
    template: Template,
    *,
    workers: int = 1,
    label: str | None = None,
) -> list[SampleGating]:
    """Gate a cohort of one panel: pass 1 per sample, pooling, pass 2 where needed.

    Pass 1 gates every sample on its own, without corrections (:func:`gate_input`).
    Pooling (:func:`pool_fits`) sets the cohort outliers aside, pools the other fits
    per patient and over the cohort, and names the samples to gate again: those that
    need borrowing (a failed fit, or an outlier, which takes the fallback chain as a
    failed fit does) and those with corrections (``SampleInput.corrections``).
    Pass 2 re-gates only them, their children fitted on the borrowed or corrected
    parent, and judges their own fits by pass 1's reference: a fit that is still an
    outlier is flagged ``cohort_outlier`` for review. Samples run in parallel
    (``workers`` processes). The workflow runs the same three steps as separate jobs
    (:mod:`immuno.batch`), with identical results.
    """
    from dataclasses import replace as _with

    name = label or template.name or "panel"
    first = _map(
        _gate_path,
        [(_with(s, corrections={}), template, None, (), None) for s in samples],
        workers,
        label=f"gating {name} (pass 1)",
    )
    pool = pool_fits(first, template, {s.sample_id: s.corrections for s in samples})
    redo = [
        (i, (s, template, *pool.instruction(s.sample_id)))
        for i, s in enumerate(samples)
        if s.sample_id in pool.redo
    ]
    if redo:
        log.info("pass 2: %d of %d samples gated again", len(redo), len(samples))
        second = _map(_gate_path, [a for _, a in redo], workers, label=f"gating {name} (pass 2)")
        for (i, _), res in zip(redo, second, strict=True):
            first[i] = res
    _warn_scale(first, template)
    return first


@dataclass
class Pool:
    """The pooling of one panel's pass-1 fits (:func:`pool_fits`).

    ``redo``: ``{sample_id: {"borrowed": {population: {"patient"|"cohort": params}},
    "replace": [population, ...], "judge": [population, ...]}}`` for the samples pass 2
    gates again. ``borrowed`` holds the populations that may borrow in pass 2 (those
    that borrow, are replaced or corrected, and the ones below them), each with the
    fallback chain's entries up to the first that gives a gate; ``judge``, the
    populations pass 2 fits anew on another parent (the ones below), which alone can
    come out differently from pass 1. ``reference``: ``{(population, key): (by_visit,
    {visit: (median, spread)})}``, pass 1's outlier screen (:func:`cohort_outliers`), in
    each population's gate space. So a sample's pass 2 depends on its own entry and on
    the reference of its ``judge`` populations only (:meth:`digest`).
    """

    redo: dict[str, dict] = field(default_factory=dict)
    reference: dict = field(default_factory=dict)

    def instruction(self, sample_id: str) -> tuple[dict | None, tuple[str, ...], dict | None]:
        """``(borrowed, replace, reference)`` for :func:`gate_input`; ``(None, (), None)``
        for a sample that pass 2 leaves alone."""
        entry = self.redo.get(sample_id)
        if entry is None:
            return None, (), None
        judge = set(entry["judge"])
        reference = {k: v for k, v in self.reference.items() if k[0] in judge}
        return entry["borrowed"], tuple(entry["replace"]), reference

    @staticmethod
    def _reference_json(reference: dict) -> list:
        return [
            [pop, key, by_visit, [[visit, med, spread] for visit, (med, spread) in st.items()]]
            for (pop, key), (by_visit, st) in sorted(reference.items())
        ]

    def to_json(self) -> dict:
        return {"redo": self.redo, "reference": self._reference_json(self.reference)}

    @classmethod
    def from_json(cls, doc: dict) -> Pool:
        reference = {
            (pop, key): (bool(by_visit), {v: (float(m), float(sd)) for v, m, sd in st})
            for pop, key, by_visit, st in doc["reference"]
        }
        return cls(redo=doc["redo"], reference=reference)

    def digest(self, sample_ids: Sequence[str]) -> str:
        """SHA-256 of what pass 2 of these samples depends on: their instructions and the
        reference of the populations it judges (unchanged when other samples' pooling
        changes anything else)."""
        own = {}
        for s in sorted(sample_ids):
            if s in self.redo:
                reference = self.instruction(s)[2]
                own[s] = {**self.redo[s], "reference": self._reference_json(reference)}
        return hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()


def pool_fits(
    results: Sequence[SampleGating],
    template: Template | StaticGating,
    corrections: dict[str, dict] | None = None,
) -> Pool:
    """Pool one panel's pass-1 fits (automated, without corrections).

    The cohort outliers (:func:`cohort_outliers`) are set aside; the params of the
    other fits that needed no review are pooled per patient and over the cohort
    (medians, :func:`_median_params`). A sample is gated again in pass 2 when a fit
    of it needs borrowing, was an outlier (that population takes the fallback chain,
    unless a reviewer's gate is at or above it), or has ``corrections``
    (``{sample_id: {population: Correction}}``). Its other populations fit as in pass
    1 (the same events, the same parent): only the ones below a changed gate are
    fitted anew and judged again.
    """
    corrections = corrections or {}
    pool = Pool()
    outliers = cohort_outliers(list(results), template, reference=pool.reference)
    ok_params: dict[str, dict[str, list[dict]]] = {}
    for i, res in enumerate(results):
        for pop, fit in res.fits.items():
            if fit.source == "fit" and not fit.flags and fit.params and (i, pop) not in outliers:
                ok_params.setdefault(pop, {}).setdefault(res.patient_id, []).append(fit.params)
    cohort = {
        pop: _median_params([p for v in d.values() for p in v]) for pop, d in ok_params.items()
    }
    specs = {p.name: p for p in template.populations}

    def lineage(pop: str | None) -> list[str]:
        """``pop`` and the gates above it."""
        out = []
        while pop not in (None, "root"):
            out.append(pop)
            pop = specs[pop].parent if pop in specs else None
        return out

    def chain(pop: str, patient: str) -> dict:
        spec, out = specs.get(pop), {}
        for fb in spec.fallback if spec is not None else ():
            if fb == "default" and spec.default:
                break
            params = {
                "patient": _median_params(ok_params.get(pop, {}).get(patient, [])),
                "cohort": cohort.get(pop),
            }.get(fb)
            if params:
                out[fb] = params
                break
        return out

    for i, res in enumerate(results):
        if res.error is not None:
            continue
        own = corrections.get(res.sample_id) or {}
        set_by = {p for p, c in own.items() if c.action in GATE_ACTIONS}
        # a reviewer's gate at or above an outlier: its automated fit says nothing
        replace = sorted(
            pop for j, pop in outliers if j == i and not set_by.intersection(lineage(pop))
        )
        borrows = {pop for pop, f in res.fits.items() if "needs_borrowing" in f.flags}
        changed = set(replace) | borrows | set_by
        if not (changed or own):
            continue
        below = {pop for pop in res.fits if changed.intersection(lineage(pop)[1:])}
        pool.redo[res.sample_id] = {
            "borrowed": {pop: chain(pop, res.patient_id) for pop in sorted(changed | below)},
            "replace": replace,
            "judge": sorted(below),
        }
    return pool


#: The warning for a panel's files read on another scale (:func:`check_scale`), with
#: the panel, the files noted, the panel's files, the note and an example sample.
SCALE_WARNING = (
    "panel %s: %d of %d files noted %s (e.g. %s): a channel's $PnR is far below the top of "
    "the template's transform, so its values look already transformed or rescaled; it is "
    "gated on a linear scale and, if fluorescence, not compensated again (qc_note, methods "
    "text)"
)


def scale_notes(res: SampleGating) -> list[str]:
    """The notes of a file read on another scale (:func:`check_scale`): kept on the
    first population gated in the file (the panel's first, unless an optional gate
    was skipped there)."""
    fit = next(iter(res.fits.values()), None)
    return [
        n for n in (fit.notes if fit else ()) if n.startswith(("linear_scale", "not_compensated"))
    ]


def warn_scale(panel: str, notes: dict[str, list[str]], n_files: int) -> None:
    """One warning per panel and note for the files read on another scale;
    ``notes``: ``{sample_id: scale_notes}``."""
    seen: dict[str, list[str]] = {}
    for sid, ns in notes.items():
        for note in ns:
            seen.setdefault(note, []).append(sid)
    for note, ids in sorted(seen.items()):
        log.warning(SCALE_WARNING, panel, len(ids), n_files, note, ids[0])


def _warn_scale(results: list[SampleGating], template: Template) -> None:
    warn_scale(template.name, {r.sample_id: scale_notes(r) for r in results}, len(results))


def _group_stats(iv: list[tuple[int, float, float]], min_group: int):
    """``(by_visit, {visit or None: (median, spread)})`` of one key's ``(index, visit,
    value)`` fits (see :func:`cohort_outliers`)."""
    from scipy.stats import kruskal

    groups: dict[float, list[float]] = {}
    for _, visit, v in iv:
        groups.setdefault(visit, []).append(v)
    big = [g for g in groups.values() if len(g) >= min_group]
    by_visit = False
    if len(big) >= 2 and len({x for g in big for x in g}) > 1:
        by_visit = bool(kruskal(*big).pvalue < 1e-3)
    stats = {}
    for visit, g in groups.items() if by_visit else [(None, [v for _, _, v in iv])]:
        if len(g) < min_group:
            continue
        arr = np.asarray(g, dtype=float)
        med = float(np.median(arr))
        mad = float(np.median(np.abs(arr - med))) * 1.4826
        stats[visit] = (med, max(mad, 0.02 * abs(med), 1e-12))
    return by_visit, stats


def _own_values(res: SampleGating, spec: PopulationSpec, method: Method):
    """``{key: value}`` of the finite scalars of ``res``'s own fit of ``spec`` (none
    for a borrowed, default or corrected gate)."""
    fit = res.fits.get(spec.name)
    if fit is None or not fit.params or fit.source != "fit":
        return {}
    return {
        key: float(v)
        for key, v in method.thresholds(fit.params).items()
        if v is not None and math.isfinite(v)
    }


def _outlying(value: float, visit: float, ref, k: float) -> bool:
    by_visit, stats = ref
    centre = stats.get(visit if by_visit else None)
    return centre is not None and abs(value - centre[0]) > k * centre[1]


def cohort_outliers(
    results: list[SampleGating],
    template: Template | StaticGating,
    k: float = OUTLIER_K,
    min_group: int = 8,
    *,
    reference: dict | None = None,
) -> set[tuple[int, str]]:
    """``(result index, population)`` of the fits far from comparable samples' fits.

    For each population (of one panel: one template) and each scalar of its fitted
    params (thresholds, centres; gate space), a fit is an outlier when it lies more
    than ``k`` robust SDs (MAD x 1.4826, at least 2% of the median's magnitude, so
    that a tight cohort does not make trivial differences outliers) from the median
    of its comparison group. The group is the whole panel, or the fit's visit when
    the cohort's values cluster by visit (Kruskal-Wallis p < 0.001 across visits
    with at least ``min_group`` fits each), so that a legitimate shift at one visit
    (e.g. the live gate at entry) is not an outlier. Groups of fewer than
    ``min_group`` fits judge nothing. Only fits of the sample's own data count.

    ``reference``: a dict to fill with each group's ``(by_visit, {visit: (median,
    spread)})``, by which :func:`flag_outliers` judges pass 2.
    """
    found: set[tuple[int, str]] = set()
    for spec in template.populations:
        method = spec.estimator()
        if not method.borrowable:
            continue  # e.g. a time gate: each acquisition has its own, nothing to compare
        vals: dict[str, list[tuple[int, float, float]]] = {}
        for i, r in enumerate(results):
            for key, v in _own_values(r, spec, method).items():
                vals.setdefault(key, []).append((i, r.visit_month, v))
        for key, iv in vals.items():
            if len(iv) < min_group:
                continue
            ref = _group_stats(iv, min_group)
            if reference is not None:
                reference[(spec.name, key)] = ref
            found.update((i, spec.name) for i, visit, v in iv if _outlying(v, visit, ref, k))
    return found


def flag_outliers(
    res: SampleGating, template: Template | StaticGating, reference: dict, k: float = OUTLIER_K
) -> list[str]:
    """Flag ``cohort_outlier`` on each of ``res``'s own fits that lies more than ``k``
    robust SDs from its group in ``reference`` (pass 1's, :func:`cohort_outliers`),
    judged on its own: pass 2 of one sample needs no other sample. Returns the
    populations flagged."""
    flagged = []
    for spec in template.populations:
        method = spec.estimator()
        if not method.borrowable:
            continue
        values = _own_values(res, spec, method)
        if any(
            _outlying(v, res.visit_month, reference[(spec.name, key)], k)
            for key, v in values.items()
            if (spec.name, key) in reference
        ):
            fit = res.fits[spec.name]
            if "cohort_outlier" not in fit.flags:
                fit.flags.append("cohort_outlier")
            flagged.append(spec.name)
    if flagged:
        res.refresh_table()
    return flagged


def strategy_for_file(template_path: str | Path, fcs) -> GatingStrategy:
    """Fit a template to one file on its own and return the realised strategy."""
    return gate_template(template_path, fcs).strategy


def gate_template(template_path: str | Path, fcs, sample_id: str | None = None) -> SampleGating:
    """Fit a template to one file on its own (no cohort to borrow from): its gates and
    flags (:class:`SampleGating`)."""
    template = load_template(template_path)
    return gate_one(fcs, template, sample_id=sample_id or Path(fcs.path).stem)


def realised_params(results: list[SampleGating], template: Template):
    """Tidy table of every fitted number: ``sample_id, patient_id, visit_month,
    population, source, key, value, qc_flag, qc_note`` (the panel is added by
    :func:`immuno.cohort.gate_cohort`)."""
    import pandas as pd

    rows = []
    for r in results:
        for spec in template.populations:
            fit = r.fits.get(spec.name)
            if fit is None or not fit.params:
                continue
            for key, v in spec.estimator().thresholds(fit.params).items():
                rows.append(
                    {
                        "sample_id": r.sample_id,
                        "patient_id": r.patient_id,
                        "visit_month": r.visit_month,
                        "population": spec.name,
                        "source": fit.source,
                        "key": key,
                        "value": v,
                        "qc_flag": r.flag(spec.name),
                        "qc_note": r.note(spec.name),
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "sample_id",
            "patient_id",
            "visit_month",
            "population",
            "source",
            "key",
            "value",
            "qc_flag",
            "qc_note",
        ],
    )
