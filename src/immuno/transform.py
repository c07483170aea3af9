"""Scale transforms, parameterised as Gating-ML 2.0 defines them.

Every transform maps channel values (raw or compensated, in the instrument's
linear units) to a display/gating scale and back:
``t.apply(x) -> y`` and ``t.inverse(y) -> x``, both vectorised over numpy arrays.
Gates and thresholds that name a transform live in the transformed space
(``y``); because every transform here is monotonic increasing, a 1-D threshold
``y0`` is equivalent to the raw threshold ``t.inverse(y0)``.

Logicle follows Parks, Roederer & Moore (2006) with the Gating-ML 2.0 scaling
(``y`` is 0..1 over the display range, ``y = 1`` at ``x = T``); ``Asinh`` is
Gating-ML's ``fasinh``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Transform", "Linear", "Logicle", "Asinh", "from_spec"]


class Transform:
    """Base class: a monotonic increasing map from channel values to a scale."""

    id: str = ""

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        """Parameters as a plain dict (the form read by :func:`from_spec`)."""
        raise NotImplementedError


@dataclass
class Linear(Transform):
    """Gating-ML ``flin``: ``y = (x + A) / (T + A)``.

    ``T`` is the top of scale in channel units; ``A`` the extra negative range.
    """

    T: float = 262144.0
    A: float = 0.0
    id: str = "linear"

    def apply(self, x):
        return (np.asarray(x, dtype=np.float64) + self.A) / (self.T + self.A)

    def inverse(self, y):
        return np.asarray(y, dtype=np.float64) * (self.T + self.A) - self.A

    def spec(self):
        return {"type": "linear", "T": self.T, "A": self.A}


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

    def apply(self, x):
        ln10 = math.log(10.0)
        x = np.asarray(x, dtype=np.float64)
        return (np.arcsinh(x * math.sinh(self.M * ln10) / self.T) + self.A * ln10) / (
            (self.M + self.A) * ln10
        )

    def inverse(self, y):
        ln10 = math.log(10.0)
        y = np.asarray(y, dtype=np.float64)
        return (
            np.sinh(y * (self.M + self.A) * ln10 - self.A * ln10)
            * self.T
            / math.sinh(self.M * ln10)
        )

    def spec(self):
        return {"type": "asinh", "T": self.T, "M": self.M, "A": self.A}


class Logicle(Transform):
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

    ``apply`` solves the biexponential ``x = B(y)`` for ``y`` with Halley
    iterations started from an accurate guess (relative error < 1e-12 after
    convergence); ``inverse`` is the closed form ``B(y)``.
    """

    def __init__(
        self,
        T: float = 262144.0,
        W: float = 0.5,
        M: float = 4.5,
        A: float = 0.0,
        id: str = "logicle",
    ):
        if not (T > 0 and M > 0 and W >= 0 and 2 * W <= M and -W <= A <= M - 2 * W):
            from .errors import ConfigError

            raise ConfigError(
                f"invalid logicle parameters T={T}, W={W}, M={M}, A={A}",
                field="transform",
                hint="need T > 0, M > 0, 0 <= W <= M/2 and -W <= A <= M - 2W",
            )
        self.T, self.W, self.M, self.A, self.id = float(T), float(W), float(M), float(A), id
        ln10 = math.log(10.0)
        w = self.W / (self.M + self.A)
        x2 = self.A / (self.M + self.A)
        x1 = x2 + w
        x0 = x2 + 2 * w
        b = (self.M + self.A) * ln10
        d = self._solve_d(b, w)
        c_a = math.exp(x0 * (b + d))
        mf_a = math.exp(b * x1) - c_a / math.exp(d * x1)
        a = self.T / ((math.exp(b) - mf_a) - c_a / math.exp(d))
        self._a, self._b, self._c, self._d, self._f = a, b, c_a * a, d, -mf_a * a
        self._x1 = x1
        self._w = w

    @staticmethod
    def _solve_d(b: float, w: float) -> float:
        """Solve ``2 (ln d - ln b) + w (b + d) = 0`` for ``d`` (bisection + Newton)."""
        if w == 0:
            return b
        lo, hi = 0.0, b
        d = b / 2
        for _ in range(200):
            d = 0.5 * (lo + hi)
            g = 2 * (math.log(d) - math.log(b)) + w * (b + d)
            if g > 0:
                hi = d
            else:
                lo = d
            if hi - lo < 1e-15 * b:
                break
        return d

    def _biexp(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d, f = self._a, self._b, self._c, self._d, self._f
        return a * np.exp(b * y) - c * np.exp(-d * y) + f

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64)
        x1 = self._x1
        refl = y < x1
        yy = np.where(refl, 2 * x1 - y, y)
        x = self._biexp(yy)
        return np.where(refl, -x, x)

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        neg = x < 0
        ax = np.abs(x)
        a, b, c, d, f = self._a, self._b, self._c, self._d, self._f
        x1 = self._x1
        # Initial guess: the log branch for large values, linear near zero.
        big = ax > a * math.exp(b * x1) * 4
        y = np.where(
            big,
            np.log(np.maximum(ax - f, 1e-300) / a) / b,
            x1 + ax / max(a * b * math.exp(b * x1) + c * d * math.exp(-d * x1), 1e-300),
        )
        for _ in range(40):
            ae = a * np.exp(b * y)
            ce = c * np.exp(-d * y)
            fy = ae - ce + f - ax
            d1 = b * ae + d * ce
            d2 = b * b * ae - d * d * ce
            step = 2 * fy * d1 / (2 * d1 * d1 - fy * d2)
            y = y - step
            if np.all(np.abs(step) <= 1e-13 * np.maximum(1.0, np.abs(y))):
                break
        return np.where(neg, 2 * x1 - y, y)

    def spec(self):
        return {"type": "logicle", "T": self.T, "W": self.W, "M": self.M, "A": self.A}

    def __repr__(self) -> str:
        return f"Logicle(T={self.T:g}, W={self.W:g}, M={self.M:g}, A={self.A:g})"


def from_spec(spec: dict, id: str | None = None) -> Transform:
    """Build a transform from ``{"type": "logicle"|"asinh"|"linear", ...params}``."""
    from .errors import ConfigError

    spec = dict(spec)
    kind = str(spec.pop("type", "logicle")).lower()
    classes = {"logicle": Logicle, "asinh": Asinh, "arcsinh": Asinh, "linear": Linear}
    if kind not in classes:
        raise ConfigError(
            f"unknown transform type {kind!r}",
            field="transform",
            hint=f"use one of {sorted(classes)}",
        )
    try:
        t = classes[kind](**{k: float(v) for k, v in spec.items()})
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {kind}: {exc}", field="transform") from None
    if id:
        t.id = id
    return t
