"""The workflow configuration: checked against its schema, with the defaults a study
with only ``samples:`` and ``panels:`` needs.

:func:`check_config` refuses an unknown key with the nearest known name (``statistcs``
-> ``statistics``, ``follow_up_month`` -> ``followup_month``) and reports the first
schema violation in one line naming the key (instead of a dump of the schema), before
anything runs. :func:`study_defaults` fills what depends on the study: the tests and the
figure's panels, for the reported populations its gating defines.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "check_config",
    "check_populations",
    "defined_populations",
    "study_defaults",
    "DEFAULT_TESTS",
    "DEFAULT_SUBSETS",
]

#: The ALEVIATE tests (population, metric), for the populations a study's gating defines.
DEFAULT_TESTS = (
    ("cd4", "absolute_count"),
    ("cd8", "absolute_count"),
    ("cd19", "absolute_count"),
    ("treg", "percent_of_parent"),
    ("naive_b", "percent_of_parent"),
)
#: The figure's subset panels (population, metric, label).
DEFAULT_SUBSETS = (
    ("treg", "percent_of_parent", "Treg % of CD4"),
    ("naive_b", "percent_of_parent", "Naive B % of CD19"),
)
_HINT = "see config.yaml and workflow/schemas/config.schema.yaml for every key"


def _load_schema(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _unknown_keys(value: Any, schema: Mapping, where: str, source: str | None) -> None:
    """Refuse keys a schema object does not name (unless it takes any, as ``panels``
    does), in nested objects and in lists of objects (``statistics.tests``)."""
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, Mapping):
        for i, v in enumerate(value):
            _unknown_keys(v, items, f"{where}[{i}]", source)
        return
    props = schema.get("properties")
    if not isinstance(value, Mapping) or props is None:
        return
    if schema.get("additionalProperties", False) is not False:
        return
    for key in value:
        name = f"{where}.{key}" if where else str(key)
        if key in props:
            _unknown_keys(value[key], props[key], name, source)
            continue
        near = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else f"known keys here: {', '.join(props)}"
        raise ConfigError(f"unknown key {name!r}", file=source, field=name, hint=hint)


def check_config(config: Mapping, schema_path: str | Path, *, source: str | None = None) -> None:
    """Check the configuration against ``schema_path`` (the workflow's config schema).

    Raises
    ------
    ConfigError
        For the first unknown key (with the nearest known name as the hint) or the first
        violation of the schema, naming the key's path (e.g. ``statistics.followup_month``).
    """
    import jsonschema

    schema = _load_schema(schema_path)
    _unknown_keys(config, schema, "", source)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    field = ".".join(str(p) for p in error.absolute_path) or None
    message = error.message if len(error.message) < 200 else error.message[:200] + "..."
    raise ConfigError(message, file=source, field=field, hint=_HINT)


def defined_populations(templates: Mapping) -> set[str] | None:
    """The population names the study's loaded gating defines, or ``None`` when some of
    them are known only per sample (a FlowJo workspace) or not at all."""
    found = [_populations(t) for t in templates.values()]
    if not found or any(f is None for f in found):
        return None
    return {p for f in found for p in f}


def study_defaults(config: dict, defined: set[str] | None, *, has_counts: bool) -> list[str]:
    """Fill ``statistics.tests`` and the figure's ``absolute``/``subsets`` when the config
    leaves them out: the ALEVIATE tests and panels for the ``defined`` populations
    (:func:`defined_populations`; ``None``, not known before gating: all of them), on
    absolute counts when the sheet has ``lymphocyte_count``, else % of lymphocytes.
    Returns a line per filled default, for the log."""
    if defined is None:
        defined = {p for p, _ in DEFAULT_TESTS}
    notes = []
    stats = config.setdefault("statistics", {})
    if "tests" not in stats:
        tests = []
        for pop, metric in DEFAULT_TESTS:
            if pop not in defined:
                continue
            if metric == "absolute_count" and not has_counts:
                metric = "percent_of_lymphocytes"
            tests.append({"population": pop, "metric": metric})
        stats["tests"] = tests
        notes.append(
            "statistics.tests: "
            + (", ".join(f"{t['population']} ({t['metric']})" for t in tests) or "none")
        )
    figure = config.setdefault("figure", {})
    if "absolute" not in figure:
        figure["absolute"] = [p for p, m in DEFAULT_TESTS if m == "absolute_count" and p in defined]
        notes.append(f"figure.absolute: {', '.join(figure['absolute']) or 'none'}")
    if "subsets" not in figure:
        figure["subsets"] = [
            {"population": p, "metric": m, "label": label}
            for p, m, label in DEFAULT_SUBSETS
            if p in defined
        ]
        notes.append(
            f"figure.subsets: {', '.join(s['population'] for s in figure['subsets']) or 'none'}"
        )
    return notes


def check_populations(
    config: Mapping, defined: set[str] | None, *, source: str | None = None
) -> None:
    """Every population the tests and the figure name must be one of the ``defined``
    populations of the study's gating (a misspelt name would otherwise fail the
    statistics after the gating); ``None`` (known only per sample) checks nothing.

    Raises :class:`ConfigError` naming the key and the nearest defined population.
    """
    if defined is None:
        return
    defined = sorted(defined)
    named = [
        (f"statistics.tests[{i}].population", t.get("population"))
        for i, t in enumerate(config.get("statistics", {}).get("tests") or [])
    ]
    figure = config.get("figure", {})
    named += [(f"figure.absolute[{i}]", p) for i, p in enumerate(figure.get("absolute") or [])]
    named += [
        (f"figure.subsets[{i}].population", s.get("population"))
        for i, s in enumerate(figure.get("subsets") or [])
    ]
    named.append(("lymphocyte_population", config.get("lymphocyte_population", "lymphocytes")))
    for field, pop in named:
        if pop not in defined:
            near = difflib.get_close_matches(str(pop), defined, n=1, cutoff=0.5)
            raise ConfigError(
                f"population {pop!r} is not defined by the study's gating",
                file=source,
                field=field,
                hint=(f"did you mean {near[0]!r}? " if near else "")
                + f"defined: {', '.join(defined)}",
            )


def _populations(gating) -> list[str] | None:
    """The population names a loaded gating (template, Gating-ML or FlowJo) defines, or
    ``None`` when they are known only per sample (a FlowJo workspace) or not at all."""
    pops = [p.name for p in getattr(gating, "populations", [])]
    if pops:
        return pops
    if getattr(gating, "kind", "") != "gatingml":
        return None
    from .errors import ImmunoError
    from .gatingml import load_gatingml

    try:
        return list(load_gatingml(gating.source).gates)
    except ImmunoError:  # reported by check_inputs, for its samples
        return None
