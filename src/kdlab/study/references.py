"""Reference numbers: the published CIFAR-100 table shipped with kdlab
(``src/kdlab/published/cifar100.csv``) or a user's CSV of the same columns, read and checked
row by row; ``kdlab compare`` and the report put them beside a study's own numbers."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..run import catalog
from ..run.errors import UserError

REFERENCE_COLUMNS = ("dataset", "teacher", "student", "method", "top1", "source", "epoch")
EPOCH_KINDS = ("last", "best")
# A model or method name in a reference file: kdlab's names (letters, digits, '_', and '+'
# joining methods that are trained together, as in crd+logit).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z][A-Za-z0-9_]*)*")
PUBLISHED_FILE = "cifar100.csv"


@dataclass(frozen=True)
class Reference:
    """One reference number: ``top1`` in percent, ``epoch`` 'last' or 'best'."""

    dataset: str
    teacher: str
    student: str
    method: str
    top1: float
    source: str
    epoch: str


def published_csv_text() -> str:
    """The published numbers shipped with kdlab (src/kdlab/published/cifar100.csv)."""
    return resources.files("kdlab").joinpath("published", PUBLISHED_FILE).read_text("utf-8")


def parse_references(text: str, where: str) -> list[Reference]:
    """The rows of a reference CSV; every problem is one UserError naming ``where``, the
    line and the column."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in REFERENCE_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{where}: column '{missing[0]}' is missing: expected the columns "
                        f"{', '.join(REFERENCE_COLUMNS)}")
    references = []
    for row in reader:
        line = reader.line_num

        def fail(column: str, expected: str) -> None:
            raise UserError(f"{where} line {line}: column '{column}' is "
                            f"{row.get(column)!r}: expected {expected}")

        values = {column: (row.get(column) or "").strip() for column in REFERENCE_COLUMNS}
        if values["dataset"] not in catalog.DATASET_NAMES:
            fail("dataset", f"one of {', '.join(catalog.DATASET_NAMES)}")
        for column in ("teacher", "student", "method"):
            if not _NAME.fullmatch(values[column]):
                fail(column, "a kdlab model or method name")
        try:
            top1 = float(values["top1"])
        except ValueError:
            top1 = math.nan
        if not 0.0 <= top1 <= 100.0:
            fail("top1", "an accuracy in percent (0 to 100)")
        if not values["source"]:
            fail("source", "the paper and table the number comes from")
        if values["epoch"] not in EPOCH_KINDS:
            fail("epoch", "last or best (which epoch's accuracy the number is)")
        references.append(Reference(values["dataset"], values["teacher"], values["student"],
                                    values["method"], top1, values["source"],
                                    values["epoch"]))
    return references


def read_references(path: str | Path | None = None) -> list[Reference]:
    """The reference numbers of ``path`` (a CSV), or the published ones when None."""
    if path is None:
        return parse_references(published_csv_text(), f"kdlab's {PUBLISHED_FILE}")
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"reference file {path}: unreadable: {error}") from None
    return parse_references(text, str(path))
