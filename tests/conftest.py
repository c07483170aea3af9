"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real FCS test files: ``shared/data`` beside the repository (as in CI).

    Skips the test when the folder is absent on a developer machine; fails under
    CI (``CI`` set), where it must be present.
    """
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing; CI must have shared/ beside the checkout")
        pytest.skip(f"{SHARED_DATA} is missing (clone the repository beside shared/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_fcs(shared_data):
    """Factory: ``shared_fcs("gatingml2_compliance/Gml2/FCSFiles/data1.fcs") -> FCSData``.

    Each file is read once per test session (read-only; tests must not modify
    the returned arrays).
    """
    from immuno.read import read_fcs

    cache: dict[str, object] = {}

    def get(relpath: str):
        if relpath not in cache:
            cache[relpath] = read_fcs(shared_data / relpath)
        return cache[relpath]

    return get


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """A small simulated demo cohort (2,000 events per file): its folder.

    Holds ``samples.tsv``, ``fcs/``, ``truth/`` and ``truth.tsv`` (see
    :func:`immuno.simulate.simulate_cohort`). Read-only for tests: copy files
    before changing them.
    """
    from immuno.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("demo_cohort")
    simulate_cohort(out, seed=11, events=2000)
    return out


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """The shipped gating templates, ``gates/`` of the repository."""
    return Path(__file__).resolve().parents[1] / "gates"
