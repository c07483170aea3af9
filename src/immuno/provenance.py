"""Provenance of a run: which inputs, gating files, settings and software made the results.

One calling convention: ``provenance(config, sheet, templates, outputs) -> dict`` gathers
the record (nothing is written), :func:`write_provenance` writes it as JSON, atomically.
For the report, :func:`read_provenance` reads a record back (checked by
:func:`check_provenance`), ``provenance_html(record, counts=...) -> str`` renders it as a
self-contained HTML page and :func:`write_provenance_html` writes that page, atomically.

The record ties every row of ``results/counts.tsv`` to the exact bytes it came from:
``samples`` maps each ``sample_id`` to the SHA-256 of its FCS file, and ``outputs``
holds the SHA-256 of the counts table itself. A reviewer re-hashes the files
(``sha256sum``) and compares. Everything that cannot be known (no git, a package not
installed) is recorded as ``"unknown"`` or ``null``; gathering provenance never fails a
run for that.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import html
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ImmunoError
from .util import atomic_path, sha256_file

__all__ = [
    "PACKAGES",
    "provenance",
    "write_provenance",
    "git_commit",
    "package_versions",
    "read_provenance",
    "check_provenance",
    "counts_per_sample",
    "provenance_html",
    "write_provenance_html",
]

log = logging.getLogger(__name__)

#: Distributions whose versions are recorded (``importlib.metadata`` names).
PACKAGES = (
    "immuno",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "flowio",
    "flowkit",
    "defusedxml",
    "pyyaml",
    "jsonschema",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "anndata",
)

#: Format of the record; raised when a key changes meaning or disappears.
SCHEMA = "immuno-provenance/1"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _mtime(path: Path) -> str:
    ts = path.stat().st_mtime
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


def _file_record(path: str | os.PathLike, cache: dict[str, str] | None = None) -> dict:
    """``{"path", "sha256", "bytes"}``; a file that is missing, no regular file (a
    symlink loop, a folder) or unreadable has ``sha256: null`` (its sample failed at the
    input check; the record says so rather than stopping the cohort's provenance)."""
    p = Path(path)
    missing = {"path": str(path), "sha256": None, "bytes": None}
    if not p.is_file():  # False for a symlink loop too, where resolve() would raise
        log.warning("provenance: %s is not a readable file; recorded without a hash", p)
        return missing
    try:
        key = str(p.resolve())
        if cache is not None and key in cache:
            digest = cache[key]
        else:
            digest = sha256_file(p)
            if cache is not None:
                cache[key] = digest
        size = p.stat().st_size
    except OSError as exc:
        log.warning("provenance: %s cannot be read (%s); recorded without a hash", p, exc)
        return missing
    return {"path": str(path), "sha256": digest, "bytes": size}


def git_commit(path: str | os.PathLike = ".") -> dict[str, Any]:
    """The git commit checked out at ``path``, and whether tracked files differ from it.

    Returns ``{"commit": "unknown", "dirty": None}`` when ``path`` is not in a git
    work tree, git is not installed, or git fails in any way.
    """
    unknown = {"commit": "unknown", "dirty": None}
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}

    def run(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(path), *args],
                capture_output=True,
                text=True,
                timeout=20,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = run("rev-parse", "--verify", "HEAD")
    if not commit:
        return unknown
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """``{"python": "3.11.x", name: version or None (not installed)}``."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _platform() -> dict[str, str]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "node": platform.node(),
    }


def _jsonable(obj: Any) -> Any:
    """The config as plain JSON types: other objects as text, NaN and infinity as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def provenance(
    config: Mapping[str, Any],
    sheet: str | os.PathLike,
    templates: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike],
    outputs: Iterable[str | os.PathLike],
    *,
    workflow_dir: str | os.PathLike | None = None,
    corrections: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Gather the provenance record of a run.

    Parameters
    ----------
    config
        The workflow configuration as used (after defaults and command-line overrides).
    sheet
        The sample sheet (TSV). Its ``fcs_path`` column, resolved against the sheet's
        folder as :func:`immuno.cohort.load_sample_sheet` does, names the FCS files.
    templates
        The gating files: ``{panel: path}`` or a list of paths.
    outputs
        Result files to hash, e.g. ``["results/counts.tsv"]``.
    workflow_dir
        Where to ask git for the commit (default: the current folder).
    corrections
        The reviewers' corrections file the gating applied (``None``: none configured).

    Returns
    -------
    dict
        JSON-ready: ``schema``, ``created`` (UTC, ISO 8601), ``workflow`` (git
        ``commit`` or ``"unknown"``, ``dirty``), ``platform``, ``packages``, ``config``
        and its ``config_sha256``, ``sample_sheet`` (path, sha256), ``gating`` (panel,
        path, sha256 per file), ``fcs_files`` (one entry per distinct file), ``samples``
        (``sample_id -> {panel, fcs_path, sha256}``), ``corrections`` (path, sha256,
        bytes; ``sha256`` null when the configured file does not exist; the key is null
        without one) and ``outputs`` (path -> ``{sha256, bytes, modified}``). Every
        hash is SHA-256 of the file's bytes, hex.

    Raises
    ------
    SampleSheetError
        The sheet cannot be read (see :func:`immuno.cohort.load_sample_sheet`).
    """
    from .cohort import load_sample_sheet

    started = _now()
    cache: dict[str, str] = {}
    config = _jsonable(config)
    df = load_sample_sheet(sheet, None, check_files=False)

    if isinstance(templates, Mapping):
        gating = [
            {"panel": str(panel), **_file_record(path, cache)} for panel, path in templates.items()
        ]
    else:
        gating = [{"panel": None, **_file_record(path, cache)} for path in templates]

    samples: dict[str, dict[str, Any]] = {}
    fcs_files: dict[str, dict[str, Any]] = {}
    for row in df.itertuples(index=False):
        rec = _file_record(row.fcs_path, cache)
        fcs_files.setdefault(rec["path"], {"sha256": rec["sha256"], "bytes": rec["bytes"]})
        samples[str(row.sample_id)] = {
            "panel": str(row.panel),
            "fcs_path": rec["path"],
            "sha256": rec["sha256"],
        }

    out: dict[str, dict[str, Any]] = {}
    for path in outputs:
        rec = _file_record(path)
        p = Path(path)
        out[str(path)] = {
            "sha256": rec["sha256"],
            "bytes": rec["bytes"],
            "modified": _mtime(p) if p.is_file() else None,
        }

    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return {
        "schema": SCHEMA,
        "created": _now(),
        "started": started,
        "workflow": git_commit(workflow_dir if workflow_dir is not None else "."),
        "platform": _platform(),
        "packages": package_versions(),
        "config": config,
        "config_sha256": hashlib.sha256(canonical).hexdigest(),
        "sample_sheet": _file_record(sheet, cache),
        "gating": gating,
        "fcs_files": fcs_files,
        "samples": samples,
        "corrections": None if corrections is None else _file_record(corrections, cache),
        "outputs": out,
    }


def write_provenance(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` as indented JSON (UTF-8, trailing newline), atomically.

    A failing or interrupted write leaves no partial ``path``.
    """
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --- Reading a record back and rendering it for the report ------------------------------------

