"""Scale transforms, parameterised as Gating-ML 2.0 (and FlowJo 10) define them.

Every transform maps channel values (raw or compensated, in the instrument's
linear units) to a display/gating scale and back:
``t.apply(x) -> y`` and ``t.inverse(y) -> x``, both vectorised over numpy arrays.
Gates and thresholds that name a transform live in the transformed space
(``y``); because every transform here is monotonic increasing, a 1-D threshold
``y0`` is equivalent to the raw threshold ``t.inverse(y0)``.

Gating-ML 2.0 transforms: :class:`Linear` (``flin``), :class:`Log` (``flog``),
:class:`Asinh` (``fasinh``), :class:`Logicle` (``logicle``, Parks, Roederer &
Moore 2006 with the Gating-ML scaling: ``y`` is 0..1 over the display range,
``y = 1`` at ``x = T``), :class:`Hyperlog` (``hyperlog``, Bagwell 2005) and
:class:`Ratio` (``fratio``, a new dimension made of two channels: ``apply``
takes an ``(n, 2)`` array of numerator and denominator values).

A Gating-ML transformation may be *bounded*: ``bound_min``/``bound_max``
(``boundMin``/``boundMax``) clamp its result. ``apply`` is the pure function;
:meth:`Transform.scale` is ``apply`` followed by the clamp, which is what a gate
dimension sees.

FlowJo 10 transforms that are not Gating-ML ones: :class:`FlowJoLog` and
:class:`FlowJoBiex` (FlowJo's lookup-table biexponential). Both map the display
range onto 0..1 like the Gating-ML transforms.

Fast approximations (for the gating engine's fast path, :mod:`immuno.gate`):
``t.approx(x, x_max) -> (y, err)`` returns ``apply(x)`` up to a stated absolute
error bound ``err`` for ``|x| <= x_max`` (``None`` where a transform has none),
and ``t.lipschitz()`` a bound on the slope ``dy/dx`` (how far an error in ``x``
moves ``y``). Logicle, hyperlog and asinh interpolate in a table of exact values
(:class:`OddTable`); the engine decides an event from the approximation only when
it is farther than the bound from every gate boundary, and otherwise computes it
exactly, so these never change a gating result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Transform",
    "OddTable",
    "Linear",
    "Log",
    "Logicle",
    "Asinh",
    "Hyperlog",
    "Ratio",
    "FlowJoLog",
    "FlowJoBiex",
    "from_spec",
]

_LN10 = math.log(10.0)


class Transform:
    """Base class: a monotonic increasing map from channel values to a scale.

    ``bound_min``/``bound_max`` (``None``: unbounded) clamp the result in
    :meth:`scale`. ``n_inputs`` is the number of channels the transform reads
    (2 for :class:`Ratio`, 1 otherwise).
    """

    id: str = ""
    bound_min: float | None = None
    bound_max: float | None = None
    n_inputs: int = 1

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        """Parameters as a plain dict (the form read by :func:`from_spec`)."""
        raise NotImplementedError

    def bound(self, y: np.ndarray) -> np.ndarray:
        """Clamp transformed values to ``[bound_min, bound_max]`` (Gating-ML bounds)."""
        if self.bound_min is None and self.bound_max is None:
            return y
        y = np.asarray(y, dtype=np.float64)
        lo = -np.inf if self.bound_min is None else self.bound_min
        hi = np.inf if self.bound_max is None else self.bound_max
        # np.clip keeps NaN as NaN: an undefined value stays outside every gate.
        return np.clip(y, lo, hi)

    def scale(self, x: np.ndarray) -> np.ndarray:
        """``apply`` then ``bound``: the values a gate on this transform compares."""
        return self.bound(self.apply(x))

    def lipschitz(self) -> float | None:
        """An upper bound of ``dy/dx`` over all ``x`` (``None``: unbounded or unknown)."""
        return None

    def approx(self, x: np.ndarray, x_max: float) -> tuple[np.ndarray, float] | None:
        """Fast ``apply(x)`` for ``|x| <= x_max``: ``(y, err)`` with ``|y - apply(x)| <= err``.

        ``y`` is float64 of ``x``'s shape; ``None`` when the transform has no fast
        form (the caller then uses :meth:`apply`). ``err`` is a bound on the
        difference from the exact function (including the few-ulp error of
        :meth:`apply` itself), valid for finite ``x`` within ``x_max``.
        """
        return None

    def with_bounds(self, bound_min: float | None, bound_max: float | None) -> Transform:
        """Set the bounds (in place) and return ``self``."""
        self.bound_min = None if bound_min is None else float(bound_min)
        self.bound_max = None if bound_max is None else float(bound_max)
        return self

    def _bounds_spec(self) -> dict:
        out = {}
        if self.bound_min is not None:
            out["bound_min"] = self.bound_min
        if self.bound_max is not None:
            out["bound_max"] = self.bound_max
        return out


@dataclass
class Linear(Transform):
    """Gating-ML ``flin``: ``y = (x + A) / (T + A)``.

    ``T`` is the top of scale in channel units; ``A`` the extra negative range.
    """

    T: float = 262144.0
    A: float = 0.0
    id: str = "linear"

    def __post_init__(self):
        _check_finite("linear", T=self.T, A=self.A)
        if not (self.T > 0 and self.T + self.A > 0):
            _invalid("linear", f"T={self.T}, A={self.A}", "need T > 0 and T + A > 0")

    def apply(self, x):
        return (np.asarray(x, dtype=np.float64) + self.A) / (self.T + self.A)

    def inverse(self, y):
        return np.asarray(y, dtype=np.float64) * (self.T + self.A) - self.A

    def lipschitz(self):
        span = abs(self.T + self.A)
        return None if span == 0 else 1.0 / span

    def approx(self, x, x_max):
        span = abs(self.T + self.A)
        if span == 0 or not math.isfinite(x_max):
            return None
        x = np.asarray(x)
        top = (x_max + abs(self.A)) / span + 1
        if x.dtype == np.float32:
            # The same expression in float32: a few float32 ulp of the largest y.
            y = x + np.float32(self.A)
            y *= np.float32(1.0 / (self.T + self.A))
            return y, 8 * float(np.finfo(np.float32).eps) * top
        # The same expression as apply: only rounding (a few ulp of the largest y) differs.
        return self.apply(x), 8 * np.finfo(np.float64).eps * top

    def spec(self):
        return {"type": "linear", "T": self.T, "A": self.A, **self._bounds_spec()}


@dataclass
class Log(Transform):
    """Gating-ML ``flog``: ``y = log10(x / T) / M + 1``.

    ``T`` the top of scale (channel units), ``M`` decades mapped onto 0..1.
    Undefined for ``x <= 0``: ``x = 0`` gives ``-inf``, negative values NaN
    (outside every gate).
    """

    T: float = 262144.0
    M: float = 4.5
    id: str = "log"

    def __post_init__(self):
        _check_finite("log", T=self.T, M=self.M)
        if not (self.T > 0 and self.M > 0):
            _invalid("log", f"T={self.T}, M={self.M}", "need T > 0 and M > 0")

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(x / self.T) / self.M + 1.0

    def inverse(self, y):
        return self.T * 10.0 ** ((np.asarray(y, dtype=np.float64) - 1.0) * self.M)

    def spec(self):
        return {"type": "log", "T": self.T, "M": self.M, **self._bounds_spec()}


@dataclass
class Asinh(Transform):
    """Gating-ML ``fasinh``.

    ``y = (asinh(x * sinh(M ln10) / T) + A ln10) / ((M + A) ln10)``: ``T`` the top
    of scale (channel units), ``M`` decades of the full scale, ``A`` decades of
    extra negative range. ``y = 1`` at ``x = T``.
    """

    T: float = 262144.0
    M: float = 4.5
    A: float = 0.0
    id: str = "asinh"

    def __post_init__(self):
        _check_finite("asinh", T=self.T, M=self.M, A=self.A)
        if not (self.T > 0 and self.M > 0 and self.M + self.A > 0):
            _invalid("asinh", f"T={self.T}, M={self.M}, A={self.A}", "need T > 0, M > 0, M + A > 0")

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        return (np.arcsinh(x * math.sinh(self.M * _LN10) / self.T) + self.A * _LN10) / (
            (self.M + self.A) * _LN10
        )

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64)
        return (
            np.sinh(y * (self.M + self.A) * _LN10 - self.A * _LN10)
            * self.T
            / math.sinh(self.M * _LN10)
        )

    def lipschitz(self):
        # dy/dx = k / ((M + A) ln10 sqrt(1 + (k x)^2)), largest at x = 0.
        k = math.sinh(self.M * _LN10) / self.T
        return k / ((self.M + self.A) * _LN10) * (1 + 1e-9)

    def approx(self, x, x_max):
        table = _odd_table(self, self.A / (self.M + self.A), x_max)
        return None if table is None else (table(x), table.error(np.asarray(x).dtype))

    def spec(self):
        return {"type": "asinh", "T": self.T, "M": self.M, "A": self.A, **self._bounds_spec()}


def _invalid(kind: str, values: str, hint: str) -> None:
    from .errors import ConfigError

    raise ConfigError(f"invalid {kind} parameters {values}", field="transform", hint=hint)


def _check_finite(kind: str, **values: float) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        _invalid(kind, ", ".join(f"{k}={v}" for k, v in bad.items()), "parameters must be finite")


def _check_scale(kind: str, values: str, *coefficients: float, ok: bool = True) -> None:
    """Refuse parameters whose scale overflows: each coefficient must be finite and ``ok``
    hold (e.g. a logicle of M = 1e308 decades has e^(M ln 10) = inf, and no value maps
    anywhere)."""
    if not (ok and all(math.isfinite(c) for c in coefficients)):
        _invalid(
            kind,
            values,
            "they give no finite scale (too many decades or too wide a range for 64-bit "
            "floats); real displays span 2-10 decades",
        )


def _check_tWMA(kind: str, T: float, W: float, M: float, A: float) -> None:
    _check_finite(kind, T=T, W=W, M=M, A=A)
    if not (T > 0 and M > 0 and W >= 0 and 2 * W <= M and -W <= A <= M - 2 * W):
        from .errors import ConfigError

        raise ConfigError(
            f"invalid {kind} parameters T={T}, W={W}, M={M}, A={A}",
            field="transform",
            hint="need T > 0, M > 0, 0 <= W <= M/2 and -W <= A <= M - 2W",
        )


def _solve_increasing(f, df, target, lo, hi, y0, *, d2f=None, max_iter: int = 200) -> np.ndarray:
    """Solve ``f(y) = target`` for ``y`` in ``[lo, hi]``, element-wise.

    ``f`` must be increasing with ``f(lo) <= target <= f(hi)``. Halley steps
    (Newton when ``d2f`` is None) that would leave the current bracket are
    replaced by bisection, so the iteration always converges; an element stops
    when its step or its bracket is a few ulp wide. Vectorised: every iteration
    is a handful of array operations on the elements not converged yet (from a
    good starting point, 3-6 iterations).
    """
    y = np.clip(np.asarray(y0, dtype=np.float64), lo, hi)
    lo = np.array(lo, dtype=np.float64, copy=True)
    hi = np.array(hi, dtype=np.float64, copy=True)
    target = np.asarray(target, dtype=np.float64)
    eps4 = 4 * np.finfo(np.float64).eps
    active = np.arange(y.size)
    for _ in range(max_iter):
        if active.size == 0:
            break
        ya, la, ha = y[active], lo[active], hi[active]
        g = f(ya) - target[active]
        d1 = df(ya)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if d2f is None:
                step = g / d1
            else:
                step = g / (d1 * (1.0 - g * d2f(ya) / (2.0 * d1 * d1)))
        above = g > 0
        ha = np.where(above, ya, ha)
        la = np.where(above, la, ya)
        yn = ya - step
        tol = eps4 * np.maximum(1.0, np.abs(ya))
        small = np.abs(step) <= tol
        bad = ~small & (~np.isfinite(yn) | (yn < la) | (yn > ha))
        yn = np.where(bad, 0.5 * (la + ha), yn)
        done = (g == 0) | small | (ha - la <= tol)
        y[active] = np.where(g == 0, ya, yn)
        lo[active], hi[active] = la, ha
        active = active[~done]
    return y


class _MirroredAtX1(Transform):
    """Base of the biexponential-type scales, odd-symmetric about their ``_x1``: their
    fast approximation is a lookup table over one half (see :func:`_odd_table`)."""

    _x1: float
    #: The Gating-ML type name written by :meth:`spec`.
    _type: str

    def approx(self, x, x_max):
        table = _odd_table(self, self._x1, x_max)
        return None if table is None else (table(x), table.error(np.asarray(x).dtype))

    def spec(self):
        return {
            "type": self._type,
            "T": self.T,
            "W": self.W,
            "M": self.M,
            "A": self.A,
            **self._bounds_spec(),
        }


class Logicle(_MirroredAtX1):
    """Logicle (biexponential) transform, Gating-ML 2.0 parameterisation.

    Parameters
    ----------
    T
        Top of scale, channel units (e.g. 262144 for an 18-bit instrument).
    W
        Width of the linear region near zero, in decades.
    M
        Decades of the full display scale (typically 4.5).
    A
        Additional decades of negative range (usually 0).

    ``inverse`` is the closed form ``x = B(y) = a e^(by) - c e^(-dy) - f``
    (reflected about ``x1``, where ``B(x1) = 0``, for negative ``x``); ``apply``
    solves ``B(y) = |x|`` on ``y >= x1`` by Newton steps safeguarded by bisection
    (converged to a few ulp for every finite input).
    """

    _type = "logicle"

    def __init__(
        self,
        T: float = 262144.0,
        W: float = 0.5,
        M: float = 4.5,
        A: float = 0.0,
        id: str = "logicle",
    ):
        _check_tWMA("logicle", T, W, M, A)
        self.T, self.W, self.M, self.A, self.id = float(T), float(W), float(M), float(A), id
        w = self.W / (self.M + self.A)
        x2 = self.A / (self.M + self.A)
        x1 = x2 + w
        x0 = x2 + 2 * w
        b = (self.M + self.A) * _LN10
        d = self._solve_d(b, w)
        c_a = math.exp(x0 * (b + d))
        mf_a = math.exp(b * x1) - c_a / math.exp(d * x1)
        a = self.T / ((math.exp(b) - mf_a) - c_a / math.exp(d))
        self._a, self._b, self._c, self._d, self._f = a, b, c_a * a, d, -mf_a * a
        _check_scale(
            "logicle", f"T={T}, W={W}, M={M}, A={A}", a, b, c_a * a, d, -mf_a * a, ok=a > 0
        )
        self._x1 = x1
        self._w = w

    @staticmethod
    def _solve_d(b: float, w: float) -> float:
        """Solve ``2 (ln d - ln b) + w (b + d) = 0`` for ``d`` (bisection to 1 ulp)."""
        if w == 0:
            return b
        lo, hi = 0.0, b
        d = b / 2
        for _ in range(2000):
            d = 0.5 * (lo + hi)
            if d in (lo, hi):
                break
            g = 2 * (math.log(d) - math.log(b)) + w * (b + d)
            if g > 0:
                hi = d
            else:
                lo = d
        return d

    def _biexp(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d, f = self._a, self._b, self._c, self._d, self._f
        return a * np.exp(b * y) - c * np.exp(-d * y) + f

    def _dbiexp(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d = self._a, self._b, self._c, self._d
        return a * b * np.exp(b * y) + c * d * np.exp(-d * y)

    def _d2biexp(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d = self._a, self._b, self._c, self._d
        return a * b * b * np.exp(b * y) - c * d * d * np.exp(-d * y)

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64)
        x1 = self._x1
        refl = y < x1
        yy = np.where(refl, 2 * x1 - y, y)
        x = self._biexp(yy)
        return np.where(refl, -x, x)

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        shape = x.shape
        flat = x.ravel()
        ax = np.abs(flat)
        a, b, c, f = self._a, self._b, self._c, self._f
        x1 = self._x1
        # Bracket: B(x1) = 0 <= |x|, and a e^(b hi) >= |x| + |f| + c gives B(hi) >= |x|.
        lo = np.full(ax.shape, x1)
        hi = np.maximum(np.log((ax + abs(f) + c) / a) / b, max(x1, 0.0))
        hi = np.maximum(hi, x1)
        # Start from the linear approximation near zero, the logarithm above.
        with np.errstate(divide="ignore"):
            y0 = np.where(
                ax < -f,
                x1 + ax / float(self._dbiexp(np.array(x1))),
                np.log(np.maximum(ax, 1e-300) / a) / b,
            )
        y = _solve_increasing(self._biexp, self._dbiexp, ax, lo, hi, y0, d2f=self._d2biexp)
        y = np.where(flat < 0, 2 * x1 - y, y)
        y = np.where(np.isnan(flat), np.nan, y)
        return y.reshape(shape)

    def lipschitz(self):
        # dy/dx = 1 / B'(y) on y >= x1 (mirrored below); B' = a b e^(by) + c d e^(-dy) is
        # convex with its minimum at ln(c d^2 / (a b^2)) / (b + d), or at x1 if that is lower.
        a, b, c, d = self._a, self._b, self._c, self._d
        y_min = self._x1
        if c > 0 and d > 0:
            y_min = max(y_min, math.log(c * d * d / (a * b * b)) / (b + d))
        slope = float(self._dbiexp(np.array(y_min)))
        return None if not slope > 0 else (1.0 / slope) * (1 + 1e-9)

    def __repr__(self) -> str:
        return f"Logicle(T={self.T:g}, W={self.W:g}, M={self.M:g}, A={self.A:g})"


class Hyperlog(_MirroredAtX1):
    """Hyperlog transform (Bagwell 2005), Gating-ML 2.0 parameterisation.

    ``x = EH(y) = a e^(by) + c y - f`` for ``y >= x1`` and ``EH(y) = -EH(2 x1 - y)``
    below (``EH(x1) = 0``); ``a, b, c, f`` follow from ``T, W, M, A`` as the
    Gating-ML 2.0 specification defines (``w = W/(M+A)``, ``x2 = A/(M+A)``,
    ``x1 = x2 + w``, ``x0 = x2 + 2w``, ``b = (M+A) ln10``, ``c/a = e^(b x0)/w``,
    ``f/a = e^(b x1) + (c/a) x1``, ``a = T / (e^b + c/a - f/a)``). ``y = 1`` at
    ``x = T``. ``apply`` solves ``EH(y) = |x|`` like :class:`Logicle`.
    """

    _type = "hyperlog"

    def __init__(
        self,
        T: float = 262144.0,
        W: float = 0.5,
        M: float = 4.5,
        A: float = 0.0,
        id: str = "hyperlog",
    ):
        _check_tWMA("hyperlog", T, W, M, A)
        if W <= 0:
            from .errors import ConfigError

            raise ConfigError(
                f"invalid hyperlog parameters T={T}, W={W}, M={M}, A={A}",
                field="transform",
                hint="hyperlog needs W > 0",
            )
        self.T, self.W, self.M, self.A, self.id = float(T), float(W), float(M), float(A), id
        w = self.W / (self.M + self.A)
        x2 = self.A / (self.M + self.A)
        x1 = x2 + w
        x0 = x2 + 2 * w
        b = (self.M + self.A) * _LN10
        c_a = math.exp(b * x0) / w
        f_a = math.exp(b * x1) + c_a * x1
        a = self.T / (math.exp(b) + c_a - f_a)
        self._a, self._b, self._c, self._f, self._x1 = a, b, c_a * a, f_a * a, x1
        _check_scale("hyperlog", f"T={T}, W={W}, M={M}, A={A}", a, b, c_a * a, f_a * a)

    def _eh(self, y: np.ndarray) -> np.ndarray:
        return self._a * np.exp(self._b * y) + self._c * y - self._f

    def _deh(self, y: np.ndarray) -> np.ndarray:
        return self._a * self._b * np.exp(self._b * y) + self._c

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64)
        x1 = self._x1
        refl = y < x1
        x = self._eh(np.where(refl, 2 * x1 - y, y))
        return np.where(refl, -x, x)

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        shape = x.shape
        flat = x.ravel()
        ax = np.abs(flat)
        x1 = self._x1
        lo = np.full(ax.shape, x1)
        # EH is convex: its tangent at x1 lies below it, so x1 + |x| / EH'(x1) is
        # an upper bound of the root; so is log((|x| + f) / a) / b when it is >= 0
        # (there EH = |x| + c y >= |x|). Newton from an upper bound of a convex
        # increasing function converges monotonically.
        hi = x1 + ax / float(self._deh(np.array(x1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            y_log = np.log((ax + self._f) / self._a) / self._b
        hi = np.where(y_log >= max(x1, 0.0), np.minimum(hi, y_log), hi)
        y = _solve_increasing(
            self._eh,
            self._deh,
            ax,
            lo,
            hi,
            hi,
            d2f=lambda y: self._a * self._b**2 * np.exp(self._b * y),
        )
        y = np.where(flat < 0, 2 * x1 - y, y)
        y = np.where(np.isnan(flat), np.nan, y)
        return y.reshape(shape)

    def lipschitz(self):
        # EH' = a b e^(by) + c is increasing on y >= x1: its minimum is at x1.
        slope = float(self._deh(np.array(self._x1)))
        return None if not slope > 0 else (1.0 / slope) * (1 + 1e-9)

    def __repr__(self) -> str:
        return f"Hyperlog(T={self.T:g}, W={self.W:g}, M={self.M:g}, A={self.A:g})"


class OddTable:
    """Piecewise-linear table of a transform that is odd about ``(0, center)``.

    The interval of ``x`` is read from the top 16 bits of its float32 pattern
    (sign, exponent and 7 mantissa bits: 128 intervals per octave), one shift and
    no search; on each interval ``y = slope * x + offset`` (for ``x < 0`` the
    mirror image, ``y(-x) = 2 center - y(x)``, folded into the offsets), so a
    value costs two table reads, a multiply and an add. The nodes are ``0`` and
    the float32 numbers ``2^e (1 + i/128)`` for ``e`` from -8 up to the octave
    holding ``x_max``; ``|x| < 2^-8`` uses the chord from 0. Node values are the
    transform's exact ``apply``.

    :meth:`error` bounds ``|table(x) - apply(x)|`` for finite ``|x| <= x_max``:
    twice the largest interpolation error measured at the middle of every
    interval (the error of linear interpolation of a smooth function peaks near
    the middle), plus the rounding of ``apply`` and of the interpolation itself
    (float32 arithmetic for float32 ``x``, half the memory traffic).
    """

    MANTISSA_BITS = 7
    MIN_EXPONENT = -8

    def __init__(self, transform: Transform, center: float, x_max: float):
        m, e_min = self.MANTISSA_BITS, self.MIN_EXPONENT
        e_max = max(math.frexp(max(x_max, 1.0))[1], e_min + 1)  # 2^e_max > x_max
        if e_max > 127:
            raise ValueError("x_max beyond float32")
        self.shift = 23 - m
        first = (127 + e_min) << m  # (float32 bits >> shift) of 2^e_min
        k = (e_max - e_min) << m  # intervals above 2^e_min
        bits = ((np.arange(k + 1, dtype=np.int64) + first) << self.shift).astype(np.int32)
        nodes = np.concatenate([[0.0], bits.view(np.float32).astype(np.float64)])
        g = transform.apply(nodes) - center
        mid = 0.5 * (nodes[:-1] + nodes[1:])
        slope = np.diff(g) / np.diff(nodes)
        chord = g[:-1] + (mid - nodes[:-1]) * slope
        interp_err = np.abs(chord - (transform.apply(mid) - center))
        intercept = g[:-1] - nodes[:-1] * slope  # y - center = intercept + slope |x|
        self.x_max = float(nodes[-1])
        self.center = float(center)
        # Index = top 16 bits: [0, 2^15) positive x, [2^15, 2^16) negative x.
        half = 1 << (31 - self.shift)
        pos = np.empty(half, dtype=np.int64)
        pos[: first + 1] = 0  # below 2^-8 (and 2^-8's own interval start): the chord
        pos[first : first + k] = np.arange(1, k + 1)
        pos[first + k :] = k  # beyond x_max: never used for |x| <= x_max
        s = slope[pos]
        c = intercept[pos]
        self.slope = np.concatenate([s, s])
        self.offset = np.concatenate([center + c, center - c])
        self.slope32 = self.slope.astype(np.float32)
        self.offset32 = self.offset.astype(np.float32)
        big = float(np.abs(g).max() + np.abs(intercept).max()) + abs(center) + 1
        self.err = 2.0 * float(interp_err.max()) + 16 * np.finfo(np.float64).eps * big
        # float32: the rounded table (slope x_max and offset), the product and the sum,
        # each within half an ulp of its magnitude, bounded by 8 ulp of big.
        big32 = float((np.abs(slope) * nodes[1:] + np.abs(intercept)).max()) + abs(center) + 1
        self.err32 = self.err + 8 * float(np.finfo(np.float32).eps) * big32

    def error(self, dtype) -> float:
        """Error bound of :meth:`__call__` for ``x`` of ``dtype``."""
        return self.err32 if np.dtype(dtype) == np.float32 else self.err

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Table value at ``x`` (finite, ``|x| <= x_max``): float32 for float32 ``x``."""
        x = np.asarray(x)
        single = x.dtype == np.float32
        x32 = x if single else x.astype(np.float32)
        i = x32.view(np.uint32) >> np.uint32(self.shift)
        if single:
            y = self.slope32.take(i)
            y *= x
            y += self.offset32.take(i)
            return y
        y = self.slope.take(i)
        y *= x
        y += self.offset.take(i)
        return y


