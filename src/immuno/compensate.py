"""Compensation: remove fluorescence spillover between detectors.

A spillover matrix ``S`` (rows: fluorochromes/sources, columns: detectors, each
row's own detector = 1) maps true intensities to observed detector values,
``observed = true @ S``. Compensation inverts it: ``true = observed @ inv(S)``
(or the pseudo-inverse, i.e. ordinary least squares unmixing, for a non-square
spectrum matrix with more detectors than sources). Values stay in the
instrument's linear channel units. Only the detectors named by the matrix change.

A matrix may also be given already inverted (Gating-ML's
``matrix-inverted-already``): then it *is* the ``(n_detectors, n_sources)``
unmixing matrix and is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PanelError

__all__ = ["Compensation", "compensate"]


@dataclass
class Compensation:
    """A spillover (or spectrum) matrix with the detector names it applies to.

    Attributes
    ----------
    detectors
        ``$PnN`` names of the detector columns of ``matrix``.
    matrix
        ``(n_sources, n_detectors)`` spillover fractions, rows are sources.
    fluorochromes
        Names of the rows (defaults to the detectors for a square matrix).
    id
        Identifier used by gates' dimensions (``"FCS"`` for the file's own matrix).
    inverted
        ``True`` when ``matrix`` is already the ``(n_detectors, n_sources)``
        unmixing matrix (Gating-ML ``matrix-inverted-already``) rather than a
        ``(n_sources, n_detectors)`` spillover/spectrum matrix.
    """

    detectors: list[str]
    matrix: np.ndarray
    fluorochromes: list[str] | None = None
    id: str = "FCS"
    inverted: bool = False

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        self.detectors = list(self.detectors)
        if self.fluorochromes is None:
            self.fluorochromes = list(self.detectors)
        self.fluorochromes = list(self.fluorochromes)
        if self.matrix.ndim != 2:
            raise PanelError(
                f"compensation matrix must be 2-D, got shape {self.matrix.shape}", field=self.id
            )
        if self.inverted:
            n_det, n_src = self.matrix.shape
        else:
            n_src, n_det = self.matrix.shape
        if n_det != len(self.detectors) or n_src != len(self.fluorochromes):
            raise PanelError(
                f"compensation matrix is {self.matrix.shape[0]}x{self.matrix.shape[1]} but names "
                f"{len(self.fluorochromes)} sources and {len(self.detectors)} detectors",
                field=self.id,
            )
        if not np.all(np.isfinite(self.matrix)):
            raise PanelError("compensation matrix holds a non-finite value", field=self.id)
        if self.inverted:
            self._unmix = self.matrix
        elif n_src == n_det:
            try:
                self._unmix = np.linalg.inv(self.matrix)
            except np.linalg.LinAlgError:
                raise PanelError(
                    "spillover matrix is singular and cannot be inverted",
                    field=self.id,
                    hint="check the matrix: a row or column may be duplicated or all zero",
                ) from None
        else:
            self._unmix = np.linalg.pinv(self.matrix)

    @property
    def unmixing(self) -> np.ndarray:
        """``(n_detectors, n_sources)`` matrix that compensates: ``observed @ unmixing``."""
        return self._unmix

    def columns(self, channels: list[str], *, file: str | None = None) -> list[int]:
        """Column indices of this matrix's detectors in an event matrix with ``channels``."""
        idx = []
        for det in self.detectors:
            try:
                idx.append(channels.index(det))
            except ValueError:
                raise PanelError(
                    f"compensation {self.id!r} names detector {det!r}, not in the file",
                    file=file,
                    field=det,
                    hint="the spillover matrix was made for another instrument or panel",
                ) from None
        return idx


def compensate(
    events: np.ndarray,
    channels: list[str],
    comp: Compensation,
    *,
    rows: np.ndarray | None = None,
    file: str | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """Compensated values of ``comp``'s sources for the chosen events.

    Parameters
    ----------
    events
        ``(n_events, n_channels)`` raw channel values.
    channels
        ``$PnN`` of the columns of ``events``.
    comp
        The spillover matrix.
    rows
        Indices of the events to compensate (``None``: all).

    Returns
    -------
    ndarray
        ``(n_rows, n_sources)`` compensated values (``dtype``, float32 by
        default; float64 where exact boundary semantics matter), in the order of
        ``comp.fluorochromes`` (for a square matrix, of ``comp.detectors``).
    """
    cols = comp.columns(channels, file=file)
    sub = events[:, cols] if rows is None else events[np.ix_(rows, cols)]
    return sub.astype(dtype, copy=False) @ comp.unmixing.astype(dtype)
