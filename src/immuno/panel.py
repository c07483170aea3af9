"""Panels: which marker sits on which channel, how it is compensated and transformed.

A panel is declared in the ``panel:`` section of a gating template
(``gates/<panel>.yaml``). Markers are found in an FCS file through ``$PnS`` (the
stain name) with case-, space- and punctuation-insensitive matching against the
marker's name and its ``aliases`` (``LIVE DEAD Aqua``, ``L/D``, ``Viability``...);
a marker may instead pin a ``channel`` (``$PnN``). Scatter and time channels are
named by ``$PnN``. A stain written as ``fluorochrome - marker`` (``BV785 - CD3``,
``L/D Aqua - Viability``, ``VIVID / CD14``: parts separated by a ``-`` or ``/``
with spaces around it) also matches through its parts, but only when no stain
matches as a whole.

:meth:`Panel.resolve` checks a file against its panel *before* any gating and
raises :class:`~immuno.errors.PanelError` naming the file and the marker at
fault, with the file's markers as the hint.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from .errors import ConfigError, GatingFileError, PanelError
from .transform import Transform, from_spec

__all__ = ["Marker", "Panel", "normalise_name"]


def normalise_name(name: str) -> str:
    """Fold a marker name for matching: lower case, no spaces or punctuation."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


# "BV785 - CD3", "VIVID / CD14": a separator with white space on both sides.
_STAIN_PARTS = re.compile(r"\s+[-/]\s+")


@dataclass
class Marker:
    """One panel entry.

    Attributes
    ----------
    name
        The marker's name used everywhere in the template (e.g. ``CD3``, ``viability``).
    aliases
        Other ``$PnS`` spellings that mean this marker.
    channel
        A fixed ``$PnN`` to use instead of matching ``$PnS`` (scatter, Time).
    transform
        Id of the transform (in :attr:`Panel.transforms`) of the gating space.
    compensated
        Whether the marker is compensated (fluorescence: yes; scatter, Time: no).
    """

    name: str
    aliases: list[str] = field(default_factory=list)
    channel: str | None = None
    transform: str | None = None
    compensated: bool = True

    def keys(self) -> set[str]:
        return {normalise_name(n) for n in [self.name, *self.aliases]}


