"""A reviewer's corrections of automated gates: the study's ``corrections.yaml``.

The file (named by the config's ``corrections:``) holds one entry per sample and
population, each with ``reviewer``, ``date`` (``YYYY-MM-DD``) and ``reason`` and exactly
one action:

* ``accept: true``: the automated gate stands; its own review reasons are cleared
  (``qc_flag`` empty, ``qc_note`` records ``accepted(<reasons>)``);
* ``threshold: {<dim>: value, ...}``: new cuts of a threshold gate (every dimension of
  the population, the template's ``select`` sides kept);
* ``rectangle: {min: [...], max: [...]}``: one bound per dimension, ``null`` open;
* ``polygon: [[x, y], ...]``: at least three vertices of a 2-D gate;
* ``exclude: true``: the value stays in the tables but leaves the statistics (with
  every population below it).

Coordinates are in the population's own gate space (``gates/README.md``: the marker's
transform scale for ``transformed`` dims, e.g. logicle 0..1). A corrected gate is the
final word: the populations below it are re-fitted on it, and its ``qc_flag`` is
``corrected`` (which the statistics keep: a person has set the gate). A later entry for
the same sample and population supersedes an earlier one, so the file is also the
history of the review.

This module reads and checks the file (structure against
``data/corrections.schema.json``, then against the sheet and the templates) and
appends entries to it; :func:`immuno.autogate.gate_one` applies them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImmunoError
from .util import special_file

__all__ = [
    "ACTIONS",
    "GATE_ACTIONS",
    "CORRECTION_COLUMNS",
    "CORRECTION_HEADERS",
    "FLAG_CORRECTED",
    "FLAG_EXCLUDED",
    "CorrectionsError",
    "Correction",
    "Corrections",
    "load_corrections",
    "parse_entry",
    "entry_yaml",
    "append_correction",
]

#: The actions of an entry, exactly one per entry.
ACTIONS = ("accept", "exclude", "threshold", "rectangle", "polygon")
#: Actions that replace the automated gate.
GATE_ACTIONS = ("threshold", "rectangle", "polygon")
#: ``qc_flag`` of a population whose gate a reviewer set (kept in the statistics).
FLAG_CORRECTED = "corrected"
#: ``qc_flag`` of a population a reviewer excluded (left out of the statistics).
FLAG_EXCLUDED = "excluded"
#: Columns of the applied-corrections table (``results/gating/corrections.tsv``), with
#: the headers the report's page gives them (``line``: the entry's line in the file).
CORRECTION_HEADERS = {
    "sample_id": "sample",
    "population": "population",
    "action": "action",
    "count_before": "events before",
    "count_after": "events after",
    "percent_before": "% of parent before",
    "percent_after": "% of parent after",
    "qc_flag": "qc_flag",
    "reviewer": "reviewer",
    "date": "date",
    "reason": "reason",
    "line": "line",
}
CORRECTION_COLUMNS = list(CORRECTION_HEADERS)
#: Largest corrections file read (bytes).
MAX_BYTES = 20_000_000

_HINT = "see gates/README.md, 'Correcting a gate', for the format"
_METHODS_WITH_THRESHOLDS = ("mindensity", "tailcut")


class CorrectionsError(ImmunoError):
    """The corrections file is invalid: structure, or an entry the study cannot apply."""


@dataclass(frozen=True)
class Correction:
    """One entry of the corrections file.

    ``value`` is the action's argument: ``{dim: threshold}``, ``{"min": [...], "max":
    [...]}``, ``[[x, y], ...]``, or ``True`` for ``accept``/``exclude``; numbers in the
    gate's own space. ``line`` is the entry's line in the file (1-based).
    """

    sample: str
    population: str
    action: str
    value: Any
    reviewer: str
    date: str
    reason: str
    line: int = 0

    def entry(self) -> dict:
        """The entry as written in the file."""
        return {
            "sample": self.sample,
            "population": self.population,
            self.action: self.value,
            "reviewer": self.reviewer,
            "date": self.date,
            "reason": self.reason,
        }

    def digest(self) -> str:
        """SHA-256 of the entry's content (what a rerun of its sample depends on)."""
        text = json.dumps(self.entry(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Corrections:
    """The effective corrections of a study (the last entry per sample and population)
    and the whole file's history."""

    path: str | None = None
    sha256: str | None = None
    history: list[Correction] = field(default_factory=list)

    @property
    def entries(self) -> list[Correction]:
        last: dict[tuple[str, str], Correction] = {}
        for c in self.history:
            last.pop((c.sample, c.population), None)
            last[(c.sample, c.population)] = c
        return list(last.values())

    def for_sample(self, sample_id: str) -> dict[str, Correction]:
        """``{population: Correction}`` of one sample."""
        return {c.population: c for c in self.entries if c.sample == str(sample_id)}

    def superseded(self) -> int:
        return len(self.history) - len(self.entries)

    def check(self, sheet, templates: dict) -> None:
        """Check every entry against the sample sheet and the panels' gating.

        Raises :class:`CorrectionsError` naming the file, the entry's line, the sample
        and the field at fault: a sample not in the sheet, a population its panel does
        not gate, a shape that does not fit the population's dimensions.
        """
        panels = {str(r.sample_id): r.panel for r in sheet.itertuples()}
        for c in self.history:
            _check_entry(c, panels, templates, self.path)


def _error(c: Correction | None, path, message: str, field: str | None, hint: str = _HINT):
    where = f"line {c.line}: " if c is not None and c.line else ""
    return CorrectionsError(
        where + message,
        file=path,
        sample=c.sample if c is not None else None,
        field=field,
        hint=hint,
    )


def _check_entry(c: Correction, panels: dict, templates: dict, path) -> None:
    if c.sample not in panels:
        known = sorted(panels)
        hint = f"sample ids of the sheet: {', '.join(known[:5])}{', ...' if len(known) > 5 else ''}"
        raise _error(c, path, f"sample {c.sample!r} is not in the sample sheet", "sample", hint)
    gating = templates.get(panels[c.sample])
    specs = {p.name: p for p in getattr(gating, "populations", [])}
    if not specs:
        raise _error(
            c,
            path,
            f"panel {panels[c.sample]!r} is gated by a fixed gating file, not a template",
            "population",
            "correct a fixed gate in its Gating-ML or FlowJo file",
        )
    spec = specs.get(c.population)
    if spec is None:
        raise _error(
            c,
            path,
            f"panel {panels[c.sample]!r} has no population {c.population!r}",
            "population",
            f"populations: {', '.join(specs)}",
        )
    if c.action not in GATE_ACTIONS:
        return
    dims = list(spec.dims)
    field_ = f"{c.population}.{c.action}"
    if spec.method == "boolean":
        raise _error(
            c,
            path,
            f"{c.population} is a boolean gate of other populations",
            field_,
            "correct the gates it combines, or accept or exclude it",
        )
    if c.action == "threshold":
        if spec.method not in _METHODS_WITH_THRESHOLDS:
            raise _error(
                c,
                path,
                f"{c.population} is gated by {spec.method}, which has no thresholds",
                field_,
                f"give a rectangle or polygon in its dimensions ({', '.join(dims)}) instead",
            )
        if set(c.value) != set(dims):
            raise _error(
                c,
                path,
                f"threshold names {', '.join(c.value)}; {c.population} cuts {', '.join(dims)}",
                field_,
                f"give one threshold per dimension: {', '.join(dims)}",
            )
    elif c.action == "rectangle":
        for side in ("min", "max"):
            if len(c.value[side]) != len(dims):
                raise _error(
                    c,
                    path,
                    f"rectangle {side} has {len(c.value[side])} bounds; "
                    f"{c.population} has {len(dims)} dimensions ({', '.join(dims)})",
                    f"{field_}.{side}",
                    "one bound per dimension, null for an open side",
                )
        lo, hi = c.value["min"], c.value["max"]
        if all(v is None for v in (*lo, *hi)):
            raise _error(c, path, "rectangle bounds nothing", field_, "give at least one bound")
        pairs = enumerate(zip(lo, hi, strict=True))
        bad = [i for i, (a, b) in pairs if None not in (a, b) and a >= b]
        if bad:
            raise _error(
                c,
                path,
                f"rectangle min is not below max on {dims[bad[0]]}",
                f"{field_}.{dims[bad[0]]}",
                "min < max in every dimension",
            )
    elif c.action == "polygon" and len(dims) != 2:
        raise _error(
            c,
            path,
            f"a polygon needs 2 dimensions; {c.population} has {len(dims)} ({', '.join(dims)})",
            field_,
            "give a rectangle or threshold instead",
        )


@functools.lru_cache(maxsize=1)
def _validator():
    """A validator of one entry (``$defs/entry`` of ``data/corrections.schema.json``)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("immuno").joinpath("data/corrections.schema.json").read_text())
    return jsonschema.Draft202012Validator({"$ref": "#/$defs/entry", "$defs": schema["$defs"]})


def _entry_lines(loader_root) -> list[int]:
    """Line (1-based) of each item of the document's ``corrections`` sequence."""
    import yaml

    if not isinstance(loader_root, yaml.MappingNode):
        return []
    for key, value in loader_root.value:
        if getattr(key, "value", None) == "corrections" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _loader_class():
    """PyYAML's safe loader, reading ``2026-12-04`` as text (the entry's checks name a
    bad date; YAML's own timestamp reader fails on ``2026-13-40`` with no context)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def load_corrections(path: str | Path | None) -> Corrections:
    """Read and check the structure of a corrections file.

    ``None``, or a path that does not exist yet, is a study without corrections (the
    review server creates the file on the first save). A file that exists must be a
    regular YAML file whose entries all follow ``data/corrections.schema.json``: each
    with ``sample``, ``population``, ``reviewer``, ``date`` (``YYYY-MM-DD``, not in the
    future), ``reason`` and exactly one action. Check the entries against a sheet and
    its templates with :meth:`Corrections.check`.

    Raises
    ------
    CorrectionsError
        Naming the file, the entry's line and sample and the field at fault.
    """
    import yaml

    if path is None or not Path(path).exists():
        return Corrections(None if path is None else str(path))
    src = str(path)
    kind = special_file(path)
    if kind:
        raise CorrectionsError(f"corrections file is {kind}", file=src, hint=_HINT)
    raw = Path(path).read_bytes()
    if len(raw) > MAX_BYTES:
        raise CorrectionsError(
            f"corrections file is {len(raw)} bytes (at most {MAX_BYTES})", file=src, hint=_HINT
        )
    try:
        text = raw.decode("utf-8-sig")
        loader = _loader_class()(text)
        try:
            root = loader.get_single_node()
            doc = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorrectionsError(f"cannot parse as YAML: {exc}", file=src, hint=_HINT) from None
    out = Corrections(src, hashlib.sha256(raw).hexdigest())
    if doc is None:
        return out
    if not isinstance(doc, dict) or "corrections" not in doc:
        raise CorrectionsError(
            "the file holds no 'corrections:' list", file=src, field="corrections", hint=_HINT
        )
    lines = _entry_lines(root)
    entries = [] if doc["corrections"] is None else doc["corrections"]
    top = {k: v for k, v in doc.items() if k != "corrections"}
    if top:
        raise CorrectionsError(
            f"unknown key {next(iter(top))!r} beside 'corrections'", file=src, hint=_HINT
        )
    if not isinstance(entries, list):
        raise CorrectionsError(
            "'corrections' must be a list of entries", file=src, field="corrections", hint=_HINT
        )
    for i, item in enumerate(entries):
        line = lines[i] if i < len(lines) else 0
        out.history.append(parse_entry(item, file=src, line=line, index=i))
    return out


def parse_entry(item: Any, *, file: str | None = None, line: int = 0, index: int = 0) -> Correction:
    """One entry (a mapping, as read from YAML or sent by the review page) as a
    :class:`Correction`, checked against ``data/corrections.schema.json``: the keys,
    exactly one action, a ``YYYY-MM-DD`` date not in the future, finite numbers.

    Raises :class:`CorrectionsError` naming ``file``, the entry's ``line`` (or its
    number, ``index`` + 1), its sample and the field at fault.
    """
    src = file
    where = f"line {line}: " if line else f"entry {index + 1}: "
    today = _dt.date.today()
    validator = _validator()
    sample = item.get("sample") if isinstance(item, dict) else None
    sample = sample if isinstance(sample, str) else None
    if not isinstance(item, dict):
        raise CorrectionsError(f"{where}an entry must be a mapping", file=src, hint=_HINT)
    if "sample" in item and not isinstance(item["sample"], str):
        raise CorrectionsError(
            f"{where}sample {item['sample']!r} is not text",
            file=src,
            field="sample",
            hint='quote the sample id (sample: "001") so YAML does not read a number',
        )
    actions = [a for a in ACTIONS if a in item]
    if len(actions) != 1:
        raise CorrectionsError(
            f"{where}{'no action' if not actions else 'actions ' + ', '.join(actions)}",
            file=src,
            sample=sample,
            field="action",
            hint=f"give exactly one of {', '.join(ACTIONS)}",
        )
    error = next(iter(sorted(validator.iter_errors(item), key=lambda e: list(e.path))), None)
    if error is not None:
        field_ = ".".join(str(p) for p in error.absolute_path) or None
        missing = error.validator == "required"
        if missing:  # name the missing key, not the entry
            field_ = next((k for k in error.validator_value if k not in item), field_)
        raise CorrectionsError(
            f"{where}{error.message}",
            file=src,
            sample=sample,
            field=field_,
            hint="every entry needs reviewer, date (YYYY-MM-DD) and reason" if missing else _HINT,
        )
    try:
        day = _dt.date.fromisoformat(item["date"])
    except ValueError:
        day = None
    if day is None or day > today:
        raise CorrectionsError(
            f"{where}date {item['date']!r} is {'in the future' if day else 'no date'}",
            file=src,
            sample=sample,
            field="date",
            hint="the day of the review, YYYY-MM-DD",
        )
    action = actions[0]
    value = item[action]
    try:
        if action == "threshold":
            value = {str(k): float(v) for k, v in value.items()}
        elif action == "rectangle":
            value = {s: [None if v is None else float(v) for v in value[s]] for s in ("min", "max")}
        elif action == "polygon":
            value = [[float(x), float(y)] for x, y in value]
    except OverflowError:  # an integer beyond float range is no finite number either
        value = None
    numbers = (
        [float("inf")]
        if value is None
        else list(value.values())
        if action == "threshold"
        else [v for s in ("min", "max") for v in value[s] if v is not None]
        if action == "rectangle"
        else [v for xy in value for v in xy]
        if action == "polygon"
        else []
    )
    if any(v != v or v in (float("inf"), float("-inf")) for v in numbers):
        raise CorrectionsError(
            f"{where}{action} holds a value that is not a finite number",
            file=src,
            sample=sample,
            field=action,
            hint="coordinates in the gate's own space, e.g. logicle 0..1",
        )
    return Correction(
        item["sample"],
        item["population"],
        action,
        value,
        item["reviewer"].strip(),
        item["date"],
        item["reason"].strip(),
        line,
    )


def entry_yaml(c: Correction) -> str:
    """One entry as YAML text, ready to append under ``corrections:``."""
    import yaml

    body = yaml.safe_dump([c.entry()], sort_keys=False, allow_unicode=True, width=100)
    return body


_HEADER = (
    "# Gate corrections: one entry per sample and population; a later entry supersedes an\n"
    "# earlier one. Format: gates/README.md, 'Correcting a gate'.\n"
    "corrections:\n"
)


def append_correction(path: str | Path, c: Correction) -> None:
    """Append one entry to the corrections file (created when missing), atomically.

    The file's text is kept as it is (comments too) and the entry added at its end, so
    the file stays the review's history. The result is read back and checked before
    it replaces the file: a file this cannot extend is left untouched.
    """
    import re

    from .util import atomic_path

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if not old.strip():
        old = _HEADER
    else:
        load_corrections(path)  # a file that does not load is not extended
    text = old if old.endswith("\n") else old + "\n"
    # the new entry indented as the file's entries are (a hand-written list may be)
    first = re.search(r"^corrections:[^\n]*\n(?:[ \t]*(?:#[^\n]*)?\n)*([ ]*)- ", text, re.M)
    indent = first.group(1) if first else ""
    entry = "".join(
        indent + line if line.strip() else line for line in entry_yaml(c).splitlines(True)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + entry, encoding="utf-8")
        try:
            back = load_corrections(tmp)
        except CorrectionsError as exc:
            exc.file = str(path)
            exc.message = f"the entry cannot be appended: {exc.message}"
            raise
        if not back.history or back.history[-1].entry() != c.entry():
            raise CorrectionsError(
                "the entry could not be appended as the file's last entry",
                file=str(path),
                hint="the file's 'corrections:' list must be its last key, in block style",
            )
