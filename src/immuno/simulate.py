"""Simulate an ALEVIATE-like immunophenotyping cohort with known per-event truth.

Calling convention: ``simulate_cohort(out, *, seed=1, events=20000) -> Path``
writes the cohort into ``out`` and returns the sample sheet ``out/samples.tsv``;
``truth_masks(npz_path) -> dict[str, ndarray]`` gives each truth population of
one simulated file as a per-event boolean mask (in FCS event order).

The cohort mirrors the design of the ALEVIATE trial of alemtuzumab in refractory
vasculitis: 23 patients (13 on 30 mg, 10 on 60 mg; doses at months 0 and 6),
blood at months 0, 1.5, 3, 4.5, 6, 7.5, 9 and 12, a T cell and a B cell tube per
visit, 6 patients (3 per dose group) withdrawn after month 6 and a few missed
visits. Counts follow the published kinetics: profound, sustained CD4 and CD8
depletion, a rise of the Treg share of CD4 (7.5% to ~15% at 4.5 months) and a
quick B cell recovery dominated by naive B cells (65% to ~89%), with no
difference between the dose groups.

Every event is drawn from a labelled cell type (or debris or a doublet); raw
detector values are ``true fluorochrome intensities @ S + autofluorescence +
electronic noise + photon noise`` (arbitrary linear units, uncompensated, as a
BD Fortessa writes them) with ``S`` the spillover matrix stored as
``$SPILLOVER``. The same ``seed`` and ``events`` give byte-identical files: the
randomness of sample ``(patient, visit, panel)`` comes from
``numpy.random.default_rng([seed, patient_index, visit_index, panel_index])``
(``patient_index`` 0 for P01, ``visit_index`` 0..7, ``panel_index`` 0 for T and
1 for B); cohort design, patient and visit effects come from their own streams.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .util import atomic_path
from .write import write_fcs

__all__ = [
    "simulate_cohort",
    "truth_masks",
    "population_definitions",
    "VISITS",
    "PANELS",
    "CHANNELS",
    "FLUOR_CHANNELS",
    "PANEL_MARKERS",
    "LEGENDS",
]

log = logging.getLogger(__name__)

# --- Study design -------------------------------------------------------------------

N_PATIENTS = 23
N_LOW_DOSE = 13  # 30 mg; the other 10 receive 60 mg
N_WITHDRAWN_PER_GROUP = 3
N_MISSED = 4
MAX_MISSED_AT_4_5 = 2
VISITS = (0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 12.0)  # months from entry
PANELS = ("T", "B")
MIN_EVENTS, MAX_EVENTS = 1_000, 1_000_000
CLOG_FRACTION = 0.05  # share of FCS files with a short clog
TIMESTEP = 0.01  # seconds per Time tick ($TIMESTEP)
PNR = 262144
_MAX_VALUE = 262143.0

# Median absolute counts (x10^9/L) per visit; no dose-group difference.
KINETICS = {
    "cd4": (0.60, 0.02, 0.05, 0.08, 0.10, 0.02, 0.05, 0.09),
    "cd8": (0.35, 0.03, 0.06, 0.09, 0.10, 0.03, 0.07, 0.10),
    "b": (0.20, 0.005, 0.08, 0.20, 0.25, 0.005, 0.10, 0.24),
    "nk": (0.20, 0.05, 0.12, 0.15, 0.16, 0.05, 0.12, 0.15),
    "monocyte": (0.50, 0.25, 0.45, 0.45, 0.45, 0.25, 0.45, 0.45),
}
TREG_PCT_OF_CD4 = (7.5, 12.0, 14.0, 15.0, 14.0, 15.0, 14.0, 12.0)  # median, %
NAIVE_PCT_OF_B = (65.0, 70.0, 85.0, 89.0, 88.0, 80.0, 88.0, 87.0)  # median, %
DN_PCT_OF_T, DP_PCT_OF_T = 3.0, 1.0
PATIENT_SD_LOG = 0.3  # patient-level lognormal sd of absolute counts
VISIT_SD_LOG = 0.15  # visit-level lognormal sd of absolute counts
TREG_PATIENT_SD, TREG_VISIT_SD = 2.0, 1.0  # percentage points
NAIVE_PATIENT_SD, NAIVE_VISIT_SD = 4.0, 2.0  # percentage points
FBC_CV = 0.05  # full-blood-count measurement noise (lognormal sd)
# Shares of CD45RA+ (naive) T cells and of transitional (CD24hi CD38hi) naive B
# cells per visit: reconstitution after alemtuzumab is memory-T and transitional-B rich.
NAIVE_T_SHARE = (0.45, 0.15, 0.12, 0.12, 0.12, 0.10, 0.12, 0.15)
TRANSITIONAL_SHARE = (0.05, 0.40, 0.30, 0.20, 0.15, 0.40, 0.20, 0.12)
MEMORY_B_SPLIT = {"b_memory_switched": 0.55, "b_memory_unswitched": 0.30, "b_dn": 0.15}

# Event composition of a file (fractions of all events).
DEBRIS_RANGE = (0.10, 0.20)
DEBRIS_RANGE_NADIR = (0.25, 0.35)  # months 1.5 and 7.5, just after a dose
NADIR_VISITS = (1, 5)
DEAD_RANGE = (0.05, 0.15)
DOUBLET_RANGE = (0.04, 0.06)

# --- Instrument ---------------------------------------------------------------------

FLUOR_CHANNELS = ("FITC-A", "PE-A", "PE-Cy7-A", "APC-A", "APC-H7-A", "BV421-A", "BV510-A")
CHANNELS = ("FSC-A", "FSC-H", "SSC-A", *FLUOR_CHANNELS, "Time")
VIABILITY = "viability"
PANEL_MARKERS = {
    "T": ("CD3", "CD25", "CD127", "CD4", "CD8", "CD45RA", VIABILITY),
    "B": ("IgD", "CD27", "CD24", "CD19", "CD3", "CD38", VIABILITY),
}
VIABILITY_NAMES = ("LIVE DEAD Aqua", "L/D", "Viability")
N_VIABILITY_ALIASES = (3, 3)  # patients stained as "L/D" and as "Viability"

# Spillover fractions (source fluorochrome row -> detector column), drawn once per
# cohort uniformly from these ranges; unlisted pairs are 0, the diagonal is 1.
SPILLOVER_RANGES = {
    ("FITC-A", "PE-A"): (0.12, 0.20),
    ("FITC-A", "PE-Cy7-A"): (0.005, 0.015),
    ("FITC-A", "BV510-A"): (0.005, 0.02),
    ("PE-A", "FITC-A"): (0.005, 0.015),
    ("PE-A", "PE-Cy7-A"): (0.03, 0.06),
    ("PE-A", "APC-A"): (0.002, 0.01),
    ("PE-Cy7-A", "PE-A"): (0.01, 0.03),
    ("PE-Cy7-A", "APC-A"): (0.002, 0.008),
    ("PE-Cy7-A", "APC-H7-A"): (0.02, 0.05),
    ("APC-A", "PE-Cy7-A"): (0.002, 0.01),
    ("APC-A", "APC-H7-A"): (0.05, 0.10),
    ("APC-H7-A", "PE-Cy7-A"): (0.01, 0.03),
    ("APC-H7-A", "APC-A"): (0.01, 0.03),
    ("BV421-A", "FITC-A"): (0.002, 0.01),
    ("BV421-A", "BV510-A"): (0.05, 0.15),
    ("BV510-A", "FITC-A"): (0.02, 0.05),
    ("BV510-A", "PE-A"): (0.002, 0.01),
    ("BV510-A", "BV421-A"): (0.002, 0.01),
}
# Per detector: electronic noise sd (units) and photon-noise variance per unit of
# signal (sd = sqrt(k * signal)); red detectors collect fewer photons per unit.
ELECTRONIC_SD = np.array([25.0, 30.0, 35.0, 25.0, 35.0, 25.0, 30.0])
PHOTON_K = np.array([3.0, 3.0, 6.0, 4.0, 8.0, 3.0, 4.0])
# Autofluorescence of a lymphocyte per detector (median, units); lognormal sd 0.3.
AUTOFLUORESCENCE = np.array([120.0, 60.0, 30.0, 15.0, 15.0, 90.0, 100.0])
_F32 = np.float32
_AF32 = AUTOFLUORESCENCE.astype(_F32)
AF_FACTOR = {"lymphocyte": 1.0, "monocyte": 3.0}
DEAD_AF_FACTOR = 1.6
# Viability dye uptake (true intensity, units): (share, lognormal median, sd). Live
# cells are dim with a few brighter dying cells, dead cells bright with a dim tail, so
# the live/dead boundary is a continuum.
LIVE_DYE = ((0.95, 80.0, 0.5), (0.05, 700.0, 0.6))
DEAD_DYE = ((0.75, 20000.0, 0.5), (0.25, 1800.0, 0.7))
# Doublet FSC-H = max(H1, H2) + f * min(H1, H2): f ~ Beta(1.2, 6) for cells in line
# with the flow, f ~ U(0.5, 1) for the share lying side by side (these overlap singlets).
DOUBLET_SIDE_BY_SIDE = 0.15

# --- Cell types and label legends ---------------------------------------------------

T_TYPES = ("t_cd4_conv", "t_cd4_treg", "t_cd8", "t_dn", "t_dp", "nk", "b_cell", "monocyte")
B_TYPES = (
    "t_cell",
    "nk",
    "b_naive",
    "b_memory_switched",
    "b_memory_unswitched",
    "b_dn",
    "monocyte",
)
PANEL_TYPES = {"T": T_TYPES, "B": B_TYPES}
LEGENDS = {
    p: ("debris", "doublet", *types, *(f"dead_{t}" for t in types))
    for p, types in PANEL_TYPES.items()
}

# Scatter per type: FSC-A median, lognormal sd, SSC-A median, lognormal sd (units).
SCATTER = {
    "t": (58000.0, 0.10, 14000.0, 0.22),
    "nk": (62000.0, 0.11, 18000.0, 0.25),
    "b": (56000.0, 0.10, 13000.0, 0.22),
    "monocyte": (95000.0, 0.13, 40000.0, 0.30),
    "debris": (10000.0, 0.45, 5000.0, 0.70),
}
SINGLET_HEIGHT_RATIO = (0.85, 0.03)  # FSC-H / FSC-A of a single cell: mean, sd
DEAD_FSC, DEAD_SSC = 0.7, 1.4

# Negative populations: true intensity ~ N(0, sd) (units) per marker.
NEGATIVE_SD = {
    "CD3": 80.0,
    "CD25": 100.0,
    "CD127": 120.0,
    "CD4": 70.0,
    "CD8": 90.0,
    "CD45RA": 100.0,
    "IgD": 80.0,
    "CD27": 100.0,
    "CD24": 120.0,
    "CD19": 70.0,
    "CD38": 100.0,
    VIABILITY: 60.0,
}
MARKER_SCALE_RANGE = (0.75, 1.30)  # per-sample scale of each marker's positive intensity
SCATTER_SCALE_RANGE = (0.80, 1.20)  # per-sample scale of FSC and of SSC


@dataclass(frozen=True)
class _Design:
    """Cohort-level facts fixed by the seed."""

    seed: int
    events: int
    dose: tuple[str, ...]  # per patient index
    withdrawn: tuple[int, ...]  # patient indices with no visits after month 6
    missed: tuple[tuple[int, int], ...]  # (patient index, visit index)
    viability_name: tuple[str, ...]  # $PnS of the viability channel per patient
    spillover: np.ndarray  # (7, 7), rows = sources
    clogged: frozenset[str]  # sample ids with a clog


def patient_id(p: int) -> str:
    """``"P01"`` for patient index 0."""
    return f"P{p + 1:02d}"


def visit_label(v: int) -> str:
    """Visit month as written in sample ids and tables: ``"0"``, ``"1.5"``, ``"12"``."""
    return f"{VISITS[v]:g}"


def sample_id(p: int, v: int, panel: str) -> str:
    """``"P01_m4.5_T"`` for patient index 0, visit index 3, panel ``"T"``."""
    return f"{patient_id(p)}_m{visit_label(v)}_{panel}"


# --- Public API ---------------------------------------------------------------------


def simulate_cohort(out: str | os.PathLike, *, seed: int = 1, events: int = 20000) -> Path:
    """Write the simulated cohort: FCS files, per-event truth and the sample sheet.

    Parameters
    ----------
    out
        Output folder, created if needed. Written: ``fcs/<sample_id>.fcs``,
        ``truth/<sample_id>.npz``, ``truth.tsv``, ``samples.tsv`` and
        ``README.md``. Existing files of the same names are replaced.
    seed
        Non-negative random seed; the same ``seed`` and ``events`` give
        byte-identical output.
    events
        Events per FCS file, 1,000 to 1,000,000.

    Returns
    -------
    Path
        The sample sheet ``out/samples.tsv``: ``sample_id, patient_id,
        dose_group, visit_month, panel, fcs_path`` (relative to the sheet) and
        ``lymphocyte_count`` (full-blood-count lymphocytes, x10^9/L).

    Raises
    ------
    ConfigError
        ``seed`` or ``events`` is out of range, or ``out`` is a file.
    """
    seed, events = _check_args(seed, events)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            "output path exists and is not a folder",
            file=str(out),
            field="out",
            hint="pass a new or existing folder for the cohort",
        )
    (out / "fcs").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    design = _design(seed, events)
    sheet_rows: list[list[str]] = []
    truth_rows: list[list[str]] = []
    for p in range(N_PATIENTS):
        patient = _patient_effects(seed, p)
        for v in range(len(VISITS)):
            if not _attends(design, p, v):
                continue
            visit = _visit_truth(seed, p, v, patient)
            for k in range(len(PANELS)):
                row, rows = _write_sample(out, design, p, v, k, visit, patient["enrolled_day"])
                sheet_rows.append(row)
                truth_rows.extend(rows)
    _warn_stale(out, {r[0] for r in sheet_rows})
    _write_tsv(
        out / "truth.tsv",
        ["sample_id", "population", "parent", "count", "parent_count", "percent_of_parent"],
        truth_rows,
    )
    _write_text(out / "README.md", _readme(design, len(sheet_rows)))
    sheet = out / "samples.tsv"
    _write_tsv(  # written last: its presence means the cohort is complete
        sheet,
        [
            "sample_id",
            "patient_id",
            "dose_group",
            "visit_month",
            "panel",
            "fcs_path",
            "lymphocyte_count",
        ],
        sheet_rows,
    )
    log.info("simulated %d FCS files of %d events into %s", len(sheet_rows), events, out)
    return sheet


def _write_sample(
    out: Path, design: _Design, p: int, v: int, k: int, visit: dict[str, float], enrolled: int
) -> tuple[list[str], list[list[str]]]:
    """Simulate and write one FCS file and its truth: (sheet row, truth.tsv rows)."""
    panel = PANELS[k]
    sid = sample_id(p, v, panel)
    rng = np.random.default_rng([design.seed, p, v, k])
    data, labels, artifact = _simulate_sample(
        rng, design, panel, v, visit, clog=sid in design.clogged
    )
    markers = [design.viability_name[p] if m == VIABILITY else m for m in PANEL_MARKERS[panel]]
    write_fcs(
        out / "fcs" / f"{sid}.fcs",
        data,
        CHANNELS,
        ["", "", "", *markers, ""],
        text=_fcs_text(design, sid, p, v, panel, data, enrolled),
        spillover=(FLUOR_CHANNELS, design.spillover),
    )
    _save_truth(out / "truth" / f"{sid}.npz", labels, LEGENDS[panel], artifact)
    truth_rows = []
    for name, parent, count, parent_count in _truth_counts(labels, panel):
        pct = "" if parent_count == 0 else f"{100.0 * count / parent_count:.4f}"
        truth_rows.append([sid, name, parent, str(count), str(parent_count), pct])
    sheet_row = [
        sid,
        patient_id(p),
        design.dose[p],
        visit_label(v),
        panel,
        f"fcs/{sid}.fcs",
        f"{visit['lymphocyte_count']:.4f}",
    ]
    return sheet_row, truth_rows


def population_definitions(panel: str) -> list[tuple[str, str, str]]:
    """Truth populations of a panel: ``(name, parent, definition)`` in gating order.

    Parameters
    ----------
    panel
        ``"T"`` or ``"B"``.
    """
    common = [
        ("singlets", "root", "not debris and not doublet"),
        ("live", "singlets", "singlets that are not dead_*"),
        ("lymphocytes", "live", "live T, NK and B cell types"),
        ("cd3", "lymphocytes", "live T cell types"),
    ]
    if panel == "T":
        return common + [
            ("cd4", "cd3", "t_cd4_conv + t_cd4_treg"),
            ("cd8", "cd3", "t_cd8"),
            ("treg", "cd4", "t_cd4_treg"),
        ]
    if panel == "B":
        return common + [
            ("cd19", "lymphocytes", "live B cell types"),
            ("naive_b", "cd19", "b_naive"),
        ]
    raise ConfigError(f"unknown panel {panel!r}", field="panel", hint="use 'T' or 'B'")


def truth_masks(npz_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-event truth of every population of one simulated FCS file.

    Parameters
    ----------
    npz_path
        A ``truth/<sample_id>.npz`` written by :func:`simulate_cohort`.

    Returns
    -------
    dict
        ``{population: bool array of n_events}`` in FCS event order, for the
        populations of :func:`population_definitions` of the file's panel, plus
        ``"root"`` (all events). Events of a clog (``time_artifact`` in the npz)
        keep their cell type and are counted like any other event.
    """
    with np.load(npz_path) as z:
        labels = z["label"]
        names = tuple(str(n) for n in z["names"])
    panel = _panel_of_legend(names, str(npz_path))
    return _masks(labels, names, panel)


