"""The exception hierarchy: one base class, one line saying what is wrong where."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from immuno import errors
from immuno.errors import (
    ConfigError,
    FCSError,
    GatingError,
    GatingFileError,
    ImmunoError,
    OutputError,
    PanelError,
    SampleSheetError,
)

SUBCLASSES = [
    FCSError,
    PanelError,
    GatingError,
    GatingFileError,
    ConfigError,
    SampleSheetError,
    OutputError,
]


def test_str_names_sample_file_field_then_message_and_hint():
    exc = PanelError(
        "marker 'CD4' not found",
        file="data/a.fcs",
        sample="P01_m0_T",
        field="CD4",
        hint="add an alias",
    )
    assert str(exc) == (
        "sample P01_m0_T; file data/a.fcs; field CD4: marker 'CD4' not found (hint: add an alias)"
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "bad"),
        ({"file": "x.fcs"}, "file x.fcs: bad"),
        ({"sample": "S1"}, "sample S1: bad"),
        ({"field": "$TOT"}, "field $TOT: bad"),
        ({"hint": "fix it"}, "bad (hint: fix it)"),
        ({"sample": "S1", "field": "panel"}, "sample S1; field panel: bad"),
        ({"file": "", "sample": "", "field": "", "hint": ""}, "bad"),
    ],
)
def test_str_leaves_out_what_is_not_known(kwargs, expected):
    assert str(ImmunoError("bad", **kwargs)) == expected


def test_file_may_be_a_path_and_is_kept_as_text():
    exc = FCSError("truncated", file=Path("data") / "a.fcs")
    assert exc.file == str(Path("data") / "a.fcs")
    assert isinstance(exc.file, str)
    assert exc.as_record()["file"] == exc.file


def test_as_record_is_flat_text_with_the_class_name():
    rec = SampleSheetError(
        "sample_id 'S1' appears more than once", file="samples.tsv", sample="S1", field="sample_id"
    ).as_record()
    assert rec == {
        "error": "SampleSheetError",
        "file": "samples.tsv",
        "sample": "S1",
        "field": "sample_id",
        "message": "sample_id 'S1' appears more than once",
        "hint": "",
    }
    assert all(isinstance(v, str) for v in rec.values())


def test_as_record_message_is_the_bare_message():
    exc = GatingError("no events", sample="S1", field="cd3", hint="check the parent gate")
    rec = exc.as_record()
    assert rec["message"] == "no events"
    assert rec["hint"] == "check the parent gate"
    assert "S1" not in rec["message"]


def test_attributes_set_later_show_in_str_and_record():
    # autogate and check_inputs fill the sample and file in after the fact
    exc = FCSError("file is empty", field="HEADER")
    exc.sample = "P01_m0_T"
    exc.file = "fcs/P01_m0_T.fcs"
    assert str(exc) == "sample P01_m0_T; file fcs/P01_m0_T.fcs; field HEADER: file is empty"
    assert exc.as_record()["sample"] == "P01_m0_T"


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_every_error_is_an_immuno_error_and_an_exception(cls):
    assert issubclass(cls, ImmunoError)
    assert issubclass(cls, Exception)
    with pytest.raises(ImmunoError) as info:
        raise cls("boom", sample="S1")
    assert type(info.value) is cls
    assert info.value.as_record()["error"] == cls.__name__


def test_subclasses_are_distinct():
    assert len(set(SUBCLASSES)) == len(SUBCLASSES)
    for a in SUBCLASSES:
        for b in SUBCLASSES:
            if a is not b:
                assert not issubclass(a, b)


def test_all_lists_every_error_class():
    assert set(errors.__all__) == {"ImmunoError", *(c.__name__ for c in SUBCLASSES)}


@pytest.mark.parametrize("cls", [ImmunoError, *SUBCLASSES])
def test_errors_survive_pickling_with_their_fields(cls):
    # samples are gated in worker processes: errors must cross process boundaries
    exc = cls("bad", file="a.fcs", sample="S1", field="CD3", hint="h")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert back.as_record() == exc.as_record()
    assert str(back) == str(exc)


def test_docstrings_say_what_each_error_is_for():
    for cls in [ImmunoError, *SUBCLASSES]:
        assert cls.__doc__ and cls.__doc__.strip()
