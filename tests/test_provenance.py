"""Tests of immuno.provenance: hashes, git commit, versions, and the atomic JSON writer."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

import immuno
from immuno import provenance as P
from immuno.provenance import provenance, write_provenance
from immuno.util import sha256_file

SHEET_HEADER = "sample_id\tpatient_id\tdose_group\tvisit_month\tpanel\tfcs_path\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """Factory: a folder with a sample sheet, FCS stand-ins, two gating files and a counts
    table, laid out as a run sees them; returns ``(config, sheet, templates, outputs)``.

    Provenance hashes bytes and never parses them, so the "FCS files" are small byte
    strings. Two samples share one file; one sample's file is absolute, one is missing
    when ``missing=True``.
    """

    def make(*, missing: bool = False):
        root = tmp_path_factory.mktemp("prov")
        (root / "fcs").mkdir()
        (root / "fcs" / "a.fcs").write_bytes(b"FCS3.1 a" + bytes(range(256)) * 40)
        (root / "fcs" / "b.fcs").write_bytes(b"FCS3.1 b" * 1000)
        absolute = root / "elsewhere.fcs"
        absolute.write_bytes(b"FCS3.1 c")
        rows = [
            ("S1", "P1", "30mg", "0", "T", "fcs/a.fcs"),
            ("S2", "P1", "30mg", "4.5", "T", "fcs/b.fcs"),
            ("S3", "P2", "60mg", "0", "B", str(absolute)),
            ("S4", "P2", "60mg", "0", "T", "fcs/a.fcs"),  # same file as S1
        ]
        if missing:
            rows.append(("S5", "P3", "60mg", "0", "T", "fcs/gone.fcs"))
        sheet = root / "samples.tsv"
        sheet.write_text(SHEET_HEADER + "".join("\t".join(r) + "\n" for r in rows))
        (root / "gates").mkdir()
        (root / "gates" / "t.yaml").write_text("panel: T\n")
        (root / "gates" / "b.yaml").write_text("panel: B\n")
        templates = {"T": str(root / "gates" / "t.yaml"), "B": str(root / "gates" / "b.yaml")}
        counts = root / "results" / "counts.tsv"
        counts.parent.mkdir()
        counts.write_text("sample_id\tpopulation\tcount\nS1\tcd4\t10\n")
        config = {
            "samples": str(sheet),
            "panels": templates,
            "statistics": {"followup_month": 4.5, "missing": math.nan},
            "where": root,  # not JSON: recorded as text
        }
        return config, sheet, templates, [str(counts)]

    return make


def test_hashes_equal_hashlib(make_run):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    root = sheet.parent

    assert rec["sample_sheet"]["sha256"] == _sha(sheet)
    assert {g["panel"]: g["sha256"] for g in rec["gating"]} == {
        p: _sha(Path(t)) for p, t in templates.items()
    }
    expected = {
        "S1": _sha(root / "fcs" / "a.fcs"),
        "S2": _sha(root / "fcs" / "b.fcs"),
        "S3": _sha(root / "elsewhere.fcs"),
        "S4": _sha(root / "fcs" / "a.fcs"),
    }
    assert {sid: s["sha256"] for sid, s in rec["samples"].items()} == expected
    assert rec["samples"]["S3"]["panel"] == "B"
    # one entry per distinct file, with its size
    assert len(rec["fcs_files"]) == 3
    for path, entry in rec["fcs_files"].items():
        assert entry == {"sha256": _sha(Path(path)), "bytes": Path(path).stat().st_size}
    out = rec["outputs"][outputs[0]]
    assert out["sha256"] == _sha(Path(outputs[0])) == sha256_file(outputs[0])
    assert out["bytes"] == Path(outputs[0]).stat().st_size
    assert out["modified"].endswith("+00:00")


def test_every_counts_row_traces_to_a_file_hash(make_run):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    counts = Path(outputs[0]).read_text().splitlines()[1:]
    for line in counts:
        sid = line.split("\t")[0]
        entry = rec["samples"][sid]
        assert rec["fcs_files"][entry["fcs_path"]]["sha256"] == entry["sha256"]


def test_templates_as_a_list(make_run):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, list(templates.values()), outputs)
    assert [g["panel"] for g in rec["gating"]] == [None, None]
    assert [g["sha256"] for g in rec["gating"]] == [_sha(Path(t)) for t in templates.values()]


def test_missing_files_are_recorded_not_fatal(make_run):
    config, sheet, templates, outputs = make_run(missing=True)
    rec = provenance(config, sheet, templates, [*outputs, "results/not_there.tsv"])
    assert rec["samples"]["S5"]["sha256"] is None
    assert rec["outputs"]["results/not_there.tsv"] == {
        "sha256": None,
        "bytes": None,
        "modified": None,
    }


def test_config_as_used_and_its_hash(make_run):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    assert rec["config"]["statistics"] == {"followup_month": 4.5, "missing": None}
    assert rec["config"]["where"] == str(config["where"])
    canonical = json.dumps(rec["config"], sort_keys=True, separators=(",", ":")).encode()
    assert rec["config_sha256"] == hashlib.sha256(canonical).hexdigest()


def test_versions_platform_and_timestamps(make_run):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    pkgs = rec["packages"]
    assert pkgs["python"].count(".") == 2
    assert pkgs["immuno"] == immuno.__version__
    for name in ("numpy", "pandas", "scipy", "snakemake", "flowio", "flowkit"):
        assert pkgs[name], name
    assert set(P.PACKAGES) <= set(pkgs)
    assert P.package_versions(["surely-not-installed-xyz"])["surely-not-installed-xyz"] is None
    assert rec["platform"]["system"]
    assert rec["schema"] == "immuno-provenance/1"
    assert rec["started"] <= rec["created"]


def test_git_commit_outside_git_is_unknown(tmp_path):
    assert P.git_commit(tmp_path) == {"commit": "unknown", "dirty": None}


def test_git_commit_without_git_is_unknown(tmp_path, monkeypatch, make_run):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert P.git_commit(Path(__file__).parent) == {"commit": "unknown", "dirty": None}
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs, workflow_dir=Path(__file__).parent)
    assert rec["workflow"]["commit"] == "unknown"


def test_git_commit_inside_a_repository(tmp_path):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    (tmp_path / "Snakefile").write_text("# v1\n")
    git("add", "Snakefile")
    git("commit", "-q", "-m", "v1")
    head = git("rev-parse", "HEAD")
    assert P.git_commit(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "Snakefile").write_text("# v2\n")
    assert P.git_commit(tmp_path / ".") == {"commit": head, "dirty": True}


def test_write_provenance_is_valid_json(make_run, tmp_path):
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    path = write_provenance(rec, tmp_path / "results" / "provenance.json")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert json.loads(text) == rec
    assert os.listdir(path.parent) == ["provenance.json"]  # no temporary file left


def test_write_provenance_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "provenance.json"
    path.write_text('{"old": true}\n')

    # a record that cannot be JSON (NaN is not valid JSON): the old file stays
    with pytest.raises(ValueError):
        write_provenance({"x": math.nan}, path)
    assert path.read_text() == '{"old": true}\n'

    # a write that dies half-way: the old file stays, no temporary file is left
    def half_write(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_provenance({"new": list(range(100))}, path)
    monkeypatch.undo()
    assert path.read_text() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["provenance.json"]