# --- Cohort design and truth --------------------------------------------------------


def _check_args(seed, events) -> tuple[int, int]:
    if isinstance(events, bool) or not isinstance(events, (int, np.integer)):
        raise ConfigError(
            f"events is {events!r}, not a whole number",
            field="events",
            hint=f"use {MIN_EVENTS:,} to {MAX_EVENTS:,} events per file",
        )
    if not MIN_EVENTS <= int(events) <= MAX_EVENTS:
        raise ConfigError(
            f"events is {int(events):,}, outside {MIN_EVENTS:,} to {MAX_EVENTS:,}",
            field="events",
            hint=f"use {MIN_EVENTS:,} to {MAX_EVENTS:,} events per file "
            "(20,000 is the default; 2,000 is enough for tests)",
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(
            f"seed is {seed!r}, not a non-negative whole number",
            field="seed",
            hint="use e.g. --seed 1",
        )
    return int(seed), int(events)


# Stream tags for cohort-, patient- and visit-level randomness: placed second, they
# cannot coincide with a sample's [seed, patient_index, visit_index, panel_index].
_DESIGN_TAG, _PATIENT_TAG, _VISIT_TAG = 7_000_001, 7_000_002, 7_000_003


def _design(seed: int, events: int) -> _Design:
    rng = np.random.default_rng([seed, _DESIGN_TAG])
    dose = np.array(["30mg"] * N_LOW_DOSE + ["60mg"] * (N_PATIENTS - N_LOW_DOSE))
    dose = tuple(str(d) for d in rng.permutation(dose))
    withdrawn = []
    for group in ("30mg", "60mg"):
        members = [p for p in range(N_PATIENTS) if dose[p] == group]
        withdrawn += [int(p) for p in rng.choice(members, N_WITHDRAWN_PER_GROUP, replace=False)]
    withdrawn_t = tuple(sorted(withdrawn))
    # Missed visits: distinct patients still in the study, never the entry visit,
    # the 4.5-month visit (the paper's comparison) for at most MAX_MISSED_AT_4_5.
    candidates = [p for p in range(N_PATIENTS) if p not in withdrawn_t]
    while True:
        who = rng.choice(candidates, N_MISSED, replace=False)
        when = rng.integers(1, len(VISITS), N_MISSED)
        if int(np.sum(when == VISITS.index(4.5))) <= MAX_MISSED_AT_4_5:
            break
    missed = tuple(sorted((int(p), int(v)) for p, v in zip(who, when, strict=True)))
    names = [VIABILITY_NAMES[0]] * N_PATIENTS
    alias = rng.choice(N_PATIENTS, sum(N_VIABILITY_ALIASES), replace=False)
    for i, p in enumerate(alias):
        names[int(p)] = VIABILITY_NAMES[1] if i < N_VIABILITY_ALIASES[0] else VIABILITY_NAMES[2]
    s = np.eye(len(FLUOR_CHANNELS))
    for (src, dst), (lo, hi) in SPILLOVER_RANGES.items():
        s[FLUOR_CHANNELS.index(src), FLUOR_CHANNELS.index(dst)] = round(rng.uniform(lo, hi), 4)
    samples = [
        sample_id(p, v, panel)
        for p in range(N_PATIENTS)
        for v in range(len(VISITS))
        if not (p in withdrawn_t and VISITS[v] > 6) and (p, v) not in missed
        for panel in PANELS
    ]
    n_clog = max(1, round(CLOG_FRACTION * len(samples)))
    clogged = frozenset(str(x) for x in rng.choice(samples, n_clog, replace=False))
    return _Design(seed, events, dose, withdrawn_t, missed, tuple(names), s, clogged)


def _attends(design: _Design, p: int, v: int) -> bool:
    if p in design.withdrawn and VISITS[v] > 6:
        return False
    return (p, v) not in design.missed


def _patient_effects(seed: int, p: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, _PATIENT_TAG, p])
    eff = {k: float(rng.normal(0.0, PATIENT_SD_LOG)) for k in KINETICS}
    eff["treg"] = float(rng.normal(0.0, TREG_PATIENT_SD))
    eff["naive_b"] = float(rng.normal(0.0, NAIVE_PATIENT_SD))
    eff["dn"] = float(rng.normal(0.0, 0.2))
    eff["dp"] = float(rng.normal(0.0, 0.2))
    eff["enrolled_day"] = int(rng.integers(0, 540))
    return eff


