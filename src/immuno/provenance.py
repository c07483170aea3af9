"""Provenance of a run: which inputs, gating files, settings and software made the results.

One calling convention: ``provenance(config, sheet, templates, outputs) -> dict`` gathers
the record (nothing is written), :func:`write_provenance` writes it as JSON, atomically.

The record ties every row of ``results/counts.tsv`` to the exact bytes it came from:
``samples`` maps each ``sample_id`` to the SHA-256 of its FCS file, and ``outputs``
holds the SHA-256 of the counts table itself. A reviewer re-hashes the files
(``sha256sum``) and compares. Everything that cannot be known (no git, a package not
installed) is recorded as ``"unknown"`` or ``null``; gathering provenance never fails a
run for that.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .util import atomic_path, sha256_file

__all__ = ["PACKAGES", "provenance", "write_provenance", "git_commit", "package_versions"]

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
    """``{"path", "sha256", "bytes"}``; a missing file has ``sha256: null``."""
    p = Path(path)
    key = str(p.resolve())
    if not p.is_file():
        log.warning("provenance: %s does not exist; recorded without a hash", p)
        return {"path": str(path), "sha256": None, "bytes": None}
    if cache is not None and key in cache:
        digest = cache[key]
    else:
        digest = sha256_file(p)
        if cache is not None:
            cache[key] = digest
    return {"path": str(path), "sha256": digest, "bytes": p.stat().st_size}


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

    Returns
    -------
    dict
        JSON-ready: ``schema``, ``created`` (UTC, ISO 8601), ``workflow`` (git
        ``commit`` or ``"unknown"``, ``dirty``), ``platform``, ``packages``, ``config``
        and its ``config_sha256``, ``sample_sheet`` (path, sha256), ``gating`` (panel,
        path, sha256 per file), ``fcs_files`` (one entry per distinct file), ``samples``
        (``sample_id -> {panel, fcs_path, sha256}``) and ``outputs`` (path ->
        ``{sha256, bytes, modified}``). Every hash is SHA-256 of the file's bytes, hex.

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
