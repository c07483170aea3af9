"""Simulate an ALEVIATE-like immunophenotyping cohort with known per-event truth.

Calling convention: ``simulate_cohort(out, *, seed=1, events=20000, profile="fortessa",
patients=None) -> Path`` writes the cohort into ``out`` and returns the sample sheet
``out/samples.tsv``; ``truth_masks(npz_path) -> dict[str, ndarray]`` gives each truth
population of one simulated file as a per-event boolean mask (in FCS event order).

The cohort mirrors the design of the ALEVIATE trial of alemtuzumab in refractory
vasculitis: 23 patients (13 on 30 mg, 10 on 60 mg; doses at months 0 and 6),
blood at months 0, 1.5, 3, 4.5, 6, 7.5, 9 and 12, a T cell and a B cell tube per
visit, 6 patients (3 per dose group) withdrawn after month 6 and a few missed
visits. Counts follow the published kinetics: profound, sustained CD4 and CD8
depletion, a rise of the Treg share of CD4 (7.5% to ~15% at 4.5 months) and a
quick B cell recovery dominated by naive B cells (65% to ~89%), with no
difference between the dose groups.

Every event is drawn from a labelled cell type (or debris or a doublet). Its true
fluorochrome intensities (per marker) go through an instrument *profile*
(:data:`PROFILES`): detector signal = ``true intensities @ S + autofluorescence +
electronic noise + photon noise`` in linear units, ``S`` the profile's spillover
matrix, then the profile's encoding:

``fortessa`` (default)
    A BD LSRFortessa: float32, linear, uncompensated, ``$PnR`` 262144, ``$SPILLOVER``,
    ``$TIMESTEP`` 0.01 s; detectors FITC-A, PE-A, PE-Cy7-A, APC-A, APC-H7-A, BV421-A,
    BV510-A.
``canto_export``
    A BD FACSCanto II file exported from flowCore/a GatingSet: 8 fluorescence
    detectors (one empty per tube), another marker-to-detector assignment, values
    already *compensated and logicle-transformed* (T 262144, W 0.5, M 4.5, A 0),
    times 4096 and clipped to 0..4096 (``$PnR`` 4096); scatter linear (``$PnR``
    262144); ``$SPILLOVER`` still present (compensating again is wrong); flowCore's
    ``transformation`` and ``flowCore_$PnRmax``/``Rmin`` keywords; ``$TIMESTEP``
    0.001 s.
``log1024``
    An analogue instrument: 16-bit integers (``$DATATYPE I``), ``$PnR`` 1024 on every
    channel, fluorescence log-amplified over 4 decades (``$PnE 4,0``: channel ``x``
    means ``10**(4 x / 1024)``; ``x = round(256 log10(max(linear, 1)))``), scatter
    linear channel numbers (``$PnE 0,0``, lymphocytes near FSC channel 250), detectors
    FL1-A..FL7-A, another assignment, ``$SPILLOVER`` in the decoded linear space,
    ``$TIMESTEP`` 0.2 s (integer ticks; 1024 ticks cover the longest file).

Harder biology (all profiles; every range is a uniform draw unless stated):

* Clogs: ``CLOG_FRACTION`` (5%) of the files, chosen once per cohort. At a random
  point (20-80% of the file) Time jumps by ``CLOG_GAP_S`` (3-8 s) without events,
  then ``CLOG_EVENT_RANGE`` (2-6%, per file) of the file's events arrive at
  ``CLOG_BURST_RANGE`` (3-6x) the steady rate with disturbed signal (fluorescence
  x ``CLOG_FLUOR_SCALE`` 0.45-0.75 plus ``CLOG_FLUOR_SHIFT`` 150-600 units, FSC x
  0.7-0.9, SSC x 1.15-1.5); they are ``time_artifact`` in the truth. The events
  before and after come at a steady rate.
* Depletion: at the post-dose nadir visits (months 1.5 and 7.5) monocytes and
  debris outnumber lymphocytes; in ``STRONG_DEPLETION_SHARE`` (30%) of the
  patients the nadir lymphocyte counts are further multiplied by 0.45-0.8 and the
  monocytes by 1.3-2.0, and debris is 30-45% of events, so lymphocytes are ~10-25%
  of live singlets.
* Low-density granulocytes: ``LDG_PATIENT_SHARE`` (40%) of the patients carry a
  high-SSC ``granulocyte`` population, 0-10% of the cells at each visit (both tubes
  of a visit share it); it is not a lymphocyte.
* Shoulders: in ``SHOULDER_PATIENT_SHARE`` (30%) of the patients naive B cells
  are IgD-dim and IgD- memory and double-negative B cells IgD-low (at
  ``SHOULDER_IGD_LOW_RATIO``, 0.12-0.30 x the naive level, per patient), so IgD on
  CD19+ cells is one peak with a shoulder (naive B are ~85-90% of CD19 after
  month 3), and 20% of the conventional CD4 T cells are CD4-dim.
* Per file, each marker's positive intensity is scaled by
  ``MARKER_SCALE_RANGE`` (0.55-1.6) and FSC and SSC by ``SCATTER_SCALE_RANGE``
  (0.75-1.3); per file and detector the electronic noise by ``NOISE_FILE_RANGE``
  (0.85-1.25), on top of each profile's own noise.

Determinism: the same ``seed``, ``events`` and ``profile`` give byte-identical
files. The biology of sample ``(patient, visit, panel)`` (labels, true intensities,
scatter, time) comes from ``numpy.random.default_rng([seed, patient_index,
visit_index, panel_index])`` (``patient_index`` 0 for P01, ``visit_index`` 0..7,
``panel_index`` 0 for T and 1 for B) and does not depend on the profile, so the
truth is the same in every profile; the detector noise comes from
``default_rng([seed, patient_index, visit_index, panel_index, 7000004,
profile_index])``; cohort design, patient and visit effects and the profile's
spillover matrix come from their own streams. ``patients=N`` writes the first N
patients' files exactly as the full cohort has them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .transform import Logicle
from .util import atomic_path
from .write import write_fcs

__all__ = [
    "simulate_cohort",
    "truth_masks",
    "population_definitions",
    "Profile",
    "PROFILES",
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
DEBRIS_RANGE_STRONG = (0.30, 0.45)  # nadir visits of strongly depleted patients
NADIR_VISITS = (1, 5)
DEAD_RANGE = (0.05, 0.15)
DOUBLET_RANGE = (0.04, 0.06)

# Harder biology (see the module docstring). Patient flags are Bernoulli draws.
STRONG_DEPLETION_SHARE = 0.30  # patients whose nadir visits are depleted more strongly
STRONG_LYMPH_FACTOR = (0.45, 0.80)  # x nadir CD4, CD8, B and NK counts
STRONG_MONOCYTE_FACTOR = (1.3, 2.0)  # x nadir monocyte count
LDG_PATIENT_SHARE = 0.40  # patients with low-density granulocytes in their PBMC
LDG_SHARE_RANGE = (0.0, 0.10)  # granulocytes as a share of cells, per visit
SHOULDER_PATIENT_SHARE = 0.30  # patients with IgD (B) and CD4-dim (T) shoulders
CD4_DIM_SHARE = 0.20  # share of conventional CD4 T cells that are CD4-dim
# In shoulder patients the IgD- memory and double-negative B cells are IgD-low: their IgD
# median is this share of the naive B cells' (drawn per patient, log-uniform), so Ashman's D
# between the two is ~2-3 in logicle units: a shoulder on the naive peak that an eye (and a
# two-Gaussian fit) can place, from a faint one to one near a valley.
SHOULDER_IGD_LOW_RATIO = (0.12, 0.30)

# Acquisition time and clogs.
DURATION_RANGE = (60.0, 150.0)  # s of steady acquisition per file
CLOG_FRACTION = 0.05  # share of FCS files with a clog
CLOG_EVENT_RANGE = (0.02, 0.06)  # share of the file's events acquired during the clog
CLOG_GAP_S = (3.0, 8.0)  # s without events before the clog's burst
CLOG_BURST_RANGE = (3.0, 6.0)  # event rate during the clog, x the steady rate
CLOG_FLUOR_SCALE = (0.45, 0.75)  # x every fluorescence detector signal
CLOG_FLUOR_SHIFT = (150.0, 600.0)  # + units (Fortessa-equivalent) on every detector
CLOG_FSC_SCALE = (0.70, 0.90)  # x FSC-A and FSC-H
CLOG_SSC_SCALE = (1.15, 1.50)  # x SSC-A

# --- Instrument ---------------------------------------------------------------------

VIABILITY = "viability"
PANEL_MARKERS = {
    "T": ("CD3", "CD25", "CD127", "CD4", "CD8", "CD45RA", VIABILITY),
    "B": ("IgD", "CD27", "CD24", "CD19", "CD3", "CD38", VIABILITY),
}
VIABILITY_NAMES = ("LIVE DEAD Aqua", "L/D", "Viability")
N_VIABILITY_ALIASES = (3, 3)  # patients stained as "L/D" and as "Viability"
SCATTER_CHANNELS = ("FSC-A", "FSC-H", "SSC-A")
TIME_CHANNEL = "Time"

# Fortessa (the default profile and the demo's instrument).
FLUOR_CHANNELS = ("FITC-A", "PE-A", "PE-Cy7-A", "APC-A", "APC-H7-A", "BV421-A", "BV510-A")
CHANNELS = (*SCATTER_CHANNELS, *FLUOR_CHANNELS, TIME_CHANNEL)
TIMESTEP = 0.01  # seconds per Time tick ($TIMESTEP) of the fortessa profile
PNR = 262144
_MAX_VALUE = 262143.0
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
ELECTRONIC_SD = (25.0, 30.0, 35.0, 25.0, 35.0, 25.0, 30.0)
PHOTON_K = (3.0, 3.0, 6.0, 4.0, 8.0, 3.0, 4.0)
# Autofluorescence of a lymphocyte per detector (median, units).
AUTOFLUORESCENCE = (120.0, 60.0, 30.0, 15.0, 15.0, 90.0, 100.0)
AF_CELL_SD, AF_DETECTOR_SD = 0.25, 0.15  # lognormal sd: per cell (all detectors), per detector
NOISE_FILE_RANGE = (0.85, 1.25)  # per file and detector, x the electronic noise sd

CANTO_LOGICLE = {"T": 262144.0, "W": 0.5, "M": 4.5, "A": 0.0}  # canto_export transform
CANTO_SCALE = 4096.0  # logicle 0..1 times this
LOG_DECADES, LOG_RANGE = 4, 1024  # log1024: $PnE 4,0 and $PnR 1024
LOG_OFFSET = 3.0  # log1024: analogue baseline added to every linear signal (units)


@dataclass(frozen=True)
class Profile:
    """How one simulated instrument (and export) records the events of a file.

    Attributes
    ----------
    name
        Key in :data:`PROFILES`.
    cytometer
        ``$CYT``.
    detectors
        Fluorescence ``$PnN`` in file order (between the scatter channels and Time).
    assignment
        ``{panel: detector of each marker of PANEL_MARKERS[panel]}``; detectors not
        named are unused in that tube (autofluorescence, spillover and noise only).
    spillover_ranges
        ``{(source detector, receiving detector): (low, high)}`` spillover fractions
        (dimensionless), drawn once per cohort; unlisted pairs are 0.
    electronic_sd, photon_k, autofluorescence, brightness
        Per detector: electronic noise sd (units), photon-noise variance per unit of
        signal (units), median lymphocyte autofluorescence (units) and a factor
        (dimensionless) on the true intensity of the fluorochrome it reads. Units
        are Fortessa-equivalent linear units before the profile's encoding.
    scatter_gain
        ``(FSC, SSC)`` factors from Fortessa units to the profile's scatter units.
    scatter_cv
        Relative sd of the measurement noise on FSC-A, FSC-H and SSC-A.
    timestep
        ``$TIMESTEP``, seconds per Time tick.
    encoding
        ``"linear"`` (float32 raw values), ``"logicle"`` (float32, compensated,
        logicle 0..1 times 4096) or ``"log"`` (uint16 channel numbers, fluorescence
        log-amplified over 4 decades, scatter and Time linear, all below 1024).
    log_gain
        ``"log"`` only: per detector, analogue linear units per Fortessa-equivalent
        unit (the signal then gets ``LOG_OFFSET`` added and is log-encoded).
    """

    name: str
    cytometer: str
    detectors: tuple[str, ...]
    assignment: Mapping[str, tuple[str, ...]]
    spillover_ranges: Mapping[tuple[str, str], tuple[float, float]]
    electronic_sd: tuple[float, ...]
    photon_k: tuple[float, ...]
    autofluorescence: tuple[float, ...]
    brightness: tuple[float, ...]
    scatter_gain: tuple[float, float]
    scatter_cv: float
    timestep: float
    encoding: str
    log_gain: tuple[float, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        """``$PnN`` of every channel in file order."""
        return (*SCATTER_CHANNELS, *self.detectors, TIME_CHANNEL)


_CANTO = ("FITC-A", "PE-A", "PerCP-Cy5-5-A", "PE-Cy7-A", "APC-A", "APC-Cy7-A", "V450-A", "V500-A")
_FL = tuple(f"FL{i}-A" for i in range(1, 8))
PROFILES: dict[str, Profile] = {
    "fortessa": Profile(
        name="fortessa",
        cytometer="BD LSRFortessa (simulated)",
        detectors=FLUOR_CHANNELS,
        assignment={"T": FLUOR_CHANNELS, "B": FLUOR_CHANNELS},
        spillover_ranges=SPILLOVER_RANGES,
        electronic_sd=ELECTRONIC_SD,
        photon_k=PHOTON_K,
        autofluorescence=AUTOFLUORESCENCE,
        brightness=(1.0,) * 7,
        scatter_gain=(1.0, 1.0),
        scatter_cv=0.01,
        timestep=TIMESTEP,
        encoding="linear",
    ),
    "canto_export": Profile(
        name="canto_export",
        cytometer="BD FACSCanto II (simulated; flowCore export)",
        detectors=_CANTO,
        assignment={
            # CD3, CD25, CD127, CD4, CD8, CD45RA, viability (PE-Cy7-A unused)
            "T": ("V450-A", "APC-A", "PE-A", "PerCP-Cy5-5-A", "APC-Cy7-A", "FITC-A", "V500-A"),
            # IgD, CD27, CD24, CD19, CD3, CD38, viability (APC-Cy7-A unused)
            "B": ("PerCP-Cy5-5-A", "APC-A", "FITC-A", "PE-Cy7-A", "V450-A", "PE-A", "V500-A"),
        },
        spillover_ranges={
            ("FITC-A", "PE-A"): (0.15, 0.25),
            ("FITC-A", "PerCP-Cy5-5-A"): (0.02, 0.05),
            ("FITC-A", "V500-A"): (0.002, 0.01),
            ("PE-A", "FITC-A"): (0.01, 0.03),
            ("PE-A", "PerCP-Cy5-5-A"): (0.10, 0.20),
            ("PE-A", "PE-Cy7-A"): (0.02, 0.05),
            ("PerCP-Cy5-5-A", "PE-A"): (0.002, 0.01),
            ("PerCP-Cy5-5-A", "PE-Cy7-A"): (0.10, 0.25),
            ("PerCP-Cy5-5-A", "APC-A"): (0.02, 0.06),
            ("PerCP-Cy5-5-A", "APC-Cy7-A"): (0.01, 0.03),
            ("PE-Cy7-A", "PE-A"): (0.01, 0.03),
            ("PE-Cy7-A", "PerCP-Cy5-5-A"): (0.01, 0.04),
            ("PE-Cy7-A", "APC-Cy7-A"): (0.03, 0.08),
            ("APC-A", "PerCP-Cy5-5-A"): (0.005, 0.02),
            ("APC-A", "APC-Cy7-A"): (0.08, 0.15),
            ("APC-Cy7-A", "PE-Cy7-A"): (0.03, 0.08),
            ("APC-Cy7-A", "APC-A"): (0.01, 0.04),
            ("V450-A", "V500-A"): (0.10, 0.20),
            ("V450-A", "FITC-A"): (0.002, 0.01),
            ("V500-A", "FITC-A"): (0.03, 0.08),
            ("V500-A", "V450-A"): (0.005, 0.02),
            ("V500-A", "PE-A"): (0.002, 0.01),
        },
        electronic_sd=(40.0, 45.0, 60.0, 55.0, 40.0, 55.0, 45.0, 50.0),
        photon_k=(4.0, 4.0, 8.0, 9.0, 5.0, 10.0, 5.0, 6.0),
        autofluorescence=(140.0, 70.0, 45.0, 30.0, 18.0, 18.0, 100.0, 110.0),
        brightness=(0.9, 1.2, 0.85, 1.0, 1.1, 0.75, 0.85, 0.9),
        scatter_gain=(0.85, 1.2),
        scatter_cv=0.015,
        timestep=0.001,
        encoding="logicle",
    ),
    "log1024": Profile(
        name="log1024",
        cytometer="analogue 4-decade log cytometer (simulated)",
        detectors=_FL,
        assignment={
            # CD3, CD25, CD127, CD4, CD8, CD45RA, viability
            "T": ("FL3-A", "FL4-A", "FL5-A", "FL1-A", "FL2-A", "FL6-A", "FL7-A"),
            # IgD, CD27, CD24, CD19, CD3, CD38, viability
            "B": ("FL2-A", "FL4-A", "FL5-A", "FL3-A", "FL1-A", "FL6-A", "FL7-A"),
        },
        spillover_ranges={
            ("FL1-A", "FL2-A"): (0.15, 0.30),
            ("FL1-A", "FL3-A"): (0.01, 0.04),
            ("FL1-A", "FL7-A"): (0.002, 0.01),
            ("FL2-A", "FL1-A"): (0.01, 0.03),
            ("FL2-A", "FL3-A"): (0.12, 0.25),
            ("FL2-A", "FL5-A"): (0.02, 0.05),
            ("FL3-A", "FL2-A"): (0.002, 0.01),
            ("FL3-A", "FL4-A"): (0.02, 0.05),
            ("FL3-A", "FL5-A"): (0.08, 0.20),
            ("FL4-A", "FL3-A"): (0.005, 0.02),
            ("FL4-A", "FL6-A"): (0.08, 0.15),
            ("FL5-A", "FL2-A"): (0.01, 0.03),
            ("FL5-A", "FL6-A"): (0.03, 0.07),
            ("FL6-A", "FL4-A"): (0.01, 0.04),
            ("FL6-A", "FL5-A"): (0.03, 0.07),
            ("FL7-A", "FL1-A"): (0.03, 0.08),
        },
        electronic_sd=(22.0, 25.0, 30.0, 22.0, 28.0, 28.0, 25.0),
        photon_k=(4.0, 4.0, 8.0, 5.0, 8.0, 9.0, 5.0),
        autofluorescence=(130.0, 70.0, 40.0, 15.0, 28.0, 18.0, 80.0),
        brightness=(0.85, 1.0, 0.8, 0.95, 0.85, 0.75, 0.8),
        scatter_gain=(1.15 / 256.0, 1.5 / 256.0),
        scatter_cv=0.02,
        timestep=0.2,
        encoding="log",
        log_gain=(0.08, 0.09, 0.075, 0.085, 0.08, 0.09, 0.085),
    ),
}
PROFILE_NAMES = tuple(PROFILES)

# Viability dye uptake (true intensity, units): (share, lognormal median, sd). Live
# cells are dim with a few brighter dying cells, dead cells bright with a dim tail, so
# the live/dead boundary is a continuum.
LIVE_DYE = ((0.95, 80.0, 0.5), (0.05, 700.0, 0.6))
DEAD_DYE = ((0.75, 20000.0, 0.5), (0.25, 1800.0, 0.7))
# Doublet FSC-H = max(H1, H2) + f * min(H1, H2): f ~ Beta(1.2, 6) for cells in line
# with the flow, f ~ U(0.5, 1) for the share lying side by side (these overlap singlets).
DOUBLET_SIDE_BY_SIDE = 0.15
_F32 = np.float32

# --- Cell types and label legends ---------------------------------------------------

T_TYPES = (
    "t_cd4_conv",
    "t_cd4_treg",
    "t_cd8",
    "t_dn",
    "t_dp",
    "nk",
    "b_cell",
    "monocyte",
    "granulocyte",
)
B_TYPES = (
    "t_cell",
    "nk",
    "b_naive",
    "b_memory_switched",
    "b_memory_unswitched",
    "b_dn",
    "monocyte",
    "granulocyte",
)
PANEL_TYPES = {"T": T_TYPES, "B": B_TYPES}
LEGENDS = {
    p: ("debris", "doublet", *types, *(f"dead_{t}" for t in types))
    for p, types in PANEL_TYPES.items()
}

# Scatter per type: FSC-A median, lognormal sd, SSC-A median, lognormal sd (Fortessa units).
SCATTER = {
    "t": (58000.0, 0.10, 14000.0, 0.22),
    "nk": (62000.0, 0.11, 18000.0, 0.25),
    "b": (56000.0, 0.10, 13000.0, 0.22),
    "monocyte": (95000.0, 0.13, 40000.0, 0.30),
    "granulocyte": (85000.0, 0.10, 110000.0, 0.20),
    "debris": (10000.0, 0.45, 5000.0, 0.70),
}
AF_FACTOR = {"lymphocyte": 1.0, "monocyte": 3.0, "granulocyte": 2.5}
DEAD_AF_FACTOR = 1.6
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
MARKER_SCALE_RANGE = (0.55, 1.60)  # per-sample scale of each marker's positive intensity
SCATTER_SCALE_RANGE = (0.75, 1.30)  # per-sample scale of FSC and of SSC


@dataclass(frozen=True)
class _Design:
    """Cohort-level facts fixed by the seed (and the profile's spillover matrix)."""

    seed: int
    events: int
    profile: Profile
    dose: tuple[str, ...]  # per patient index
    withdrawn: tuple[int, ...]  # patient indices with no visits after month 6
    missed: tuple[tuple[int, int], ...]  # (patient index, visit index)
    viability_name: tuple[str, ...]  # $PnS of the viability channel per patient
    spillover_sim: np.ndarray  # (n_det, n_det) rows = sources, detector-signal space
    spillover: np.ndarray  # as written to $SPILLOVER (the file's linear space)
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


def simulate_cohort(
    out: str | os.PathLike,
    *,
    seed: int = 1,
    events: int = 20000,
    profile: str = "fortessa",
    patients: int | None = None,
) -> Path:
    """Write the simulated cohort: FCS files, per-event truth and the sample sheet.

    Parameters
    ----------
    out
        Output folder, created if needed. Written: ``fcs/<sample_id>.fcs``,
        ``truth/<sample_id>.npz``, ``truth.tsv``, ``samples.tsv`` and
        ``README.md``. Existing files of the same names are replaced.
    seed
        Non-negative random seed; the same ``seed``, ``events`` and ``profile``
        give byte-identical output.
    events
        Events per FCS file, 1,000 to 1,000,000.
    profile
        Instrument profile, a key of :data:`PROFILES`: ``"fortessa"`` (float32
        linear uncompensated, the demo's), ``"canto_export"`` (flowCore export:
        compensated, logicle 0..4096) or ``"log1024"`` (16-bit integers, 4-decade
        log fluorescence, all channels 0..1023). The biology, and so the truth, is
        the same in every profile.
    patients
        Simulate only the first ``patients`` patients (1 to 23; ``None``, the
        default, is all 23). Their files are the same as in the full cohort.

    Returns
    -------
    Path
        The sample sheet ``out/samples.tsv``: ``sample_id, patient_id,
        dose_group, visit_month, panel, fcs_path`` (relative to the sheet) and
        ``lymphocyte_count`` (full-blood-count lymphocytes, x10^9/L).

    Raises
    ------
    ConfigError
        ``seed``, ``events``, ``profile`` or ``patients`` is invalid, or ``out``
        is a file.
    """
    seed, events = _check_args(seed, events)
    prof = _check_profile(profile)
    n_patients = _check_patients(patients)
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
    design = _design(seed, events, prof)
    effects = [_patient_effects(seed, p) for p in range(n_patients)]
    sheet_rows: list[list[str]] = []
    truth_rows: list[list[str]] = []
    clogs: dict[str, tuple[int, float]] = {}
    for p in range(n_patients):
        patient = effects[p]
        for v in range(len(VISITS)):
            if not _attends(design, p, v):
                continue
            visit = _visit_truth(seed, p, v, patient)
            for k in range(len(PANELS)):
                row, rows, clog = _write_sample(out, design, p, v, k, visit, patient)
                sheet_rows.append(row)
                truth_rows.extend(rows)
                if clog is not None:
                    clogs[row[0]] = clog
    _warn_stale(out, {r[0] for r in sheet_rows})
    _write_tsv(
        out / "truth.tsv",
        ["sample_id", "population", "parent", "count", "parent_count", "percent_of_parent"],
        truth_rows,
    )
    _write_text(out / "README.md", _readme(design, len(sheet_rows), effects, clogs))
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
    log.info(
        "simulated %d FCS files of %d events (%s) into %s",
        len(sheet_rows),
        events,
        prof.name,
        out,
    )
    return sheet


def _write_sample(
    out: Path, design: _Design, p: int, v: int, k: int, visit: dict[str, float], patient: dict
) -> tuple[list[str], list[list[str]], tuple[int, float] | None]:
    """Simulate and write one FCS file and its truth.

    Returns (sheet row, truth.tsv rows, ``(clog events, gap s)`` or None).
    """
    panel = PANELS[k]
    sid = sample_id(p, v, panel)
    prof = design.profile
    rng = np.random.default_rng([design.seed, p, v, k])
    ev = _simulate_events(rng, design, panel, v, visit, patient, clog=sid in design.clogged)
    noise_rng = np.random.default_rng(
        [design.seed, p, v, k, _INSTRUMENT_TAG, PROFILE_NAMES.index(prof.name)]
    )
    data = _acquire(noise_rng, design, panel, ev)
    by_detector = dict(zip(prof.assignment[panel], PANEL_MARKERS[panel], strict=True))
    markers = [
        "",
        "",
        "",
        *(by_detector.get(d, "") for d in prof.detectors),
        "",
    ]
    markers = [design.viability_name[p] if m == VIABILITY else m for m in markers]
    n_fl = len(prof.detectors)
    if prof.encoding == "log":
        datatype = "I"
        amplification = [None] * 3 + [(float(LOG_DECADES), 0.0)] * n_fl + [None]
    else:
        datatype, amplification = "F", None
    write_fcs(
        out / "fcs" / f"{sid}.fcs",
        data,
        prof.channels,
        markers,
        text=_fcs_text(design, sid, p, v, panel, float(ev.time[-1]), patient["enrolled_day"]),
        spillover=(prof.detectors, design.spillover),
        datatype=datatype,
        amplification=amplification,
    )
    _save_truth(out / "truth" / f"{sid}.npz", ev.labels, LEGENDS[panel], ev.artifact)
    truth_rows = []
    for name, parent, count, parent_count in _truth_counts(ev.labels, panel):
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
    clog = None if ev.clog is None else (int(ev.artifact.sum()), ev.clog.gap_s)
    return sheet_row, truth_rows, clog


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


def _check_profile(profile) -> Profile:
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ConfigError(
            f"unknown instrument profile {profile!r}",
            field="profile",
            hint=f"use one of {', '.join(PROFILE_NAMES)}",
        )
    return PROFILES[profile]


def _check_patients(patients) -> int:
    if patients is None:
        return N_PATIENTS
    if (
        isinstance(patients, bool)
        or not isinstance(patients, (int, np.integer))
        or not 1 <= int(patients) <= N_PATIENTS
    ):
        raise ConfigError(
            f"patients is {patients!r}, not a whole number from 1 to {N_PATIENTS}",
            field="patients",
            hint=f"use e.g. --patients 3 for a small cohort, or omit it for all {N_PATIENTS}",
        )
    return int(patients)


# Stream tags for cohort-, patient-, visit- and instrument-level randomness: placed
# second (or fifth), they cannot coincide with a sample's [seed, patient_index,
# visit_index, panel_index].
_DESIGN_TAG, _PATIENT_TAG, _VISIT_TAG = 7_000_001, 7_000_002, 7_000_003
_INSTRUMENT_TAG, _SPILL_TAG = 7_000_004, 7_000_005


def _draw_spillover(rng, prof: Profile) -> np.ndarray:
    det = prof.detectors
    s = np.eye(len(det))
    for (src, dst), (lo, hi) in prof.spillover_ranges.items():
        s[det.index(src), det.index(dst)] = round(rng.uniform(lo, hi), 4)
    return s


def _design(seed: int, events: int, prof: Profile) -> _Design:
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
    # The Fortessa matrix is always drawn here, so the clogs below are the same in
    # every profile; other profiles draw theirs from their own stream.
    s = _draw_spillover(rng, PROFILES["fortessa"])
    samples = [
        sample_id(p, v, panel)
        for p in range(N_PATIENTS)
        for v in range(len(VISITS))
        if not (p in withdrawn_t and VISITS[v] > 6) and (p, v) not in missed
        for panel in PANELS
    ]
    n_clog = max(1, round(CLOG_FRACTION * len(samples)))
    clogged = frozenset(str(x) for x in rng.choice(samples, n_clog, replace=False))
    if prof.name != "fortessa":
        s = _draw_spillover(
            np.random.default_rng([seed, _SPILL_TAG, PROFILE_NAMES.index(prof.name)]), prof
        )
    written = s
    if prof.encoding == "log":
        # In the decoded linear space detector j reads g_j x its signal, so the
        # fraction of source i seen in j becomes S_ij g_j / g_i.
        g = np.asarray(prof.log_gain, dtype=np.float64)
        written = s * g[None, :] / g[:, None]
    return _Design(seed, events, prof, dose, withdrawn_t, missed, tuple(names), s, written, clogged)


def _attends(design: _Design, p: int, v: int) -> bool:
    if p in design.withdrawn and VISITS[v] > 6:
        return False
    return (p, v) not in design.missed


def _patient_effects(seed: int, p: int) -> dict:
    rng = np.random.default_rng([seed, _PATIENT_TAG, p])
    eff: dict = {k: float(rng.normal(0.0, PATIENT_SD_LOG)) for k in KINETICS}
    eff["treg"] = float(rng.normal(0.0, TREG_PATIENT_SD))
    eff["naive_b"] = float(rng.normal(0.0, NAIVE_PATIENT_SD))
    eff["dn"] = float(rng.normal(0.0, 0.2))
    eff["dp"] = float(rng.normal(0.0, 0.2))
    eff["enrolled_day"] = int(rng.integers(0, 540))
    # Drawn after the effects above, which therefore keep their values.
    eff["strong_depletion"] = bool(rng.random() < STRONG_DEPLETION_SHARE)
    eff["ldg"] = bool(rng.random() < LDG_PATIENT_SHARE)
    eff["shoulder"] = bool(rng.random() < SHOULDER_PATIENT_SHARE)
    lo, hi = np.log(SHOULDER_IGD_LOW_RATIO)
    eff["igd_low_ratio"] = float(np.exp(rng.uniform(lo, hi)))
    return eff


def _visit_truth(seed: int, p: int, v: int, patient: dict) -> dict[str, float]:
    """True absolute counts (x10^9/L) and shares (%) of one patient at one visit."""
    rng = np.random.default_rng([seed, _VISIT_TAG, p, v])
    t = {}
    for k, medians in KINETICS.items():
        t[k] = medians[v] * float(np.exp(patient[k] + rng.normal(0.0, VISIT_SD_LOG)))
    treg = TREG_PCT_OF_CD4[v] + patient["treg"] + rng.normal(0.0, TREG_VISIT_SD)
    naive = NAIVE_PCT_OF_B[v] + patient["naive_b"] + rng.normal(0.0, NAIVE_VISIT_SD)
    fbc = float(np.exp(rng.normal(0.0, FBC_CV)))
    lymph_factor = float(rng.uniform(*STRONG_LYMPH_FACTOR))
    mono_factor = float(rng.uniform(*STRONG_MONOCYTE_FACTOR))
    ldg_share = float(rng.uniform(*LDG_SHARE_RANGE))
    if patient["strong_depletion"] and v in NADIR_VISITS:
        for k in ("cd4", "cd8", "b", "nk"):
            t[k] *= lymph_factor
        t["monocyte"] *= mono_factor
    t["granulocyte_share"] = ldg_share if patient["ldg"] else 0.0
    t["treg_pct"] = float(np.clip(treg, 1.0, 40.0))
    t["naive_b_pct"] = float(np.clip(naive, 10.0, 99.0))
    dn = DN_PCT_OF_T / 100.0 * np.exp(patient["dn"])
    dp = DP_PCT_OF_T / 100.0 * np.exp(patient["dp"])
    t_total = (t["cd4"] + t["cd8"]) / (1.0 - dn - dp)
    t["dn"], t["dp"] = dn * t_total, dp * t_total
    lymph = t_total + t["b"] + t["nk"]
    t["lymphocytes"] = lymph
    t["lymphocyte_count"] = lymph * fbc
    return t


def _cell_abundance(panel: str, visit: dict[str, float]) -> dict[str, float]:
    """Absolute count (x10^9/L) of each cell type of the panel's legend.

    Low-density granulocytes are ``granulocyte_share`` of all cells of the file.
    """
    if panel == "T":
        treg = visit["cd4"] * visit["treg_pct"] / 100.0
        out = {
            "t_cd4_conv": visit["cd4"] - treg,
            "t_cd4_treg": treg,
            "t_cd8": visit["cd8"],
            "t_dn": visit["dn"],
            "t_dp": visit["dp"],
            "nk": visit["nk"],
            "b_cell": visit["b"],
            "monocyte": visit["monocyte"],
        }
    else:
        naive = visit["b"] * visit["naive_b_pct"] / 100.0
        memory = visit["b"] - naive
        out = {
            "t_cell": visit["cd4"] + visit["cd8"] + visit["dn"] + visit["dp"],
            "nk": visit["nk"],
            "b_naive": naive,
        }
        out.update({k: memory * w for k, w in MEMORY_B_SPLIT.items()})
        out["monocyte"] = visit["monocyte"]
    share = visit.get("granulocyte_share", 0.0)
    out["granulocyte"] = sum(out.values()) * share / (1.0 - share)
    return out


# --- Phenotypes ---------------------------------------------------------------------

# A subset is (weight within the type, {marker: (median, lognormal sd)}); markers not
# named are negative. Weights may depend on the visit (naive/memory shares).
_Subsets = list[tuple[float, dict[str, tuple[float, float]]]]


def _phenotypes(
    panel: str, v: int, shoulder: bool = False, igd_low_ratio: float = 0.2
) -> dict[str, _Subsets]:
    """Subsets per cell type; ``shoulder`` gives the IgD and CD4-dim shoulders, with the
    IgD-low B cells at ``igd_low_ratio`` x the naive B cells' IgD (true intensity)."""
    naive_t = NAIVE_T_SHARE[v]
    if panel == "T":
        cd3 = {"CD3": (8000.0, 0.45)}
        cd4 = {**cd3, "CD4": (6000.0, 0.40)}
        ra = {"CD45RA": (5000.0, 0.45)}
        act = 0.10  # activated conventional CD4: CD25 int, CD127 int
        dim = CD4_DIM_SHARE if shoulder else 0.0  # CD4-dim memory cells: a CD4 shoulder
        rest_n = {**cd4, **ra, "CD127": (2500.0, 0.45), "CD25": (150.0, 0.9)}
        rest_m = {**cd4, "CD127": (2500.0, 0.45), "CD25": (300.0, 0.8)}
        activated = {**cd4, "CD127": (1100.0, 0.45), "CD25": (1100.0, 0.45)}
        treg = {**cd4, "CD4": (5500.0, 0.40), "CD25": (3000.0, 0.50), "CD127": (300.0, 0.6)}
        cd8 = {**cd3, "CD8": (12000.0, 0.40)}
        return {
            "t_cd4_conv": [
                ((1 - act - dim) * naive_t, rest_n),
                ((1 - act - dim) * (1 - naive_t), rest_m),
                (act, activated),
                (dim, {**rest_m, "CD4": (2500.0, 0.45)}),
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
            "granulocyte": [(1.0, {})],  # autofluorescent, negative for the T panel
        }
    trans = TRANSITIONAL_SHARE[v]
    cd19 = {"CD19": (5000.0, 0.40)}
    cd27 = (3000.0, 0.50)
    cd27_dim = (700.0, 0.50)
    memory = {**cd19, "CD24": (5000.0, 0.45), "CD38": (400.0, 0.6)}
    if shoulder:  # IgD-dim naive and IgD-low memory: one IgD peak with a shoulder
        igd_naive, igd_trans, igd_unsw = (1500.0, 0.5), (1800.0, 0.5), (1500.0, 0.5)
        igd_neg: dict[str, tuple[float, float]] = {"IgD": (1500.0 * igd_low_ratio, 0.5)}
    else:
        igd_naive, igd_trans, igd_unsw = (4000.0, 0.5), (5000.0, 0.5), (3000.0, 0.5)
        igd_neg = {}
    switched = {**memory, **igd_neg}
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
            (1 - trans, {**cd19, "IgD": igd_naive, "CD24": (2000.0, 0.5), "CD38": (1500.0, 0.5)}),
            (trans, {**cd19, "IgD": igd_trans, "CD24": (8000.0, 0.45), "CD38": (8000.0, 0.45)}),
        ],
        "b_memory_switched": [
            (0.8, {**switched, "CD27": cd27}),
            (0.2, {**switched, "CD27": cd27_dim}),
        ],
        "b_memory_unswitched": [
            (0.8, {**memory, "IgD": igd_unsw, "CD27": cd27}),
            (0.2, {**memory, "IgD": igd_unsw, "CD27": cd27_dim}),
        ],
        "b_dn": [(1.0, {**cd19, **igd_neg, "CD24": (2000.0, 0.6), "CD38": (300.0, 0.7)})],
        "monocyte": [(1.0, {"CD38": (1500.0, 0.5)})],
        "granulocyte": [(1.0, {"CD24": (9000.0, 0.45), "CD38": (500.0, 0.6)})],
    }