def _visit_truth(seed: int, p: int, v: int, patient: dict[str, float]) -> dict[str, float]:
    """True absolute counts (x10^9/L) and shares (%) of one patient at one visit."""
    rng = np.random.default_rng([seed, _VISIT_TAG, p, v])
    t = {}
    for k, medians in KINETICS.items():
        t[k] = medians[v] * float(np.exp(patient[k] + rng.normal(0.0, VISIT_SD_LOG)))
    treg = TREG_PCT_OF_CD4[v] + patient["treg"] + rng.normal(0.0, TREG_VISIT_SD)
    naive = NAIVE_PCT_OF_B[v] + patient["naive_b"] + rng.normal(0.0, NAIVE_VISIT_SD)
    t["treg_pct"] = float(np.clip(treg, 1.0, 40.0))
    t["naive_b_pct"] = float(np.clip(naive, 10.0, 99.0))
    dn = DN_PCT_OF_T / 100.0 * np.exp(patient["dn"])
    dp = DP_PCT_OF_T / 100.0 * np.exp(patient["dp"])
    t_total = (t["cd4"] + t["cd8"]) / (1.0 - dn - dp)
    t["dn"], t["dp"] = dn * t_total, dp * t_total
    lymph = t_total + t["b"] + t["nk"]
    t["lymphocytes"] = lymph
    t["lymphocyte_count"] = lymph * float(np.exp(rng.normal(0.0, FBC_CV)))
    return t


