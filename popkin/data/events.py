"""The event table: every dose (ADDL expanded) and every prediction point, in event order.

Built once per dataset and model layout and used by every solver (closed forms, ODEs). The
rules, which follow NONMEM/PREDPP:

* Records are processed in file order. Implied doses (``ADDL``/``II``) are inserted at their
  times; an implied dose at the same time as a record is given after that record, so a sample
  drawn at a dosing time is a trough.
* A reset (``EVID`` 3, or 4 before its dose) discards the state and cancels implied doses still
  pending. A steady-state dose with ``SS=1`` also discards the earlier state (``SS=2`` adds the
  steady state to it). Each stretch between resets is an *epoch*; doses act only within theirs.
* A dose record acts at its own time, so the prediction at a bolus record includes that bolus.
* ``CMT`` uses NONMEM ADVAN numbering of the model's compartments; a dose without ``CMT`` goes
  to the model's dose compartment (the depot of an oral model, else the central compartment).

Two kinds of dose records NONMEM rejects are read by a rule of popkin's, and each such record
gets an :class:`EventRuleWarning` that names its row and ID: a dose with ``AMT = 0`` that is
not a steady-state constant infusion gives no drug (NONMEM requires ``AMT > 0``), and a
steady-state constant infusion (``AMT = 0, RATE > 0``) with ``II > 0`` ignores ``II`` (NONMEM's
has ``II = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import warnings

import numpy as np

from .reader import Dataset
from .schema import DOSE, OBSERVATION, RATE_FROM_DURATION, RESET, RESET_DOSE, DatasetError, Problem

__all__ = ["CompartmentLayout", "EventRuleWarning", "EventTable", "build_event_table"]


class EventRuleWarning(RuntimeWarning):
    """A record read by a rule of popkin's where NONMEM would reject it."""


class CompartmentLayout(Protocol):
    """What the event table needs to know about a model."""

    name: str
    compartments: tuple[str, ...]          # ADVAN order, 1-based in the data
    dose_compartment: int                  # default CMT of a dose
    dosable: tuple[int, ...]               # compartments that may receive doses
    observed: tuple[int, ...]              # compartments an observation's CMT may name
    outputs: tuple[str, ...]               # one per DVID, in DVID order