#: Keys a record must hold to be rendered: the hashes and the run's identity. Everything else
#: (``created``, ``started``, ``platform``, ``sample_sheet``, ``fcs_files``, ``outputs``,
#: ``config``) is descriptive and shown as "not recorded" when absent.
REQUIRED = ("schema", "workflow", "packages", "config_sha256", "gating", "samples")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT = "rewrite it with the workflow (rule write_provenance) instead of editing it"


def _hash_ok(value: Any, *, nullable: bool = True) -> bool:
    if value is None:
        return nullable
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def check_provenance(record: Any, *, file: str | os.PathLike | None = None) -> None:
    """Raise :class:`~immuno.errors.ImmunoError` unless ``record`` can be rendered.

    The keys in :data:`REQUIRED` must be present, ``schema`` must be :data:`SCHEMA`,
    ``workflow`` must name a ``commit``, ``config_sha256`` must be a hash, every ``gating``
    entry must have ``path`` and ``sha256``, and every ``samples`` entry ``panel``,
    ``fcs_path`` and ``sha256``. A file hash is 64 lower-case hex digits, or null for a file
    that was missing when the record was written (rendered as missing, not refused). Other
    keys are optional: a record without them is rendered with "not recorded".

    Parameters
    ----------
    record
        A provenance record, e.g. ``json.load`` of ``results/provenance.json``.
    file
        Where the record came from, named in the error.

    Raises
    ------
    ImmunoError
        Naming the file, the field (e.g. ``samples.P01_m0_T.sha256``) and, for a sample's
        entry, the sample.
    """
    where = None if file is None else str(file)

    def fail(message: str, field: str, sample: str | None = None):
        raise ImmunoError(message, file=where, sample=sample, field=field, hint=_HINT)

    if not isinstance(record, Mapping):
        fail(f"a provenance record is a JSON object, not {type(record).__name__}", "(record)")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        fail(f"the record lacks {', '.join(missing)}", ", ".join(missing))
    if record["schema"] != SCHEMA:
        fail(f"unknown format {record['schema']!r} (immuno reads {SCHEMA!r})", "schema")
    if not isinstance(record["workflow"], Mapping) or "commit" not in record["workflow"]:
        fail("workflow must name the git commit (or 'unknown')", "workflow.commit")
    if not isinstance(record["packages"], Mapping):
        fail("packages must map each package to its version", "packages")
    if not _hash_ok(record["config_sha256"], nullable=False):
        fail(f"{record['config_sha256']!r} is not a SHA-256", "config_sha256")
    if not isinstance(record["gating"], list):
        fail("gating must be a list of files", "gating")
    for i, entry in enumerate(record["gating"]):
        if not isinstance(entry, Mapping) or not {"path", "sha256"} <= entry.keys():
            fail("each gating file needs path and sha256", f"gating[{i}]")
        if not _hash_ok(entry["sha256"]):
            fail(f"{entry['sha256']!r} is not a SHA-256 nor null", f"gating[{i}].sha256")
    if not isinstance(record["samples"], Mapping):
        fail("samples must map each sample_id to its file", "samples")
    for sid, entry in record["samples"].items():
        if not isinstance(entry, Mapping) or not {"panel", "fcs_path", "sha256"} <= entry.keys():
            fail("each sample needs panel, fcs_path and sha256", f"samples.{sid}", sid)
        if not _hash_ok(entry["sha256"]):
            fail(f"{entry['sha256']!r} is not a SHA-256 nor null", f"samples.{sid}.sha256", sid)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``results/provenance.json`` and check it (:func:`check_provenance`).

    Raises
    ------
    ImmunoError
        The file cannot be read, is not JSON, or is not a complete provenance record.
    """
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImmunoError(
            f"cannot read the provenance record: {exc}", file=str(path), hint=_HINT
        ) from None
    check_provenance(record, file=path)
    return record


def counts_per_sample(path: str | os.PathLike) -> dict[str, int]:
    """Rows per ``sample_id`` of a counts table (TSV with a ``sample_id`` column).

    Raises
    ------
    ImmunoError
        The table has no ``sample_id`` column.
    """
    rows: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if "sample_id" not in (reader.fieldnames or []):
            raise ImmunoError(
                "the counts table has no sample_id column",
                file=str(path),
                field="sample_id",
                hint="pass results/counts.tsv",
            )
        for row in reader:
            rows[row["sample_id"]] = rows.get(row["sample_id"], 0) + 1
    return rows


_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; }
code, .hash { font-family: ui-monospace, monospace; font-size: 12px; }
.missing { color: #b00; font-weight: bold; }
.note { color: #555; max-width: 60em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _hash_cell(value: str | None) -> str:
    if value is None:
        return '<td class="missing">missing: not hashed</td>'
    return f'<td class="hash">{_e(value)}</td>'


def _or_not_recorded(value: Any) -> str:
    return "<em>not recorded</em>" if value in (None, "", {}) else _e(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], *, table_id: str) -> str:
    """An HTML table; ``rows`` hold ready-made ``<td>`` cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f'<table id="{table_id}">\n<tr>{head}</tr>\n{body}\n</table>'