def _cell_abundance(panel: str, visit: dict[str, float]) -> dict[str, float]:
    """Absolute count (x10^9/L) of each cell type of the panel's legend."""
    if panel == "T":
        treg = visit["cd4"] * visit["treg_pct"] / 100.0
        return {
            "t_cd4_conv": visit["cd4"] - treg,
            "t_cd4_treg": treg,
            "t_cd8": visit["cd8"],
            "t_dn": visit["dn"],
            "t_dp": visit["dp"],
            "nk": visit["nk"],
            "b_cell": visit["b"],
            "monocyte": visit["monocyte"],
        }
    naive = visit["b"] * visit["naive_b_pct"] / 100.0
    memory = visit["b"] - naive
    out = {
        "t_cell": visit["cd4"] + visit["cd8"] + visit["dn"] + visit["dp"],
        "nk": visit["nk"],
        "b_naive": naive,
    }
    out.update({k: memory * w for k, w in MEMORY_B_SPLIT.items()})
    out["monocyte"] = visit["monocyte"]
    return out


# --- Phenotypes ---------------------------------------------------------------------

# A subset is (weight within the type, {marker: (median, lognormal sd)}); markers not
# named are negative. Weights may depend on the visit (naive/memory shares).
_Subsets = list[tuple[float, dict[str, tuple[float, float]]]]