@dataclass(frozen=True)
class EventTable:
    """Flat arrays over all subjects.

    Doses are sorted by (subject, event order); prediction points likewise. ``order`` is a
    global event position, so a dose acts on a point iff they share an ``epoch`` and
    ``dose.order <= point.order``.
    """

    subjects: list
    # doses
    dose_subject: np.ndarray
    dose_time: np.ndarray
    dose_amt: np.ndarray
    dose_rate: np.ndarray        # > 0 infusion rate; 0 bolus; -2 duration from dose_duration
    dose_duration: np.ndarray
    dose_ii: np.ndarray
    dose_ss: np.ndarray          # 0, 1 (reset + steady state) or 2 (steady state added)
    dose_cmt: np.ndarray         # 1-based compartment
    dose_epoch: np.ndarray
    dose_order: np.ndarray
    dose_row: np.ndarray         # source row (implied ADDL doses carry their record's row)
    # prediction points
    point_subject: np.ndarray
    point_time: np.ndarray
    point_evid: np.ndarray
    point_dvid: np.ndarray       # 1-based output index
    point_dv: np.ndarray
    point_mdv: np.ndarray
    point_lloq: np.ndarray       # NaN when not censored
    point_epoch: np.ndarray
    point_order: np.ndarray
    point_row: np.ndarray
    point_record: np.ndarray     # index into Dataset.records
    # arrays a solver derives from the table once (pair plans, packed event arrays), keyed by
    # the solver; the table itself never changes, so they stay valid
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_doses(self) -> int:
        return len(self.dose_time)

    @property
    def n_points(self) -> int:
        return len(self.point_time)

    @property
    def observed(self) -> np.ndarray:
        """Mask of points that are observations with a value (EVID 0, MDV 0)."""
        return (self.point_evid == OBSERVATION) & (self.point_mdv == 0)

    def dose_point_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (dose, point) pair where the dose acts on the point.

        Returns index arrays ``(dose_index, point_index)``, grouped by point.
        """
        if self.n_doses == 0 or self.n_points == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        # Doses are sorted by global order, and epochs increase with order, so the doses that
        # act on a point are a contiguous run: those of its epoch with order <= its order.
        first = np.searchsorted(self.dose_epoch, self.point_epoch, side="left")
        upto = np.searchsorted(self.dose_order, self.point_order, side="right")
        count = np.maximum(upto - first, 0)
        point_index = np.repeat(np.arange(self.n_points), count)
        starts = np.repeat(first, count)
        offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return (starts + offsets).astype(np.int64), point_index.astype(np.int64)


def build_event_table(
    dataset: Dataset,
    layout: CompartmentLayout,
    *,
    points: Literal["all", "observations"] = "all",
) -> EventTable:
    """Build the event table of ``dataset`` for a model with compartments ``layout``.

    ``points="all"`` makes a prediction point of every record (as NONMEM tables do);
    ``"observations"`` keeps only EVID 0 records.
    """
    r = dataset.records
    problems: list[Problem] = []
    _check_layout(r, layout, problems)
    if problems:
        raise DatasetError(problems, dataset.source)
    _warn_departures(r, dataset.source)

    ids = r["ID"].to_numpy()
    evid = r["EVID"].to_numpy().astype(np.int64)
    time = r["TIME"].to_numpy(float)
    amt = r["AMT"].to_numpy(float)
    rate = r["RATE"].to_numpy(float)
    dur = r["DUR"].to_numpy(float)
    ii = r["II"].to_numpy(float)
    addl = r["ADDL"].to_numpy().astype(np.int64)
    ss = r["SS"].to_numpy().astype(np.int64)
    cmt = r["CMT"].to_numpy(float)
    dose_cmt_all = np.where(np.isnan(cmt) | (cmt == 0), layout.dose_compartment, cmt).astype(np.int64)
    rows = r["row"].to_numpy()

    subjects = list(dict.fromkeys(ids.tolist()))
    subject_index = {s: k for k, s in enumerate(subjects)}
    doses: list[tuple] = []
    pts: list[tuple] = []
    order = 0
    epoch = -1
    keep_all = points == "all"

    # Per-subject walk in file order: implied doses need the pending-queue logic of PREDPP.
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for a, b in zip(starts, ends):
        s = subject_index[ids[a]]
        epoch += 1
        pending: list[tuple[float, int]] = []       # (time, source record) of implied doses

        def flush(before: float, inclusive: bool):
            nonlocal order
            keep = []
            for t, j in pending:
                if t < before or (inclusive and t <= before):
                    doses.append(_dose_tuple(s, t, j, epoch, order, ss_override=0))
                    order += 1
                else:
                    keep.append((t, j))
            pending[:] = keep

        def _dose_tuple(subj, t, j, ep, od, ss_override=None):
            return (subj, t, amt[j], rate[j], dur[j], ii[j],
                    ss[j] if ss_override is None else ss_override, dose_cmt_all[j], ep, od, rows[j])

        for j in range(a, b):
            e = evid[j]
            # implied doses strictly before this record come first; at a tie the record wins
            flush(time[j], inclusive=False)
            if e in (RESET, RESET_DOSE):
                pending.clear()
                epoch += 1
            if e in (DOSE, RESET_DOSE):
                if ss[j] == 1:
                    epoch += 1
                doses.append(_dose_tuple(s, time[j], j, epoch, order))
                order += 1
                pending.extend((time[j] + k * ii[j], j) for k in range(1, addl[j] + 1))
                pending.sort()
            if keep_all or e == OBSERVATION:
                pts.append((s, time[j], e, j, epoch, order))
                order += 1
        flush(np.inf, inclusive=True)

    return _assemble(subjects, doses, pts, r)


def _warn_departures(r, source: str) -> None:
    """One :class:`EventRuleWarning` per kind of record NONMEM rejects and popkin reads."""
    evid = r["EVID"].to_numpy()
    amt = r["AMT"].to_numpy(float)
    rate = r["RATE"].to_numpy(float)
    ss = r["SS"].to_numpy()
    ii = r["II"].to_numpy(float)
    dose = np.isin(evid, (DOSE, RESET_DOSE)) & (amt == 0)
    constant = dose & (ss > 0) & (rate > 0)
    kinds = (
        (dose & (ss == 0),
         "a dose record with AMT = 0 gives no drug (NONMEM requires AMT > 0 on a dose that is "
         "not a steady-state constant infusion)", "AMT"),
        (constant & (ii > 0),
         "AMT = 0 and RATE > 0 with SS is a constant infusion at steady state, which has no "
         "interval: II is ignored (NONMEM requires II = 0 here)", "II"),
    )
    for mask, message, column in kinds:
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        where = "; ".join(Problem("", row=int(r["row"].iat[i]), subject=r["ID"].iat[i],
                                  column=column).describe(source).rstrip(": ")
                          for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        warnings.warn(f"{where}{more}: {message}", EventRuleWarning, stacklevel=3)


def _check_layout(r, layout: CompartmentLayout, problems: list[Problem]) -> None:
    n_cmt = len(layout.compartments)
    names = ", ".join(f"{i + 1} {c}" for i, c in enumerate(layout.compartments))
    evid = r["EVID"].to_numpy()
    cmt = r["CMT"].to_numpy(float)
    given = ~np.isnan(cmt) & (cmt != 0)
    is_dose = np.isin(evid, (DOSE, RESET_DOSE))
    for i in np.flatnonzero(given & is_dose & ~np.isin(cmt, layout.dosable)):
        what = "has no such compartment" if cmt[i] > n_cmt else "cannot take doses there"
        allowed = ", ".join(str(c) for c in layout.dosable)
        problems.append(Problem(
            f"dose into CMT {cmt[i]:g}, but model {layout.name!r} {what} (compartments: {names}; "
            f"doses allowed into {allowed})", row=int(r["row"].iat[i]), subject=r["ID"].iat[i],
            column="CMT"))
    is_obs = evid == OBSERVATION
    for i in np.flatnonzero(given & is_obs & ~np.isin(cmt, layout.observed)):
        allowed = ", ".join(str(c) for c in layout.observed)
        problems.append(Problem(
            f"observation of CMT {cmt[i]:g}, but model {layout.name!r} predicts compartment(s) "
            f"{allowed} (compartments: {names}); use DVID to choose among its outputs",
            row=int(r["row"].iat[i]), subject=r["ID"].iat[i], column="CMT"))
    dvid = r["DVID"].to_numpy()
    n_out = len(layout.outputs)
    for i in np.flatnonzero(is_obs & (dvid > n_out)):
        outs = ", ".join(f"{k + 1} {o}" for k, o in enumerate(layout.outputs))
        problems.append(Problem(
            f"DVID {dvid[i]:g}, but model {layout.name!r} has {n_out} output(s): {outs}",
            row=int(r["row"].iat[i]), subject=r["ID"].iat[i], column="DVID"))


def _assemble(subjects, doses, pts, r) -> EventTable:
    d = np.array(doses, dtype=float).reshape(-1, 11)
    p = np.array(pts, dtype=float).reshape(-1, 6)
    rec = p[:, 3].astype(np.int64)
    dv = r["DV"].to_numpy(float)[rec]
    lloq = r["LLOQ"].to_numpy(float)[rec]
    blq = r["BLQ"].to_numpy(float)[rec]
    # two censoring conventions: an LLOQ column (DV below it is censored) or a BLQ flag whose
    # DV holds the limit
    censored_at = np.where(blq == 1, dv, np.where(~np.isnan(lloq) & (dv < lloq), lloq, np.nan))
    return EventTable(
        subjects=subjects,
        dose_subject=d[:, 0].astype(np.int64),
        dose_time=d[:, 1],
        dose_amt=d[:, 2],
        dose_rate=d[:, 3],
        dose_duration=d[:, 4],
        dose_ii=d[:, 5],
        dose_ss=d[:, 6].astype(np.int64),
        dose_cmt=d[:, 7].astype(np.int64),
        dose_epoch=d[:, 8].astype(np.int64),
        dose_order=d[:, 9].astype(np.int64),
        dose_row=d[:, 10].astype(np.int64),
        point_subject=p[:, 0].astype(np.int64),
        point_time=p[:, 1],
        point_evid=p[:, 2].astype(np.int64),
        point_dvid=r["DVID"].to_numpy()[rec].astype(np.int64),
        point_dv=dv,
        point_mdv=r["MDV"].to_numpy()[rec].astype(np.int64),
        point_lloq=censored_at,
        point_epoch=p[:, 4].astype(np.int64),
        point_order=p[:, 5].astype(np.int64),
        point_row=r["row"].to_numpy()[rec].astype(np.int64),
        point_record=rec,
    )
