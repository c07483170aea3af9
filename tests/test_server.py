"""``immuno review``: the loopback server behind the review page's corrections."""

from __future__ import annotations

import datetime as dt
import http.client
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immuno.corrections import load_corrections
from immuno.errors import ConfigError
from immuno.server import ReviewServer, study_from_config

ROOT = Path(__file__).resolve().parents[1]
TODAY = dt.date.today().isoformat()


@pytest.fixture()
def served(tmp_path, demo_cohort):
    (tmp_path / "results" / "review" / "edit").mkdir(parents=True)
    (tmp_path / "results" / "review" / "index.html").write_text("<!DOCTYPE html><p>page</p>")
    (tmp_path / "results" / "review" / "edit" / "a b.js").write_text("window.X=1;")
    (tmp_path / "secret.txt").write_text("not served")
    cfg = {
        "samples": str(demo_cohort / "samples.tsv"),
        "panels": {"T": str(ROOT / "gates/t_cell.yaml"), "B": str(ROOT / "gates/b_cell.yaml")},
        "corrections": "corrections.yaml",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    study = study_from_config(tmp_path / "config.yaml", tmp_path)
    server = ReviewServer(tmp_path / "results", port=0, **study).start()
    sheet = pd.read_csv(demo_cohort / "samples.tsv", sep="\t")
    yield server, tmp_path, sheet[sheet.panel == "T"].sample_id.iloc[0]
    server.stop()


def _request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def _post(server, entry, **headers):
    h = {"Content-Type": "application/json", **headers}
    status, data = _request(server, "POST", "/api/corrections", json.dumps(entry), h)
    return status, json.loads(data)


def test_it_binds_the_loopback_only_and_serves_the_review_folder_only(served):
    server, root, _ = served
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert _request(server, "GET", "/")[0] == 200
    assert _request(server, "GET", "/edit/a%20b.js") == (200, b"window.X=1;")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/edit/../../secret.txt", "/edit"):
        assert _request(server, "GET", path)[0] == 404, path
    status, data = _request(server, "GET", "/api/status")
    assert status == 200 and json.loads(data)["corrections"] == str(root / "corrections.yaml")


def test_a_checked_entry_is_appended_and_a_bad_one_is_refused_with_the_reason(served):
    server, root, sid = served
    entry = {
        "sample": sid,
        "population": "cd3",
        "threshold": {"CD3": 0.5},
        "reviewer": "R",
        "date": TODAY,
        "reason": "NK cells",
    }
    status, reply = _post(server, entry)
    assert status == 200 and reply["ok"] and reply["line"] == 4
    (saved,) = load_corrections(root / "corrections.yaml").history
    assert (saved.sample, saved.value, saved.reason) == (sid, {"CD3": 0.5}, "NK cells")
    for bad, words in [
        ({**entry, "reason": " "}, "reason"),
        ({**entry, "threshold": {"CD4": 0.5}}, "cuts CD3"),
        ({**entry, "sample": "NOPE"}, "not in the sample sheet"),
        ({**entry, "date": "3000-01-01"}, "future"),
    ]:
        status, reply = _post(server, bad)
        assert status == 422 and not reply["ok"] and words in reply["error"], bad
    assert len(load_corrections(root / "corrections.yaml").history) == 1


def test_requests_a_web_page_could_forge_are_refused(served):
    server, root, sid = served
    entry = {"sample": sid, "population": "cd3", "accept": True, "reviewer": "R"}
    entry |= {"date": TODAY, "reason": "x"}
    status, _ = _post(server, entry, Origin="http://evil.example")
    assert status == 403
    status, _ = _request(
        server, "POST", "/api/corrections", json.dumps(entry), {"Content-Type": "text/plain"}
    )
    assert status == 415
    status, _ = _request(
        server, "POST", "/api/corrections", "{", {"Content-Type": "application/json"}
    )
    assert status == 400
    assert not (root / "corrections.yaml").exists()
    # a page of another site whose name was rebound to 127.0.0.1 names its own host
    for method in ("GET", "POST"):
        status, _ = _request(server, method, "/", None, {"Host": "evil.example"})
        assert status == 421
    # odd bodies and paths get an answer, not a dropped connection
    big = json.dumps({**entry, "accept": None, "threshold": {"CD3": 10**400}}).replace(
        '"accept": null, ', ""
    )
    status, reply = _request(
        server, "POST", "/api/corrections", big, {"Content-Type": "application/json"}
    )
    assert status == 422 and "finite" in json.loads(reply)["error"]
    status, _ = _request(
        server, "POST", "/api/corrections", b"\xff\xfe", {"Content-Type": "application/json"}
    )
    assert status == 400
    assert _request(server, "GET", "/%00")[0] == 404
    assert not (root / "corrections.yaml").exists()
    status, _ = _post(server, entry, Origin=f"http://127.0.0.1:{server.port}")
    assert status == 200


def test_a_config_without_a_corrections_file_or_a_run_is_a_clear_error(tmp_path, demo_cohort):
    cfg = {"samples": str(demo_cohort / "samples.tsv"), "panels": {}, "corrections": None}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="names no corrections file"):
        study_from_config(tmp_path / "config.yaml", tmp_path)
    del cfg["corrections"]  # the workflow's default: corrections.yaml in the study's folder
    cfg["panels"] = {"T": str(ROOT / "gates/t_cell.yaml"), "B": str(ROOT / "gates/b_cell.yaml")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    study = study_from_config(tmp_path / "config.yaml", tmp_path)
    assert study["corrections"] == tmp_path / "corrections.yaml"
    with pytest.raises(ConfigError, match="no review page"):
        ReviewServer(tmp_path / "results", sheet=None, templates={}, corrections="c.yaml")
