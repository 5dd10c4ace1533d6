"""NONMEM data-item names, event codes and the dataset error type."""

from __future__ import annotations

from dataclasses import dataclass

#: Standard NONMEM data items popkin understands, in canonical order.
STANDARD_COLUMNS = (
    "ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR",
    "II", "ADDL", "SS", "DVID", "LLOQ", "BLQ", "OCC",
)
#: Columns every dataset must have.
REQUIRED_COLUMNS = ("ID", "TIME")
#: Aliases for the censoring flag (a value of 1 marks a BLQ observation whose DV is the LLOQ).
CENSORING_FLAG_ALIASES = ("BLQ", "CENS")

OBSERVATION, DOSE, OTHER, RESET, RESET_DOSE = 0, 1, 2, 3, 4
KNOWN_EVID = {OBSERVATION: "observation", DOSE: "dose", OTHER: "other",
              RESET: "reset", RESET_DOSE: "reset and dose"}

#: RATE = -2: infusion whose duration is given by DUR (or a modelled duration).
RATE_FROM_DURATION = -2.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located as precisely as possible."""

    message: str
    row: int | None = None          # 1-based data row (the header is not counted)
    subject: object = None
    column: str | None = None

    def describe(self, source: str) -> str:
        where = [source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.subject is not None:
            where.append(f"ID {_fmt_id(self.subject)}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return ", ".join(where) + ": " + self.message


class DatasetError(ValueError):
    """A dataset that cannot be used; the message lists every problem found (up to a limit)."""

    max_listed = 20

    def __init__(self, problems: list[Problem], source: str = "<data>"):
        self.problems = list(problems)
        self.source = source
        lines = [p.describe(source) for p in self.problems[: self.max_listed]]
        hidden = len(self.problems) - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more problem(s) of the same kinds")
        head = f"{len(self.problems)} problem(s) in dataset {source}:" if len(self.problems) > 1 else ""
        super().__init__("\n".join(([head] if head else []) + lines))

    def __reduce__(self):
        # rebuilt from its problems, so that it travels between processes (Dask workers)
        return (type(self), (self.problems, self.source))


def _fmt_id(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
