"""Tests of ``immuno.timeqc``: seeded synthetic acquisitions whose anomalies are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from immuno.timeqc import TimeQC, anomalous_segments, default_bins

RATE = 2000.0  # events per second
MEANS = np.array([0.3, 0.45, 0.5, 0.55, 0.6])  # logicle-like channel centres
SD = 0.08  # within-channel SD of the normal channels
OPEN = [(-math.inf, math.inf)]


def steady(rng, n, rate=RATE, t0=0.0):
    """``n`` Poisson arrivals after ``t0`` (seconds) with steady signals.

    Five normal channels and a sixth, bimodal one (40% positive) whose median lies
    in the tail of the negative population, where a median is most erratic.
    """
    t = t0 + np.cumsum(rng.exponential(1 / rate, n))
    x = np.empty((n, 6))
    x[:, :5] = rng.normal(MEANS, SD, (n, 5))
    pos = rng.random(n) < 0.4
    x[:, 5] = np.where(pos, rng.normal(0.75, 0.05, n), rng.normal(0.25, 0.05, n))
    return t, x


def clogged(rng, n, where, frac, gap=3.0):
    """A steady acquisition with a clog: a gap of ``gap`` seconds, then ``frac`` of
    the events at 3x the rate with channels 0-2 disturbed (0.5 x + 0.1), then steady.

    ``where`` is the fraction of the steady events before the clog (0: the file
    starts with the clog, 1: it ends with it). Returns times, signals and the truth
    (true for a clog event).
    """
    n_clog = round(frac * n)
    n_pre = round(where * (n - n_clog))
    t1, x1 = steady(rng, n_pre)
    tc, xc = steady(rng, n_clog, 3 * RATE, (t1[-1] if n_pre else 0.0) + gap)
    xc[:, :3] = 0.5 * xc[:, :3] + 0.1
    t2, x2 = steady(rng, n - n_clog - n_pre, RATE, tc[-1])
    truth = np.zeros(n, dtype=bool)
    truth[n_pre : n_pre + n_clog] = True
    return np.concatenate([t1, tc, t2]), np.concatenate([x1, xc, x2]), truth


def scores(qc, t, truth):
    """(fraction of the steady events kept, fraction of the anomalous ones removed)."""
    m = qc.mask(t)
    return m[~truth].mean(), (~m[truth]).mean()


def check_intervals(qc: TimeQC, t):
    """The invariants of a result: sorted, disjoint, complementary intervals whose
    finite edges lie strictly between event times, and a mask that agrees."""
    edges = [e for iv in qc.keep for e in iv]
    assert edges == sorted(edges) and all(lo < hi for lo, hi in qc.keep)
    assert all(qc.keep[i][1] < qc.keep[i + 1][0] for i in range(len(qc.keep) - 1))
    # keep and removed tile the line
    tiles = sorted(qc.keep + qc.removed)
    assert tiles[0][0] == -math.inf and tiles[-1][1] == math.inf
    assert all(tiles[i][1] == tiles[i + 1][0] for i in range(len(tiles) - 1))
    times = np.unique(t)
    for e in edges:
        if math.isfinite(e):
            i = np.searchsorted(times, e)
            assert 0 < i < len(times) and times[i - 1] < e < times[i]
    by_hand = np.zeros(len(t), dtype=bool)
    for lo, hi in qc.keep:
        by_hand |= (t >= lo) & (t < hi)
    np.testing.assert_array_equal(qc.mask(t), by_hand)
    assert qc.removed_fraction == pytest.approx(1 - by_hand.mean(), abs=1e-12)
    assert len(qc.reasons) == len(qc.removed)


# --------------------------------------------------------------------------- steady


@pytest.mark.parametrize("n", [20_000, 200_000])
def test_steady_acquisition_keeps_everything(n):
    fractions, open_files = [], 0
    for seed in range(20):
        t, x = steady(np.random.default_rng(seed), n)
        qc = anomalous_segments(t, x)
        check_intervals(qc, t)
        fractions.append(qc.removed_fraction)
        open_files += qc.keep == OPEN
    assert max(fractions) < 0.01
    assert open_files >= 18


def test_nothing_anomalous_is_one_open_interval():
    t, x = steady(np.random.default_rng(1), 20_000)
    qc = anomalous_segments(t, x)
    assert qc.keep == OPEN
    assert qc.removed == [] and qc.reasons == [] and qc.gaps == []
    assert qc.removed_fraction == 0 and qc.bad_bins == 0
    assert qc.bins == default_bins(20_000) == 133
    assert qc.mask(t).all()


def test_ticked_time_with_ties_is_steady():
    """A time channel in 10 ms, 100 ms and 1 s ticks (20 to 2000 events a tick)."""
    for seed in range(5):
        t, x = steady(np.random.default_rng(seed), 20_000)
        for per_second in (100, 10, 1):
            ticks = np.floor(t * per_second)
            qc = anomalous_segments(ticks, x)
            assert qc.keep == OPEN, (seed, per_second, qc.reasons)


# --------------------------------------------------------------------------- clogs


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0], ids=["start", "middle", "end"])
@pytest.mark.parametrize("frac", [0.02, 0.04, 0.06])
def test_clog_is_removed_and_steady_events_kept(where, frac):
    for seed in range(3):
        t, x, truth = clogged(np.random.default_rng(seed), 20_000, where, frac)
        qc = anomalous_segments(t, x)
        check_intervals(qc, t)
        kept, removed = scores(qc, t, truth)
        assert kept >= 0.95 and removed >= 0.90, (seed, kept, removed, qc.reasons)
        assert qc.removed_fraction < frac + 0.02


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0], ids=["start", "middle", "end"])
def test_clog_in_a_large_file(where):
    t, x, truth = clogged(np.random.default_rng(7), 200_000, where, 0.02)
    qc = anomalous_segments(t, x)
    check_intervals(qc, t)
    kept, removed = scores(qc, t, truth)
    assert kept >= 0.99 and removed >= 0.95


def test_clog_without_gap_is_located_by_change_points():
    """No gap pins the start: both boundaries come from the change points."""
    for seed in range(3):
        t, x, truth = clogged(np.random.default_rng(seed), 20_000, 0.5, 0.04, gap=0.0)
        qc = anomalous_segments(t, x)
        kept, removed = scores(qc, t, truth)
        assert kept >= 0.99 and removed >= 0.95
        assert qc.gaps == []


def test_clog_reasons_and_gap():
    t, x, truth = clogged(np.random.default_rng(3), 20_000, 0.5, 0.04)
    qc = anomalous_segments(t, x)
    assert len(qc.removed) == 1
    assert set(qc.reasons[0]) >= {"gap", "signal:0", "signal:1", "signal:2"}
    assert not {"signal:3", "signal:4", "signal:5"} & set(qc.reasons[0])
    ((before, after),) = qc.gaps
    first = np.flatnonzero(truth)[0]
    assert (before, after) == (t[first - 1], t[first])
    # the removed stretch starts at the gap: between the last steady and first clog event
    assert before < qc.removed[0][0] < after
    assert len(qc.keep) == 2 and qc.keep[0][0] == -math.inf and qc.keep[-1][1] == math.inf


def test_clog_with_ticked_time():
    for seed in range(3):
        t, x, truth = clogged(np.random.default_rng(seed), 20_000, 0.5, 0.04)
        ticks = np.floor(t * 100)  # 10 ms ticks, about 20 events a tick
        qc = anomalous_segments(ticks, x)
        check_intervals(qc, ticks)
        kept, removed = scores(qc, ticks, truth)
        assert kept >= 0.99 and removed >= 0.95
        assert not {e for iv in qc.removed for e in iv} & set(ticks.tolist())


def test_rate_burst_without_signals():
    """Three times the rate for 4% of the events, signals untouched, and c = 0."""
    rng = np.random.default_rng(5)
    n = 20_000
    t, x = steady(rng, n)
    truth = np.zeros(n, dtype=bool)
    truth[10_000:10_800] = True
    dt = np.diff(t, prepend=0.0)
    dt[truth] /= 3
    t = np.cumsum(dt)
    for sig in (x, x[:, :0]):
        qc = anomalous_segments(t, sig)
        kept, removed = scores(qc, t, truth)
        assert kept >= 0.99 and removed >= 0.9
        assert qc.reasons == [("rate",)]


# --------------------------------------------------------------------------- drift, steps


def test_slow_drift_is_kept():
    """A linear drift of 1 within-channel SD over the file (in three channels), a
    4 SD drift of another one, and a rate falling by half are all kept."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = 20_000
        u = np.sort(rng.random(n))
        t = 10 * (u + 0.5 * u**2)  # rate falls from 2000/s to 1000/s
        _, x = steady(rng, n)
        x[:, :3] += np.linspace(0, SD, n)[:, None]
        x[:, 3] += np.linspace(0, 4 * SD, n)
        qc = anomalous_segments(t, x)
        assert qc.keep == OPEN, (seed, qc.reasons)


