"""The conda environment for HPC users pins exactly what pyproject.toml pins."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {d.split("==")[0].lower(): d.split("==")[1] for d in project["dependencies"]}
    assert all("==" in d for d in project["dependencies"]), "every dependency is pinned"
    env = yaml.safe_load((ROOT / "envs" / "immuno.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    mirrored = {p.split("==")[0].lower(): p.split("==")[1] for p in pip if "==" in p}
    assert mirrored == pins
    assert "-e .." in pip  # the project itself
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert py == "python=3.11"