def _scatter_class(cell_type: str) -> str:
    if cell_type.startswith("t_"):
        return "t"
    if cell_type.startswith("b_"):
        return "b"
    return cell_type  # nk, monocyte, granulocyte


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


def _tables(
    panel: str,
    v: int,
    marker_scale: np.ndarray,
    shoulder: bool = False,
    igd_low_ratio: float = 0.2,
) -> _Tables:
    markers = PANEL_MARKERS[panel]
    pheno = _phenotypes(panel, v, shoulder, igd_low_ratio)
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
    af = np.array([AF_FACTOR.get(t, AF_FACTOR["lymphocyte"]) for t in types])
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


# --- One sample: biology ------------------------------------------------------------


@dataclass(frozen=True)
class _Clog:
    """How the signal of a clog's events is disturbed (drawn per clogged file)."""

    gap_s: float  # seconds without events before the burst
    fluor_scale: float  # x every fluorescence detector signal
    fluor_shift: float  # + units (Fortessa-equivalent) on every detector
    fsc_scale: float  # x FSC-A and FSC-H
    ssc_scale: float  # x SSC-A


@dataclass
class _Events:
    """The biology of one file in acquisition order, before any detector."""

    fluor: np.ndarray  # (n, 7) float32 true intensity per marker of PANEL_MARKERS (units)
    af: np.ndarray  # (n,) float32 autofluorescence level (x a lymphocyte's)
    scatter: np.ndarray  # (n, 3) FSC-A, FSC-H, SSC-A (Fortessa units, noise-free)
    labels: np.ndarray  # (n,) uint8 codes of LEGENDS[panel]
    time: np.ndarray  # (n,) float64 acquisition time (s), non-decreasing
    artifact: np.ndarray  # (n,) bool, events of the clog
    clog: _Clog | None