@pytest.mark.parametrize(
    ("lo", "hi"), [(0.4, 0.6), (0.35, 0.65), (0.7, 1.0)], ids=["middle20", "middle30", "last30"]
)
def test_step_change_is_removed(lo, hi):
    """A step of 2 within-channel SDs in one channel, for a stretch in the middle or
    for the rest of the file."""
    n = 20_000
    for seed in range(3):
        t, x = steady(np.random.default_rng(seed), n)
        truth = np.zeros(n, dtype=bool)
        truth[round(lo * n) : round(hi * n)] = True
        x[truth, 1] += 2 * SD
        qc = anomalous_segments(t, x)
        kept, removed = scores(qc, t, truth)
        assert kept >= 0.99 and removed >= 0.95, (seed, kept, removed)
        assert {r for why in qc.reasons for r in why} == {"signal:1"}


def test_small_step_is_kept():
    """A step of 0.1 within-channel SD over the second half: below the noise of a bin."""
    t, x = steady(np.random.default_rng(2), 20_000)
    x[10_000:, 0] += 0.1 * SD
    assert anomalous_segments(t, x).keep == OPEN


# --------------------------------------------------------------------------- interface


def test_result_does_not_depend_on_event_order():
    rng = np.random.default_rng(4)
    t, x, _ = clogged(rng, 20_000, 0.5, 0.04)
    qc = anomalous_segments(t, x)
    perm = rng.permutation(len(t))
    assert anomalous_segments(t[perm], x[perm]) == qc
    assert anomalous_segments(t, x) == qc  # deterministic