def _odd_table(transform: Transform, center: float, x_max: float) -> OddTable | None:
    """The transform's cached :class:`OddTable` covering ``x_max`` (None if too wide)."""
    if not (math.isfinite(x_max) and x_max < 2.0**100):
        return None
    table = getattr(transform, "_odd_table_cache", None)
    if table is None or table.x_max < x_max:
        with np.errstate(over="ignore", invalid="ignore"):
            table = OddTable(transform, center, x_max)
        if not math.isfinite(table.err):
            return None
        transform._odd_table_cache = table
    return table


@dataclass
class Ratio(Transform):
    """Gating-ML ``fratio``: a new dimension ``y = A (x1 - B) / (x2 - C)``.

    ``numerator``/``denominator`` name the two channels (``$PnN``, or
    fluorochromes of a compensation matrix). ``apply`` takes an ``(n, 2)`` array
    of their (compensated) values; a zero denominator gives ``inf``/NaN, which
    no bounded gate contains. There is no inverse.
    """

    numerator: str = ""
    denominator: str = ""
    A: float = 1.0
    B: float = 0.0
    C: float = 0.0
    id: str = "ratio"
    n_inputs = 2

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.A * (x[:, 0] - self.B) / (x[:, 1] - self.C)

    def inverse(self, y):
        raise NotImplementedError("a ratio transform has no inverse")

    def spec(self):
        return {
            "type": "ratio",
            "numerator": self.numerator,
            "denominator": self.denominator,
            "A": self.A,
            "B": self.B,
            "C": self.C,
            **self._bounds_spec(),
        }


