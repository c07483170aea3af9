"""Time QC of one acquisition: remove only the anomalous stretches (PeacoQC/flowAI idea).

A clog, a burst of events or a sudden shift of the signals spoils a few percent of
an acquisition; the events before and after are good. :func:`anomalous_segments`
finds those stretches from the event times and the per-event signals and returns
the time intervals to *keep* (:class:`TimeQC`), which a caller turns into a gate on
the time channel.

Algorithm
---------
1. Sort the events by time. A *gap* is a spacing between consecutive events far
   longer than the local mean spacing (``gap_factor`` times, default 50, and at
   least three steps of the time resolution): a clog stops the flow, and its
   release is a burst of disturbed events.
2. Split the acquisition at the gaps, then cut each piece into bins of (nearly)
   equal numbers of events (:func:`default_bins`). Bin edges fall only between
   distinct time values, so ties in a ticked time channel never straddle a bin.
3. Per bin: the event rate (events per unit of time, the bin's duration measured
   between midpoints of neighbouring events, so a gap adds nothing to it) and the
   median of every signal channel.
4. Per statistic, a robust z-score of every bin against the file's centre. The
   rate is compared with the centre rate; a channel's median with the file's
   centre (median of the bin medians) through the fraction of the bin's events
   below that centre, which is above or below one half exactly when the bin's
   median is above or below the centre (a sign test: its sampling SD is
   ``0.5 / sqrt(m)`` whatever the channel's distribution, which a density-based
   ``1.2533 SD / sqrt(m)`` is not for a bimodal channel whose median lies in a
   valley). The scale is the robust SD of the bin statistics (from their shortest
   half, as robust as the MAD x 1.4826 but less inflated by a deviating third of
   the file), with each bin's sampling noise as its floor: Poisson for the rate,
   binomial for the fraction. A bin is anomalous when any ``|z| > k``; the first
   bin after a gap, where a clog releases, already at ``0.6 k``. Centre and scale
   are estimated again without the anomalous bins (up to three passes).
5. Runs of anomalous bins are merged into segments, absorbing good runs shorter
   than ``min_good_bins`` bins that lie between two anomalous bins.
6. Each boundary of a segment is refined to the event, by a change point within
   the segment's end bin and its good neighbour: for a segment flagged by signals,
   the extremum of a cumulative sign score of the flagging channels; for one
   flagged by rate alone, the maximum of a two-rate Poisson likelihood. A boundary
   on a gap stays on the gap. Segments are not widened by a margin bin: the change
   point already puts the edge where the acquisition changes, and a margin would
   cost up to a bin (1/20 of a small file) per boundary.

A slow drift widens the scale as it widens the spread of the bin statistics and
is kept (the extremes of a linear drift lie 1.35 robust SDs from its centre); a
step that holds up to about 40% of the file, or a burst, is removed.

Each kept interval is half-open, ``lo <= t < hi``, with every finite edge at the
midpoint between the two events it separates, so no edge coincides with an event
time whatever rounding a consumer applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TimeQC", "anomalous_segments", "default_bins"]

MIN_EVENTS = 100
"""Fewest events :func:`anomalous_segments` accepts."""

_SHORTH_SD = 1.349  # length of the shortest half of a normal sample, in SDs
_GAP_RESOLUTION_STEPS = 3.0  # a gap spans at least this many steps of the time resolution
_GAP_WINDOW = 50  # events on each side of a spacing used for its local mean spacing
_AFTER_GAP = 0.6  # the first bin after a gap is anomalous beyond this fraction of k
_PASSES = 3  # estimations of centre and scale, each without the bins found anomalous


@dataclass(frozen=True)
class TimeQC:
    """The result of :func:`anomalous_segments`.

    Attributes
    ----------
    keep
        Kept time intervals ``(lo, hi)``, half-open (``lo <= t < hi``), sorted and
        disjoint, in the units of the time values passed in. The first ``lo`` is
        ``-inf`` and the last ``hi`` is ``+inf`` unless the acquisition's start or
        end is removed. ``[(-inf, inf)]`` when nothing is anomalous.
    removed
        The removed time intervals ``(lo, hi)``, half-open, in time units: the
        complement of ``keep``. Empty when nothing is anomalous.
    removed_fraction
        Fraction (0..1) of the events that fall in a removed interval.
    bins
        Number of bins the acquisition was cut into.
    bad_bins
        Number of bins judged anomalous, including short good runs absorbed
        between anomalous bins.
    reasons
        One tuple per removed interval (same order as ``removed``): ``"gap"`` (the
        segment starts, ends or lies at a gap in time), ``"rate"`` (event rate) and
        ``"signal:<j>"`` (median of column ``j`` of ``signals``).
    gaps
        Every gap found, as ``(t_before, t_after)``: the times (time units) of the
        events on either side. A gap alone removes no event.
    """

    keep: list[tuple[float, float]]
    removed: list[tuple[float, float]] = field(default_factory=list)
    removed_fraction: float = 0.0
    bins: int = 0
    bad_bins: int = 0
    reasons: list[tuple[str, ...]] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)

    def mask(self, time) -> np.ndarray:
        """Which events are kept.

        Parameters
        ----------
        time
            ``(n,)`` event times, in the units the intervals were computed in.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` booleans, true for an event in a kept interval
            (``lo <= t < hi``, so ``+inf`` is never kept, nor is a NaN time).
        """
        t = np.asarray(time, dtype=float)
        edges = np.array([e for iv in self.keep for e in iv], dtype=float)
        # Edges <= t counted: odd inside a kept [lo, hi), even outside (NaN sorts last).
        return (np.searchsorted(edges, t, side="right") % 2) == 1


def default_bins(n: int) -> int:
    """The default number of bins for ``n`` events: ``n // 150`` within 20..300.

    At least 150 events per bin (as PeacoQC's ``min_cells``) keeps the median of
    a bin within about 0.1 within-bin SD and its rate within about 8% (Poisson), so
    a shift of half an SD or a rate change of 40% over a whole bin passes ``k = 5``.
    At most 300 bins keeps the per-bin work negligible on large files while a
    segment is still located to the event by the change-point refinement; at
    least 20 bins keeps the robust centre and MAD meaningful on small files.

    Parameters
    ----------
    n
        Number of events.

    Returns
    -------
    int
        Number of bins.
    """
    return int(min(300, max(20, n // 150)))


def anomalous_segments(
    time,
    signals,
    *,
    bins: int | None = None,
    k: float = 5.0,
    min_fraction: float = 0.5,
    gap_factor: float = 50.0,
    min_good_bins: int = 2,
) -> TimeQC:
    """Find the anomalous stretches of one acquisition (clogs, bursts, shifts).

    Parameters
    ----------
    time
        ``(n,)`` event times, in any unit (instrument ticks or seconds); ties are
        allowed and the order need not be the file's. A timer that wraps around
        must be unwrapped by the caller.
    signals
        ``(n, c)`` per-event values of the scatter and fluorescence channels, in a
        space where a median means something (logicle 0..1, scaled linear
        scatter...); ``c`` may be 0 (rate and gaps only).
    bins
        Number of bins wanted; ``None`` for :func:`default_bins`. Each stretch
        between gaps gets its share, in bins of nearly equal event counts (equal
        counts give every bin median the same precision, and a burst or a slow
        stretch shows as a bin's short or long duration). At least 5.
    k
        Threshold, in robust SDs, for a bin's rate or channel median to be anomalous.
    min_fraction
        Fewest fraction of events (0..1) that must remain: when more is anomalous
        the file has no steady state to compare with, and ``ValueError`` is raised.
    gap_factor
        A spacing between consecutive events longer than this many local mean
        spacings (the mean over the 50 spacings on each side, the gap excluded) is
        a gap. Poisson spacings exceed 50 means with probability ``exp(-50)``.
    min_good_bins
        Runs of fewer good bins than this between two anomalous bins are removed.

    Returns
    -------
    TimeQC
        Kept and removed intervals (time units), removed fraction and reasons.

    Raises
    ------
    ValueError
        Fewer than 100 events, a constant or non-finite time channel, non-finite
        signals, mismatched shapes, a bad parameter, or less than ``min_fraction``
        of the events steady.
    """
    t = np.asarray(time, dtype=float)
    x = np.asarray(signals, dtype=float)
    if t.ndim != 1:
        raise ValueError(f"time must be one-dimensional, not of shape {t.shape}")
    n = len(t)
    if x.ndim == 1 and len(x) == 0:
        x = x.reshape(n, 0)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"signals must have shape ({n}, c), not {x.shape}")
    if n < MIN_EVENTS:
        raise ValueError(f"too few events for time QC: {n} (at least {MIN_EVENTS})")
    if not np.isfinite(t).all():
        raise ValueError("the time channel has non-finite values")
    if not np.isfinite(x).all():
        raise ValueError("signals have non-finite values")
    if not k > 0:
        raise ValueError(f"k must be positive, not {k}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be within 0..1, not {min_fraction}")
    if not gap_factor > 1:
        raise ValueError(f"gap_factor must exceed 1, not {gap_factor}")
    nb = default_bins(n) if bins is None else int(bins)
    if not 5 <= nb <= n // 2:
        raise ValueError(f"bins must be within 5..{n // 2} for {n} events, not {bins}")

    d = np.diff(t)
    disorder = np.count_nonzero(d < 0)
    if disorder == 0:
        ts, xs = t, x
    else:
        # Nearly sorted (the usual case): a merge sort is fastest; else a quicksort. The
        # order within ties does not matter: bins, counts and medians are over sets.
        order = np.argsort(t, kind="stable" if disorder < 0.01 * n else "quicksort")
        ts, xs = t[order], x[order]
        d = np.diff(ts)
    if ts[-1] <= ts[0]:
        raise ValueError("the time channel is constant")
    # Cut positions i (between events i - 1 and i) where the time value changes.
    cuts = np.flatnonzero(d > 0) + 1
    resolution = float(d[cuts - 1].min())

    gap_at = _gaps(ts, d, cuts, resolution, gap_factor)
    starts = _bin_starts(n, nb, gap_at, cuts)
    ends = np.append(starts[1:], n)
    counts = ends - starts
    lo_t, hi_t = _bin_edges(ts, starts, ends, gap_at, resolution)
    duration = hi_t - lo_t
    nbins = len(starts)
    if nbins < 5:
        raise ValueError(
            f"the time channel has too few distinct values for time QC ({len(cuts) + 1})"
        )
    after_gap = np.isin(starts, gap_at)
    thr = np.where(after_gap, _AFTER_GAP * k, k)

    # Rate: the Poisson SD of the rate of a bin of duration T is sqrt(c / T), c the
    # centre rate; a bin at an end of the acquisition or at a gap also has a duration
    # uncertain by one step of the time resolution (the acquisition stops mid-tick).
    rate = counts / duration
    at_end = np.isin(starts, np.append(gap_at, 0)) | np.isin(ends, np.append(gap_at, n))
    unc = np.where(at_end, resolution, 0.0) / duration
    stats = [rate]
    noise = [lambda c: c / duration + (c * unc) ** 2]
    names = ["rate"]
    med = np.empty((0, nbins))
    centre = np.empty(0)
    if x.shape[1]:
        med = _bin_medians(xs, starts, ends)
        centre = np.median(med, axis=1)
        # A bin's median is above the file's centre exactly when fewer than half its
        # events are below it: the fraction below (ties count half) is the median's
        # deviation on a distribution-free scale, whose sampling SD is 0.5 / sqrt(m)
        # for any channel (1.2533 SD / sqrt(m) on the median's scale for a normal one,
        # but also right for a bimodal channel whose median lies in a valley).
        below, tied = _bin_below(xs, starts, centre)
        frac = (below + tied / 2) / counts
        for j in range(x.shape[1]):
            stats.append(frac[j])
            noise.append(lambda c: 0.25 / counts)
            names.append(f"signal:{j}")

    # Centre and scale from the bins not yet anomalous, until the verdicts settle: a
    # step over a third of the file inflates a first MAD, not the second.
    use = np.ones(nbins, dtype=bool)
    for _ in range(_PASSES):
        flag = np.array(
            [np.abs(_robust_z(v, f, use)) > thr for v, f in zip(stats, noise, strict=True)]
        )
        bad = flag.any(axis=0)
        if (~bad == use).all() or (~bad).sum() < nbins / 2:
            break
        use = ~bad

    # Absorb short good runs between two anomalous bins.
    segs = _runs(bad)
    for (_, e0), (s1, _) in zip(segs[:-1], segs[1:], strict=True):
        if s1 - e0 - 1 < min_good_bins:
            bad[e0 + 1 : s1] = True
    segs = _runs(bad)

    gap_set = set(gap_at.tolist())
    # Time of the edge of a window starting or ending on a bin edge (at a gap, the
    # bins either side have different edges; a window never straddles a gap).
    edge_at = dict(zip(ends.tolist(), hi_t.tolist(), strict=True))
    edge_at.update(zip(starts.tolist(), lo_t.tolist(), strict=True))
    ranges: list[list] = []
    for s, e in segs:
        a, b = int(starts[s]), int(ends[e])
        why = {names[i] for i in np.flatnonzero(flag[:, s : e + 1].any(axis=1))}
        chans = [i - 1 for i in range(1, len(names)) if flag[i, s : e + 1].any()]
        core = np.median(med[:, s : e + 1], axis=1) if chans else None
        mid = _nearest_cut(cuts, (a + b) // 2, a, b)

        def refine(wa, wb, rising, chans=chans, core=core):
            if chans:
                return _change_point(xs, cuts, wa, wb, chans, centre, core, rising=rising)
            t0 = edge_at.get(wa, (ts[wa - 1] + ts[wa]) / 2)
            t1 = edge_at.get(wb, (ts[wb - 1] + ts[wb]) / 2)
            return _rate_change_point(ts, cuts, wa, wb, t0, t1)

        # A segment is flagged by some channel or by the rate: refine by what flagged it.
        if s > 0 and a not in gap_set:
            a = refine(int(starts[s - 1]), max(min(int(ends[s]), mid), a), True)
        if e < nbins - 1 and b not in gap_set:
            b = refine(min(max(int(starts[e]), mid), b), int(ends[e + 1]), False)
        if any(a <= g <= b for g in gap_set):
            why.add("gap")
        if b <= a:
            continue
        if ranges and a <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], b)
            ranges[-1][2] |= why
        else:
            ranges.append([a, b, why])

    removed_events = sum(b - a for a, b, _ in ranges)
    if n - removed_events < min_fraction * n:
        raise ValueError(
            f"only {1 - removed_events / n:.0%} of the events are steady in time "
            f"(at least {min_fraction:.0%} needed): no steady state to compare with"
        )

    def edge(i: int) -> float:
        if i <= 0:
            return -math.inf
        if i >= n:
            return math.inf
        lo, hi = ts[i - 1], ts[i]
        m = lo + (hi - lo) / 2
        # Adjacent floats have no midpoint; hi is then the exact half-open edge.
        return float(m if lo < m < hi else hi)

    removed = [(edge(a), edge(b)) for a, b, _ in ranges]
    keep, prev = [], -math.inf
    for lo, hi in removed:
        if lo > prev:
            keep.append((prev, lo))
        prev = hi
    if prev < math.inf:
        keep.append((prev, math.inf))
    order_key = {"gap": 0, "rate": 1}
    reasons = [
        tuple(sorted(why, key=lambda r: (order_key.get(r, 2), len(r), r))) for _, _, why in ranges
    ]
    return TimeQC(
        keep=keep,
        removed=removed,
        removed_fraction=removed_events / n,
        bins=nbins,
        bad_bins=int(bad.sum()),
        reasons=reasons,
        gaps=[(float(ts[g - 1]), float(ts[g])) for g in gap_at],
    )


# --------------------------------------------------------------------------- helpers


def _gaps(ts, d, cuts, resolution, gap_factor) -> np.ndarray:
    """Cut positions ``i`` where the spacing ``ts[i] - ts[i - 1]`` is a gap.

    A gap is longer than ``gap_factor`` local mean spacings (the mean over
    ``_GAP_WINDOW`` events on each side, the spacing itself excluded) and than
    ``_GAP_RESOLUTION_STEPS`` steps of the time resolution (so that an empty tick
    of a ticked time channel at a high event rate is not a gap).
    """
    n = len(ts)
    # Candidates first, cheaply: longer than a tenth of the threshold at the mean rate.
    span_mean = (ts[-1] - ts[0]) / (n - 1)
    cand = cuts[d[cuts - 1] > max(gap_factor * span_mean / 10, _GAP_RESOLUTION_STEPS * resolution)]
    if len(cand) == 0:
        return cand
    lo = np.maximum(cand - 1 - _GAP_WINDOW, 0)
    hi = np.minimum(cand + _GAP_WINDOW, n - 1)
    gap = ts[cand] - ts[cand - 1]
    local = (ts[hi] - ts[lo] - gap) / np.maximum(hi - lo - 1, 1)
    keep = gap > np.maximum(gap_factor * local, _GAP_RESOLUTION_STEPS * resolution)
    return cand[keep]


def _bin_starts(n, nb, gap_at, cuts) -> np.ndarray:
    """First event index of every bin: gaps are bin edges, each piece between gaps
    gets its share of ``nb`` bins of nearly equal counts, edges snapped to ``cuts``."""
    per_bin = n / nb
    cuts = np.concatenate([[0], cuts, [n]])
    bounds = np.concatenate([[0], gap_at, [n]])
    out = [bounds[:-1]]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        m = max(1, round((b - a) / per_bin))
        if m == 1:
            continue
        want = a + np.round(np.arange(1, m) * (b - a) / m).astype(np.int64)
        j = np.clip(np.searchsorted(cuts, want), 1, len(cuts) - 1)
        left, right = cuts[j - 1], cuts[j]
        snap = np.where(want - left <= right - want, left, right)
        out.append(snap[(snap > a) & (snap < b)])
    return np.unique(np.concatenate(out)).astype(np.int64)


def _bin_edges(ts, starts, ends, gap_at, resolution):
    """Start and end time of every bin (time units).

    Between two bins of one piece, the midpoint of the events either side; at the
    ends of a piece (acquisition ends and gaps), half a mean spacing of the piece
    (at least half the time resolution) beyond its outer events, so a gap adds
    nothing to a bin's duration.
    """
    n = len(ts)
    lo = np.empty(len(starts))
    hi = np.empty(len(starts))
    inner = starts > 0
    lo[inner] = (ts[starts[inner] - 1] + ts[starts[inner]]) / 2
    inner = ends < n
    hi[inner] = (ts[ends[inner] - 1] + ts[ends[inner]]) / 2
    bounds = np.concatenate([[0], gap_at, [n]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        spacing = (ts[b - 1] - ts[a]) / (b - a - 1) if b - a > 1 else resolution
        half = max(spacing, resolution) / 2
        lo[starts == a] = ts[a] - half
        hi[ends == b] = ts[b - 1] + half
    return lo, hi


def _robust_z(values, noise, use) -> np.ndarray:
    """Robust z-scores of bin statistics ``values``.

    Centre and scale come from the bins in ``use``, by the shortest half: the
    shortest interval holding half of those values, whose median is the centre and
    whose length / 1.349 the SD (both as the median and MAD for a normal sample).
    Unlike the MAD, the shortest half stays within the steady bins when a
    deviating stretch holds up to nearly half of them, and a smooth drift widens it
    as it widens the MAD. The variance of a bin is the excess between-bin variance
    (beyond the typical sampling variance) plus its own sampling variance
    ``noise(centre)``, so that sampling noise is the floor.
    """
    v = np.sort(values[use])
    h = len(v) // 2 + 1
    i = int(np.argmin(v[h - 1 :] - v[: len(v) - h + 1]))
    c = float(np.median(v[i : i + h]))
    var = noise(c)
    sd = (v[i + h - 1] - v[i]) / _SHORTH_SD
    excess = max(sd**2 - float(np.median(var[use])), 0.0)
    dev = values - c
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dev == 0, 0.0, dev / np.sqrt(excess + var))


def _bin_medians(xs, starts, ends) -> np.ndarray:
    """Median of every channel in every bin: ``(c, bins)``; ``xs`` is ``(n, c)``,
    events in time order."""
    med = np.empty((xs.shape[1], len(starts)))
    for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
        lo, hi = (e - s - 1) // 2, (e - s) // 2
        part = np.partition(xs[s:e], [lo, hi] if hi > lo else lo, axis=0)
        med[:, b] = (part[lo] + part[hi]) / 2
    return med


def _bin_below(xs, starts, centre):
    """Per channel and bin, the events below ``centre`` and equal to it: two
    ``(c, bins)`` integer arrays; ``xs`` is ``(n, c)``, events in time order."""

    def per_bin(hit):
        return np.add.reduceat(hit.view(np.uint8), starts, axis=0, dtype=np.int64).T

    tied = xs == centre
    tied = per_bin(tied) if tied.any() else np.zeros((xs.shape[1], len(starts)), np.int64)
    return per_bin(xs < centre), tied


def _change_point(xs, cuts, wa, wb, chans, centre, core, *, rising) -> int:
    """Where, within events ``wa:wb``, the signals change between good and anomalous.

    Each event scores, per channel that flagged the segment, +1 when it lies beyond
    the midpoint between the file's centre and the segment's median (on the
    segment's side) and -1 otherwise. ``rising`` (good then anomalous): the cut
    minimising the cumulative score before it; else the one maximising it. Only
    cuts between distinct times (``cuts``) and the window ends are candidates.
    """
    if wb <= wa:
        return wa
    block = xs[wa:wb, chans]
    c, g = centre[chans], core[chans]
    direction = np.sign(g - c)
    score = (direction * np.sign(block - (c + g) / 2)).sum(axis=1)
    cum = np.concatenate([[0.0], np.cumsum(score)])
    cand = _cuts_within(cuts, wa, wb)
    vals = cum[cand - wa]
    return int(cand[np.argmin(vals) if rising else np.argmax(vals)])


def _rate_change_point(ts, cuts, wa, wb, t0, t1) -> int:
    """Where, within events ``wa:wb`` spanning times ``t0..t1``, the event rate
    changes: the cut maximising the Poisson log-likelihood of two rates."""
    cand = _cuts_within(cuts, wa, wb)
    inside = cand[1:-1]
    at = np.concatenate([[t0], (ts[inside - 1] + ts[inside]) / 2, [t1]])
    n1, n2 = cand - wa, wb - cand
    d1, d2 = np.maximum(at - t0, 1e-300), np.maximum(t1 - at, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(n1 > 0, n1 * np.log(n1 / d1), 0.0) + np.where(
            n2 > 0, n2 * np.log(n2 / d2), 0.0
        )
    return int(cand[np.argmax(ll)])


def _nearest_cut(cuts, i, a, b) -> int:
    """The cut position nearest ``i`` within ``a..b`` (``a`` and ``b`` are cuts)."""
    cand = _cuts_within(cuts, a, b)
    return int(cand[np.argmin(np.abs(cand - i))])


def _cuts_within(cuts, a, b) -> np.ndarray:
    """``a``, the cut positions strictly between ``a`` and ``b``, and ``b``."""
    inside = cuts[np.searchsorted(cuts, a, side="right") : np.searchsorted(cuts, b, side="left")]
    return np.concatenate([[a], inside, [b]]).astype(np.int64)


def _runs(flag) -> list[tuple[int, int]]:
    """``(first, last)`` indices (inclusive) of every run of true values."""
    f = np.concatenate([[False], flag, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(f))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]
