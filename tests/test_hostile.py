"""The structured hostile-input suite (``benchmarks/hostile.py``), a sample of each category.

Every case is one valid input made wrong in one way (an FCS keyword, a Gating-ML or FlowJo
attribute, a template field, a sheet, a config, an odd path), run in a process of its own
through the entry point a user meets. The benchmark runs all of them (figures in
``benchmarks/RESULTS.md``); here every ``EVERY``-th case of each category runs, and each
must return or raise the project's error naming its file, within 5 s and 500 MiB.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EVERY = {"fcs": 15, "gatingml": 15, "flowjo": 6, "template": 20, "sheet": 1, "config": 1, "path": 1}

_spec = importlib.util.spec_from_file_location(
    "hostile", Path(__file__).resolve().parents[1] / "benchmarks" / "hostile.py"
)
hostile = importlib.util.module_from_spec(_spec)
sys.modules["hostile"] = hostile  # its dataclasses look their module up
_spec.loader.exec_module(hostile)


@pytest.mark.parametrize("category", list(EVERY))
def test_hostile_inputs_answer_with_the_projects_error(category, shared_data):
    outcomes = hostile.run_suite(shared_data, every=EVERY[category], only=category)
    assert len(outcomes) >= 5, outcomes
    failed = [o for o in outcomes if o.status != "pass"]
    assert not failed, hostile.summary(outcomes)


def test_the_suite_tells_a_foreign_exception_a_hang_a_crash_and_memory_from_a_pass(tmp_path):
    """The classifier itself: a suite that cannot fail proves nothing."""
    import os
    import time

    from immuno.errors import FCSError

    def foreign():
        raise KeyError("x")

    def hang():
        time.sleep(30)

    def crash():
        os.abort()

    def no_file():
        raise FCSError("bad")

    def named():
        raise FCSError("bad", file="a.fcs")

    def greedy():
        import numpy as np

        np.ones(52_000_000)  # 397 MiB, touched: with the imports over 500

    got = {
        name: hostile.run_isolated(hostile.Case("t", name, fn), timeout=5.0, max_mib=500).status
        for name, fn in {
            "foreign": foreign,
            "hang": hang,
            "crash": crash,
            "no_file": no_file,
            "named": named,
            "greedy": greedy,
        }.items()
    }
    assert got == {
        "foreign": "foreign",
        "hang": "hang",
        "crash": "crash",
        "no_file": "no_file",
        "named": "pass",
        "greedy": "memory",
    }