@dataclass
class FlowJoLog(Transform):
    """FlowJo 10 ``log``: ``y = (log10(max(x, offset)) - log10(offset)) / decades``.

    Values below ``offset`` (including zero and negatives) sit at 0.
    """

    offset: float = 1.0
    decades: float = 4.5
    id: str = "flowjo_log"

    def __post_init__(self):
        _check_finite("flowjo_log", offset=self.offset, decades=self.decades)
        if not (self.offset > 0 and self.decades > 0):
            _invalid("flowjo_log", f"offset={self.offset}, decades={self.decades}", "need both > 0")

    def apply(self, x):
        x = np.maximum(np.asarray(x, dtype=np.float64), self.offset)
        return (np.log10(x) - math.log10(self.offset)) / self.decades

    def inverse(self, y):
        return self.offset * 10.0 ** (np.asarray(y, dtype=np.float64) * self.decades)

    def spec(self):
        return {"type": "flowjo_log", "offset": self.offset, "decades": self.decades}


def _flowjo_biex_table(
    neg: float, width: float, pos: float, max_value: float, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """FlowJo's biex lookup table: data value at each channel ``0..channels``.

    FlowJo 10 does not evaluate its biex transform analytically: it tabulates a
    biexponential (``channels + 1`` points, FlowJo uses 4096 channels whatever
    the display ``length``) and interpolates linearly in that table. The
    construction follows the description of FlowJo's (TreeStar's) algorithm as
    published in cytolib's ``biexpTrans``: ``width`` is a negative "width basis"
    whose log10 is the width of the linear region in decades; the zero channel
    is placed so that ``neg`` extra decades fit below it; the negative side
    mirrors the positive side about the zero channel.

    Returns ``(values, channel)``, both increasing, ``channel`` in ``0..channels``.
    """
    w_dec = math.log10(-width) if width < 0 else 0.0
    decades = pos - w_dec / 2
    extra = max(neg, 0.0) + w_dec / 2
    zero = int(extra * channels / (extra + decades))
    zero = int(min(zero, channels / 2))
    if zero > 0:
        decades = extra * channels / zero
    w_frac = w_dec / (2 * decades)
    pos_range = _LN10 * decades
    minimum = max_value / math.exp(pos_range)
    # Negative range: root of 2 ln(d) + w d = 2 ln(p) - w p (the logicle "d").
    neg_range = Logicle._solve_d(pos_range, w_frac)
    n = channels + 1
    i = np.arange(n, dtype=np.float64)
    up = np.exp(i / n * pos_range)
    down = np.exp(i / n * -neg_range)
    down *= math.exp((pos_range + neg_range) * (w_frac + extra / decades))
    shift = up[zero] - down[zero]
    values = minimum * ((up - down) - shift)
    below = np.arange(zero)
    values[below] = -values[2 * zero - below]
    return values, i


class FlowJoBiex(Transform):
    """FlowJo 10 ``biex`` (lookup-table biexponential), scaled to 0..1.

    Parameters are the workspace's ``neg``, ``width`` (the negative "width
    basis", e.g. -10 or -100), ``pos`` (decades) and ``maxRange``. ``apply``
    interpolates linearly in FlowJo's 4096-channel table (see
    :func:`_flowjo_biex_table`) and divides by 4096; values beyond the table are
    clamped to its ends, as FlowJo does.
    """

    channels = 4096

    def __init__(
        self,
        neg: float = 0.0,
        width: float = -10.0,
        pos: float = 4.418540,
        max_value: float = 262144.0,
        id: str = "flowjo_biex",
    ):
        self.neg, self.width, self.pos = float(neg), float(width), float(pos)
        self.max_value, self.id = float(max_value), id
        values = f"neg={neg}, width={width}, pos={pos}, maxRange={max_value}"
        _check_finite("flowjo_biex", neg=self.neg, width=self.width, pos=self.pos)
        _check_finite("flowjo_biex", maxRange=self.max_value)
        if not (self.pos > 0 and self.max_value > 0):
            _invalid("flowjo_biex", values, "need pos > 0 and maxRange > 0")
        with np.errstate(all="ignore"):
            self._values, self._chan = _flowjo_biex_table(
                self.neg, self.width, self.pos, self.max_value, self.channels
            )
        increasing = bool((np.diff(self._values) > 0).all())
        _check_scale("flowjo_biex", values, *self._values[[0, -1]], ok=increasing)

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        return np.interp(x, self._values, self._chan) / self.channels

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64) * self.channels
        return np.interp(y, self._chan, self._values)

    def spec(self):
        return {
            "type": "flowjo_biex",
            "neg": self.neg,
            "width": self.width,
            "pos": self.pos,
            "max_value": self.max_value,
        }

    def __repr__(self) -> str:
        return (
            f"FlowJoBiex(neg={self.neg:g}, width={self.width:g}, pos={self.pos:g}, "
            f"max={self.max_value:g})"
        )


