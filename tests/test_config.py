"""The workflow configuration: unknown keys, schema errors in one line, study defaults."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from immuno.config import check_config, check_populations, defined_populations, study_defaults
from immuno.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE = {"samples": "s.tsv", "panels": {"T": "t.yaml"}}


def _templates(*names):
    return {"T": SimpleNamespace(populations=[SimpleNamespace(name=n) for n in names])}


def _defined(*names):
    return defined_populations(_templates(*names))


@pytest.mark.parametrize(
    "extra, field, hint",
    [
        ({"statistcs": {}}, "statistcs", "did you mean 'statistics'?"),
        ({"statistics": {"follow_up_month": 6}}, "statistics.follow_up_month", "'followup_month'"),
        ({"sample": "x.tsv"}, "sample", "'samples'"),
        ({"figure": {"subsets": [{"population": "treg", "metric": "m", "lable": "x"}]}},
         "figure.subsets[0].lable", "'label'"),
        ({"zzz": 1}, "zzz", "known keys here: samples"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_refused_with_the_nearest_name(extra, field, hint):
    with pytest.raises(ConfigError) as err:
        check_config({**BASE, **extra}, SCHEMA, source="study.yaml")
    assert err.value.field == field and hint in str(err.value) and "study.yaml" in str(err.value)


def test_a_schema_violation_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        check_config({**BASE, "statistics": {"followup_month": "six"}}, SCHEMA)
    assert err.value.field == "statistics.followup_month"
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    with pytest.raises(ConfigError, match="'panels' is a required property"):
        check_config({"samples": "s.tsv"}, SCHEMA)
    check_config({**BASE, "panels": {"Tcell": "t.yaml", "Bcell": "b.yaml"}}, SCHEMA)


def test_defaults_follow_the_populations_the_study_gates():
    cfg = {**BASE}
    notes = study_defaults(
        cfg, _defined("lymphocytes", "cd3", "cd4", "cd8", "treg"), has_counts=True
    )
    assert cfg["statistics"]["tests"] == [
        {"population": "cd4", "metric": "absolute_count"},
        {"population": "cd8", "metric": "absolute_count"},
        {"population": "treg", "metric": "percent_of_parent"},
    ]
    assert cfg["figure"]["absolute"] == ["cd4", "cd8"]
    assert [s["population"] for s in cfg["figure"]["subsets"]] == ["treg"]
    assert len(notes) == 3
    # without lymphocyte counts in the sheet, the tests are on % of lymphocytes
    cfg = {**BASE}
    study_defaults(cfg, _defined("cd19", "naive_b"), has_counts=False)
    assert cfg["statistics"]["tests"][0] == {
        "population": "cd19",
        "metric": "percent_of_lymphocytes",
    }
    # what the config gives is kept
    cfg = {**BASE, "statistics": {"tests": []}, "figure": {"absolute": [], "subsets": []}}
    assert study_defaults(cfg, _defined("cd4"), has_counts=True) == []
    assert cfg["statistics"]["tests"] == []


def test_a_population_the_gating_does_not_define_is_refused():
    cfg = {**BASE, "statistics": {"tests": [{"population": "cd04", "metric": "absolute_count"}]}}
    with pytest.raises(ConfigError) as err:
        check_populations(cfg, _defined("lymphocytes", "cd4"))
    assert err.value.field == "statistics.tests[0].population" and "'cd4'" in str(err.value)
    cfg = {**BASE, "lymphocyte_population": "lymphs"}
    with pytest.raises(ConfigError, match="lymphocytes"):
        check_populations(cfg, _defined("lymphocytes", "cd4"))
    # a FlowJo panel names its populations per sample: nothing can be checked
    flowjo = {"W": SimpleNamespace(populations=[], kind="flowjo")}
    assert defined_populations({**_templates("cd4"), **flowjo}) is None
    check_populations({**BASE, "lymphocyte_population": "x"}, None)
