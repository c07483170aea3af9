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

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GatingError, GatingFileError, ImmunoError
from .gate import (
    FAST_MIN_EVENTS,
    BooleanGate,
    Dimension,
    EllipseGate,
    EventSpace,
    FastEventSpace,
    Gate,
    GatingResult,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
)
from .panel import Panel

__all__ = [
    "Template",
    "PopulationSpec",
    "load_template",
    "SampleInput",
    "SampleGating",
    "gate_samples",
    "gate_one",
    "strategy_for_file",
    "load_gating",
    "StaticGating",
    "METHODS",
]

log = logging.getLogger(__name__)

#: Order in which flags are reported; ``fail`` excludes a value from statistics.
FLAG_FAIL = "fail"


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
) -> float:
    """Threshold at the deepest density valley between two neighbouring peaks.

    openCyto's ``mindensity``: the density is estimated on the parent's events;
    every valley between two adjacent peaks whose minimum lies in ``search``
    (gate-space units) is a candidate, and the one whose lower flanking peak
    stands highest above the valley floor wins. Peaks lower than ``min_peak``
    times the highest are ignored. Raises :class:`FitFailure` when there is no
    such valley.
    """
    x = x[np.isfinite(x)]
    if len(x) < 20:
        raise FitFailure("fewer than 20 events")
    lo, hi = np.percentile(x, [0.1, 99.9])
    pad = 0.1 * (hi - lo + 1e-9)
    grid, dens = _density(x, lo - pad, hi + pad, adjust=adjust)
    peaks = _peaks(dens, min_peak)
    if len(peaks) < 2:
        raise FitFailure("one peak only")
    s_lo, s_hi = search if search is not None else (-np.inf, np.inf)
    best = None
    for a, b in zip(peaks[:-1], peaks[1:], strict=True):
        v = a + int(np.argmin(dens[a : b + 1]))
        if not (s_lo <= grid[v] <= s_hi):
            continue
        depth = min(dens[a], dens[b]) - dens[v]
        if best is None or depth > best[0]:
            best = (depth, v)
    if best is None:
        raise FitFailure("no valley in the search range")
    return float(grid[best[1]])


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


def _em_step(X: np.ndarray, R: np.ndarray, reg: float):
    """One EM iteration from responsibilities ``R`` ``(k, n)`` (component-major, so
    that every sum runs along contiguous memory): ``(weights, means, covs, R', loglik)``."""
    k, n = R.shape
    d = X.shape[1]
    nk = R.sum(axis=1) + 1e-12
    weights = nk / n
    means = (R @ X) / nk[:, None]
    if d == 2:  # closed forms, every component at once
        dx = X[:, 0][None, :] - means[:, 0, None]
        dy = X[:, 1][None, :] - means[:, 1, None]
        rx = R * dx
        a = np.einsum("kn,kn->k", rx, dx) / nk + reg
        b = np.einsum("kn,kn->k", rx, dy) / nk
        c = np.einsum("kn,kn->k", R * dy, dy) / nk + reg
        covs = np.stack([np.stack([a, b], axis=-1), np.stack([b, c], axis=-1)], axis=1)
        det = a * c - b * b
        md = (c[:, None] * dx * dx - 2 * b[:, None] * dx * dy + a[:, None] * dy * dy) / det[:, None]
        logdet = np.log(det)
    else:
        covs = np.empty((k, d, d))
        md = np.empty((k, n))
        logdet = np.empty(k)
        for j in range(k):
            diff = X - means[j]
            covs[j] = (R[j, :, None] * diff).T @ diff / nk[j] + reg * np.eye(d)
            md[j] = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(covs[j]), diff)
            logdet[j] = np.linalg.slogdet(covs[j])[1]
    logp = (np.log(weights + 1e-300) - 0.5 * (logdet + d * np.log(2 * np.pi)))[:, None] - 0.5 * md
    top = logp.max(axis=0)
    lse = top + np.log(np.exp(logp - top).sum(axis=0))
    return weights, means, covs, np.exp(logp - lse), float(lse.mean())