_CLASSES: dict[str, type] = {
    "logicle": Logicle,
    "asinh": Asinh,
    "arcsinh": Asinh,
    "fasinh": Asinh,
    "linear": Linear,
    "flin": Linear,
    "log": Log,
    "flog": Log,
    "hyperlog": Hyperlog,
    "ratio": Ratio,
    "fratio": Ratio,
    "flowjo_log": FlowJoLog,
    "flowjo_biex": FlowJoBiex,
}


def from_spec(spec: dict, id: str | None = None) -> Transform:
    """Build a transform from ``{"type": <kind>, ...params}``.

    Kinds: ``logicle``, ``asinh``, ``linear``, ``log``, ``hyperlog``, ``ratio``
    (``numerator``/``denominator`` channel names plus ``A, B, C``),
    ``flowjo_log``, ``flowjo_biex``. Optional ``bound_min``/``bound_max`` clamp
    the result (Gating-ML bounds).
    """
    from .errors import ConfigError

    spec = dict(spec)
    kind = str(spec.pop("type", "logicle")).lower()
    if kind not in _CLASSES:
        raise ConfigError(
            f"unknown transform type {kind!r}",
            field="transform",
            hint=f"use one of {sorted(_CLASSES)}",
        )
    bmin, bmax = spec.pop("bound_min", None), spec.pop("bound_max", None)
    kwargs = {}
    for k, v in spec.items():
        if k in ("numerator", "denominator"):
            kwargs[k] = str(v)
            continue
        try:
            kwargs[k] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(
                f"transform parameter {k}={v!r} is not a number", field="transform"
            ) from None
    try:
        t = _CLASSES[kind](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {kind}: {exc}", field="transform") from None
    if id:
        t.id = id
    if bmin is not None or bmax is not None:
        t.with_bounds(bmin, bmax)
    return t