def test_mask_is_half_open_and_drops_nan():
    """``lo <= t < hi`` literally: +inf is not below the last ``hi``, NaN is nowhere."""
    qc = TimeQC(keep=[(-math.inf, 1.5), (2.5, math.inf)], removed=[(1.5, 2.5)])
    t = np.array([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, np.nan, -np.inf, np.inf])
    np.testing.assert_array_equal(
        qc.mask(t), [True, True, False, False, True, True, False, True, False]
    )


def test_explicit_bins():
    t, x = steady(np.random.default_rng(0), 20_000)
    assert anomalous_segments(t, x, bins=50).bins == 50
    # ties: bins never straddle a tick, so fewer bins than asked may result
    assert anomalous_segments(np.floor(t), x, bins=50).bins <= 11


def test_float32_time():
    t, x, truth = clogged(np.random.default_rng(6), 20_000, 0.5, 0.04)
    t32 = t.astype(np.float32)
    qc = anomalous_segments(t32, x)
    check_intervals(qc, t32.astype(float))
    kept, removed = scores(qc, t32, truth)
    assert kept >= 0.99 and removed >= 0.95


# --------------------------------------------------------------------------- errors


def test_too_few_events():
    t, x = steady(np.random.default_rng(0), 99)
    with pytest.raises(ValueError, match="too few events"):
        anomalous_segments(t, x)
    anomalous_segments(*steady(np.random.default_rng(0), 100))


def test_constant_time():
    _, x = steady(np.random.default_rng(0), 1000)
    with pytest.raises(ValueError, match="constant"):
        anomalous_segments(np.full(1000, 7.0), x)


@pytest.mark.parametrize(
    ("time", "signals", "match"),
    [
        (np.arange(200.0).reshape(100, 2), np.zeros((100, 1)), "one-dimensional"),
        (np.arange(200.0), np.zeros((199, 1)), "shape"),
        (np.r_[np.arange(199.0), np.nan], np.zeros((200, 1)), "non-finite"),
        (np.arange(200.0), np.full((200, 1), np.inf), "non-finite"),
        (np.repeat([0.0, 1.0], 100), np.zeros((200, 1)), "distinct values"),
    ],
)
def test_bad_input(time, signals, match):
    with pytest.raises(ValueError, match=match):
        anomalous_segments(time, signals)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bins": 3}, "bins"), ({"k": 0}, "k must"), ({"min_fraction": 2}, "min_fraction")],
)
def test_bad_parameters(kwargs, match):
    t, x = steady(np.random.default_rng(0), 1000)
    with pytest.raises(ValueError, match=match):
        anomalous_segments(t, x, **kwargs)


def test_min_fraction():
    t, x, _ = clogged(np.random.default_rng(0), 20_000, 0.5, 0.06)
    with pytest.raises(ValueError, match="steady"):
        anomalous_segments(t, x, min_fraction=0.97)
    assert anomalous_segments(t, x, min_fraction=0.9).removed_fraction > 0.05