def _fields(rows: Iterable[tuple[str, str]], *, table_id: str) -> str:
    """A two-column table of ``(label, ready-made HTML value)`` pairs."""
    body = "\n".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table id="{table_id}">\n{body}\n</table>'


def _td(value: Any, cls: str | None = None) -> str:
    return f'<td class="{cls}">{_e(value)}</td>' if cls else f"<td>{_e(value)}</td>"


def provenance_html(
    record: Mapping[str, Any],
    *,
    counts: Mapping[str, int] | None = None,
    source: str | os.PathLike | None = None,
) -> str:
    """The provenance record as one self-contained HTML page, for the Snakemake report.

    Sections: the run (git commit and whether tracked files differed from it, when the
    record was written, immuno and Python versions, platform), the configuration (SHA-256
    of the configuration as used, the sample sheet and its SHA-256), the software (every
    recorded package and its version), the gating files (panel, path, SHA-256, bytes), the
    samples (``sample_id``, panel, FCS file, SHA-256 and, with ``counts``, the number of
    rows of ``counts.tsv``) in the record's (sample sheet) order, the hashed outputs, and
    the configuration as JSON. A reviewer takes a ``sample_id`` from a row of
    ``counts.tsv``, finds its FCS file and SHA-256 here and checks it with ``sha256sum``.

    Parameters
    ----------
    record
        A provenance record (:func:`provenance`, :func:`read_provenance`); checked with
        :func:`check_provenance`.
    counts
        Rows per ``sample_id`` of ``results/counts.tsv`` (:func:`counts_per_sample`), or
        None to leave that column out.
    source
        The record's file, named in errors.

    Returns
    -------
    str
        HTML5 (UTF-8), every value escaped.

    Raises
    ------
    ImmunoError
        The record is incomplete (:func:`check_provenance`), or ``counts`` names a sample
        the record does not list (that row could not be traced to a file hash).
    """
    check_provenance(record, file=source)
    samples = record["samples"]
    if counts is not None:
        untraced = sorted(sid for sid in counts if sid not in samples)
        if untraced:
            shown = ", ".join(untraced[:5]) + (" ..." if len(untraced) > 5 else "")
            raise ImmunoError(
                f"counts.tsv has rows of {len(untraced)} sample(s) the provenance record does "
                f"not list ({shown}): those rows cannot be traced to a file hash",
                file=None if source is None else str(source),
                sample=untraced[0],
                field="samples",
                hint="rerun the workflow so that provenance.json is written after counts.tsv",
            )

    workflow = record["workflow"]
    packages = record["packages"]
    plat = record.get("platform") or {}
    dirty = workflow.get("dirty")
    if dirty is True:
        dirty_text = "yes: tracked files differed from this commit"
    else:
        dirty_text = "no" if dirty is False else "unknown"
    platform_text = " ".join(
        str(plat[k]) for k in ("system", "release", "machine") if plat.get(k)
    ) + (f" ({plat['python_implementation']})" if plat.get("python_implementation") else "")
    run_rows = [
        ("git commit", _e(workflow["commit"])),
        ("uncommitted changes", dirty_text),
        ("record written (UTC)", _or_not_recorded(record.get("created"))),
        ("immuno version", _or_not_recorded(packages.get("immuno"))),
        ("Python", _or_not_recorded(packages.get("python"))),
        ("platform", _or_not_recorded(platform_text)),
        ("host", _or_not_recorded(plat.get("node"))),
        ("record format", _e(record["schema"])),
    ]
    sheet = record.get("sample_sheet") or {}
    config_rows = [
        (
            "configuration SHA-256",
            f'<span class="hash">{_e(record["config_sha256"])}</span> (of the configuration '
            "below as canonical JSON: sorted keys, no spaces)",
        ),
        ("sample sheet", _or_not_recorded(sheet.get("path"))),
        (
            "sample sheet SHA-256",
            '<span class="hash">' + _or_not_recorded(sheet.get("sha256")) + "</span>",
        ),
    ]

    pkg_rows = [
        [_td(name), _td("not installed") if version is None else _td(version)]
        for name, version in packages.items()
    ]
    corrections = record.get("corrections")
    gating_rows = [
        [
            _td(g.get("panel") or "-"),
            _td(g["path"]),
            _hash_cell(g["sha256"]),
            _td(g.get("bytes") if g.get("bytes") is not None else "-", "num"),
        ]
        for g in [*record["gating"], *([corrections] if corrections else [])]
    ]
    if corrections:
        gating_rows[-1][0] = _td("corrections")
    sample_header = ["sample_id", "panel", "FCS file", "SHA-256"]
    if counts is not None:
        sample_header.append("rows in counts.tsv")
    sample_rows = []
    for sid, s in samples.items():
        cells = [
            f'<td id="sample-{_e(sid)}">{_e(sid)}</td>',
            _td(s["panel"]),
            _td(s["fcs_path"]),
            _hash_cell(s["sha256"]),
        ]
        if counts is not None:
            cells.append(_td(counts.get(sid, 0), "num"))
        sample_rows.append(cells)
    n_missing = sum(s["sha256"] is None for s in samples.values())
    n_files = len({s["fcs_path"] for s in samples.values()})
    outputs = record.get("outputs") or {}
    output_rows = [
        [
            _td(path),
            _hash_cell(o.get("sha256")),
            _td(o.get("bytes") if o.get("bytes") is not None else "-", "num"),
            _td(o.get("modified") or "-"),
        ]
        for path, o in outputs.items()
    ]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Provenance</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Provenance of this run</h1>",
        '<p class="note">Every row of <code>counts.tsv</code> names a <code>sample_id</code>. '
        "Find it in the Samples table below for its FCS file and that file's SHA-256, "
        "then check the file with <code>sha256sum FILE</code> (or "
        "<code>shasum -a 256 FILE</code>); the gating files and the outputs are checked the "
        "same way. Hashes are SHA-256 of the files' bytes, hex. The complete record is "
        "<code>results/provenance.json</code>.</p>",
        "<h2>Run</h2>",
        _fields(run_rows, table_id="run"),
        "<h2>Configuration</h2>",
        _fields(config_rows, table_id="configuration"),
        "<h2>Software</h2>",
        _table(["package", "version"], pkg_rows, table_id="packages"),
        "<h2>Gating files</h2>",
        _table(["panel", "file", "SHA-256", "bytes"], gating_rows, table_id="gating"),
        f'<h2 id="samples-heading">Samples ({len(samples)}, {n_files} FCS files)</h2>',
    ]
    if n_missing:
        parts.append(
            f'<p class="missing">{n_missing} sample(s) had no FCS file when the record was '
            "written (see failed_samples.tsv).</p>"
        )
    parts += [
        _table(sample_header, sample_rows, table_id="samples"),
        "<h2>Outputs</h2>",
    ]
    if output_rows:
        parts.append(
            _table(["file", "SHA-256", "bytes", "modified (UTC)"], output_rows, table_id="outputs")
        )
    else:
        parts.append("<p><em>not recorded</em></p>")
    parts.append("<h2>Configuration as used</h2>")
    if "config" in record:
        config_json = json.dumps(record["config"], indent=2, ensure_ascii=False)
        parts.append(
            "<details><summary>show</summary><pre>"
            f"{html.escape(config_json, quote=False)}</pre></details>"
        )
    else:
        parts.append("<p><em>not recorded</em></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_provenance_html(
    record: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    counts: Mapping[str, int] | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write :func:`provenance_html` of ``record`` to ``path`` (UTF-8), atomically."""
    text = provenance_html(record, counts=counts, source=source)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
