"""Tests of immuno.provenance: hashes, git commit, versions, the atomic JSON writer, and the
HTML rendering of a record for the report (read back, checked, every sample with its hash)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

import immuno
from immuno import provenance as P
from immuno.errors import ImmunoError
from immuno.provenance import (
    check_provenance,
    counts_per_sample,
    provenance,
    provenance_html,
    read_provenance,
    write_provenance,
    write_provenance_html,
)
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


def test_a_symlink_loop_or_a_folder_as_a_file_is_recorded_not_fatal(make_run):
    config, sheet, templates, outputs = make_run()
    root = sheet.parent
    (root / "loop1.fcs").symlink_to(root / "loop2.fcs")
    (root / "loop2.fcs").symlink_to(root / "loop1.fcs")
    (root / "a_folder.fcs").mkdir()
    with sheet.open("a") as f:
        f.write("S6\tP3\t60mg\t0\tT\tloop1.fcs\nS7\tP3\t60mg\t0\tB\ta_folder.fcs\n")
    rec = provenance(config, sheet, templates, outputs)
    assert rec["samples"]["S6"]["sha256"] is None
    assert rec["samples"]["S7"]["sha256"] is None
    assert rec["samples"]["S1"]["sha256"] == _sha(root / "fcs" / "a.fcs")


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


# --- The HTML rendering for the report ----------------------------------------------------------


class _Tables(HTMLParser):
    """The text of every cell of every ``<table id=...>``: ``{id: [[cell, ...], ...]}``."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(text: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    parser.close()
    return parser.tables


@pytest.fixture()
def record(make_run):
    """A fresh record of the small run (4 samples, S1 and S4 share a file), to edit freely."""
    config, sheet, templates, outputs = make_run()
    return provenance(config, sheet, templates, outputs)


def test_html_lists_every_sample_with_its_file_hash_and_counts_rows(make_run):
    config, sheet, templates, outputs = make_run(missing=True)
    rec = provenance(config, sheet, templates, outputs)
    counts = counts_per_sample(outputs[0])  # S1: 1 row
    tables = _tables(provenance_html(rec, counts=counts))

    root = sheet.parent
    absolute = str(root / "elsewhere.fcs")
    expected = [
        ["sample_id", "panel", "FCS file", "SHA-256", "rows in counts.tsv"],
        ["S1", "T", str(root / "fcs" / "a.fcs"), _sha(root / "fcs" / "a.fcs"), "1"],
        ["S2", "T", str(root / "fcs" / "b.fcs"), _sha(root / "fcs" / "b.fcs"), "0"],
        ["S3", "B", absolute, _sha(Path(absolute)), "0"],
        ["S4", "T", str(root / "fcs" / "a.fcs"), _sha(root / "fcs" / "a.fcs"), "0"],
        ["S5", "T", str(root / "fcs" / "gone.fcs"), "missing: not hashed", "0"],
    ]
    assert tables["samples"] == expected
    # without counts the column is left out, the rest is the same
    plain = _tables(provenance_html(rec))["samples"]
    assert plain == [row[:4] for row in expected]


def test_html_a_counts_row_traces_to_the_hash_of_its_file(make_run):
    """What a reviewer does: counts.tsv row -> sample_id -> report row -> sha256sum of the file."""
    config, sheet, templates, outputs = make_run()
    rec = provenance(config, sheet, templates, outputs)
    rows = {r[0]: r for r in _tables(provenance_html(rec))["samples"][1:]}
    for line in Path(outputs[0]).read_text().splitlines()[1:]:
        sid = line.split("\t")[0]
        _, _, fcs, digest = rows[sid]
        assert digest == _sha(Path(fcs))
    # the counts table itself is listed with its hash
    out = _tables(provenance_html(rec))["outputs"]
    assert out[1][:3] == [outputs[0], _sha(Path(outputs[0])), str(Path(outputs[0]).stat().st_size)]


def test_html_refuses_counts_rows_it_cannot_trace(record):
    with pytest.raises(ImmunoError) as err:
        provenance_html(record, counts={"S1": 9, "S9": 9}, source="results/provenance.json")
    assert err.value.sample == "S9"
    assert err.value.file == "results/provenance.json"
    assert "cannot be traced" in err.value.message


def test_html_package_table_matches_the_record(record):
    record["packages"]["surely-not-installed-xyz"] = None
    rows = _tables(provenance_html(record))["packages"]
    assert rows[0] == ["package", "version"]
    assert rows[1:] == [
        [name, "not installed" if version is None else version]
        for name, version in record["packages"].items()
    ]
    assert ["immuno", immuno.__version__] in rows