def _phenotypes(panel: str, v: int) -> dict[str, _Subsets]:
    naive_t = NAIVE_T_SHARE[v]
    if panel == "T":
        cd3 = {"CD3": (8000.0, 0.45)}
        cd4 = {**cd3, "CD4": (6000.0, 0.40)}
        ra = {"CD45RA": (5000.0, 0.45)}
        act = 0.10  # activated conventional CD4: CD25 int, CD127 int
        rest_n = {**cd4, **ra, "CD127": (2500.0, 0.45), "CD25": (150.0, 0.9)}
        rest_m = {**cd4, "CD127": (2500.0, 0.45), "CD25": (300.0, 0.8)}
        activated = {**cd4, "CD127": (1100.0, 0.45), "CD25": (1100.0, 0.45)}
        treg = {**cd4, "CD4": (5500.0, 0.40), "CD25": (3000.0, 0.50), "CD127": (300.0, 0.6)}
        cd8 = {**cd3, "CD8": (12000.0, 0.40)}
        return {
            "t_cd4_conv": [
                ((1 - act) * naive_t, rest_n),
                ((1 - act) * (1 - naive_t), rest_m),
                (act, activated),
            ],
            "t_cd4_treg": [(0.3, {**treg, "CD45RA": (3000.0, 0.5)}), (0.7, treg)],
            "t_cd8": [
                (naive_t, {**cd8, "CD45RA": (6000.0, 0.45), "CD127": (1500.0, 0.5)}),
                (0.7 * (1 - naive_t), {**cd8, "CD127": (1500.0, 0.5)}),
                (0.3 * (1 - naive_t), {**cd8, "CD45RA": (3000.0, 0.5)}),
            ],
            "t_dn": [
                (0.5, {**cd3, "CD127": (1500.0, 0.6), "CD45RA": (4000.0, 0.5)}),
                (0.5, {**cd3, "CD127": (1500.0, 0.6)}),
            ],
            "t_dp": [(1.0, {**cd3, "CD4": (5000.0, 0.4), "CD8": (6000.0, 0.45)})],
            "nk": [
                (0.4, {"CD8": (1500.0, 0.5), "CD45RA": (4000.0, 0.5)}),
                (0.6, {"CD45RA": (4000.0, 0.5)}),
            ],
            "b_cell": [(1.0, {"CD45RA": (6000.0, 0.45)})],
            "monocyte": [(1.0, {"CD4": (1200.0, 0.45), "CD45RA": (300.0, 0.8)})],
        }
    trans = TRANSITIONAL_SHARE[v]
    cd19 = {"CD19": (5000.0, 0.40)}
    cd27 = (3000.0, 0.50)
    cd27_dim = (700.0, 0.50)
    memory = {**cd19, "CD24": (5000.0, 0.45), "CD38": (400.0, 0.6)}
    return {
        "t_cell": [
            (0.55, {"CD3": (8000.0, 0.45), "CD27": (2500.0, 0.5)}),
            (0.20, {"CD3": (8000.0, 0.45), "CD27": (2500.0, 0.5), "CD38": (800.0, 0.6)}),
            (0.25, {"CD3": (8000.0, 0.45)}),
        ],
        "nk": [
            (0.7, {"CD38": (3000.0, 0.5)}),
            (0.3, {"CD38": (3000.0, 0.5), "CD27": (800.0, 0.5)}),
        ],
        "b_naive": [
            (
                1 - trans,
                {**cd19, "IgD": (4000.0, 0.5), "CD24": (2000.0, 0.5), "CD38": (1500.0, 0.5)},
            ),
            (trans, {**cd19, "IgD": (5000.0, 0.5), "CD24": (8000.0, 0.45), "CD38": (8000.0, 0.45)}),
        ],
        "b_memory_switched": [(0.8, {**memory, "CD27": cd27}), (0.2, {**memory, "CD27": cd27_dim})],
        "b_memory_unswitched": [
            (0.8, {**memory, "IgD": (3000.0, 0.5), "CD27": cd27}),
            (0.2, {**memory, "IgD": (3000.0, 0.5), "CD27": cd27_dim}),
        ],
        "b_dn": [(1.0, {**cd19, "CD24": (2000.0, 0.6), "CD38": (300.0, 0.7)})],
        "monocyte": [(1.0, {"CD38": (1500.0, 0.5)})],
    }


def _scatter_class(cell_type: str) -> str:
    if cell_type.startswith("t_"):
        return "t"
    if cell_type.startswith("b_"):
        return "b"
    return cell_type  # nk, monocyte


@dataclass
class _Tables:
    """Per-sample lookup tables indexed by subset row (vectorised phenotypes)."""

    first_row: np.ndarray  # (n_types,) first subset row of each type
    cum_weight: np.ndarray  # (n_types, max_subsets) cumulative weights, padded with 1
    n_sub: np.ndarray  # (n_types,)
    median: np.ndarray  # (n_rows, 7) positive median (units), 0 where negative
    sigma: np.ndarray  # (n_rows, 7)
    positive: np.ndarray  # (n_rows, 7) bool
    neg_sd: np.ndarray  # (7,)
    scatter: np.ndarray  # (n_types, 4) FSC median, sd, SSC median, sd
    af: np.ndarray  # (n_types,) autofluorescence factor


def _tables(panel: str, v: int, marker_scale: np.ndarray) -> _Tables:
    markers = PANEL_MARKERS[panel]
    pheno = _phenotypes(panel, v)
    types = PANEL_TYPES[panel]
    rows_med, rows_sig, rows_pos, first, n_sub = [], [], [], [], []
    max_sub = max(len(pheno[t]) for t in types)
    cum = np.ones((len(types), max_sub))
    for i, t in enumerate(types):
        subsets = pheno[t]
        first.append(len(rows_med))
        n_sub.append(len(subsets))
        w = np.array([s[0] for s in subsets], dtype=float)
        cum[i, : len(w)] = np.cumsum(w / w.sum())
        cum[i, len(w) - 1 :] = 1.0
        for _, spec in subsets:
            med = np.zeros(len(markers))
            sig = np.zeros(len(markers))
            for j, m in enumerate(markers):
                if m in spec:
                    med[j] = spec[m][0] * marker_scale[j]
                    sig[j] = spec[m][1]
            rows_med.append(med)
            rows_sig.append(sig)
            rows_pos.append(med > 0)
    scatter = np.array([SCATTER[_scatter_class(t)] for t in types])
    af = np.array([AF_FACTOR["monocyte" if t == "monocyte" else "lymphocyte"] for t in types])
    return _Tables(
        np.array(first),
        cum,
        np.array(n_sub),
        np.array(rows_med, dtype=_F32),
        np.array(rows_sig, dtype=_F32),
        np.array(rows_pos),
        np.array([NEGATIVE_SD[m] for m in markers], dtype=_F32),
        scatter,
        af,
    )


# --- One sample ---------------------------------------------------------------------


