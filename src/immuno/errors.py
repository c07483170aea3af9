"""The project's exception hierarchy.

Every error the library raises on purpose derives from :class:`ImmunoError` and
carries the file, the sample and the field at fault plus a hint on how to fix it,
so that a scientist learns in one line what is wrong with which input.
"""

from __future__ import annotations

__all__ = [
    "ImmunoError",
    "FCSError",
    "PanelError",
    "GatingError",
    "GatingFileError",
    "ConfigError",
    "SampleSheetError",
    "OutputError",
]


class ImmunoError(Exception):
    """Base class of every error ``immuno`` raises on purpose.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    file
        The input file at fault (FCS, gating, sample sheet), if any.
    sample
        The sample id at fault, if known.
    field
        The keyword, column, marker or gate at fault, if any.
    hint
        How to fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        sample: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.sample = sample
        self.field = field
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.sample:
            where.append(f"sample {self.sample}")
        if self.file:
            where.append(f"file {self.file}")
        if self.field:
            where.append(f"field {self.field}")
        text = f"{'; '.join(where)}: {self.message}" if where else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def as_record(self) -> dict[str, str]:
        """The error as a flat record, e.g. for ``results/failed_samples.tsv``."""
        return {
            "error": type(self).__name__,
            "file": self.file or "",
            "sample": self.sample or "",
            "field": self.field or "",
            "message": self.message,
            "hint": self.hint or "",
        }


class FCSError(ImmunoError):
    """An FCS file cannot be read: corrupt, truncated, or an unsupported layout."""


class PanelError(ImmunoError):
    """An FCS file does not match its panel: a marker or channel is missing or ambiguous."""


class GatingError(ImmunoError):
    """A gate cannot be fitted or applied to a sample."""


class GatingFileError(ImmunoError):
    """A gating definition (template, Gating-ML, FlowJo workspace) is invalid or unsafe."""


class ConfigError(ImmunoError):
    """The workflow configuration is invalid."""


class SampleSheetError(ImmunoError):
    """The sample sheet is invalid: missing columns, duplicate ids, missing files."""


class OutputError(ImmunoError):
    """An output cannot be written: the disk is full, or the folder is not writable."""