@dataclass
class Panel:
    """Markers, transforms and the compensation source of one staining tube."""

    name: str
    markers: dict[str, Marker]
    transforms: dict[str, Transform]
    compensation: str = "FCS"
    source: str | None = None

    @classmethod
    def from_dict(cls, spec: dict, *, name: str, source: str | None = None) -> Panel:
        """Build from the ``panel:`` mapping of a template."""
        try:
            transforms = {}
            for tid, tspec in spec.get("transforms", {}).items():
                try:
                    transforms[tid] = from_spec(tspec, id=tid)
                except ConfigError as exc:
                    raise GatingFileError(
                        exc.message, file=source, field=f"panel.transforms.{tid}", hint=exc.hint
                    ) from None
            markers: dict[str, Marker] = {}
            for mname, mspec in (spec.get("markers") or {}).items():
                mspec = mspec or {}
                markers[mname] = Marker(
                    name=mname,
                    aliases=list(mspec.get("aliases", [])),
                    channel=mspec.get("channel"),
                    transform=mspec.get("transform"),
                    compensated=bool(mspec.get("compensated", True)),
                )
            for cname, cspec in (spec.get("channels") or {}).items():
                cspec = cspec or {}
                markers[cname] = Marker(
                    name=cname,
                    channel=cspec.get("channel", cname),
                    transform=cspec.get("transform"),
                    compensated=False,
                )
        except (AttributeError, TypeError) as exc:
            raise GatingFileError(
                f"panel section is malformed: {exc}", file=source, field="panel"
            ) from None
        for m in markers.values():
            if m.transform and m.transform not in transforms:
                raise GatingFileError(
                    f"marker {m.name!r} uses transform {m.transform!r}, not declared",
                    file=source,
                    field=f"panel.markers.{m.name}.transform",
                    hint=f"declared transforms: {', '.join(transforms) or 'none'}",
                )
        return cls(
            name=name,
            markers=markers,
            transforms=transforms,
            compensation=_compensation(spec.get("compensation", "FCS"), source),
            source=source,
        )

    def marker(self, name: str) -> Marker:
        try:
            return self.markers[name]
        except KeyError:
            raise GatingFileError(
                f"{name!r} is not a marker or channel of panel {self.name!r}",
                file=self.source,
                field=name,
                hint=f"panel entries: {', '.join(self.markers)}",
            ) from None

    def resolve(
        self, fcs, *, sample: str | None = None, optional: Collection[str] = ()
    ) -> dict[str, str]:
        """Map every panel entry to the ``$PnN`` channel that carries it in ``fcs``.

        Entries named in ``optional`` (used by optional populations only) that the file
        lacks are left out of the map instead of raising.

        Raises
        ------
        PanelError
            A marker is missing, or two channels claim it, or a pinned channel
            is absent.
        """
        by_stain: dict[str, list[str]] = {}
        by_part: dict[str, list[str]] = {}  # the parts of "fluorochrome - marker" stains
        for pnn, pns in zip(fcs.channels, fcs.markers, strict=True):
            for key in {normalise_name(pns), normalise_name(pnn)}:
                if key:
                    by_stain.setdefault(key, []).append(pnn)
            parts = _STAIN_PARTS.split(pns.strip())
            if len(parts) > 1:
                for key in {normalise_name(p) for p in parts} - {""}:
                    by_part.setdefault(key, []).append(pnn)
        stains = ", ".join(f"{n}={s}" for n, s in zip(fcs.channels, fcs.markers, strict=True) if s)
        stains = stains or "none (the file has no $PnS)"
        out: dict[str, str] = {}
        for m in self.markers.values():
            if m.channel:
                if m.channel not in fcs.channels and m.name in optional:
                    continue
                if m.channel not in fcs.channels:
                    raise PanelError(
                        f"channel {m.channel!r} of panel {self.name!r} is not in the file",
                        file=fcs.path,
                        sample=sample,
                        field=m.name,
                        hint=f"channels: {', '.join(fcs.channels)}",
                    )
                out[m.name] = m.channel
                continue
            hits = sorted({c for k in m.keys() for c in by_stain.get(k, [])})
            if not hits:
                hits = sorted({c for k in m.keys() for c in by_part.get(k, [])})
            if not hits and m.name in optional:
                continue
            if not hits:
                raise PanelError(
                    f"marker {m.name!r} of panel {self.name!r} not found in $PnS",
                    file=fcs.path,
                    sample=sample,
                    field=m.name,
                    hint=f"add the file's name for it to 'aliases'; markers here: {stains}",
                )
            if len(hits) > 1:
                raise PanelError(
                    f"marker {m.name!r} matches several channels: {', '.join(hits)}",
                    file=fcs.path,
                    sample=sample,
                    field=m.name,
                    hint="pin the channel with 'channel:' in the panel",
                )
            out[m.name] = hits[0]
        return out


#: What a panel's ``compensation`` may say: the file's own matrix, or none.
COMPENSATIONS = {"fcs": "FCS", "none": "uncompensated", "uncompensated": "uncompensated"}


def _compensation(value, source) -> str:
    """``FCS`` (the file's own ``$SPILLOVER``/``$SPILL``) or ``uncompensated`` (``none``:
    data already compensated, or a panel without spillover)."""
    key = str(value).strip().lower() if value is not None else "none"
    if key not in COMPENSATIONS:
        raise GatingFileError(
            f"compensation {value!r} is not known",
            file=source,
            field="panel.compensation",
            hint="FCS (the file's own $SPILLOVER, the default) or none (data already "
            "compensated, or no spillover)",
        )
    return COMPENSATIONS[key]