def _dye(mixture, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Two-component lognormal mixture: component 0 where ``u < share0``."""
    (w0, m0, s0), (_, m1, s1) = mixture
    return np.where(u < w0, m0 * np.exp(s0 * z), m1 * np.exp(s1 * z))


def _cells(rng, tab: _Tables, types: np.ndarray, dead: np.ndarray, via_scale: float):
    """True fluorochrome intensities, autofluorescence and scatter of cells.

    Returns ``(fluor (n, 7) fluorochrome space, af (n, 7) detector space, fsc_a,
    fsc_h, ssc_a)`` in instrument units, before spillover and detector noise.
    """
    n = types.size
    u = rng.random(n)
    local = (u[:, None] > tab.cum_weight[types]).sum(axis=1)
    row = tab.first_row[types] + np.minimum(local, tab.n_sub[types] - 1)
    z = rng.standard_normal((n, 7), dtype=_F32)
    pos = tab.positive[row]
    fluor = np.where(pos, tab.median[row] * np.exp(tab.sigma[row] * z), tab.neg_sd * z)
    # Viability dye (last column): live cells take up a little, a few dying cells
    # more (a continuum), dead cells a lot, some dead cells only dimly.
    vz = rng.standard_normal(n)
    vu = rng.random(n)
    via = np.where(dead, _dye(DEAD_DYE, vu, vz), _dye(LIVE_DYE, vu, vz))
    fluor[:, 6] = via * np.where(via > 1000.0, via_scale, 1.0)
    af_factor = tab.af[types] * np.where(dead, DEAD_AF_FACTOR, 1.0)
    af_z = rng.standard_normal((n, 7), dtype=_F32)
    af = _AF32 * af_factor.astype(_F32)[:, None] * np.exp(_F32(0.3) * af_z)
    if dead.any():
        # Dead cells stain dimmer and bind antibody non-specifically.
        nd = int(dead.sum())
        nz = rng.standard_normal((nd, 6), dtype=_F32)
        fluor[dead, :6] = _F32(0.8) * fluor[dead, :6] + _F32(200.0) * np.exp(_F32(0.7) * nz)
    sc = tab.scatter[types]
    s = rng.standard_normal((n, 2))
    fsc = sc[:, 0] * np.exp(sc[:, 1] * s[:, 0]) * np.where(dead, DEAD_FSC, 1.0)
    ssc = sc[:, 2] * np.exp(sc[:, 3] * s[:, 1]) * np.where(dead, DEAD_SSC, 1.0)
    ratio = SINGLET_HEIGHT_RATIO[0] + SINGLET_HEIGHT_RATIO[1] * rng.standard_normal(n)
    return fluor, af, fsc, fsc * ratio, ssc


def _debris(rng, n: int, via_scale: float):
    """Debris: small, granular-to-clear particles, dim, with some dye uptake."""
    z = rng.standard_normal((n, 7), dtype=_F32)
    fluor = _F32(40.0) * np.abs(z)
    fluor[:, 6] = 3000.0 * np.exp(1.2 * z[:, 6]) * via_scale
    af = _F32(0.5) * _AF32 * np.exp(_F32(0.5) * rng.standard_normal((n, 7), dtype=_F32))
    fm, fs, sm, ss = SCATTER["debris"]
    s = rng.standard_normal((n, 3))
    fsc = fm * np.exp(fs * s[:, 0])
    ssc = sm * np.exp(ss * s[:, 1])
    return fluor, af, fsc, fsc * (0.9 + 0.06 * s[:, 2]), ssc


def _composition(rng, panel: str, v: int, n_events: int, visit: dict[str, float]):
    lo, hi = DEBRIS_RANGE_NADIR if v in NADIR_VISITS else DEBRIS_RANGE
    f_debris = rng.uniform(lo, hi)
    f_dead = rng.uniform(*DEAD_RANGE)
    f_doublet = rng.uniform(*DOUBLET_RANGE)
    f_live = 1.0 - f_debris - f_dead - f_doublet
    n_debris, n_doublet, n_dead, n_live = rng.multinomial(
        n_events, [f_debris, f_doublet, f_dead, f_live]
    )
    abundance = _cell_abundance(panel, visit)
    prob = np.array([abundance[t] for t in PANEL_TYPES[panel]])
    prob = prob / prob.sum()
    return int(n_debris), int(n_doublet), int(n_dead), int(n_live), prob, f_dead / (f_dead + f_live)


def _simulate_sample(rng, design: _Design, panel: str, v: int, visit, *, clog: bool):
    """Events (n, 11) float32 raw values, labels (n,) uint8 and time_artifact (n,) bool."""
    n_events = design.events
    types_all = PANEL_TYPES[panel]
    n_types = len(types_all)
    marker_scale = rng.uniform(*MARKER_SCALE_RANGE, size=7)
    fsc_scale, ssc_scale = rng.uniform(*SCATTER_SCALE_RANGE, size=2)
    tab = _tables(panel, v, marker_scale)
    n_debris, n_doublet, n_dead, n_live, prob, p_dead = _composition(rng, panel, v, n_events, visit)
    # Single cells (live and dead) and the 2 x n_doublet cells that form doublets.
    live_types = rng.choice(n_types, n_live, p=prob)
    dead_types = rng.choice(n_types, n_dead, p=prob)
    pair_types = rng.choice(n_types, 2 * n_doublet, p=prob)
    pair_dead = rng.random(2 * n_doublet) < p_dead
    types = np.concatenate([live_types, dead_types, pair_types])
    dead = np.concatenate([np.zeros(n_live, bool), np.ones(n_dead, bool), pair_dead])
    fluor, af, fsc, fsch, ssc = _cells(rng, tab, types, dead, marker_scale[6])
    n_single = n_live + n_dead
    a, b = slice(n_single, n_single + n_doublet), slice(n_single + n_doublet, None)
    h1, h2 = fsch[a], fsch[b]
    extra = np.where(
        rng.random(n_doublet) < DOUBLET_SIDE_BY_SIDE,
        rng.uniform(0.5, 1.0, n_doublet),
        rng.beta(1.2, 6.0, n_doublet),
    )
    d_fluor = fluor[a] + fluor[b]
    d_af = af[a] + af[b]
    d_fsc = fsc[a] + fsc[b]
    d_fsch = np.maximum(h1, h2) + extra * np.minimum(h1, h2)
    d_ssc = ssc[a] + ssc[b]
    g_fluor, g_af, g_fsc, g_fsch, g_ssc = _debris(rng, n_debris, marker_scale[6])
    fluor = np.concatenate([fluor[:n_single], d_fluor, g_fluor])
    af = np.concatenate([af[:n_single], d_af, g_af])
    fsc = np.concatenate([fsc[:n_single], d_fsc, g_fsc]) * fsc_scale
    fsch = np.concatenate([fsch[:n_single], d_fsch, g_fsch]) * fsc_scale
    ssc = np.concatenate([ssc[:n_single], d_ssc, g_ssc]) * ssc_scale
    labels = np.concatenate(
        [
            live_types + 2,
            dead_types + 2 + n_types,
            np.ones(n_doublet, np.int64),
            np.zeros(n_debris, np.int64),
        ]
    ).astype(np.uint8)

    # Detector values: spillover, autofluorescence, electronic and photon noise.
    # (An explicit sum over the 7 sources, not BLAS, keeps results independent
    # of the number of BLAS threads.)
    s = design.spillover.astype(_F32)
    signal = af  # float32 throughout: the file stores float32
    for i in range(7):
        signal += fluor[:, i : i + 1] * s[i]
    variance = np.maximum(signal, _F32(0.0))
    variance *= PHOTON_K.astype(_F32)
    variance += (ELECTRONIC_SD**2).astype(_F32)
    raw = rng.standard_normal((n_events, 7), dtype=_F32)
    raw *= np.sqrt(variance)
    raw += signal
    sc_noise = 1.0 + 0.01 * rng.standard_normal((n_events, 3))
    scatter = np.stack([fsc, fsch, ssc], axis=1) * sc_noise

    # Acquisition order and time.
    order = rng.permutation(n_events)
    raw, scatter, labels = raw[order], scatter[order], labels[order]
    duration = rng.uniform(60.0, 150.0) / TIMESTEP  # ticks
    gaps = rng.exponential(1.0, n_events)
    time = np.cumsum(gaps)
    time *= duration / time[-1]
    artifact = np.zeros(n_events, bool)
    if clog:
        i0 = int(rng.integers(int(0.2 * n_events), int(0.8 * n_events)))
        time[i0:] += rng.uniform(3.0, 8.0) / TIMESTEP
        n_art = max(1, round(0.01 * n_events))
        artifact[i0 : i0 + n_art] = True
        raw[artifact] *= rng.uniform(0.45, 0.65)
        raw[artifact] += rng.uniform(200.0, 600.0)
        scatter[artifact, :2] *= 0.85

    data = np.empty((n_events, len(CHANNELS)), dtype=np.float32)
    data[:, 0:3] = np.clip(scatter, None, _MAX_VALUE)  # FSC-A, FSC-H, SSC-A
    data[:, 3:10] = np.clip(raw, None, _MAX_VALUE)
    data[:, 10] = time
    return data, labels, artifact


# --- Truth --------------------------------------------------------------------------


def _panel_of_legend(names: Sequence[str], where: str) -> str:
    for panel, legend in LEGENDS.items():
        if tuple(names) == legend:
            return panel
    raise ConfigError(
        "label legend matches neither the T nor the B panel",
        file=where,
        field="names",
        hint="pass a truth/<sample_id>.npz written by immuno simulate",
    )


def _population_types(panel: str) -> dict[str, set[str]]:
    types = PANEL_TYPES[panel]
    t_types = {t for t in types if t.startswith("t_")}
    b_types = {t for t in types if t.startswith("b_")}
    lymph = t_types | b_types | {"nk"}
    out = {
        "singlets": {n for n in LEGENDS[panel] if n not in ("debris", "doublet")},
        "live": set(types),
        "lymphocytes": lymph,
        "cd3": t_types,
    }
    if panel == "T":
        out.update(cd4={"t_cd4_conv", "t_cd4_treg"}, cd8={"t_cd8"}, treg={"t_cd4_treg"})
    else:
        out.update(cd19=b_types, naive_b={"b_naive"})
    return out


def _masks(labels: np.ndarray, names: Sequence[str], panel: str) -> dict[str, np.ndarray]:
    members = _population_types(panel)
    out = {"root": np.ones(labels.shape, bool)}
    for name, _, _ in population_definitions(panel):
        codes = [i for i, n in enumerate(names) if n in members[name]]
        out[name] = np.isin(labels, codes)
    return out


def _truth_counts(labels: np.ndarray, panel: str):
    counts = np.bincount(labels, minlength=len(LEGENDS[panel]))
    members = _population_types(panel)
    legend = LEGENDS[panel]
    total = {"root": int(labels.size)}
    rows = []
    for name, parent, _ in population_definitions(panel):
        total[name] = int(sum(counts[i] for i, n in enumerate(legend) if n in members[name]))
        rows.append((name, parent, total[name], total[parent]))
    return rows


# --- Output -------------------------------------------------------------------------


def _fcs_text(
    design: _Design, sid: str, p: int, v: int, panel: str, data, enrolled_day: int
) -> dict[str, str]:
    """TEXT keywords of one file; dates and clock times are derived, not read."""
    acquired = _dt.date(2015, 1, 5) + _dt.timedelta(
        days=int(enrolled_day) + round(VISITS[v] * 30.4375)
    )
    start = 9 * 3600 + 600 * (2 * p % 36) + (0 if panel == "T" else 420)
    end = start + int(np.ceil(float(data[-1, 10]) * TIMESTEP))
    return {
        "$CYT": "BD LSRFortessa (simulated)",
        "$SRC": sid,
        "$FIL": f"{sid}.fcs",
        "$DATE": acquired.strftime("%d-%b-%Y").upper(),
        "$BTIM": _clock(start),
        "$ETIM": _clock(end),
        "$TIMESTEP": f"{TIMESTEP:g}",
        "$PROJ": "ALEVIATE-like simulated cohort",
        "TUBE NAME": f"{panel} cell panel",
        "IMMUNO SIMULATION": f"seed={design.seed} events={design.events}",
    }


def _clock(seconds: int) -> str:
    seconds %= 24 * 3600
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _save_truth(path: Path, labels, names, artifact) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, label=labels, names=np.array(names, dtype="U"), time_artifact=artifact
        )


def _write_text(path: Path, content: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(content, encoding="utf-8", newline="\n")


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    _write_text(path, "\n".join(lines) + "\n")


def _warn_stale(out: Path, sample_ids: set[str]) -> None:
    stale = sorted(f.name for f in (out / "fcs").glob("*.fcs") if f.stem not in sample_ids)
    if stale:
        log.warning(
            "%s/fcs holds %d FCS files not in this cohort (e.g. %s); they are not in "
            "samples.tsv (simulate into an empty folder to avoid this)",
            out,
            len(stale),
            stale[0],
        )


def _readme(design: _Design, n_files: int) -> str:
    legend_t = ", ".join(f"{i}={n}" for i, n in enumerate(LEGENDS["T"]))
    legend_b = ", ".join(f"{i}={n}" for i, n in enumerate(LEGENDS["B"]))
    missed = ", ".join(f"{patient_id(p)} month {visit_label(v)}" for p, v in design.missed)
    withdrawn = ", ".join(f"{patient_id(p)} ({design.dose[p]})" for p in design.withdrawn)
    aliases = ", ".join(
        f"{patient_id(p)}: {n}"
        for p, n in enumerate(design.viability_name)
        if n != VIABILITY_NAMES[0]
    )
    spill = "\n".join(
        "| " + src + " | " + " | ".join(f"{x:.4f}" for x in design.spillover[i]) + " |"
        for i, src in enumerate(FLUOR_CHANNELS)
    )

    def row(name, values, fmt):
        return f"| {name} | " + " | ".join(fmt.format(x) for x in values) + " |"

    kin = "\n".join(
        [
            row("CD4 T (x10^9/L)", KINETICS["cd4"], "{:g}"),
            row("CD8 T (x10^9/L)", KINETICS["cd8"], "{:g}"),
            row("B (x10^9/L)", KINETICS["b"], "{:g}"),
            row("NK (x10^9/L)", KINETICS["nk"], "{:g}"),
            row("monocytes (x10^9/L)", KINETICS["monocyte"], "{:g}"),
            row("Treg % of CD4", TREG_PCT_OF_CD4, "{:g}"),
            row("naive B % of CD19", NAIVE_PCT_OF_B, "{:g}"),
        ]
    )
    pops = "\n".join(
        f"| {name} | {parent} | {panel} | {definition} |"
        for panel in PANELS
        for name, parent, definition in population_definitions(panel)
    )
    return f"""# Simulated ALEVIATE-like immunophenotyping cohort

Written by `immuno simulate` (`immuno.simulate.simulate_cohort`) with **seed {design.seed}**
and **{design.events:,} events per file**: {n_files} FCS files. The same seed and event
count give byte-identical files. Everything here is simulated; no patient data.

## Design

- 23 patients P01-P23: 13 on alemtuzumab 30 mg, 10 on 60 mg (doses at months 0 and 6);
  no dose-group difference is simulated.
- Visits at months {", ".join(visit_label(v) for v in range(len(VISITS)))}; a T cell and a
  B cell tube per visit (`<patient>_m<month>_<T|B>`).
- Withdrawn after month 6 (no 7.5/9/12 visits): {withdrawn}.
- Missed visits (both tubes): {missed}.
- Viability `$PnS` aliases (others: `{VIABILITY_NAMES[0]}`): {aliases}.
- Files with a short clog (a gap in Time, then ~1% of events with shifted
  fluorescence, flagged `time_artifact` in the truth): {", ".join(sorted(design.clogged))}.

Median kinetics (patient-level lognormal sd {PATIENT_SD_LOG}, visit sd {VISIT_SD_LOG} for
counts; Treg sd {TREG_PATIENT_SD}/{TREG_VISIT_SD} and naive B sd
{NAIVE_PATIENT_SD}/{NAIVE_VISIT_SD} percentage points patient/visit; DN T {DN_PCT_OF_T:g}%
and DP T {DP_PCT_OF_T:g}% of T cells):

| month | {" | ".join(visit_label(v) for v in range(len(VISITS)))} |
|---|{"---|" * len(VISITS)}
{kin}

## Files

- `samples.tsv`: `sample_id, patient_id, dose_group, visit_month, panel, fcs_path`
  (relative to this folder) and `lymphocyte_count` (full-blood-count lymphocytes,
  x10^9/L: the patient's true total lymphocyte count with ~{FBC_CV:.0%} measurement
  noise; the same for both tubes of a visit).
- `fcs/<sample_id>.fcs`: FCS 3.1, float32, raw linear **uncompensated** values,
  `$PnR` {PNR}; channels {", ".join(CHANNELS)}; `Time` in ticks of `$TIMESTEP`
  {TIMESTEP:g} s. T tube markers: {", ".join(PANEL_MARKERS["T"])}; B tube markers:
  {", ".join(PANEL_MARKERS["B"])} (same detector order; the viability `$PnS` is one
  of {", ".join(VIABILITY_NAMES)}, fixed per patient). The spillover matrix is in
  `$SPILLOVER` (rows = source fluorochrome; compensate with `X @ inv(S)`):

| source \\ detector | {" | ".join(FLUOR_CHANNELS)} |
|---|{"---|" * len(FLUOR_CHANNELS)}
{spill}

- `truth/<sample_id>.npz`: `label` (uint8 per event, FCS event order), `names` (the
  label legend) and `time_artifact` (bool per event). Legends:
  - T tube: {legend_t}
  - B tube: {legend_b}
- `truth.tsv`: `sample_id, population, parent, count, parent_count,
  percent_of_parent` (percent, 4 decimals) from the labels, for these populations
  (`immuno.simulate.truth_masks` gives them per event):

| population | parent | tube | definition |
|---|---|---|---|
{pops}

Events of a clog keep their cell type and count in the truth.

## How events are made

Each file has debris ({DEBRIS_RANGE[0]:.0%}-{DEBRIS_RANGE[1]:.0%} of events,
{DEBRIS_RANGE_NADIR[0]:.0%}-{DEBRIS_RANGE_NADIR[1]:.0%} at months 1.5 and 7.5), dead cells
({DEAD_RANGE[0]:.0%}-{DEAD_RANGE[1]:.0%}), doublets ({DOUBLET_RANGE[0]:.0%}-{DOUBLET_RANGE[1]:.0%})
and live cells, the cell types in proportion to the patient's absolute counts at that visit.
Positive marker intensities are lognormal (CV ~0.4-0.6), negatives ~N(0, 70-120); each
sample scales every marker's positive intensity by {MARKER_SCALE_RANGE[0]}-{MARKER_SCALE_RANGE[1]}
and FSC and SSC by {SCATTER_SCALE_RANGE[0]}-{SCATTER_SCALE_RANGE[1]}. Lymphocytes sit at
FSC-A ~60,000 / SSC-A ~15,000, monocytes at ~95,000 / ~40,000, debris below FSC-A 25,000;
dead cells have 0.7x FSC, 1.4x SSC and bright viability dye (~20,000, with a dim-dead tail),
live cells dim dye (~100-300 after compensation, a few dying cells brighter). Singlets have
FSC-H ~0.85 x FSC-A; a doublet sums two cells (FSC-A, SSC-A, fluorescence) with FSC-H
about the larger height x ~1.1 ({DOUBLET_SIDE_BY_SIDE:.0%} lie side by side and look like
singlets). Raw detector value = true intensities @ S + autofluorescence + electronic noise
(sd 25-35) + photon noise (sd proportional to sqrt(signal)), clipped at 262,143; negative
values are kept. Treg are CD25hi CD127lo; activated conventional CD4 cells (CD25int
CD127int) make the boundary a continuum.
"""