def test_html_run_identity_configuration_and_gating_files(record):
    sheet = Path(record["sample_sheet"]["path"])
    templates = record["config"]["panels"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    record["workflow"] = {"commit": commit, "dirty": True}
    tables = _tables(provenance_html(record))
    run = dict(tables["run"])
    assert run["git commit"] == commit
    assert run["uncommitted changes"].startswith("yes")
    assert run["record written (UTC)"] == record["created"]
    assert run["immuno version"] == immuno.__version__
    assert run["Python"] == record["packages"]["python"]
    assert record["platform"]["system"] in run["platform"]
    conf = dict(tables["configuration"])
    assert conf["configuration SHA-256"].startswith(record["config_sha256"])
    assert conf["sample sheet SHA-256"] == _sha(sheet)
    assert tables["gating"][1:] == [
        [panel, path, _sha(Path(path)), str(Path(path).stat().st_size)]
        for panel, path in templates.items()
    ]
    record["workflow"] = {"commit": commit, "dirty": False}
    assert dict(_tables(provenance_html(record))["run"])["uncommitted changes"] == "no"
    record["workflow"] = {"commit": "unknown", "dirty": None}
    run = dict(_tables(provenance_html(record))["run"])
    assert run["git commit"] == run["uncommitted changes"] == "unknown"


def test_html_escapes_every_value(record):
    record["samples"]["S1"]["fcs_path"] = "data/<b>x</b>&y.fcs"
    record["config"]["note"] = "</pre><script>alert(1)</script>"
    text = provenance_html(record)
    assert "<b>" not in text and "<script>" not in text
    assert ["S1", "T", "data/<b>x</b>&y.fcs"] == _tables(text)["samples"][1][:3]


@pytest.mark.parametrize("key", P.REQUIRED)
def test_a_record_without_a_required_key_is_an_immuno_error(record, key):
    del record[key]
    with pytest.raises(ImmunoError) as err:
        provenance_html(record, source="results/provenance.json")
    assert not isinstance(err.value, KeyError)
    assert err.value.field == key
    assert err.value.file == "results/provenance.json"
    assert err.value.hint


@pytest.mark.parametrize(
    ("edit", "field", "sample"),
    [
        (lambda r: r["samples"]["S2"].pop("sha256"), "samples.S2", "S2"),
        (lambda r: r["samples"]["S3"].pop("fcs_path"), "samples.S3", "S3"),
        (lambda r: r["samples"]["S1"].update(sha256="abc"), "samples.S1.sha256", "S1"),
        (lambda r: r["samples"].update(S1="a.fcs"), "samples.S1", "S1"),
        (lambda r: r["gating"][1].pop("path"), "gating[1]", None),
        (lambda r: r["gating"][0].update(sha256="ZZ" * 32), "gating[0].sha256", None),
        (lambda r: r["workflow"].pop("commit"), "workflow.commit", None),
        (lambda r: r.update(config_sha256=None), "config_sha256", None),
        (lambda r: r.update(schema="immuno-provenance/0"), "schema", None),
        (lambda r: r.update(samples=[]), "samples", None),
        (lambda r: r.update(packages=["numpy"]), "packages", None),
    ],
)
def test_a_malformed_entry_is_an_immuno_error_naming_it(record, edit, field, sample):
    edit(record)
    with pytest.raises(ImmunoError) as err:
        check_provenance(record, file="p.json")
    assert (err.value.field, err.value.sample, err.value.file) == (field, sample, "p.json")


def test_a_record_that_is_not_an_object_is_an_immuno_error():
    with pytest.raises(ImmunoError, match="JSON object"):
        provenance_html(["not", "a", "record"])


def test_descriptive_keys_may_be_missing(record):
    """A partial record is rendered when it keeps the hashes and the run's identity: the
    descriptive keys (dates, platform, sample sheet, outputs, config) show "not recorded"."""
    full = _tables(provenance_html(record))
    for key in ("created", "started", "platform", "sample_sheet", "fcs_files", "outputs", "config"):
        del record[key]
    check_provenance(record)
    text = provenance_html(record)
    tables = _tables(text)
    assert tables["samples"] == full["samples"]
    assert tables["packages"] == full["packages"]
    assert tables["gating"] == full["gating"]
    assert dict(tables["run"])["record written (UTC)"] == "not recorded"
    assert dict(tables["run"])["platform"] == "not recorded"
    assert dict(tables["configuration"])["sample sheet"] == "not recorded"
    assert "outputs" not in tables
    assert text.count("not recorded") >= 5


def test_read_provenance_round_trip_and_unreadable_files(record, tmp_path):
    path = write_provenance(record, tmp_path / "provenance.json")
    assert read_provenance(path) == record

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "immuno-provenance/1",')
    with pytest.raises(ImmunoError, match="cannot read") as err:
        read_provenance(bad)
    assert err.value.file == str(bad)
    with pytest.raises(ImmunoError, match="cannot read"):
        read_provenance(tmp_path / "absent.json")

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in record.items() if k != "samples"}))
    with pytest.raises(ImmunoError) as err:
        read_provenance(partial)
    assert (err.value.field, err.value.file) == ("samples", str(partial))


def test_counts_per_sample(tmp_path):
    counts = tmp_path / "counts.tsv"
    counts.write_text("sample_id\tpopulation\tcount\nA\tcd4\t1\nA\tcd8\t2\nB\tcd4\t3\n")
    assert counts_per_sample(counts) == {"A": 2, "B": 1}
    counts.write_text("sample\tcount\nA\t1\n")
    with pytest.raises(ImmunoError) as err:
        counts_per_sample(counts)
    assert (err.value.field, err.value.file) == ("sample_id", str(counts))


def test_write_provenance_html_is_atomic(record, tmp_path):
    path = write_provenance_html(record, tmp_path / "provenance.html", source="p.json")
    assert path.read_text(encoding="utf-8") == provenance_html(record)
    assert os.listdir(tmp_path) == ["provenance.html"]

    before = path.read_text(encoding="utf-8")
    del record["samples"]
    with pytest.raises(ImmunoError):
        write_provenance_html(record, path)
    assert path.read_text(encoding="utf-8") == before
    assert os.listdir(tmp_path) == ["provenance.html"]