def _dye(mixture, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Two-component lognormal mixture: component 0 where ``u < share0``."""
    (w0, m0, s0), (_, m1, s1) = mixture
    return np.where(u < w0, m0 * np.exp(s0 * z), m1 * np.exp(s1 * z))


def _cells(rng, tab: _Tables, types: np.ndarray, dead: np.ndarray, via_scale: float):
    """True fluorochrome intensities, autofluorescence level and scatter of cells.

    Returns ``(fluor (n, 7) marker space, af (n,) level, fsc_a, fsc_h, ssc_a)`` in
    Fortessa units, before spillover and detector noise.
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
    af = (af_factor * np.exp(AF_CELL_SD * rng.standard_normal(n))).astype(_F32)
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
    af = (0.5 * np.exp(0.5 * rng.standard_normal(n))).astype(_F32)
    fm, fs, sm, ss = SCATTER["debris"]
    s = rng.standard_normal((n, 3))
    fsc = fm * np.exp(fs * s[:, 0])
    ssc = sm * np.exp(ss * s[:, 1])
    return fluor, af, fsc, fsc * (0.9 + 0.06 * s[:, 2]), ssc


def _composition(rng, panel: str, v: int, n_events: int, visit, strong: bool):
    if v in NADIR_VISITS:
        lo, hi = DEBRIS_RANGE_STRONG if strong else DEBRIS_RANGE_NADIR
    else:
        lo, hi = DEBRIS_RANGE
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


def _simulate_events(rng, design: _Design, panel: str, v: int, visit, patient, *, clog: bool):
    """The biology of one file (profile-independent): see :class:`_Events`."""
    n_events = design.events
    n_types = len(PANEL_TYPES[panel])
    marker_scale = rng.uniform(*MARKER_SCALE_RANGE, size=7)
    fsc_scale, ssc_scale = rng.uniform(*SCATTER_SCALE_RANGE, size=2)
    tab = _tables(
        panel,
        v,
        marker_scale,
        shoulder=bool(patient["shoulder"]),
        igd_low_ratio=float(patient["igd_low_ratio"]),
    )
    n_debris, n_doublet, n_dead, n_live, prob, p_dead = _composition(
        rng, panel, v, n_events, visit, bool(patient["strong_depletion"])
    )
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
    d_fsch = np.maximum(h1, h2) + extra * np.minimum(h1, h2)
    g_fluor, g_af, g_fsc, g_fsch, g_ssc = _debris(rng, n_debris, marker_scale[6])
    fluor = np.concatenate([fluor[:n_single], fluor[a] + fluor[b], g_fluor])
    af = np.concatenate([af[:n_single], af[a] + af[b], g_af])
    scatter = np.empty((n_events, 3))
    scatter[:, 0] = np.concatenate([fsc[:n_single], fsc[a] + fsc[b], g_fsc]) * fsc_scale
    scatter[:, 1] = np.concatenate([fsch[:n_single], d_fsch, g_fsch]) * fsc_scale
    scatter[:, 2] = np.concatenate([ssc[:n_single], ssc[a] + ssc[b], g_ssc]) * ssc_scale
    labels = np.concatenate(
        [
            live_types + 2,
            dead_types + 2 + n_types,
            np.ones(n_doublet, np.int64),
            np.zeros(n_debris, np.int64),
        ]
    ).astype(np.uint8)
    order = rng.permutation(n_events)  # acquisition order
    time, artifact, disturbance = _timing(rng, n_events, clog)
    return _Events(
        fluor[order], af[order], scatter[order], labels[order], time, artifact, disturbance
    )


def _timing(rng, n: int, clog: bool):
    """Acquisition times (s), the clog's events and its disturbance.

    Steady acquisition is a Poisson process over ``DURATION_RANGE`` seconds; a clog
    inserts a gap of ``CLOG_GAP_S`` before its events, which arrive at
    ``CLOG_BURST_RANGE`` times the steady rate.
    """
    duration = rng.uniform(*DURATION_RANGE)
    gaps = rng.exponential(1.0, n)
    artifact = np.zeros(n, bool)
    disturbance = None
    if clog:
        n_art = max(1, round(rng.uniform(*CLOG_EVENT_RANGE) * n))
        i0 = int(rng.integers(int(0.2 * n), int(0.8 * n)))
        artifact[i0 : i0 + n_art] = True
        gaps[artifact] /= rng.uniform(*CLOG_BURST_RANGE)
        disturbance = _Clog(
            gap_s=float(rng.uniform(*CLOG_GAP_S)),
            fluor_scale=float(rng.uniform(*CLOG_FLUOR_SCALE)),
            fluor_shift=float(rng.uniform(*CLOG_FLUOR_SHIFT)),
            fsc_scale=float(rng.uniform(*CLOG_FSC_SCALE)),
            ssc_scale=float(rng.uniform(*CLOG_SSC_SCALE)),
        )
    gaps *= duration / gaps[~artifact].sum()
    if disturbance is not None:
        gaps[int(np.argmax(artifact))] += disturbance.gap_s
    return np.cumsum(gaps), artifact, disturbance


# --- One sample: instrument ---------------------------------------------------------


def _acquire(rng, design: _Design, panel: str, ev: _Events) -> np.ndarray:
    """Detector values of one file in the profile's encoding, ``(n, n_channels)``.

    Detector signal = true intensities x brightness @ S + autofluorescence, plus
    electronic and photon noise (float32, Fortessa-equivalent units); a clog's events
    are then disturbed; the profile's encoding turns signal, scatter and time into
    the stored values.
    """
    prof = design.profile
    n = ev.labels.size
    n_det = len(prof.detectors)
    s = design.spillover_sim.astype(_F32)
    bright = np.asarray(prof.brightness, dtype=_F32)
    af_z = rng.standard_normal((n, n_det), dtype=_F32)
    signal = np.exp(_F32(AF_DETECTOR_SD) * af_z)
    signal *= np.asarray(prof.autofluorescence, dtype=_F32)
    signal *= ev.af[:, None]
    # An explicit sum over the sources, not BLAS, keeps results independent of the
    # number of BLAS threads.
    for j, det in enumerate(prof.assignment[panel]):
        d = prof.detectors.index(det)
        signal += (ev.fluor[:, j : j + 1] * bright[d]) * s[d]
    noise_sd = np.asarray(prof.electronic_sd) * rng.uniform(*NOISE_FILE_RANGE, size=n_det)
    variance = np.maximum(signal, _F32(0.0))
    variance *= np.asarray(prof.photon_k, dtype=_F32)
    variance += (noise_sd**2).astype(_F32)
    raw = rng.standard_normal((n, n_det), dtype=_F32)
    raw *= np.sqrt(variance)
    raw += signal
    scatter = ev.scatter * np.array([prof.scatter_gain[0]] * 2 + [prof.scatter_gain[1]])
    scatter *= 1.0 + prof.scatter_cv * rng.standard_normal((n, 3))
    if ev.clog is not None:
        c, art = ev.clog, ev.artifact
        raw[art] *= _F32(c.fluor_scale)
        raw[art] += _F32(c.fluor_shift)
        scatter[art, :2] *= c.fsc_scale
        scatter[art, 2] *= c.ssc_scale
    ticks = ev.time / prof.timestep
    if prof.encoding == "linear":
        data = np.empty((n, 3 + n_det + 1), dtype=np.float32)
        data[:, 0:3] = np.clip(scatter, None, _MAX_VALUE)
        data[:, 3:-1] = np.clip(raw, None, _MAX_VALUE)
        data[:, -1] = ticks
        return data
    if prof.encoding == "logicle":
        return _encode_canto(design, raw, scatter, ticks)
    return _encode_log(prof, raw, scatter, ticks)


def _encode_canto(design: _Design, raw: np.ndarray, scatter: np.ndarray, ticks: np.ndarray):
    """flowCore export: compensated, logicle(T 262144, W 0.5, M 4.5, A 0) x 4096."""
    raw = np.clip(raw, None, _MAX_VALUE).astype(np.float64)  # digitiser saturation
    inv = np.linalg.inv(design.spillover_sim)
    comp = np.zeros_like(raw)
    for i in range(raw.shape[1]):  # raw @ inv(S), summed explicitly (no BLAS)
        comp += raw[:, i : i + 1] * inv[i]
    logicle = Logicle(**CANTO_LOGICLE)
    data = np.empty((raw.shape[0], 3 + raw.shape[1] + 1), dtype=np.float32)
    data[:, 0:3] = np.clip(scatter, None, _MAX_VALUE)
    for j in range(raw.shape[1]):  # one detector at a time bounds the solver's memory
        data[:, 3 + j] = np.clip(logicle.apply(comp[:, j]) * CANTO_SCALE, 0.0, CANTO_SCALE)
    data[:, -1] = np.floor(ticks)  # whole ticks of $TIMESTEP
    return data


def _encode_log(prof: Profile, raw: np.ndarray, scatter: np.ndarray, ticks: np.ndarray):
    """Analogue 4-decade log amplifier: channel = round(256 log10(max(linear, 1)))."""
    linear = raw.astype(np.float64) * np.asarray(prof.log_gain) + LOG_OFFSET
    top = LOG_RANGE - 1
    channel = np.rint(LOG_RANGE / LOG_DECADES * np.log10(np.maximum(linear, 1.0)))
    data = np.empty((raw.shape[0], 3 + raw.shape[1] + 1), dtype=np.uint16)
    data[:, 0:3] = np.clip(np.rint(scatter), 0, top)
    data[:, 3:-1] = np.clip(channel, 0, top)
    data[:, -1] = np.clip(np.floor(ticks), 0, top)
    return data


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
    design: _Design, sid: str, p: int, v: int, panel: str, last_s: float, enrolled_day: int
) -> dict[str, str]:
    """TEXT keywords of one file; dates and clock times are derived, not read."""
    prof = design.profile
    acquired = _dt.date(2015, 1, 5) + _dt.timedelta(
        days=int(enrolled_day) + round(VISITS[v] * 30.4375)
    )
    start = 9 * 3600 + 600 * (2 * p % 36) + (0 if panel == "T" else 420)
    end = start + int(np.ceil(last_s))
    text = {
        "$CYT": prof.cytometer,
        "$SRC": sid,
        "$FIL": f"{sid}.fcs",
        "$DATE": acquired.strftime("%d-%b-%Y").upper(),
        "$BTIM": _clock(start),
        "$ETIM": _clock(end),
        "$TIMESTEP": f"{prof.timestep:g}",
        "$PROJ": "ALEVIATE-like simulated cohort",
        "TUBE NAME": f"{panel} cell panel",
        "IMMUNO SIMULATION": f"seed={design.seed} events={design.events} profile={prof.name}",
    }
    if prof.encoding == "log":
        text.update({f"$P{i}R": str(LOG_RANGE) for i in range(1, len(prof.channels) + 1)})
    elif prof.encoding == "logicle":
        # What flowCore writes after compensate() + transform(): the ranges of the
        # transformed channels and a note that a transformation was applied.
        text["transformation"] = "custom"
        for i in range(4, 4 + len(prof.detectors)):
            text[f"$P{i}R"] = f"{CANTO_SCALE:g}"
            text[f"flowCore_$P{i}Rmax"] = f"{CANTO_SCALE:g}"
            text[f"flowCore_$P{i}Rmin"] = "0"
    return text


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


