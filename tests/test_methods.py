"""The methods text is written from the configuration and the gating files of the run."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

from immuno.methods import methods_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config(demo_cohort, templates_dir):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = str(demo_cohort / "samples.tsv")
    cfg["panels"] = {
        "T": str(templates_dir / "t_cell.yaml"),
        "B": str(templates_dir / "b_cell.yaml"),
    }
    return cfg


def _item(text: str, population: str) -> str:
    """The hierarchy item (one line) of a population."""
    hits = re.findall(rf"^\d+\. ``{re.escape(population)}``.*$", text, flags=re.M)
    assert hits, f"{population} is not in the gating hierarchy"
    return hits[0]


def _check_rst(text: str) -> None:
    import docutils.core
    import docutils.utils

    docutils.core.publish_doctree(
        text, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL}
    )


def test_methods_name_every_panel_population_method_test_and_transform(config):
    from immuno.cohort import load_templates

    templates = load_templates(config["panels"])
    text = methods_text(config, templates)
    _check_rst(text)  # valid reStructuredText, no warnings
    for panel, template in templates.items():
        section = text.split(f"Panel {panel}\n")[1].split("\nPanel ")[0]
        for marker in template.panel.markers:
            assert f"- {marker}" in section, marker
        for tid, t in template.panel.transforms.items():
            spec = t.spec()
            line = next(x for x in section.splitlines() if x.startswith(f"- ``{tid}``: "))
            assert spec["type"] in line
            for key, value in spec.items():
                if key != "type":
                    assert f"{key} = {value:g}" in line, (tid, key)
        for spec in template.populations:
            item = _item(section, spec.name)
            assert f"Method ``{spec.method}``" in item
            if spec.fallback:
                assert "Fallback" in item
            for dim, (lo, hi) in spec.threshold_range.items():
                assert f"fitted {dim} within [{lo:g}, {hi:g}]" in item
    assert "each file's own acquisition-defined spillover matrix" in text
    assert "logicle scale ``fluor`` of compensated values" in _item(text, "cd4")
    # Search ranges relative to the data are named as such.
    assert "the parent's 0th to 50th percentiles" in _item(text, "cells")
    assert "lowest valley" in _item(text, "cells")
    assert "BIC" in _item(text, "lymphocytes") and "posterior 0.5" in _item(text, "lymphocytes")
    assert "flags the file for review" in _item(text, "clean")
    assert "values flagged for review" in text and "n_qc_excluded" in text
    # Statistics, from config["statistics"].
    for name in ("Wilcoxon signed-rank", "Mann-Whitney U", "Benjamini-Hochberg"):
        assert name in text
    assert "month 0 (entry) and month 4.5" in text
    for t in config["statistics"]["tests"]:
        assert re.search(rf"^- ``{t['population']}``: ", text, flags=re.M), t
    assert "- ``cd4``: absolute count (x10^9 cells/L)." in text
    assert "- ``treg``: percent of the parent population." in text
    # Software versions.
    for pkg in ("numpy", "scipy", "snakemake", "flowkit"):
        assert f"{pkg} {importlib.metadata.version(pkg)}" in text


def test_methods_follow_the_config_and_the_gating_files(config, templates_dir, tmp_path):
    t_cell = tmp_path / "t_cell.yaml"
    t_cell.write_text(
        (templates_dir / "t_cell.yaml")
        .read_text()
        .replace("params: {k: 3, select", "params: {k: 2.5, select")
    )
    config["panels"] = {"T": str(t_cell)}  # a path is loaded as the workflow loads it
    config["statistics"] = {
        "group_column": "arm",
        "baseline_month": 0,
        "followup_month": 6,
        "tests": [{"population": "cd3", "metric": "percent_of_lymphocytes"}],
    }
    config["export"] = {"population": "treg", "max_events_per_sample": 5000}
    text = methods_text(config, config["panels"])
    _check_rst(text)
    assert "Panel B" not in text
    assert "a cut k = 2.5 robust SDs" in _item(text, "live")
    assert "month 0 (entry) and month 6" in text and "within each arm" in text
    assert "- ``cd3``: percent of lymphocytes." in text
    assert "``cd4``: absolute" not in text
    assert "at most 5000 events per sample" in text and "``treg`` of every sample" in text


def test_a_panel_of_fixed_gates_lists_them(demo_cohort, templates_dir, tmp_path, config):
    """A panel gated with a Gating-ML file (here: one sample's realised gates)."""
    from immuno.autogate import gate_one, load_template
    from immuno.gatingml import write_gatingml
    from immuno.read import read_fcs

    fcs = read_fcs(demo_cohort / "fcs" / "P01_m0_B.fcs")
    res = gate_one(fcs, load_template(templates_dir / "b_cell.yaml"), sample_id="P01_m0_B")
    write_gatingml(res.strategy, tmp_path / "P01_m0_B.xml")
    config["panels"] = {"B": str(tmp_path / "P01_m0_B.xml")}
    text = methods_text(config, config["panels"])
    _check_rst(text)
    assert "Fixed gates from the Gating-ML 2.0 file ``P01_m0_B.xml``" in text
    assert "``lymphocytes``: polygon on FSC-A" in text
    assert "``singlets``: polygon" in text
    for pop in res.strategy.gates:
        assert _item(text, pop)
