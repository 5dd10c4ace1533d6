"""Missing covariate levels: which subjects miss which level covariates, what values they may
take, and with what population probability.

A subject whose genotype (or another level covariate) is missing is not dropped. The fit
averages its likelihood over the values it may have (:mod:`popkin.population.pymc_model`), a
dose recommendation averages the patient's posterior over them (:mod:`popkin.dosing.prior`)
and a simulation draws one (:func:`draw_missing`): all three enumerate the values and weigh
them here. The values are the levels of the covariate (for ``alleles``, every pair of
alleles, weighted by Hardy-Weinberg equilibrium); the weights are the population frequencies.
A missing continuous covariate has no levels to average over: it is imputed as the effect
says (``impute``) or refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.schema import DatasetError, Problem
from .covariates import SpecError

__all__ = ["LevelColumn", "missing_level_columns", "draw_missing"]


@dataclass
class LevelColumn:
    """A level covariate with missing values: its effects (one per parameter it acts on)."""

    covariate: str
    effects: list = field(default_factory=list)

    @property
    def first(self):
        return self.effects[0]

    @property
    def kind(self) -> str:
        return self.first.kind

    @property
    def levels(self) -> tuple[str, ...]:
        return self.first.levels

    @property
    def frequencies(self):
        """The spec's frequencies of the levels (a mapping), or None."""
        return next((e.frequencies for e in self.effects if e.frequencies is not None), None)

    def missing(self, design) -> np.ndarray:
        e = self.first
        return e.missing(design[(e.parameter, self.covariate)])

    def combinations(self) -> tuple[list, list[str]]:
        """Codes of the values a missing covariate may take, and their labels."""
        return self.first.rules.combinations(self.levels)

    def log_prior(self, log_frequencies, codes):
        """Log population probability of each code (HWE for a pair of alleles)."""
        return self.first.rules.log_prior(log_frequencies, codes)

    def counts(self, design) -> np.ndarray:
        """The known values' level counts (they inform estimated frequencies)."""
        e = self.first
        values = design[(e.parameter, self.covariate)]
        return e.rules.counts(values[~e.missing(values)], len(self.levels))

    def frequency_vector(self, frequencies) -> np.ndarray:
        return np.array([float(frequencies.get(lv, 0.0)) for lv in self.levels])


def _subjects_shown(ids) -> str:
    return ", ".join(map(str, ids[:5])) + ("..." if len(ids) > 5 else "")


def missing_level_columns(spec, design, data=None, *, continuous_why: str = "") -> dict[str, LevelColumn]:
    """The level covariates that some subject misses, by column.

    With ``data``, a missing continuous covariate is a :class:`DatasetError` naming the
    subjects and ending with ``continuous_why`` (what the caller cannot do without it)."""
    columns: dict[str, LevelColumn] = {}
    for p in spec.parameters:
        for e in p.covariates:
            missing = e.missing(design[(p.name, e.covariate)])
            if not missing.any():
                continue
            if not e.has_levels:
                if data is None:
                    continue
                ids = [data.subjects[i] for i in np.flatnonzero(missing)]
                raise DatasetError([Problem(
                    f"covariate {e.covariate} (effect on {e.parameter}) is missing for "
                    f"{len(ids)} subject(s) (IDs {_subjects_shown(ids)}); {continuous_why}",
                    subject=ids[0], column=e.covariate)], data.source)
            col = columns.setdefault(e.covariate, LevelColumn(e.covariate))
            if col.effects and (col.kind != e.kind or col.levels != e.levels):
                raise SpecError(f"{spec.source}: effects of {e.covariate} on several parameters "
                                "must use the same kind and levels when some values are missing")
            col.effects.append(e)
    return columns


def draw_missing(spec, design, streams, data) -> dict:
    """``design`` with each missing level drawn from the spec's frequencies, from the
    subject's own random stream; without frequencies, a :class:`DatasetError`."""
    columns = missing_level_columns(
        spec, design, data, continuous_why="the model gives no way to impute it (add impute = "
        "\"median\", \"reference\" or a value to the effect)")
    out = dict(design)
    for cov, col in columns.items():
        missing = np.flatnonzero(col.missing(design))
        if col.frequencies is None:
            ids = [data.subjects[i] for i in missing]
            raise DatasetError([Problem(
                f"covariate {cov} is missing for {len(ids)} subject(s) (IDs {_subjects_shown(ids)}); "
                "the model gives no way to impute it (add frequencies to the effect to draw "
                "missing values)", column=cov)], data.source)
        probabilities = col.frequency_vector(col.frequencies)
        drawn = {i: col.first.rules.draw(streams[i], probabilities) for i in missing}
        for e in col.effects:
            values = out[(e.parameter, cov)].copy()
            for i, value in drawn.items():
                values[i] = value
            out[(e.parameter, cov)] = values
    return out