def _profile_text(prof: Profile) -> str:
    """The README paragraph on how the profile stores values."""
    if prof.encoding == "linear":
        return (
            f"FCS 3.1, float32, raw linear **uncompensated** values, `$PnR` {PNR} on every "
            f"channel; `Time` in ticks of `$TIMESTEP` {prof.timestep:g} s. Compensate with "
            "the file's `$SPILLOVER`."
        )
    if prof.encoding == "logicle":
        lg = CANTO_LOGICLE
        return (
            "FCS 3.1, float32, as a flowCore/GatingSet export writes it: fluorescence is "
            "**already compensated** (with the matrix in `$SPILLOVER`, which is kept) and "
            f"**logicle-transformed** (T {lg['T']:g}, W {lg['W']:g}, M {lg['M']:g}, "
            f"A {lg['A']:g}), times {CANTO_SCALE:g} and clipped to 0..{CANTO_SCALE:g} "
            f"(`$PnR` {CANTO_SCALE:g}); compensating or transforming again is wrong. "
            f"Scatter is linear raw (`$PnR` {PNR}); `Time` is whole ticks of "
            f"`$TIMESTEP` {prof.timestep:g} s. flowCore's `transformation` (`custom`) "
            "and `flowCore_$PnRmax`/`flowCore_$PnRmin` keywords are written."
        )
    return (
        f"FCS 3.1, `$DATATYPE I`, 16-bit unsigned integers, `$PnR` {LOG_RANGE} on every "
        f"channel. Fluorescence is **log-amplified over {LOG_DECADES} decades** (`$PnE "
        f"{LOG_DECADES},0`: channel `x` means the linear value `10^({LOG_DECADES} x / "
        f"{LOG_RANGE})`), from the uncompensated signal times a per-detector gain "
        f"({', '.join(f'{g:g}' for g in prof.log_gain)}) plus a baseline of "
        f"{LOG_OFFSET:g}, so negatives sit near 1-10 and the brightest cells below 10^4; "
        f"`x = round({LOG_RANGE // LOG_DECADES} log10(max(linear, 1)))`, clipped to "
        f"0..{LOG_RANGE - 1}. Scatter is linear channel numbers (`$PnE 0,0`, Fortessa "
        f"units x {prof.scatter_gain[0] * 256:g}/256 for FSC and "
        f"x {prof.scatter_gain[1] * 256:g}/256 for SSC); `Time` is whole ticks of "
        f"`$TIMESTEP` {prof.timestep:g} s. `$SPILLOVER` applies to the decoded linear "
        "values."
    )


