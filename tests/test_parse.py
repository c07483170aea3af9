"""Parsing the workflow writes nothing: `snakemake -n` and `--lint` on the test
configuration (.test/) leave the study folder as it was, and the demo cohort is made by
`make demo`, not while the workflow is parsed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _files(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and ".snakemake" not in p.relative_to(folder).parts
    }


def _study(tmp_path: Path) -> Path:
    work = tmp_path / "study"
    shutil.copytree(ROOT / ".test" / "data", work / "data")
    cfg = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    cfg["panels"] = {k: str((ROOT / ".test" / v).resolve()) for k, v in cfg["panels"].items()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", *args]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True)


def test_a_dry_run_and_the_lint_write_nothing(tmp_path):
    work = _study(tmp_path)
    before = _files(work)
    dry = _snakemake(work, "-n", "--cores", "1")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "fit_batch" in dry.stdout + dry.stderr
    lint = _snakemake(work, "--lint")
    assert lint.returncode == 0, (lint.stdout + lint.stderr)[-3000:]
    assert "in a good condition" in lint.stdout + lint.stderr
    assert _files(work) == before


def test_the_demo_cohort_is_not_made_while_parsing(tmp_path):
    work = tmp_path / "demo_study"
    work.mkdir()
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["panels"] = {k: str(ROOT / v) for k, v in cfg["panels"].items()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = _snakemake(work, "-n", "--cores", "1")
    said = dry.stdout + dry.stderr
    assert dry.returncode != 0
    assert "the demo cohort is not created yet" in said and "make demo" in said
    assert not (work / "data").exists()
