"""Panels: marker -> channel resolution through $PnS, aliases and pinned channels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from immuno.errors import GatingFileError, PanelError
from immuno.panel import Panel, normalise_name

ROOT = Path(__file__).resolve().parents[1]

VIABILITY_ALIASES = ["Viability", "L/D", "LIVE DEAD Aqua", "LIVE/DEAD Aqua", "Live Dead", "Aqua"]


@dataclass
class FakeFCS:
    """The three attributes Panel.resolve reads from an FCS file."""

    path: str
    channels: list[str]
    markers: list[str]


def _panel(markers: dict, channels: dict | None = None, name: str = "T") -> Panel:
    return Panel.from_dict(
        {"markers": markers, "channels": channels or {}}, name=name, source="gates/t.yaml"
    )


def _file(pairs: list[tuple[str, str]], path: str = "fcs/S1.fcs") -> FakeFCS:
    return FakeFCS(path, [n for n, _ in pairs], [s for _, s in pairs])


VIABILITY = _panel({"viability": {"aliases": VIABILITY_ALIASES}})


# --- name folding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["LIVE/DEAD Aqua", "live dead aqua", "Live-Dead_Aqua", " LIVE.DEAD  AQUA ", "livedeadaqua"],
)
def test_normalise_name_folds_case_space_and_punctuation(spelling):
    assert normalise_name(spelling) == "livedeadaqua"


def test_normalise_name_keeps_digits_apart():
    assert normalise_name("CD4") != normalise_name("CD45")
    assert normalise_name("CD8a") == "cd8a"


# --- aliases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stain",
    [
        "LIVE DEAD Aqua",
        "LIVE/DEAD Aqua",
        "live-dead AQUA",
        "L/D",
        "l d",
        "Viability",
        "VIABILITY",
        " viability ",
        "Aqua",
        "viability",  # the marker's own name
    ],
)
def test_viability_is_found_under_any_alias_spelling(stain):
    fcs = _file([("FSC-A", ""), ("BV421-A", "CD45RA"), ("BV510-A", stain), ("APC-A", "CD4")])
    assert VIABILITY.resolve(fcs) == {"viability": "BV510-A"}


def test_matching_is_whole_name_not_prefix():
    panel = _panel({"CD4": {}, "CD45RA": {}})
    fcs = _file([("BV421-A", "CD45RA"), ("APC-A", "CD4"), ("PE-A", "CD45")])
    assert panel.resolve(fcs) == {"CD4": "APC-A", "CD45RA": "BV421-A"}


def test_alias_selects_one_of_two_similar_stains():
    panel = _panel({"CD8": {"aliases": ["CD8a"]}})
    fcs = _file([("BV650-A", "CD8a"), ("APC-A", "CD8b")])
    assert panel.resolve(fcs) == {"CD8": "BV650-A"}


def test_marker_may_be_matched_by_channel_name():
    # files without $PnS often name the channel after the marker
    panel = _panel({"CD3": {}})
    assert panel.resolve(_file([("FSC-A", ""), ("CD3", "")])) == {"CD3": "CD3"}


@pytest.mark.parametrize(
    ("stain", "marker", "aliases"),
    [
        ("BV785 - CD3", "CD3", []),
        ("L/D Aqua - Viability", "viability", ["L/D"]),
        ("VIVID / CD14", "viability", ["VIVID"]),
        ("PerCP-Cy55 - CD45RA", "CD45RA", []),
    ],
)
def test_fluorochrome_dash_marker_stains_match_through_their_parts(stain, marker, aliases):
    panel = _panel({marker: {"aliases": aliases}})
    fcs = _file([("FSC-A", ""), ("X-A", stain), ("Y-A", "CD4")])
    assert panel.resolve(fcs) == {marker: "X-A"}


def test_hyphen_inside_a_name_is_no_separator():
    # "PerCP-Cy55" has no spaces around its '-': it is one name, not "PerCP" and "Cy55"
    panel = _panel({"Cy55": {}})
    with pytest.raises(PanelError):
        panel.resolve(_file([("B710-A", "PerCP-Cy55 - CD45RA")]))


def test_a_whole_stain_wins_over_a_part_of_a_dump_channel():
    # CD19 on its own channel; the dump channel "CD14 / CD19 / Viability" also names it
    panel = _panel({"CD19": {}})
    fcs = _file([("V450-A", "CD14 / CD19 / Viability"), ("G710-A", "CD19")])
    assert panel.resolve(fcs) == {"CD19": "G710-A"}


# --- missing, ambiguous, pinned -------------------------------------------------------


def test_missing_marker_names_file_sample_marker_and_lists_the_files_markers():
    panel = _panel({"CD3": {}, "CD25": {}})
    fcs = _file([("FSC-A", ""), ("FITC-A", "CD3"), ("PE-A", "CD27")], path="fcs/P01_m0_T.fcs")
    with pytest.raises(PanelError) as info:
        panel.resolve(fcs, sample="P01_m0_T")
    exc = info.value
    assert exc.file == "fcs/P01_m0_T.fcs"
    assert exc.sample == "P01_m0_T"
    assert exc.field == "CD25"
    assert "'CD25'" in exc.message and "'T'" in exc.message
    assert "FITC-A=CD3" in exc.hint and "PE-A=CD27" in exc.hint
    assert "aliases" in exc.hint
    text = str(exc)
    for part in ("P01_m0_T", "fcs/P01_m0_T.fcs", "CD25", "PE-A=CD27"):
        assert part in text


def test_missing_marker_in_a_file_without_stains_says_so():
    with pytest.raises(PanelError) as info:
        VIABILITY.resolve(_file([("FL1-H", ""), ("FL2-H", "")]))
    assert "no $PnS" in info.value.hint


def test_two_channels_claiming_a_marker_is_ambiguous():
    panel = _panel({"CD3": {}})
    fcs = _file([("FITC-A", "CD3"), ("BV785-A", "cd-3"), ("PE-A", "CD4")])
    with pytest.raises(PanelError) as info:
        panel.resolve(fcs, sample="S1")
    exc = info.value
    assert exc.field == "CD3" and exc.sample == "S1" and exc.file == "fcs/S1.fcs"
    assert "FITC-A" in exc.message and "BV785-A" in exc.message
    assert "channel" in exc.hint


def test_two_aliases_on_two_channels_are_ambiguous():
    fcs = _file([("BV510-A", "LIVE DEAD Aqua"), ("APC-Cy7-A", "Viability")])
    with pytest.raises(PanelError, match="several channels"):
        VIABILITY.resolve(fcs)


def test_pinning_the_channel_resolves_an_ambiguity():
    panel = _panel({"CD3": {"channel": "BV785-A"}})
    fcs = _file([("FITC-A", "CD3"), ("BV785-A", "cd-3")])
    assert panel.resolve(fcs) == {"CD3": "BV785-A"}


def test_pinned_channel_absent_names_the_channel_and_lists_the_files_channels():
    panel = _panel({}, channels={"FSC-A": {}, "Time": {}})
    fcs = _file([("FSC-A", ""), ("SSC-A", ""), ("HDR-T", "")])
    with pytest.raises(PanelError) as info:
        panel.resolve(fcs, sample="S1")
    exc = info.value
    assert exc.field == "Time" and exc.sample == "S1" and exc.file == "fcs/S1.fcs"
    assert "'Time'" in exc.message
    assert "HDR-T" in exc.hint and "SSC-A" in exc.hint


def test_channels_are_named_by_pnn_and_not_compensated():
    panel = _panel({"CD3": {}}, channels={"FSC-A": {}, "Time": {}})
    fcs = _file([("Time", ""), ("FSC-A", ""), ("FITC-A", "CD3")])
    assert panel.resolve(fcs) == {"CD3": "FITC-A", "FSC-A": "FSC-A", "Time": "Time"}
    assert panel.markers["CD3"].compensated
    assert not panel.markers["FSC-A"].compensated


# --- building a panel -------------------------------------------------------------------


def test_undeclared_transform_is_a_gating_file_error_naming_the_key():
    with pytest.raises(GatingFileError) as info:
        Panel.from_dict(
            {"transforms": {"fluor": {"type": "logicle"}}, "markers": {"CD3": {"transform": "x"}}},
            name="T",
            source="gates/t.yaml",
        )
    assert info.value.file == "gates/t.yaml"
    assert info.value.field == "panel.markers.CD3.transform"
    assert "fluor" in info.value.hint


def test_malformed_panel_section_is_a_gating_file_error():
    with pytest.raises(GatingFileError) as info:
        Panel.from_dict({"markers": ["CD3", "CD4"]}, name="T", source="gates/t.yaml")
    assert info.value.field == "panel"


def test_unknown_panel_entry_lists_the_entries():
    with pytest.raises(GatingFileError) as info:
        VIABILITY.marker("CD3")
    assert "viability" in info.value.hint


# --- real files -------------------------------------------------------------------------


OMIP021 = "cytopipeline_omip021/Donor1.fcs"
FLOWKIT = "flowkit_testdata/data/100715.fcs"


def test_omip021_resolves_with_a_small_panel(shared_fcs):
    # $PnS here are "fluorochrome - marker": "L/D Aqua - Viability", "BV785 - CD3", ...
    fcs = shared_fcs(OMIP021)
    panel = _panel(
        {
            "viability": {"aliases": ["L/D", "LIVE DEAD Aqua"]},
            "CD3": {},
            "CD4": {},
            "CD8": {"aliases": ["CD8a"]},
            "CD45RA": {},
            "CCR7": {},
        },
        channels={"FSC-A": {}, "SSC-A": {}, "Time": {}},
    )
    assert panel.resolve(fcs, sample="Donor1") == {
        "viability": "525/50Violet-A",
        "CD3": "670/30Violet-A",
        "CD4": "780/60Red-A",
        "CD8": "585/15Violet-A",
        "CD45RA": "710/50Blue-A",
        "CCR7": "780/60Yellow-A",
        "FSC-A": "FSC-A",
        "SSC-A": "SSC-A",
        "Time": "Time",
    }


def test_omip021_cd8_without_an_alias_is_missing_not_a_guess(shared_fcs):
    # the file has CD8a and CD8b, neither is "CD8"
    with pytest.raises(PanelError) as info:
        _panel({"CD8": {}}).resolve(shared_fcs(OMIP021), sample="Donor1")
    assert info.value.field == "CD8"
    assert "BV650 - CD8a" in info.value.hint and "APC - CD8b" in info.value.hint


def test_omip021_resolves_with_the_shipped_t_template_markers(shared_fcs, templates_dir):
    spec = yaml.safe_load((templates_dir / "t_cell.yaml").read_text())["panel"]
    panel = Panel.from_dict(spec, name="T")
    mapping = {}
    for name in ["viability", "CD3", "CD4", "CD8", "FSC-A", "FSC-H", "SSC-A", "Time"]:
        one = Panel(panel.name, {name: panel.markers[name]}, panel.transforms)
        mapping.update(one.resolve(shared_fcs(OMIP021)))
    assert mapping["viability"] == "525/50Violet-A"
    assert mapping["CD8"] == "585/15Violet-A"
    with pytest.raises(PanelError) as info:  # CD25 is not in the OMIP-021 panel
        panel.resolve(shared_fcs(OMIP021), sample="Donor1")
    assert info.value.field == "CD25"


def test_flowkit_100715_resolves(shared_fcs):
    fcs = shared_fcs(FLOWKIT)
    panel = _panel(
        {
            "viability": {"aliases": ["VIVID"]},
            "CD3": {},
            "CD4": {},
            "CD8": {},
            "CD19": {},
            "CD127": {},
            "Ki67": {},
        },
        channels={"FSC-A": {}, "SSC-A": {}},
    )
    assert panel.resolve(fcs) == {
        "viability": "V450-A",
        "CD3": "R780-A",
        "CD4": "V655-A",
        "CD8": "V800-A",
        "CD19": "G710-A",
        "CD127": "G560-A",
        "Ki67": "B515-A",
        "FSC-A": "FSC-A",
        "SSC-A": "SSC-A",
    }


def test_flowkit_100715_against_the_shipped_t_template_names_the_first_gap(
    shared_fcs, templates_dir
):
    fcs = shared_fcs(FLOWKIT)
    spec = yaml.safe_load((templates_dir / "t_cell.yaml").read_text())["panel"]
    with pytest.raises(PanelError) as info:
        Panel.from_dict(spec, name="T").resolve(fcs, sample="100715")
    exc = info.value
    # the viability dye is on the "VIVID / CD14" dump channel, under no known alias
    assert exc.field == "viability"
    assert exc.file == fcs.path and exc.sample == "100715"
    assert "V450-A=VIVID / CD14" in exc.hint


@pytest.mark.parametrize(
    "value, stored",
    [("none", "uncompensated"), ("null", "uncompensated"), ("uncompensated", "uncompensated"),
     ("fcs", "FCS")],
)  # fmt: skip
def test_compensation_none_is_a_panel_without_compensation(tmp_path, value, stored, demo_cohort):
    import re

    from immuno.autogate import gate_one, load_template
    from immuno.read import read_fcs

    src = (ROOT / "gates" / "t_cell.yaml").read_text()
    path = tmp_path / "t.yaml"
    path.write_text(re.sub(r"compensation: FCS.*", f"compensation: {value}", src))
    template = load_template(path)
    assert template.panel.compensation == stored
    res = gate_one(read_fcs(demo_cohort / "fcs" / "P01_m0_T.fcs"), template, sample_id="s")
    assert res.table["count"].iloc[0] > 0


def test_an_unknown_compensation_is_refused_with_the_accepted_values(tmp_path):
    import re

    from immuno.autogate import load_template

    src = (ROOT / "gates" / "t_cell.yaml").read_text()
    path = tmp_path / "t.yaml"
    path.write_text(re.sub(r"compensation: FCS.*", "compensation: spill.csv", src))
    with pytest.raises(GatingFileError) as err:
        load_template(path)
    assert err.value.field == "panel.compensation" and "none" in str(err.value)