def _readme(design: _Design, n_files: int, effects: list[dict], clogs) -> str:
    prof = design.profile
    n_pat = len(effects)
    legend_t = ", ".join(f"{i}={n}" for i, n in enumerate(LEGENDS["T"]))
    legend_b = ", ".join(f"{i}={n}" for i, n in enumerate(LEGENDS["B"]))
    missed = ", ".join(
        f"{patient_id(p)} month {visit_label(v)}" for p, v in design.missed if p < n_pat
    )
    withdrawn = ", ".join(
        f"{patient_id(p)} ({design.dose[p]})" for p in design.withdrawn if p < n_pat
    )
    aliases = ", ".join(
        f"{patient_id(p)}: {n}"
        for p, n in enumerate(design.viability_name[:n_pat])
        if n != VIABILITY_NAMES[0]
    )

    def flagged(key: str) -> str:
        return ", ".join(patient_id(p) for p, e in enumerate(effects) if e[key]) or "none"

    clog_list = (
        ", ".join(
            f"{sid} ({n:,} events, {100.0 * n / design.events:.1f}%, gap {gap:.1f} s)"
            for sid, (n, gap) in sorted(clogs.items())
        )
        or "none"
    )
    spill = "\n".join(
        "| " + src + " | " + " | ".join(f"{x:.4f}" for x in design.spillover[i]) + " |"
        for i, src in enumerate(prof.detectors)
    )
    assign = {p: dict(zip(prof.assignment[p], PANEL_MARKERS[p], strict=True)) for p in PANELS}
    det_rows = "\n".join(
        f"| {d} | {assign['T'].get(d, '(unused)')} | {assign['B'].get(d, '(unused)')} | "
        f"{prof.electronic_sd[i]:g} | {prof.autofluorescence[i]:g} | {prof.brightness[i]:g} |"
        for i, d in enumerate(prof.detectors)
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
    patients_line = (
        f"all {N_PATIENTS} patients"
        if n_pat == N_PATIENTS
        else f"the first {n_pat} of {N_PATIENTS} patients (`patients={n_pat}`)"
    )
    return f"""# Simulated ALEVIATE-like immunophenotyping cohort

Written by `immuno simulate` (`immuno.simulate.simulate_cohort`) with **seed {design.seed}**,
**{design.events:,} events per file** and instrument profile **`{prof.name}`**
({prof.cytometer}): {n_files} FCS files of {patients_line}. The same seed, event count
and profile give byte-identical files; the biology (labels, truth) is the same in every
profile. Everything here is simulated; no patient data.

## Design

- 23 patients P01-P23: 13 on alemtuzumab 30 mg, 10 on 60 mg (doses at months 0 and 6);
  no dose-group difference is simulated.
- Visits at months {", ".join(visit_label(v) for v in range(len(VISITS)))}; a T cell and a
  B cell tube per visit (`<patient>_m<month>_<T|B>`).
- Withdrawn after month 6 (no 7.5/9/12 visits): {withdrawn or "none"}.
- Missed visits (both tubes): {missed or "none"}.
- Viability `$PnS` aliases (others: `{VIABILITY_NAMES[0]}`): {aliases or "none"}.
- Files with a clog (a gap in Time, then a burst of events with disturbed signal,
  flagged `time_artifact` in the truth): {clog_list}.

Median kinetics (patient-level lognormal sd {PATIENT_SD_LOG}, visit sd {VISIT_SD_LOG} for
counts; Treg sd {TREG_PATIENT_SD}/{TREG_VISIT_SD} and naive B sd
{NAIVE_PATIENT_SD}/{NAIVE_VISIT_SD} percentage points patient/visit; DN T {DN_PCT_OF_T:g}%
and DP T {DP_PCT_OF_T:g}% of T cells):

| month | {" | ".join(visit_label(v) for v in range(len(VISITS)))} |
|---|{"---|" * len(VISITS)}
{kin}

## Harder biology

- **Clogs** ({CLOG_FRACTION:.0%} of the cohort's files, listed above): Time jumps by
  {CLOG_GAP_S[0]:g}-{CLOG_GAP_S[1]:g} s with no events, then
  {CLOG_EVENT_RANGE[0]:.0%}-{CLOG_EVENT_RANGE[1]:.0%} of the file's events (uniform, per
  file) arrive at {CLOG_BURST_RANGE[0]:g}-{CLOG_BURST_RANGE[1]:g}x the steady rate with
  fluorescence x {CLOG_FLUOR_SCALE[0]:g}-{CLOG_FLUOR_SCALE[1]:g} plus
  {CLOG_FLUOR_SHIFT[0]:g}-{CLOG_FLUOR_SHIFT[1]:g} units, FSC x
  {CLOG_FSC_SCALE[0]:g}-{CLOG_FSC_SCALE[1]:g} and SSC x
  {CLOG_SSC_SCALE[0]:g}-{CLOG_SSC_SCALE[1]:g}. Acquisition before and after is steady
  ({DURATION_RANGE[0]:g}-{DURATION_RANGE[1]:g} s per file). The truth npz's
  `time_artifact` marks exactly these events; a time QC is scored against it.
- **Depleted visits**: at months 1.5 and 7.5 monocytes and debris outnumber
  lymphocytes. Strongly depleted patients (each patient with probability
  {STRONG_DEPLETION_SHARE:.0%}; here {flagged("strong_depletion")}) have their nadir CD4,
  CD8, B and NK counts x
  {STRONG_LYMPH_FACTOR[0]:g}-{STRONG_LYMPH_FACTOR[1]:g}, monocytes x
  {STRONG_MONOCYTE_FACTOR[0]:g}-{STRONG_MONOCYTE_FACTOR[1]:g} and
  {DEBRIS_RANGE_STRONG[0]:.0%}-{DEBRIS_RANGE_STRONG[1]:.0%} debris, so lymphocytes are
  roughly 10-25% of live singlets there.
- **Low-density granulocytes** (`granulocyte`, not a lymphocyte): patients with LDGs
  (probability {LDG_PATIENT_SHARE:.0%}; here {flagged("ldg")}) carry
  {LDG_SHARE_RANGE[0]:.0%}-{LDG_SHARE_RANGE[1]:.0%} of cells (per visit, both tubes) of
  high-SSC granulocytes (FSC-A ~85,000, SSC-A ~110,000; CD24-bright, CD38-dim
  in the B tube, marker-negative and autofluorescent in the T tube).
- **Shoulders**: in patients with shoulders (probability {SHOULDER_PATIENT_SHARE:.0%};
  here {flagged("shoulder")}) naive B cells are IgD-dim
  (~1,500) and IgD- memory/double-negative B cells IgD-low
  ({SHOULDER_IGD_LOW_RATIO[0]:g}-{SHOULDER_IGD_LOW_RATIO[1]:g} x the naive level per patient), so
  IgD on CD19+ cells is one peak with a shoulder; {CD4_DIM_SHARE:.0%} of their conventional CD4 T
  cells are CD4-dim (~2,500 vs ~6,000). Labels stay exact.
- Per file, each marker's positive intensity x {MARKER_SCALE_RANGE[0]:g}-{MARKER_SCALE_RANGE[1]:g},
  FSC and SSC x {SCATTER_SCALE_RANGE[0]:g}-{SCATTER_SCALE_RANGE[1]:g}, each detector's
  electronic noise x {NOISE_FILE_RANGE[0]:g}-{NOISE_FILE_RANGE[1]:g}.

## Instrument profile `{prof.name}`

{_profile_text(prof)}

Channels in file order: {", ".join(prof.channels)}. Scatter and time are found by `$PnN`
(FSC-A, FSC-H, SSC-A, Time), fluorescence by `$PnS` (the marker; the viability `$PnS` is
one of {", ".join(VIABILITY_NAMES)}, fixed per patient). Detectors, markers per tube,
electronic noise sd, lymphocyte autofluorescence (Fortessa-equivalent units) and
fluorochrome brightness:

| detector | T tube | B tube | noise sd | autofluorescence | brightness |
|---|---|---|---|---|---|
{det_rows}

Spillover matrix as written in `$SPILLOVER` (rows = source; compensate linear values
with `X @ inv(S)`):

| source \\ detector | {" | ".join(prof.detectors)} |
|---|{"---|" * len(prof.detectors)}
{spill}

Other profiles: {", ".join(f"`{n}`" for n in PROFILE_NAMES)}
(`immuno simulate --profile NAME`).

## Files

- `samples.tsv`: `sample_id, patient_id, dose_group, visit_month, panel, fcs_path`
  (relative to this folder) and `lymphocyte_count` (full-blood-count lymphocytes,
  x10^9/L: the patient's true total lymphocyte count with ~{FBC_CV:.0%} measurement
  noise; the same for both tubes of a visit).
- `fcs/<sample_id>.fcs`: see the instrument profile above. T tube markers:
  {", ".join(PANEL_MARKERS["T"])}; B tube markers: {", ".join(PANEL_MARKERS["B"])}.
- `truth/<sample_id>.npz`: `label` (uint8 per event, FCS event order), `names` (the
  label legend) and `time_artifact` (bool per event: acquired during a clog). Legends:
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
Positive marker intensities are lognormal (CV ~0.4-0.6), negatives ~N(0, 70-120). In
Fortessa units, lymphocytes sit at FSC-A ~60,000 / SSC-A ~15,000, monocytes at ~95,000 /
~40,000, debris below FSC-A 25,000; dead cells have 0.7x FSC, 1.4x SSC and bright
viability dye (~20,000, with a dim-dead tail), live cells dim dye (~100-300 after
compensation, a few dying cells brighter). Singlets have FSC-H ~0.85 x FSC-A; a doublet
sums two cells (FSC-A, SSC-A, fluorescence) with FSC-H about the larger height x ~1.1
({DOUBLET_SIDE_BY_SIDE:.0%} lie side by side and look like singlets). Detector signal =
true intensities x brightness @ S + autofluorescence (per-cell lognormal sd
{AF_CELL_SD:g}, per detector {AF_DETECTOR_SD:g}) + electronic noise + photon noise (sd
proportional to sqrt(signal)), then the profile's encoding; linear values saturate at
262,143 and negative values are kept where the encoding allows. Treg are CD25hi CD127lo;
activated conventional CD4 cells (CD25int CD127int) make the boundary a continuum.
"""