def fit_mixture(
    X: np.ndarray,
    k: int,
    *,
    random_state: int = 0,
    n_init: int = 2,
    max_iter: int = 100,
    tol: float = 1e-5,
    reg: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Gaussian mixture with full covariances by EM: ``(weights, means, covs, loglik)``.

    ``X`` is ``(n, d)``. Each of ``n_init`` starts is seeded by k-means++ on a
    generator from ``random_state`` (so results are deterministic); the start with
    the highest log-likelihood wins. ``reg`` is added to covariance diagonals.
    """
    n, d = X.shape
    rng = np.random.default_rng(random_state)
    best = None
    for _ in range(n_init):
        # k-means++ seeding
        centres = [X[rng.integers(n)]]
        for _j in range(1, k):
            d2 = np.min([((X - c) ** 2).sum(axis=1) for c in centres], axis=0)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centres.append(X[rng.choice(n, p=p)])
        means = np.array(centres, dtype=np.float64)
        R = np.zeros((k, n))
        R[np.argmin(((X[:, None, :] - means[None]) ** 2).sum(-1), axis=1), np.arange(n)] = 1
        prev = -np.inf
        for _it in range(max_iter):
            weights, means, covs, R, ll = _em_step(X, R, reg)
            if ll - prev < tol:
                break
            prev = ll
        if best is None or ll > best[3]:
            best = (weights, means, covs, ll)
    return best


class Method:
    """Base estimator: ``fit(X) -> self`` sets ``params_``; ``realise(params) -> Gate``."""

    n_dims: tuple[int, ...] = (1, 2)
    borrowable = True

    def __init__(self, spec: PopulationSpec):
        self.spec = spec

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
    if len(sel) != len(spec.dims) or any(s not in ("+", "-") for s in sel):
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
    """

    def threshold_1d(self, x: np.ndarray, dim: str) -> float:
        raise NotImplementedError

    def fit(self, X, cache=None):
        self.params_ = {}
        for j, dim in enumerate(self.spec.dims):
            key = (self.spec.parent, dim, self.spec.method, json.dumps(self._dim_params(dim)))
            if cache is not None and key in cache:
                self.params_[dim] = cache[key]
                continue
            t = self.threshold_1d(X[:, j], dim)
            self.params_[dim] = t
            if cache is not None:
                cache[key] = t
        return self

    def _dim_params(self, dim: str) -> dict:
        p = self.spec.params
        return {
            k: (v.get(dim) if isinstance(v, dict) else v) for k, v in p.items() if k != "select"
        }

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
    """Density valley between two peaks (openCyto ``mindensity``).

    Params: ``range`` (per dimension ``[lo, hi]`` search range in gate space),
    ``adjust`` (bandwidth multiplier), ``select``.
    """

    def threshold_1d(self, x, dim):
        p = self._dim_params(dim)
        rng = p.get("range")
        return mindensity_threshold(
            x, tuple(rng) if rng else None, adjust=float(p.get("adjust") or 1.0)
        )


class TailCut(ThresholdMethod):
    """Cut ``k`` robust SDs above the negative peak: for bright-only markers.

    Params: ``k`` (default 3), ``select``.
    """

    def threshold_1d(self, x, dim):
        p = self._dim_params(dim)
        return tail_threshold(x, k=float(p.get("k") or 3.0))


def ellipse_vertices(mean, cov, distance_square: float, n: int = 128) -> np.ndarray:
    """``n`` points on the ellipse ``(x - mean)' cov^-1 (x - mean) = distance_square``.

    Equally spaced in angle on the ellipse's principal axes, starting at the end
    of the major axis: the vertices of the inscribed polygon, in the units of
    ``mean`` (gate space). ``cov`` must be positive definite.
    """
    vals, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    if not np.all(vals > 0):
        raise GatingError(
            f"the ellipse covariance {np.asarray(cov).tolist()} is not positive definite",
            hint="check the population's default or borrowed cov_xx, cov_xy, cov_yy",
        )
    order = np.argsort(vals)[::-1]
    axes = vecs[:, order] * np.sqrt(vals[order] * float(distance_square))
    t = 2.0 * np.pi * np.arange(n) / n
    return np.asarray(mean, dtype=np.float64) + np.column_stack([np.cos(t), np.sin(t)]) @ axes.T


class MixtureCluster(Method):
    """2-D Gaussian mixture; keep the component chosen by ``pick``.

    Params: ``components`` (default 3), ``pick`` (``{dim: "max"|"min"}``, applied in
    order as ``argmax``/``argmin`` of component means; or ``target: [x, y]``, the
    component whose mean is nearest), ``min_weight`` (components lighter than
    this are ignored when picking, default 0.02), ``coverage`` (the realised
    ellipse holds this fraction of the chosen Gaussian, default 0.99),
    ``max_events`` (subsample for fitting, default 5000), ``random_state``,
    ``shape`` (``polygon``, the default, or ``ellipse``) and ``vertices`` (128).

    The realised gate is, by default, the polygon inscribed in that ellipse
    (gate space) through ``vertices`` points equally spaced in angle on it (area
    0.04% smaller at 128 vertices). A polygon is what every consumer of the
    exports evaluates identically: FlowKit replaces a FlowJo ellipse by its own
    128-gon and FlowJo decides ellipses on its binned display, so a realised
    ellipse would be counted a few rim events differently outside the pipeline.
    ``shape: ellipse`` keeps the exact ellipse.
    """

    n_dims = (2,)

    def fit(self, X, cache=None):
        p = self.spec.params
        X = X[np.all(np.isfinite(X), axis=1)]
        k = int(p.get("components", 3))
        if len(X) < 20 * k:
            raise FitFailure(f"{len(X)} events are too few for {k} components")
        rs = np.random.default_rng(int(p.get("random_state", 0)))
        cap = int(p.get("max_events", 5000))
        if len(X) > cap:
            X = X[rs.choice(len(X), cap, replace=False)]
        weights, means, covs, _ll = fit_mixture(X, k, random_state=int(p.get("random_state", 0)))
        ok = np.flatnonzero(weights >= float(p.get("min_weight", 0.02)))
        if len(ok) == 0:
            raise FitFailure("no component heavy enough")
        chosen = self._pick(means, ok)
        cov = covs[chosen]
        self.weights_, self.means_, self.covariances_ = weights, means, covs
        self.params_ = {
            "mean_x": float(means[chosen, 0]),
            "mean_y": float(means[chosen, 1]),
            "cov_xx": float(cov[0, 0]),
            "cov_xy": float(cov[0, 1]),
            "cov_yy": float(cov[1, 1]),
            "weight": float(weights[chosen]),
        }
        return self

    def _pick(self, means, ok):
        p = self.spec.params
        if "target" in p:
            t = np.asarray(p["target"], dtype=float)
            return int(ok[np.argmin(((means[ok] - t) ** 2).sum(axis=1))])
        cand = list(ok)
        for rule in p.get("pick", []):
            ((dim, how),) = rule.items()
            j = self.spec.dims.index(dim)
            vals = means[cand, j]
            best = vals.max() if how == "max" else vals.min()
            # Keep ties within 5% of the range of the means, then the next rule decides.
            tol = 0.05 * (np.ptp(means[ok, j]) + 1e-12)
            cand = [c for c, v in zip(cand, vals, strict=True) if abs(v - best) <= tol]
        return int(cand[0])

    def realise(self, params, dims):
        p = self.spec.params
        mean = np.array([params["mean_x"], params["mean_y"]])
        cov = np.array([[params["cov_xx"], params["cov_xy"]], [params["cov_xy"], params["cov_yy"]]])
        # The chi-square quantile with 2 degrees of freedom in closed form:
        # P(d2 <= q) = 1 - exp(-q / 2)  =>  q = -2 ln(1 - coverage).
        d2 = -2.0 * math.log1p(-float(p.get("coverage", 0.99)))
        if p.get("shape", "polygon") == "ellipse":
            return EllipseGate(
                self.spec.name,
                _parent(self.spec),
                dims,
                mean=mean,
                covariance=cov,
                distance_square=d2,
            )
        verts = ellipse_vertices(mean, cov, d2, int(p.get("vertices", 128)))
        return PolygonGate(self.spec.name, _parent(self.spec), dims, vertices=verts)

    @classmethod
    def check_params(cls, params):
        if params.get("shape", "polygon") not in ("polygon", "ellipse"):
            return "shape", f"{params['shape']!r} is not polygon or ellipse"
        v = params.get("vertices", 128)
        if not isinstance(v, int) or isinstance(v, bool) or v < 8:
            return "vertices", f"{v!r} is not a whole number of at least 8"
        c = params.get("coverage", 0.99)
        if not isinstance(c, int | float) or not 0 < c < 1:
            return "coverage", f"{c!r} is not a fraction between 0 and 1"
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
        rng = p.get("range")
        self.params_ = {
            "z": mindensity_threshold(
                z, tuple(rng) if rng else None, adjust=float(p.get("adjust", 1.0))
            )
        }
        return self

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
        keep = a > float(p.get("min_area", 1000.0))
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
    """Remove flow-rate bursts and clogs (the PeacoQC/flowAI idea).

    Events are binned in time (``bins``, default 100); bins whose event rate
    deviates from the median rate by more than ``k`` robust SDs (default 5) are
    bad, and the longest run of good bins is kept. Realised as a range on the
    time channel (raw units). Not borrowable: each acquisition has its own.
    """

    n_dims = (1,)
    borrowable = False

    def fit(self, X, cache=None):
        p = self.spec.params
        t = X[:, 0]
        if len(t) < 100:
            raise FitFailure("too few events")
        nb = int(p.get("bins", 100))
        lo, hi = float(t.min()), float(t.max())
        if hi <= lo:
            raise FitFailure("time channel is constant")
        counts, edges = np.histogram(t, bins=nb, range=(lo, hi))
        med = np.median(counts)
        mad = np.median(np.abs(counts - med)) * 1.4826 + math.sqrt(max(med, 1.0))
        good = np.abs(counts - med) <= float(p.get("k", 5.0)) * mad
        best, start, run = (0, 0, 0), None, 0
        for i, g in enumerate(good):
            if g:
                start = i if start is None else start
                run += 1
                if run > best[0]:
                    best = (run, start, i)
            else:
                start, run = None, 0
        if best[0] == 0:
            raise FitFailure("no stable stretch of acquisition")
        _, i0, i1 = best
        # An end of the acquisition that needs no cut stays open (None), so the gate
        # keeps every event there whatever the time units of the reader.
        self.params_ = {
            "min": float(edges[i0]) if i0 > 0 else None,
            "max": float(edges[i1 + 1]) if i1 < nb - 1 else None,
            "bad_bins": int((~good).sum()),
        }
        return self

    def realise(self, params, dims):
        lo, hi = params["min"], params["max"]
        if lo is None and hi is None:
            lo = -math.inf  # Gating-ML needs one bound per dimension; this one keeps all
        return RectangleGate(self.spec.name, _parent(self.spec), dims, (lo,), (hi,))

    def thresholds(self, params):
        return {k: params[k] for k in ("min", "max") if params.get(k) is not None}


class StaticShape(Method):
    """A fixed gate from the template: ``range``/``rectangle`` (``min``, ``max`` per
    dimension, ``null`` for open), ``polygon`` (``vertices``), ``ellipse`` (``mean``,
    ``covariance``, ``distance_square``). Coordinates are in gate space."""

    borrowable = False

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

    def dimension(self, marker: str, channel: str, space: str) -> Dimension:
        m = self.panel.marker(marker)
        comp = self.panel.compensation if (m.compensated and space != "raw") else None
        tr = m.transform if space == "transformed" else None
        return Dimension(channel, comp, tr)

    def base_strategy(self) -> GatingStrategy:
        s = GatingStrategy()
        s.transforms.update(self.panel.transforms)
        return s


def load_template(path: str | Path) -> Template:
    """Read and validate a gating template (YAML).

    Raises :class:`~immuno.errors.GatingFileError` naming the file and the key
    at fault.
    """
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GatingFileError(f"cannot read template: {exc.strerror}", file=str(path)) from None
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise GatingFileError(f"not valid YAML: {exc}", file=str(path)) from None
    src = str(path)
    if not isinstance(doc, dict) or "panel" not in doc or "populations" not in doc:
        raise GatingFileError(
            "a template needs 'panel' and 'populations' sections",
            file=src,
            hint="see gates/README.md",
        )
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
        if not path.is_file():
            raise GatingFileError("gating file does not exist", file=str(path))
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


@dataclass
class PopulationFit:
    """How one population was gated in one sample."""

    params: dict | None
    source: str  # "fit", "patient", "cohort", "default", "static", "none"
    flags: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class SampleGating:
    """The outcome of gating one sample: counts table, realised gates, flags."""

    sample_id: str
    patient_id: str
    fits: dict[str, PopulationFit]
    table: object  # pandas DataFrame from GatingResult.table() plus qc_flag
    strategy: GatingStrategy
    channel_map: dict[str, str]
    n_events: int
    error: dict | None = None

    def flag(self, pop: str) -> str:
        return ";".join(self.fits[pop].flags) if pop in self.fits else ""


def _median_params(items: Sequence[dict]) -> dict | None:
    items = [i for i in items if i]
    if not items:
        return None
    keys = set.intersection(*(set(i) for i in items))
    # Only numeric params are pooled (an open end of a range is None).
    keys = {k for k in keys if all(isinstance(i[k], int | float) for i in items)}
    return {k: float(np.median([float(i[k]) for i in items])) for k in sorted(keys)}


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
            flags.append("frequency_out_of_band")
    return flags


def gate_one(
    fcs,
    template: Template,
    *,
    sample_id: str,
    patient_id: str = "",
    borrowed: dict[str, dict[str, dict]] | None = None,
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
    """
    if isinstance(template, StaticGating):
        return _apply_static(fcs, template, sample_id=sample_id, patient_id=patient_id)
    channel_map = template.panel.resolve(fcs, sample=sample_id)
    strategy = template.base_strategy()
    n = fcs.n_events
    # Gates are evaluated exactly either way; the fast space also gives cheap
    # (table-transformed) values to fit on.
    if n >= FAST_MIN_EVENTS:
        space = FastEventSpace(fcs, strategy)
    else:
        space = EventSpace(fcs, strategy, dtype=np.float64)
    masks: dict[str, np.ndarray] = {}
    fits: dict[str, PopulationFit] = {}
    cache: dict = {}
    for spec in template.populations:
        dims = tuple(template.dimension(d, channel_map[d], spec.space) for d in spec.dims)
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
        fit = _fit_population(spec, method, space, dims, parent_mask, parent_n, cache, borrowed)
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
            freq = 100.0 * masks[spec.name].sum() / parent_n if parent_n else float("nan")
            guard_flags = _check_guard(spec, method, fit.params, freq)
            if guard_flags and fit.source == "fit" and spec.fallback:
                # An implausible frequency: replace the fit by the fallback chain.
                alt = _fallback(spec, method, borrowed, guard_flags[0])
                if alt.params is not None:
                    del strategy.gates[spec.name]
                    gate = strategy.add_gate(method.realise(alt.params, dims))
                    masks[spec.name] = strategy.evaluate(gate, space, masks)
                    fit = alt
                else:
                    fit.flags.extend(
                        [*guard_flags, *(f for f in alt.flags if f == "needs_borrowing")]
                    )
            else:
                fit.flags.extend(guard_flags)
        fits[spec.name] = fit
    result = GatingResult(sample_id, n, masks, {g.id: g.parent for g in strategy.gates.values()})
    table = result.table()
    table["qc_flag"] = [";".join(fits[p].flags) for p in table["population"]]
    return SampleGating(sample_id, patient_id, fits, table, strategy, channel_map, n)


def _apply_static(fcs, gating: StaticGating, *, sample_id: str, patient_id: str) -> SampleGating:
    """Fixed gates: check the channels, apply, count; every population is ``static``."""
    channel_map = gating.panel.resolve(fcs, sample=sample_id)
    strategy = gating.strategy_for(fcs)
    result = strategy.apply(fcs, sample_id=sample_id)
    fits = {pop: PopulationFit({}, "static") for pop in result.masks}
    table = result.table()
    table["qc_flag"] = ""
    return SampleGating(sample_id, patient_id, fits, table, strategy, channel_map, fcs.n_events)


def _fit_population(spec, method, space, dims, parent_mask, parent_n, cache, borrowed):
    """Fit, or borrow, the params of one population (see :func:`gate_one`)."""
    if isinstance(method, StaticShape):
        return PopulationFit({}, "static")
    if parent_n < max(spec.min_events, 1):
        return _fallback(spec, method, borrowed, "few_events")
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
    return PopulationFit(params, "fit")


def _fallback(spec, method, borrowed, reason: str) -> PopulationFit:
    """Walk the template's fallback chain for a population whose own fit is unusable.

    In pass 1 (``borrowed is None``) patient/cohort params are not known yet: the
    population takes its ``default`` meanwhile (or nothing) and is marked
    ``needs_borrowing`` so that pass 2 re-gates the sample.
    """
    flags = [reason]
    if not method.borrowable:
        return PopulationFit(None, "none", [*flags, FLAG_FAIL], reason)
    for fb in spec.fallback:
        if fb == "default" and spec.default:
            return PopulationFit(dict(spec.default), "default", [*flags, "default_gate"])
        if borrowed is None:
            if spec.default:
                return PopulationFit(
                    dict(spec.default), "default", [*flags, "needs_borrowing", "default_gate"]
                )
            return PopulationFit(None, "none", [*flags, "needs_borrowing", FLAG_FAIL], reason)
        params = (borrowed.get(spec.name) or {}).get(fb)
        if params:
            return PopulationFit(dict(params), fb, [*flags, f"borrowed_{fb}"])
    return PopulationFit(None, "none", [*flags, FLAG_FAIL], reason)


def _gate_path(args) -> SampleGating:
    inp, template, borrowed = args
    from .read import read_fcs

    try:
        fcs = read_fcs(inp.fcs_path)
        return gate_one(
            fcs, template, sample_id=inp.sample_id, patient_id=inp.patient_id, borrowed=borrowed
        )
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


def _map(fn, items, workers):
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items, chunksize=max(1, len(items) // (4 * workers))))


def gate_samples(
    samples: Sequence[SampleInput], template: Template, *, workers: int = 1
) -> list[SampleGating]:
    """Gate a cohort of one panel: pass 1 per sample, then borrowing where needed.

    Pass 1 gates every sample on its own. For each population, the params of
    samples whose fit was accepted are pooled per patient and over the cohort
    (medians). Pass 2 re-gates only the samples that need borrowing, with those
    pooled params, so their children are fitted on the corrected parent.
    Samples run in parallel (``workers`` processes); one sample's error is
    recorded in its result and costs no other sample its result.
    """
    first = _map(_gate_path, [(s, template, None) for s in samples], workers)
    ok_params: dict[str, dict[str, list[dict]]] = {}
    for res in first:
        for pop, fit in res.fits.items():
            if fit.source == "fit" and not fit.flags and fit.params:
                ok_params.setdefault(pop, {}).setdefault(res.patient_id, []).append(fit.params)
    cohort = {
        pop: _median_params([p for v in d.values() for p in v]) for pop, d in ok_params.items()
    }
    redo = []
    for i, res in enumerate(first):
        if any("needs_borrowing" in f.flags for f in res.fits.values()):
            borrowed = {}
            for pop in res.fits:
                pat = _median_params(ok_params.get(pop, {}).get(res.patient_id, []))
                borrowed[pop] = {"patient": pat, "cohort": cohort.get(pop)}
            redo.append((i, (samples[i], template, borrowed)))
    if redo:
        log.info("pass 2: %d of %d samples borrow gates", len(redo), len(samples))
        second = _map(_gate_path, [a for _, a in redo], workers)
        for (i, _), res in zip(redo, second, strict=True):
            first[i] = res
    _flag_outliers(first, template)
    return first


def _flag_outliers(results: list[SampleGating], template: Template, k: float = 4.0) -> None:
    """Flag samples whose fitted gate lies far from the cohort (``cohort_outlier``).

    For each population and each scalar of its params (thresholds, centres), a
    sample is an outlier when it is more than ``k`` robust SDs (MAD x 1.4826)
    from the cohort median.
    """
    for spec in template.populations:
        method = spec.estimator()
        vals: dict[str, list[tuple[int, float]]] = {}
        for i, r in enumerate(results):
            fit = r.fits.get(spec.name)
            if fit is None or not fit.params or fit.source != "fit":
                continue
            for key, v in method.thresholds(fit.params).items():
                vals.setdefault(key, []).append((i, v))
        for iv in vals.values():
            if len(iv) < 8:
                continue
            arr = np.array([v for _, v in iv])
            med = np.median(arr)
            mad = np.median(np.abs(arr - med)) * 1.4826
            if mad <= 0:
                continue
            for i, v in iv:
                if abs(v - med) > k * mad:
                    fit = results[i].fits[spec.name]
                    if "cohort_outlier" not in fit.flags:
                        fit.flags.append("cohort_outlier")
        for r in results:
            if r.table is not None:
                r.table["qc_flag"] = [r.flag(p) for p in r.table["population"]]


def strategy_for_file(template_path: str | Path, fcs) -> GatingStrategy:
    """Fit a template to one file on its own and return the realised strategy."""
    template = load_template(template_path)
    return gate_one(fcs, template, sample_id=Path(fcs.path).stem).strategy


def realised_params(results: list[SampleGating], template: Template):
    """Tidy table of every fitted number: ``sample_id, population, source, key, value``."""
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
                        "population": spec.name,
                        "source": fit.source,
                        "key": key,
                        "value": v,
                        "qc_flag": ";".join(fit.flags),
                    }
                )
    return pd.DataFrame(
        rows, columns=["sample_id", "patient_id", "population", "source", "key", "value", "qc_flag"]
    )
